"""Voxel grids, separable resampling and smooth random fields for the phantom generator.

Every grid here has an identity direction: index ``(i, j, k)`` maps to LPS millimetres as
``origin + (i * sx, j * sy, k * sz)``. Arrays are indexed ``[k, j, i]`` like ``Volume``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from inference.volume import Volume

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid: shape ``(K, J, I)``, spacing and origin in ``(x, y, z)`` LPS mm."""

    shape_kji: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]

    @property
    def x_mm(self) -> F64:
        """Column (``i``) centres, LPS x in mm (towards the patient's left)."""
        return (
            self.origin_lps_mm[0]
            + np.arange(self.shape_kji[2], dtype=np.float64) * self.spacing_mm[0]
        )

    @property
    def y_mm(self) -> F64:
        """Row (``j``) centres, LPS y in mm (towards the patient's back)."""
        return (
            self.origin_lps_mm[1]
            + np.arange(self.shape_kji[1], dtype=np.float64) * self.spacing_mm[1]
        )

    @property
    def z_mm(self) -> F64:
        """Slice (``k``) centres, LPS z in mm (towards the head)."""
        return (
            self.origin_lps_mm[2]
            + np.arange(self.shape_kji[0], dtype=np.float64) * self.spacing_mm[2]
        )

    @property
    def voxel_ml(self) -> float:
        sx, sy, sz = self.spacing_mm
        return sx * sy * sz / 1000.0

    def volume(self, array: npt.NDArray[np.generic]) -> Volume:
        """Wrap an ``[k, j, i]`` array of this grid's shape in a ``Volume``."""
        return Volume(array, self.spacing_mm, self.origin_lps_mm, np.eye(3))

    def index_of(self, points_lps_mm: F64) -> F64:
        """Continuous ``(i, j, k)`` indices of ``(..., 3)`` LPS mm points."""
        return (points_lps_mm - np.asarray(self.origin_lps_mm)) / np.asarray(self.spacing_mm)


@dataclass(frozen=True)
class CoarseGrid:
    """A regular lattice ``[k, j, i]`` of step ``step_mm`` (isotropic) starting at ``origin_lps_mm``."""

    shape_kji: tuple[int, int, int]
    step_mm: float
    origin_lps_mm: tuple[float, float, float]

    @classmethod
    def covering(cls, grid: Grid, step_mm: float, pad_nodes: int = 2) -> CoarseGrid:
        """The coarse lattice that covers ``grid``'s field of view with ``pad_nodes`` to spare."""
        lo = np.asarray(grid.origin_lps_mm) - pad_nodes * step_mm
        extent = np.asarray(grid.spacing_mm) * (np.asarray(grid.shape_kji[::-1]) - 1)
        n_ijk = np.ceil((extent + 2 * pad_nodes * step_mm) / step_mm).astype(int) + 1
        return cls(
            (int(n_ijk[2]), int(n_ijk[1]), int(n_ijk[0])),
            float(step_mm),
            (float(lo[0]), float(lo[1]), float(lo[2])),
        )

    def axis_mm(self, axis_xyz: int) -> F64:
        n = self.shape_kji[2 - axis_xyz]
        return self.origin_lps_mm[axis_xyz] + np.arange(n, dtype=np.float64) * self.step_mm

    def points_lps_mm(self) -> F64:
        """All lattice nodes as an ``[k, j, i, 3]`` array of LPS mm."""
        z, y, x = np.meshgrid(self.axis_mm(2), self.axis_mm(1), self.axis_mm(0), indexing="ij")
        return np.stack([x, y, z], axis=-1)


def _catmull_rom(frac: F32) -> list[F32]:
    f2 = frac * frac
    f3 = f2 * frac
    return [
        0.5 * (-f3 + 2 * f2 - frac),
        0.5 * (3 * f3 - 5 * f2 + 2),
        0.5 * (-3 * f3 + 4 * f2 + frac),
        0.5 * (f3 - f2),
    ]


def interp_axis(array: npt.NDArray[np.floating], axis: int, t: F64, *, cubic: bool) -> F32:
    """Resample ``array`` along ``axis`` at continuous indices ``t`` (clamped at the ends).

    ``cubic`` uses Catmull-Rom weights (C1, exact for quadratics); otherwise linear.
    """
    n = array.shape[axis]
    base = np.floor(t).astype(np.intp)
    frac = (t - base).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = t.size
    if cubic:
        offsets = [-1, 0, 1, 2]
        weights = _catmull_rom(frac)
    else:
        offsets = [0, 1]
        weights = [1 - frac, frac]
    out: F32 | None = None
    for offset, weight in zip(offsets, weights, strict=True):
        taken = np.take(array, np.clip(base + offset, 0, n - 1), axis=axis)
        if out is None:
            out = np.multiply(taken, weight.reshape(shape), dtype=np.float32)
        else:
            out += taken * weight.reshape(shape)
    assert out is not None
    return out


