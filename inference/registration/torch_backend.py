"""Our fast registration backend: instance optimisation in PyTorch (CPU always, CUDA when present).

Pipeline (all geometry in LPS mm, through 4x4 matrices, so any direction matrix works):

1. Crop the fixed image to the bounding box of its mask plus a margin; normalise intensities of
   each image to ``[0, 1]`` between robust percentiles (of the masked region when a mask is
   given).
2. Affine: start from the difference of the mask centroids (when both masks are given), then
   optimise a 12-parameter affine ``T(x) = A (x - c) + c + t`` with Adam on a coarse-to-fine
   pyramid, maximising local normalised cross-correlation (LNCC) over the dilated fixed mask.
3. Deformable: a stationary velocity field ``v`` (LPS mm) on a control lattice coarser than each
   pyramid level by ``velocity_spacing_factor``; ``exp(v)`` by scaling and squaring
   (``squaring_steps`` compositions) gives a diffeomorphic displacement ``d``; loss =
   ``-LNCC`` over the dilated fixed mask + ``diffusion_weight * |grad v|^2`` (+ optional bending
   energy, + optional lung-mask mismatch ``mask_weight``). The moving image is sampled at
   ``T(x + d(x))``. The diffusion weight (2.5) was chosen at 1 mm on the two benchmark pairs
   (``benchmarks/bench_registration.py``): weaker regularisation lets the similarity explain the
   phantom follow-up's new ILD and denser shrunken parenchyma as extra shrinkage (over-reads),
   stronger regularisation under-reads the shrinkage of the clean POPI warp.
4. Output: ``u(x) = T(x + d(x)) - x`` on the full fixed grid; outside the crop ``d`` is extended
   with its border values.

grid_sample conventions: tensors are ``[N, C, k, j, i]``; the sampling grid's last axis holds
normalised ``(i, j, k)`` (x = i = width), with ``align_corners=True`` so -1 and +1 are the centres
of the first and last voxels. Every index/physical/normalised conversion goes through
:class:`_Lattice`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from inference.registration.base import BackendOutput, merge_params
from inference.registration.fields import grid_points_lps, index_to_normalised
from inference.registration.resample import crop_to_mask
from inference.volume import Volume

ENGINE_VERSION = "ild-torch-svf 1.0.0"

DEFAULT_PARAMS: dict[str, Any] = {
    # "auto": CUDA when available, else CPU; or "cpu" / "cuda".
    "device": "auto",
    # torch CPU threads for every level. None: for levels of at least 2^19 voxels, torch's
    # default lowered to the cores other processes leave idle (1-minute load average), and 1
    # thread for smaller levels. OpenMP threads waiting for a descheduled sibling make ops many
    # times slower on a busy shared CPU (see benchmarks/bench_registration.py).
    "threads": None,
    "seed": 0,
    # Robust intensity window (percent) mapped to [0, 1], per image, inside its mask.
    "intensity_percentiles": [0.5, 99.5],
    # The similarity is evaluated over the fixed mask dilated by this much, so the lung
    # boundary (the strongest evidence of volume change) is inside the cost region.
    "mask_dilation_mm": 6.0,
    # Fixed-image crop around the mask's bounding box.
    "crop_margin_mm": 15.0,
    "affine": True,
    "affine_levels_mm": [8.0],
    "affine_iterations": [150],
    # Adam step for the matrix part (dimensionless) and the translation (mm).
    "affine_lr_matrix": 0.002,
    "affine_lr_translation_mm": 0.5,
    "deformable": True,
    # Coarse to fine; the finest level sets the detail ([6, 3, 2] is finer and ~3x slower).
    "levels_mm": [6.0, 3.0],
    "iterations": [120, 80],
    # Velocity control lattice spacing = level spacing * this factor.
    "velocity_spacing_factor": 2,
    "ncc_window_vox": 5,
    "ncc_epsilon": 1e-3,
    # Adam step in units of the level's voxel spacing.
    "learning_rate": 0.15,
    "diffusion_weight": 2.5,
    "bending_weight": 0.0,
    # Weight of the lung-mask mismatch term (needs both masks; 0 disables it).
    "mask_weight": 0.0,
    "squaring_steps": 7,
}


@dataclass(frozen=True)
class _Lattice:
    """A voxel lattice: ``shape_kji`` plus the 4x4 matrix mapping ``(i, j, k, 1)`` to LPS mm."""

    shape_kji: tuple[int, int, int]
    affine: npt.NDArray[np.float64]

    @classmethod
    def of(cls, volume: Volume) -> _Lattice:
        return cls(volume.shape_kji, volume.affine_lps)

    @property
    def size_ijk(self) -> npt.NDArray[np.float64]:
        return np.array(self.shape_kji[::-1], dtype=np.float64)

    @property
    def spacing_mm(self) -> npt.NDArray[np.float64]:
        """Spacing along ``(i, j, k)``."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def norm_to_lps(self) -> npt.NDArray[np.float64]:
        return self.affine @ np.linalg.inv(index_to_normalised(self.shape_kji))

    @property
    def lps_to_norm(self) -> npt.NDArray[np.float64]:
        return index_to_normalised(self.shape_kji) @ np.linalg.inv(self.affine)

    def resized(self, shape_kji: tuple[int, int, int]) -> _Lattice:
        """Same first and last voxel centres, ``shape_kji`` voxels (align_corners semantics)."""
        new = np.array(shape_kji[::-1], dtype=np.float64)
        scale = np.maximum(self.size_ijk - 1.0, 0.0) / np.maximum(new - 1.0, 1.0)
        step = np.eye(4)
        step[:3, :3] = np.diag(scale)
        return _Lattice(shape_kji, self.affine @ step)

    def at_spacing(self, spacing_mm: float, *, min_size: int = 8) -> _Lattice:
        """Resized to about ``spacing_mm`` (never finer than the current lattice)."""
        extent = (self.size_ijk - 1.0) * self.spacing_mm
        size = np.maximum(np.round(extent / spacing_mm) + 1.0, min_size)
        size = np.where(self.spacing_mm >= spacing_mm, self.size_ijk, size)
        size = np.minimum(size, self.size_ijk)
        return self.resized((int(size[2]), int(size[1]), int(size[0])))

    def pooled(self, factors_kji: tuple[int, int, int]) -> _Lattice:
        """The lattice of ``avg_pool3d(kernel=stride=factors)`` applied to this one."""
        f_ijk = np.array(factors_kji[::-1], dtype=np.float64)
        shape = tuple(int(n // f) for n, f in zip(self.shape_kji, factors_kji, strict=True))
        step = np.eye(4)
        step[:3, :3] = np.diag(f_ijk)
        step[:3, 3] = (f_ijk - 1.0) / 2.0
        return _Lattice((shape[0], shape[1], shape[2]), self.affine @ step)


@dataclass(frozen=True)
class _Image:
    """A ``[1, 1, k, j, i]`` float32 tensor on a lattice."""

    data: torch.Tensor
    lattice: _Lattice


@dataclass(frozen=True)
class _Inputs:
    """Preprocessed images: fixed (cropped), its lung mask, moving, and the moving lung mask."""

    fixed: _Image
    fixed_mask: _Image
    moving: _Image
    moving_mask: _Image | None


@dataclass(frozen=True)
class _Level:
    """One pyramid level.

    ``fixed`` (local statistics), ``weight`` (dilated lung mask: where the cost is evaluated)
    and ``fixed_mask`` (lung fraction) lie on ``lattice``; ``moving`` and ``moving_mask`` are
    pooled on the moving image's own lattice.
    """

    lattice: _Lattice
    fixed: _LocalStats
    weight: torch.Tensor
    fixed_mask: torch.Tensor
    moving: _Image
    moving_mask: _Image | None


def _as_torch(matrix: npt.NDArray[np.float64], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(matrix, dtype=torch.float32, device=device)


def _identity_grid(lattice: _Lattice, device: torch.device) -> torch.Tensor:
    theta = torch.eye(3, 4, device=device)[None]
    return F.affine_grid(theta, [1, 1, *lattice.shape_kji], align_corners=True)


def _affine_grid(
    source: _Lattice, transform: torch.Tensor, target: _Lattice, device: torch.device
) -> torch.Tensor:
    """Sampling grid on ``target`` for ``source`` under LPS transform ``T`` (4x4, may need grad)."""
    theta = (
        _as_torch(source.lps_to_norm, device) @ transform @ _as_torch(target.norm_to_lps, device)
    )
    return F.affine_grid(theta[None, :3, :], [1, 1, *target.shape_kji], align_corners=True)


def _pool_factors(lattice: _Lattice, spacing_mm: float) -> tuple[int, int, int]:
    factors_ijk = np.maximum(1, np.floor(spacing_mm / lattice.spacing_mm + 1e-6)).astype(int)
    factors_ijk = np.minimum(factors_ijk, np.maximum(1, lattice.size_ijk.astype(int) // 4))
    return (int(factors_ijk[2]), int(factors_ijk[1]), int(factors_ijk[0]))


def _pooled(image: _Image, spacing_mm: float) -> _Image:
    factors = _pool_factors(image.lattice, spacing_mm)
    if factors == (1, 1, 1):
        return image
    data = F.avg_pool3d(image.data, kernel_size=factors, stride=factors)
    return _Image(data, image.lattice.pooled(factors))


def _resample(image: _Image, target: _Lattice, device: torch.device) -> torch.Tensor:
    """Anti-aliased resampling of an image onto a (coarser or equal) lattice."""
    pooled = _pooled(image, float(np.min(target.spacing_mm)))
    grid = _affine_grid(pooled.lattice, torch.eye(4, device=device), target, device)
    return F.grid_sample(pooled.data, grid, align_corners=True, padding_mode="border")


def _box(x: torch.Tensor, window: int) -> torch.Tensor:
    """Separable mean over a ``window``^3 neighbourhood (edges: mean of what is inside)."""
    r = window // 2
    for kernel, pad in (
        ((window, 1, 1), (r, 0, 0)),
        ((1, window, 1), (0, r, 0)),
        ((1, 1, window), (0, 0, r)),
    ):
        x = F.avg_pool3d(x, kernel, stride=1, padding=pad, count_include_pad=False)
    return x


@dataclass(frozen=True)
class _LocalStats:
    """Local mean and variance of the fixed image, computed once per pyramid level."""

    image: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor
    window: int
    epsilon: float

    @classmethod
    def of(cls, image: torch.Tensor, window: int, epsilon: float) -> _LocalStats:
        stats = _box(torch.cat([image, image * image], dim=1), window)
        mean, mean_sq = stats[:, :1], stats[:, 1:]
        return cls(image, mean, (mean_sq - mean * mean).clamp_min(0.0), window, epsilon)


def _lncc_map(fixed: _LocalStats, warped: torch.Tensor) -> torch.Tensor:
    """Local normalised cross-correlation in ``[-1, 1]`` at every voxel."""
    stats = _box(torch.cat([warped, warped * warped, fixed.image * warped], dim=1), fixed.window)
    mean_b, mean_bb, mean_ab = stats[:, :1], stats[:, 1:2], stats[:, 2:]
    cov = mean_ab - fixed.mean * mean_b
    var_b = (mean_bb - mean_b * mean_b).clamp_min(0.0)
    return cov / torch.sqrt((fixed.variance + fixed.epsilon) * (var_b + fixed.epsilon))


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(1e-6)


def _diffusion(v: torch.Tensor, spacing_ijk: npt.NDArray[np.float64]) -> torch.Tensor:
    """Mean squared first derivative (per mm) of a ``[1, 3, k, j, i]`` field."""
    total = v.new_zeros(())
    for dim, h in ((4, spacing_ijk[0]), (3, spacing_ijk[1]), (2, spacing_ijk[2])):
        if v.shape[dim] > 1:
            total = total + (torch.diff(v, dim=dim) / float(h)).pow(2).mean()
    return total


def _bending(v: torch.Tensor, spacing_ijk: npt.NDArray[np.float64]) -> torch.Tensor:
    """Mean squared pure second derivatives (per mm^2) of a ``[1, 3, k, j, i]`` field."""
    total = v.new_zeros(())
    for dim, h in ((4, spacing_ijk[0]), (3, spacing_ijk[1]), (2, spacing_ijk[2])):
        if v.shape[dim] > 2:
            total = total + (torch.diff(v, n=2, dim=dim) / float(h) ** 2).pow(2).mean()
    return total


def _exp_velocity(
    v: torch.Tensor, lattice: _Lattice, steps: int, identity: torch.Tensor
) -> torch.Tensor:
    """Scaling and squaring: displacement ``[1, 3, k, j, i]`` (LPS mm) of ``exp(v)``."""
    to_norm = _as_torch(lattice.lps_to_norm[:3, :3], v.device)
    d = v / (2.0**steps)
    for _ in range(steps):
        grid = identity + d.permute(0, 2, 3, 4, 1) @ to_norm.T
        d = d + F.grid_sample(d, grid, align_corners=True, padding_mode="border")
    return d


def _window(
    array: npt.NDArray[np.generic],
    mask: npt.NDArray[np.bool_] | None,
    percentiles: Sequence[float],
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Robust intensity window: the given percentiles of the masked (else all) voxels."""
    values = array[mask] if mask is not None and mask.any() else array.ravel()
    if values.size > 1_000_000:
        values = rng.choice(values, 1_000_000, replace=False)
    lo, hi = np.percentile(values.astype(np.float32), [percentiles[0], percentiles[1]])
    return float(lo), float(hi)


def _normalise(array: npt.NDArray[np.generic], window: tuple[float, float]) -> torch.Tensor:
    """``[k, j, i]`` array mapped to ``[0, 1]`` over ``window``, as a ``[1, 1, k, j, i]`` tensor."""
    lo, hi = window
    scale = hi - lo if hi > lo else 1.0
    out = (array.astype(np.float32) - np.float32(lo)) / np.float32(scale)
    return torch.from_numpy(np.clip(out, 0.0, 1.0))[None, None]


def _centroid_lps(mask: Volume) -> npt.NDArray[np.float64]:
    kk, jj, ii = np.nonzero(mask.array)
    mean_index = np.array([ii.mean(), jj.mean(), kk.mean()], dtype=np.float64)
    return mask.index_to_lps(mean_index)


def _dilate(mask: torch.Tensor, lattice: _Lattice, radius_mm: float) -> torch.Tensor:
    """Separable box dilation of a ``[1, 1, k, j, i]`` 0/1 tensor by ``radius_mm`` per axis."""
    radius_kji = np.round(radius_mm / lattice.spacing_mm[::-1]).astype(int)
    for axis, r in enumerate(radius_kji):
        if r > 0:
            kernel = [1, 1, 1]
            padding = [0, 0, 0]
            kernel[axis], padding[axis] = 2 * int(r) + 1, int(r)
            mask = F.max_pool3d(mask, tuple(kernel), stride=1, padding=tuple(padding))
    return mask


class _Affine:
    """``T(x) = (I + M)(x - c) + c + shift + t`` with trainable ``M`` (3x3) and ``t`` (mm)."""

    def __init__(
        self, centre: npt.NDArray[np.float64], shift: npt.NDArray[np.float64], device: torch.device
    ) -> None:
        self.device = device
        self.linear = torch.zeros(3, 3, device=device, requires_grad=True)
        self.translation = torch.zeros(3, device=device, requires_grad=True)
        self.centre = torch.as_tensor(centre, dtype=torch.float32, device=device)
        self.shift = torch.as_tensor(shift, dtype=torch.float32, device=device)

    def matrix(self) -> torch.Tensor:
        """The 4x4 LPS mm matrix (fixed point -> moving point)."""
        a = torch.eye(3, device=self.device) + self.linear
        b = self.centre + self.shift + self.translation - a @ self.centre
        top = torch.cat([a, b[:, None]], dim=1)
        bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], device=self.device)
        return torch.cat([top, bottom], dim=0)


def _make_level(
    inputs: _Inputs, spacing_mm: float, p: Mapping[str, Any], device: torch.device
) -> _Level:
    """Fixed image, its local statistics, the cost weights and pooled moving data."""
    lattice = inputs.fixed.lattice.at_spacing(spacing_mm)
    level_spacing = float(np.min(lattice.spacing_mm))
    with torch.no_grad():
        fixed_level = _resample(inputs.fixed, lattice, device)
        fixed_mask = _resample(inputs.fixed_mask, lattice, device)
        weight = _dilate((fixed_mask >= 0.5).float(), lattice, float(p["mask_dilation_mm"]))
        stats = _LocalStats.of(fixed_level, int(p["ncc_window_vox"]), float(p["ncc_epsilon"]))
        moving_mask = (
            None if inputs.moving_mask is None else _pooled(inputs.moving_mask, level_spacing)
        )
    return _Level(
        lattice, stats, weight, fixed_mask, _pooled(inputs.moving, level_spacing), moving_mask
    )


def _cost(level: _Level, grid: torch.Tensor, mask_weight: float) -> torch.Tensor:
    """``-LNCC`` (+ ``mask_weight`` x lung-mask mismatch) over the level's cost region.

    The mask term, the mean squared difference between the fixed lung fraction and the warped
    moving lung fraction, pins the pleural and diaphragmatic boundaries where new disease
    changes the parenchyma's intensity between scans.
    """
    warped = F.grid_sample(level.moving.data, grid, align_corners=True, padding_mode="border")
    loss = -_masked_mean(_lncc_map(level.fixed, warped), level.weight)
    if mask_weight and level.moving_mask is not None:
        warped_mask = F.grid_sample(
            level.moving_mask.data, grid, align_corners=True, padding_mode="zeros"
        )
        loss = loss + mask_weight * _masked_mean(
            (warped_mask - level.fixed_mask) ** 2, level.weight
        )
    return loss


def _optimise_affine(
    affine: _Affine, level: _Level, iterations: int, p: Mapping[str, Any], device: torch.device
) -> None:
    optimiser = torch.optim.Adam(
        [
            {"params": [affine.linear], "lr": float(p["affine_lr_matrix"])},
            {"params": [affine.translation], "lr": float(p["affine_lr_translation_mm"])},
        ]
    )
    for _ in range(iterations):
        optimiser.zero_grad()
        grid = _affine_grid(level.moving.lattice, affine.matrix(), level.lattice, device)
        loss = _cost(level, grid, float(p["mask_weight"]))
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()


def _optimise_velocity(
    previous: torch.Tensor | None,
    level: _Level,
    transform: torch.Tensor,
    iterations: int,
    p: Mapping[str, Any],
    device: torch.device,
) -> tuple[torch.Tensor, _Lattice]:
    """Optimise the velocity field at one level, starting from the previous level's."""
    factor = float(p["velocity_spacing_factor"])
    v_shape = [
        max(4, int(np.ceil((n - 1) / factor)) + 1) if n > 4 else n for n in level.lattice.shape_kji
    ]
    v_lattice = level.lattice.resized((v_shape[0], v_shape[1], v_shape[2]))
    if previous is None:
        init = torch.zeros(1, 3, *v_lattice.shape_kji, device=device)
    else:
        # Every level lattice spans the same first/last voxel centres: align_corners resizing.
        init = F.interpolate(
            previous.detach(), size=v_lattice.shape_kji, mode="trilinear", align_corners=True
        )
    velocity = init.clone().requires_grad_(True)
    identity = _identity_grid(v_lattice, device)
    steps = int(p["squaring_steps"])
    with torch.no_grad():
        base = _affine_grid(level.moving.lattice, transform, level.lattice, device)
        # d (LPS mm, before T) -> moving normalised offset: lps_to_norm_moving @ A.
        to_moving = _as_torch(level.moving.lattice.lps_to_norm[:3, :3], device) @ transform[:3, :3]
    spacing = float(np.min(level.lattice.spacing_mm))
    optimiser = torch.optim.Adam([velocity], lr=float(p["learning_rate"]) * spacing)
    diffusion_weight = float(p["diffusion_weight"])
    bending_weight = float(p["bending_weight"])
    for _ in range(iterations):
        optimiser.zero_grad()
        disp = _exp_velocity(velocity, v_lattice, steps, identity)
        disp = F.interpolate(
            disp, size=level.lattice.shape_kji, mode="trilinear", align_corners=True
        )
        grid = base + disp.permute(0, 2, 3, 4, 1) @ to_moving.T
        loss = _cost(level, grid, float(p["mask_weight"]))
        if diffusion_weight:
            loss = loss + diffusion_weight * _diffusion(velocity, v_lattice.spacing_mm)
        if bending_weight:
            loss = loss + bending_weight * _bending(velocity, v_lattice.spacing_mm)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    return velocity.detach(), v_lattice


# Below this many voxels a level runs single-threaded when ``threads`` is not set: its ops are
# too small to gain from threads, and on a busy shared CPU each OpenMP barrier waiting for a
# descheduled thread made such levels ~15x slower (1 mm benchmark, 8 mm affine level).
_SMALL_LEVEL_VOXELS = 1 << 19


def _idle_threads() -> int:
    """torch's thread count, lowered to the cores left idle by other processes (load average).

    On a shared CPU, threads beyond the idle cores only wait on each other.
    """
    threads = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return threads
    idle = (os.cpu_count() or threads) - busy
    return max(1, min(threads, int(idle + 0.5)))


def _set_level_threads(level: _Level, p: Mapping[str, Any], default: int) -> None:
    if p["threads"]:
        return
    voxels = int(np.prod(level.lattice.shape_kji))
    torch.set_num_threads(1 if voxels < _SMALL_LEVEL_VOXELS else default)


class TorchBackend:
    """SVF instance optimisation with LNCC; see the module docstring."""

    name = "torch"

    def version(self) -> str:
        return f"{ENGINE_VERSION} (torch {torch.__version__})"

    def available(self) -> bool:
        return True

    def register(
        self,
        fixed: Volume,
        moving: Volume,
        *,
        fixed_mask: Volume | None,
        moving_mask: Volume | None,
        params: Mapping[str, Any],
    ) -> BackendOutput:
        """Register ``moving`` onto ``fixed``; returns ``u`` on the full fixed grid (LPS mm)."""
        p = merge_params(DEFAULT_PARAMS, params, backend=self.name)
        threads_before = torch.get_num_threads()
        if p["threads"]:
            torch.set_num_threads(int(p["threads"]))
        try:
            return self._register(fixed, moving, fixed_mask, moving_mask, p)
        finally:
            torch.set_num_threads(threads_before)

    def _register(
        self,
        fixed: Volume,
        moving: Volume,
        fixed_mask: Volume | None,
        moving_mask: Volume | None,
        p: dict[str, Any],
    ) -> BackendOutput:
        if len(p["iterations"]) != len(p["levels_mm"]):
            raise ValueError("iterations and levels_mm must have the same length")
        if len(p["affine_iterations"]) != len(p["affine_levels_mm"]):
            raise ValueError("affine_iterations and affine_levels_mm must have the same length")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        torch.manual_seed(int(p["seed"]))
        rng = np.random.default_rng(int(p["seed"]))
        use_cuda = p["device"] == "cuda" or (p["device"] == "auto" and torch.cuda.is_available())
        device = torch.device("cuda" if use_cuda else "cpu")
        p["device_used"] = str(device)
        threads_default = _idle_threads() if device.type == "cpu" else torch.get_num_threads()
        p["threads_used"] = int(p["threads"] or threads_default)

        # ---- preprocess
        if fixed_mask is not None:
            fixed_crop, box = crop_to_mask(fixed, fixed_mask, margin_mm=float(p["crop_margin_mm"]))
            mask_crop = np.asarray(fixed_mask.array[box]) != 0
        else:
            fixed_crop, mask_crop = fixed, np.ones(fixed.shape_kji, dtype=bool)
        moving_in = None if moving_mask is None else np.asarray(moving_mask.array) != 0
        fixed_window = _window(fixed_crop.array, mask_crop, p["intensity_percentiles"], rng)
        # Same modality: without its own mask the moving image reuses the fixed window (its
        # whole-image percentiles would include air and bone and squash the lung range).
        moving_window = (
            fixed_window
            if moving_in is None
            else _window(moving.array, moving_in, p["intensity_percentiles"], rng)
        )
        p["intensity_windows"] = {"fixed": list(fixed_window), "moving": list(moving_window)}
        fixed_lattice = _Lattice.of(fixed_crop)
        moving_lattice = _Lattice.of(moving)
        inputs = _Inputs(
            fixed=_Image(_normalise(fixed_crop.array, fixed_window).to(device), fixed_lattice),
            fixed_mask=_Image(
                torch.from_numpy(mask_crop.astype(np.float32))[None, None].to(device),
                fixed_lattice,
            ),
            moving=_Image(_normalise(moving.array, moving_window).to(device), moving_lattice),
            moving_mask=None
            if moving_in is None
            else _Image(
                torch.from_numpy(moving_in.astype(np.float32))[None, None].to(device),
                moving_lattice,
            ),
        )
        centre = (
            _centroid_lps(fixed_mask)
            if fixed_mask is not None
            else (fixed.index_to_lps((np.array(fixed.shape_kji[::-1], dtype=np.float64) - 1) / 2))
        )
        shift = (
            _centroid_lps(moving_mask) - centre
            if (moving_mask is not None and fixed_mask is not None)
            else np.zeros(3)
        )
        timings["preprocess"] = time.perf_counter() - start

        # ---- affine
        t0 = time.perf_counter()
        affine = _Affine(centre, shift, device)
        if p["affine"]:
            for spacing, iterations in zip(
                p["affine_levels_mm"], p["affine_iterations"], strict=True
            ):
                t_level = time.perf_counter()
                level = _make_level(inputs, float(spacing), p, device)
                _set_level_threads(level, p, threads_default)
                _optimise_affine(affine, level, int(iterations), p, device)
                timings[f"affine_{spacing:g}mm"] = time.perf_counter() - t_level
        transform = affine.matrix().detach()
        timings["affine"] = time.perf_counter() - t0

        # ---- deformable
        t0 = time.perf_counter()
        velocity: torch.Tensor | None = None
        velocity_lattice: _Lattice | None = None
        steps = int(p["squaring_steps"])
        if p["deformable"]:
            for spacing, iterations in zip(p["levels_mm"], p["iterations"], strict=True):
                t_level = time.perf_counter()
                level = _make_level(inputs, float(spacing), p, device)
                _set_level_threads(level, p, threads_default)
                velocity, velocity_lattice = _optimise_velocity(
                    velocity, level, transform, int(iterations), p, device
                )
                timings[f"deformable_{spacing:g}mm"] = time.perf_counter() - t_level
        timings["deformable"] = time.perf_counter() - t0

        # ---- full-grid displacement u(x) = T(x + d(x)) - x
        t0 = time.perf_counter()
        displacement = self._full_field(fixed, transform, velocity, velocity_lattice, steps, device)
        timings["postprocess"] = time.perf_counter() - t0
        return BackendOutput(
            displacement=displacement,
            params=p,
            timings_s=timings,
            affine_lps=transform.cpu().double().numpy(),
        )

    @staticmethod
    def _full_field(
        fixed: Volume,
        transform: torch.Tensor,
        velocity: torch.Tensor | None,
        velocity_lattice: _Lattice | None,
        steps: int,
        device: torch.device,
    ) -> npt.NDArray[np.float32]:
        matrix = transform.cpu().double().numpy()
        a, b = matrix[:3, :3], matrix[:3, 3]
        displacement = np.empty((*fixed.shape_kji, 3), dtype=np.float32)
        d_velocity: torch.Tensor | None = None
        if velocity is not None and velocity_lattice is not None:
            with torch.no_grad():
                identity = _identity_grid(velocity_lattice, device)
                d_velocity = _exp_velocity(velocity.detach(), velocity_lattice, steps, identity)
        nk, nj, ni = fixed.shape_kji
        step = max(1, (1 << 20) // max(1, nj * ni))
        for k0 in range(0, nk, step):
            k1 = min(nk, k0 + step)
            points = grid_points_lps(fixed, k0, k1)
            moved = points
            if d_velocity is not None and velocity_lattice is not None:
                to_norm = velocity_lattice.lps_to_norm
                normalised = points @ to_norm[:3, :3].T + to_norm[:3, 3]
                coords = torch.as_tensor(normalised, dtype=torch.float32, device=device)[None]
                with torch.no_grad():
                    d = F.grid_sample(d_velocity, coords, align_corners=True, padding_mode="border")
                moved = points + d[0].permute(1, 2, 3, 0).cpu().double().numpy()
            displacement[k0:k1] = moved @ a.T + b - points
        return displacement
