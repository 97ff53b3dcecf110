"""Jacobian determinant maps of a displacement field, and their regional summaries.

For a field ``u`` on the fixed (baseline) grid the mapping is ``phi(x) = x + u(x)`` (baseline
point -> follow-up point). ``det(grad phi)`` is the follow-up volume of a unit baseline volume:
``log det < 0`` is shrinkage between baseline and follow-up, ``> 0`` expansion (Chassagnon et al.,
Radiology 2021, Fig 2).

Derivatives are central differences on the voxel lattice (one-sided on the border slices),
converted to physical units through the grid's spacing *and direction*:
``d u / d x = (d u / d index) @ inv(direction @ diag(spacing))``.

Clipping policy: the logarithm is undefined where ``det <= 0`` (folding). Such determinants,
and any below ``epsilon``, are clipped to ``epsilon`` (default 1e-3, i.e. ``log = -6.9``)
before the logarithm; the fraction of clipped voxels and the fraction of folded voxels are
reported alongside every mean so that a clipped mean is never mistaken for a clean one.

Regions: halves of the lung mask in physical LPS terms. The split planes pass through the
middle of the mask's physical extent: superior/inferior along S (z), anterior/posterior along
P (y); quadrants combine them, and labels 1/2 give the right/left lung.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.registration.fields import check_displacement
from inference.volume import GeometryError, Volume

DEFAULT_EPSILON = 1e-3

# Slices per chunk: 9 float32 derivatives of a 512 x 512 slab of 16 slices is ~150 MB.
_CHUNK_SLICES = 16


def jacobian_determinant(
    displacement: npt.NDArray[np.floating],
    spacing_mm: Sequence[float],
    *,
    direction: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float32]:
    """``det(I + du/dx)`` of ``x -> x + u(x)`` at every voxel.

    Args:
        displacement: ``[k, j, i, 3]`` LPS mm field.
        spacing_mm: voxel spacing in ``(i, j, k)`` order.
        direction: 3x3 direction matrix of the grid (columns = LPS directions of the i, j, k
            axes); identity when ``None``.

    Returns:
        ``[k, j, i]`` float32 determinants (dimensionless).

    Raises:
        GeometryError: if the field is not ``[k, j, i, 3]`` or spacing is not 3 positive values.
    """
    if displacement.ndim != 4 or displacement.shape[3] != 3:
        raise GeometryError(f"displacement must be [k, j, i, 3], got shape {displacement.shape}")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise GeometryError(f"spacing_mm must be three positive values, got {spacing_mm}")
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    # Row a of `to_physical` is d(index_a)/d(x): derivative chain rule for index -> LPS.
    to_physical = np.linalg.inv(matrix.reshape(3, 3) @ np.diag(spacing)).astype(np.float32)

    nk = displacement.shape[0]
    out = np.empty(displacement.shape[:3], dtype=np.float32)
    for k0 in range(0, nk, _CHUNK_SLICES):
        k1 = min(nk, k0 + _CHUNK_SLICES)
        lo, hi = max(0, k0 - 1), min(nk, k1 + 1)
        block = np.asarray(displacement[lo:hi], dtype=np.float32)
        # grads[a][..., c] = d u_c / d index_a with a in (i, j, k) order.
        grads = []
        for axis in (2, 1, 0):
            if block.shape[axis] < 2:
                grads.append(np.zeros_like(block))
            else:
                grads.append(np.gradient(block, axis=axis))
        index_grad = np.stack(grads, axis=-1)[k0 - lo : k0 - lo + (k1 - k0)]  # [..., c, a]
        jac = index_grad @ to_physical  # [..., c, b] = d u_c / d x_b
        jac[..., 0, 0] += 1.0
        jac[..., 1, 1] += 1.0
        jac[..., 2, 2] += 1.0
        out[k0:k1] = (
            jac[..., 0, 0] * (jac[..., 1, 1] * jac[..., 2, 2] - jac[..., 1, 2] * jac[..., 2, 1])
            - jac[..., 0, 1] * (jac[..., 1, 0] * jac[..., 2, 2] - jac[..., 1, 2] * jac[..., 2, 0])
            + jac[..., 0, 2] * (jac[..., 1, 0] * jac[..., 2, 1] - jac[..., 1, 1] * jac[..., 2, 0])
        )
    return out


def clip_determinant(
    determinant: npt.NDArray[np.floating], *, epsilon: float = DEFAULT_EPSILON
) -> npt.NDArray[np.float32]:
    """Determinants with every value below ``epsilon`` (folds included) set to ``epsilon``."""
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    return np.maximum(determinant, np.float32(epsilon)).astype(np.float32)


def log_jacobian(
    displacement: npt.NDArray[np.floating],
    spacing_mm: Sequence[float],
    *,
    direction: npt.ArrayLike | None = None,
    epsilon: float = DEFAULT_EPSILON,
) -> npt.NDArray[np.float32]:
    """``log det(I + du/dx)`` at every voxel, determinants clipped to ``epsilon`` first.

    Args:
        displacement: ``[k, j, i, 3]`` LPS mm field (fixed point ``x`` -> moving ``x + u``).
        spacing_mm: voxel spacing in ``(i, j, k)`` order.
        direction: 3x3 grid direction matrix; identity when ``None``.
        epsilon: smallest determinant kept (see the module's clipping policy).

    Returns:
        ``[k, j, i]`` float32; negative = shrinkage from fixed to moving.

    Raises:
        GeometryError: bad field shape or spacing.
        ValueError: ``epsilon <= 0``.
    """
    det = jacobian_determinant(displacement, spacing_mm, direction=direction)
    return np.log(clip_determinant(det, epsilon=epsilon))


def _in_mask(mask: npt.NDArray[np.generic] | None, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    if mask is None:
        return np.ones(shape, dtype=bool)
    if mask.shape != shape:
        raise GeometryError(f"mask shape {mask.shape} differs from {shape}")
    return np.asarray(mask) != 0


def folding_fraction(
    determinant: npt.NDArray[np.floating], mask: npt.NDArray[np.generic] | None = None
) -> float:
    """Fraction of (masked) voxels with ``det <= 0``; 0.0 for an empty mask."""
    inside = _in_mask(mask, determinant.shape)
    count = int(inside.sum())
    return float(np.count_nonzero(determinant[inside] <= 0) / count) if count else 0.0


def clipped_fraction(
    determinant: npt.NDArray[np.floating],
    mask: npt.NDArray[np.generic] | None = None,
    *,
    epsilon: float = DEFAULT_EPSILON,
) -> float:
    """Fraction of (masked) voxels whose determinant was clipped (``det < epsilon``)."""
    inside = _in_mask(mask, determinant.shape)
    count = int(inside.sum())
    return float(np.count_nonzero(determinant[inside] < epsilon) / count) if count else 0.0


def lung_regions(mask: Volume) -> dict[str, npt.NDArray[np.bool_]]:
    """Boolean ``[k, j, i]`` region maps of a lung mask, split in physical LPS terms.

    Keys: ``whole_lung``, ``superior``, ``inferior``, ``anterior``, ``posterior``, the four
    quadrants ``<superior|inferior>_<anterior|posterior>``, and ``right_lung`` / ``left_lung``
    when the mask uses labels 1 (right) and 2 (left).

    The superior/inferior plane is the mid-plane of the mask's extent along S (LPS z); the
    anterior/posterior plane the mid-plane along P (LPS y). Voxel centres exactly on a plane go
    to the inferior / anterior side.

    Raises:
        ValueError: if the mask is empty.
    """
    labels = np.asarray(mask.array)
    inside = labels != 0
    if not inside.any():
        raise ValueError("lung mask is empty")
    kk, jj, ii = np.nonzero(inside)
    points = mask.index_to_lps(np.stack([ii, jj, kk], axis=-1).astype(np.float64))
    y_mid = 0.5 * (points[:, 1].min() + points[:, 1].max())
    z_mid = 0.5 * (points[:, 2].min() + points[:, 2].max())
    superior = np.zeros(labels.shape, dtype=bool)
    posterior = np.zeros(labels.shape, dtype=bool)
    superior[kk, jj, ii] = points[:, 2] > z_mid
    posterior[kk, jj, ii] = points[:, 1] > y_mid
    inferior = inside & ~superior
    anterior = inside & ~posterior
    regions = {
        "whole_lung": inside,
        "superior": superior,
        "inferior": inferior,
        "anterior": anterior,
        "posterior": posterior,
        "superior_anterior": superior & anterior,
        "superior_posterior": superior & posterior,
        "inferior_anterior": inferior & anterior,
        "inferior_posterior": inferior & posterior,
    }
    if np.any(labels == 1) and np.any(labels == 2):
        regions["right_lung"] = labels == 1
        regions["left_lung"] = labels == 2
    return regions


def regional_means(values: npt.NDArray[np.floating], mask: Volume) -> dict[str, float]:
    """Mean of a ``[k, j, i]`` map (e.g. log-Jacobian) over each of :func:`lung_regions`.

    Empty regions give NaN.

    Raises:
        GeometryError: if ``values`` and the mask differ in shape.
        ValueError: if the mask is empty.
    """
    if values.shape != mask.shape_kji:
        raise GeometryError(f"values shape {values.shape} differs from the mask's {mask.shape_kji}")
    return {
        name: float(values[region].mean(dtype=np.float64)) if region.any() else float("nan")
        for name, region in lung_regions(mask).items()
    }


@dataclass(frozen=True)
class JacobianSummary:
    """Log-Jacobian statistics over a lung mask.

    Attributes:
        mean_log_jacobian: mean over the whole mask (clipped determinants).
        regional_mean_log_jacobian: means per :func:`lung_regions` key.
        regional_voxel_count: voxels per region.
        folding_fraction: fraction of mask voxels with ``det <= 0``.
        clipped_fraction: fraction of mask voxels clipped to ``epsilon``.
        epsilon: clipping floor used.
        mean_determinant: mean unclipped determinant over the mask (volume ratio).
    """

    mean_log_jacobian: float
    regional_mean_log_jacobian: dict[str, float]
    regional_voxel_count: dict[str, int]
    folding_fraction: float
    clipped_fraction: float
    epsilon: float
    mean_determinant: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_jacobian(
    displacement: npt.NDArray[np.floating],
    grid: Volume,
    mask: Volume,
    *,
    epsilon: float = DEFAULT_EPSILON,
) -> tuple[npt.NDArray[np.float32], JacobianSummary]:
    """Log-Jacobian map of a field on ``grid`` and its summary over ``mask``.

    Args:
        displacement: ``[k, j, i, 3]`` LPS mm field on ``grid``.
        grid: the field's grid (spacing and direction are used).
        mask: lung mask on the same grid (labels 1/2 for right/left lungs, or binary).
        epsilon: clipping floor.

    Returns:
        ``(log_jacobian [k, j, i] float32, JacobianSummary)``.

    Raises:
        GeometryError: field or mask not on ``grid``.
        ValueError: empty mask.
    """
    check_displacement(displacement, grid)
    if not mask.same_grid(grid):
        raise GeometryError("mask must lie on the displacement's grid")
    det = jacobian_determinant(displacement, grid.spacing_mm, direction=grid.direction)
    logjac = np.log(clip_determinant(det, epsilon=epsilon))
    regions = lung_regions(mask)
    inside = regions["whole_lung"]
    summary = JacobianSummary(
        mean_log_jacobian=float(logjac[inside].mean(dtype=np.float64)),
        regional_mean_log_jacobian={
            name: float(logjac[r].mean(dtype=np.float64)) if r.any() else float("nan")
            for name, r in regions.items()
        },
        regional_voxel_count={name: int(r.sum()) for name, r in regions.items()},
        folding_fraction=folding_fraction(det, inside),
        clipped_fraction=clipped_fraction(det, inside, epsilon=epsilon),
        epsilon=epsilon,
        mean_determinant=float(det[inside].mean(dtype=np.float64)),
    )
    return logjac, summary