def coarse_to_points(
    coarse: npt.NDArray[np.floating],
    lattice: CoarseGrid,
    x_mm: F64,
    y_mm: F64,
    z_mm: F64,
    *,
    cubic: bool = True,
) -> F32:
    """Separably resample a lattice field ``[kc, jc, ic, ...]`` at the tensor grid ``z × y × x``.

    Returns ``[len(z), len(y), len(x), ...]`` float32.
    """
    step = lattice.step_mm
    ox, oy, oz = lattice.origin_lps_mm
    # slices first: a slab of the output only touches the few lattice planes around it
    out = interp_axis(coarse, 0, (z_mm - oz) / step, cubic=cubic)
    out = interp_axis(out, 1, (y_mm - oy) / step, cubic=cubic)
    return interp_axis(out, 2, (x_mm - ox) / step, cubic=cubic)


def smooth_noise_lattice(
    rng: np.random.Generator, grid: Grid, scales: list[tuple[float, float]]
) -> tuple[F32, CoarseGrid]:
    """Sum of Gaussian random fields ``Σ weight · G(sigma_mm)`` on a lattice of step σ_min / 2.

    Each component has unit standard deviation before weighting. Returns the lattice values and
    the lattice, to be resampled with ``coarse_to_points``.
    """
    # no finer than the grid itself: the field is only ever sampled at its voxels
    step = max(min(sigma for sigma, _ in scales) / 2.0, 0.5, min(grid.spacing_mm))
    lattice = CoarseGrid.covering(grid, step, pad_nodes=4)
    total = np.zeros(lattice.shape_kji, dtype=np.float32)
    for sigma, weight in scales:
        white = rng.standard_normal(lattice.shape_kji, dtype=np.float32)
        field = ndi.gaussian_filter(white, sigma / step, mode="wrap", output=np.float32)
        total += np.float32(weight / max(float(field.std()), 1e-6)) * field
    return total, lattice


@dataclass(frozen=True)
class SmoothField:
    """A smooth random field kept on its lattice and sampled on ``grid`` slab by slab."""

    values: F32
    lattice: CoarseGrid
    grid: Grid

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        grid: Grid,
        sigma_mm: float,
        *,
        detail: tuple[float, float] | None = None,
    ) -> SmoothField:
        """Unit std at ``sigma_mm`` plus an optional ``detail`` component ``(sigma_mm, weight)``."""
        scales = [(sigma_mm, 1.0)] + ([detail] if detail else [])
        values, lattice = smooth_noise_lattice(rng, grid, scales)
        return cls(values, lattice, grid)

    def slab(self, k0: int, k1: int) -> F32:
        """The field on slices ``k0:k1`` of the grid, ``[k1 - k0, J, I]`` (linear resampling)."""
        g = self.grid
        return coarse_to_points(
            self.values, self.lattice, g.x_mm, g.y_mm, g.z_mm[k0:k1], cubic=False
        )


def smooth_noise(
    rng: np.random.Generator,
    grid: Grid,
    sigma_mm: float,
    *,
    detail: tuple[float, float] | None = None,
) -> F32:
    """A smooth Gaussian random field on ``grid`` (``[k, j, i]`` float32), unit std at ``sigma_mm``
    plus an optional ``detail`` component ``(sigma_mm, weight)``; linear resampling."""
    scales = [(sigma_mm, 1.0)] + ([detail] if detail else [])
    field, lattice = smooth_noise_lattice(rng, grid, scales)
    return coarse_to_points(field, lattice, grid.x_mm, grid.y_mm, grid.z_mm, cubic=False)


def gaussian_kernel1d(sigma_vox: float) -> F64:
    """Normalised sampled Gaussian (radius 3σ, at least one tap each side); a delta when σ≈0."""
    if sigma_vox < 0.05:
        return np.ones(1)
    radius = max(1, int(3.0 * sigma_vox + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma_vox) ** 2)
    return kernel / kernel.sum()


def separable_filter(array: F32, sigmas_kji: tuple[float, float, float]) -> F32:
    """Filter ``array`` in place-free fashion with a separable sampled Gaussian per axis."""
    out = array
    for axis, sigma in enumerate(sigmas_kji):
        kernel = gaussian_kernel1d(sigma)
        if kernel.size > 1:
            out = ndi.correlate1d(out, kernel, axis=axis, mode="nearest", output=np.float32)
    return out


def smoothstep(x: npt.NDArray[np.floating] | float) -> npt.NDArray[np.float64]:
    """Cubic Hermite ramp: 0 below 0, 1 above 1."""
    c = np.clip(x, 0.0, 1.0)
    return np.asarray(c * c * (3.0 - 2.0 * c))
