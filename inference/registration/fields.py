"""Displacement fields: warp an image, invert a field, compose two fields.

Conventions shared by every function here and by every registration backend:

* A displacement field is a float array ``[k, j, i, 3]`` laid on the voxels of a *grid* (a
  :class:`~inference.volume.Volume` whose geometry is used and whose voxels are ignored).
* The three components are **LPS millimetres** ``(x = L, y = P, z = S)``, whatever the grid's
  direction matrix.
* A field ``u`` on the fixed grid means: fixed point ``x`` (LPS mm) corresponds to moving point
  ``x + u(x)``. This is elastix's convention (its transform maps fixed points to moving points)
  and what resampling needs: ``warped(x) = moving(x + u(x))``.

Sampling is done with ``torch.nn.functional.grid_sample`` (``align_corners=True``, so normalised
coordinate -1 is the centre of the first voxel and +1 the centre of the last), on the CPU, in
slabs of fixed-grid slices so that memory stays bounded on 1 mm chest CT.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from inference.volume import GeometryError, Volume

Interpolation = Literal["linear", "nearest"]

FloatArray = npt.NDArray[np.floating]

# Points per slab when sampling on a large grid (about 16 MiB of float32 coordinates).
_SLAB_POINTS = 1 << 20


def index_to_normalised(shape_kji: tuple[int, int, int]) -> npt.NDArray[np.float64]:
    """4x4 matrix mapping homogeneous indices ``(i, j, k, 1)`` to grid_sample's normalised ``(x, y, z, 1)``.

    With ``align_corners=True``: ``n = 2 p / (N - 1) - 1``; an axis of length 1 maps to 0.
    """
    sizes_ijk = np.array(shape_kji[::-1], dtype=np.float64)
    half = np.maximum(sizes_ijk - 1.0, 1.0) / 2.0
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag(1.0 / half)
    matrix[:3, 3] = np.where(sizes_ijk > 1, -1.0, 0.0)
    return matrix


def lps_to_normalised(grid: Volume) -> npt.NDArray[np.float64]:
    """4x4 matrix mapping homogeneous LPS mm points to the grid's normalised ``(x, y, z, 1)``."""
    return index_to_normalised(grid.shape_kji) @ np.linalg.inv(grid.affine_lps)


def check_displacement(displacement: npt.NDArray[np.generic], grid: Volume) -> None:
    """Raise unless ``displacement`` is a finite ``[k, j, i, 3]`` field on ``grid``.

    Raises:
        GeometryError: if the shape does not match the grid or the last axis is not 3.
        ValueError: if the field holds NaN or infinite values.
    """
    if displacement.ndim != 4 or displacement.shape[3] != 3:
        raise GeometryError(f"displacement must be [k, j, i, 3], got shape {displacement.shape}")
    if displacement.shape[:3] != grid.shape_kji:
        raise GeometryError(
            f"displacement shape {displacement.shape[:3]} differs from the grid's {grid.shape_kji}"
        )
    if not np.all(np.isfinite(displacement)):
        raise ValueError("displacement holds NaN or infinite values")


def grid_points_lps(grid: Volume, k_start: int = 0, k_stop: int | None = None) -> FloatArray:
    """LPS mm coordinates ``[k, j, i, 3]`` of the voxel centres of slices ``k_start:k_stop``."""
    nk, nj, ni = grid.shape_kji
    k_stop = nk if k_stop is None else k_stop
    kk, jj, ii = np.meshgrid(
        np.arange(k_start, k_stop, dtype=np.float64),
        np.arange(nj, dtype=np.float64),
        np.arange(ni, dtype=np.float64),
        indexing="ij",
    )
    index_ijk = np.stack([ii, jj, kk], axis=-1)
    return grid.index_to_lps(index_ijk)


def _slabs(grid: Volume) -> list[tuple[int, int]]:
    nk, nj, ni = grid.shape_kji
    step = max(1, _SLAB_POINTS // max(1, nj * ni))
    return [(k0, min(nk, k0 + step)) for k0 in range(0, nk, step)]


def _as_tensor(array: npt.NDArray[np.generic]) -> torch.Tensor:
    """``[k, j, i]`` or ``[k, j, i, C]`` array to a float32 ``[1, C, k, j, i]`` tensor."""
    data = np.asarray(array, dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, -1, 0)))[None]


def sample_at_points(
    source: torch.Tensor,
    source_grid: Volume,
    points_lps_mm: FloatArray,
    *,
    mode: Literal["bilinear", "nearest"] = "bilinear",
    padding_mode: Literal["zeros", "border"] = "zeros",
) -> npt.NDArray[np.float32]:
    """Sample a ``[1, C, k, j, i]`` tensor on ``source_grid`` at LPS mm points ``[..., 3]``.

    Returns ``[..., C]`` float32 values ("bilinear" in grid_sample's 3D sense is trilinear).
    """
    to_norm = lps_to_normalised(source_grid)
    lead = points_lps_mm.shape[:-1]
    normalised = points_lps_mm.reshape(-1, 3) @ to_norm[:3, :3].T + to_norm[:3, 3]
    coords = torch.from_numpy(normalised.astype(np.float32)).reshape(1, -1, 1, 1, 3)
    with torch.no_grad():
        values = F.grid_sample(
            source, coords, mode=mode, padding_mode=padding_mode, align_corners=True
        )
    channels = source.shape[1]
    return values.reshape(channels, -1).T.reshape(*lead, channels).numpy()


def warp_volume(
    moving: Volume,
    displacement: npt.NDArray[np.floating],
    fixed_grid: Volume,
    interpolation: Interpolation = "linear",
    *,
    default_value: float | None = None,
) -> Volume:
    """Resample ``moving`` onto ``fixed_grid`` through ``x -> x + u(x)``.

    Args:
        moving: image in moving space (any grid, any direction).
        displacement: ``[k, j, i, 3]`` LPS mm field on ``fixed_grid``; fixed point ``x`` maps to
            moving point ``x + u(x)``.
        fixed_grid: geometry of the output (its voxels are ignored).
        interpolation: ``"linear"`` (trilinear; float32 output) or ``"nearest"`` (keeps the
            moving dtype: use it for label maps).
        default_value: value for points outside the moving image; ``None`` means the moving
            image's minimum (air for CT, background for masks).

    Returns:
        A Volume on ``fixed_grid``.

    Raises:
        GeometryError: if the displacement does not lie on ``fixed_grid``.
    """
    check_displacement(displacement, fixed_grid)
    if default_value is None:
        default_value = float(np.min(moving.array)) if moving.array.size else 0.0
    # Sampling (value - default) with zero padding then adding default back is exact for
    # trilinear weights and gives `default_value` outside the image.
    source = _as_tensor(moving.array.astype(np.float32) - np.float32(default_value))
    out = np.empty(fixed_grid.shape_kji, dtype=np.float32)
    mode: Literal["bilinear", "nearest"] = "nearest" if interpolation == "nearest" else "bilinear"
    for k0, k1 in _slabs(fixed_grid):
        points = grid_points_lps(fixed_grid, k0, k1) + displacement[k0:k1]
        out[k0:k1] = sample_at_points(source, moving, points, mode=mode)[..., 0]
    out += np.float32(default_value)
    if interpolation == "nearest":
        return fixed_grid.with_array(out.astype(moving.array.dtype))
    return fixed_grid.with_array(out)


def sample_displacement(
    displacement: npt.NDArray[np.floating], grid: Volume, points_lps_mm: FloatArray
) -> npt.NDArray[np.float32]:
    """Trilinear value of a ``[k, j, i, 3]`` field on ``grid`` at LPS mm points ``[..., 3]``.

    Outside the grid the field is extended with its border values.
    """
    check_displacement(displacement, grid)
    return _sample_field(_as_tensor(displacement), grid, points_lps_mm)


def _sample_field(
    source: torch.Tensor, grid: Volume, points_lps_mm: FloatArray
) -> npt.NDArray[np.float32]:
    out = np.empty((*points_lps_mm.shape[:-1], 3), dtype=np.float32)
    flat_points = points_lps_mm.reshape(-1, 3)
    flat_out = out.reshape(-1, 3)
    for start in range(0, flat_points.shape[0], _SLAB_POINTS):
        stop = start + _SLAB_POINTS
        flat_out[start:stop] = sample_at_points(
            source, grid, flat_points[start:stop], padding_mode="border"
        )
    return out


def compose(
    first: npt.NDArray[np.floating],
    second: npt.NDArray[np.floating],
    *,
    first_grid: Volume,
    second_grid: Volume | None = None,
) -> npt.NDArray[np.float32]:
    """Compose two fields: ``x -> x + u1(x) -> (x + u1(x)) + u2(x + u1(x))``.

    Args:
        first: ``u1`` on ``first_grid`` (e.g. fixed -> intermediate).
        second: ``u2`` on ``second_grid`` (e.g. intermediate -> moving); defaults to
            ``first_grid``.
        first_grid: grid of ``u1`` and of the result.
        second_grid: grid of ``u2``.

    Returns:
        ``[k, j, i, 3]`` float32 LPS mm field on ``first_grid`` mapping a first-grid point
        straight to the final space.

    Raises:
        GeometryError: if a field does not lie on its grid.
    """
    second_grid = first_grid if second_grid is None else second_grid
    check_displacement(first, first_grid)
    check_displacement(second, second_grid)
    source = _as_tensor(second)
    out = np.empty(first.shape, dtype=np.float32)
    for k0, k1 in _slabs(first_grid):
        points = grid_points_lps(first_grid, k0, k1) + first[k0:k1]
        out[k0:k1] = first[k0:k1] + _sample_field(source, second_grid, points)
    return out


def invert_displacement(
    displacement: npt.NDArray[np.floating],
    grid: Volume,
    *,
    output_grid: Volume | None = None,
    iterations: int = 50,
    tolerance_mm: float = 1e-3,
) -> npt.NDArray[np.float32]:
    """Invert ``x -> x + u(x)`` by fixed-point iteration.

    The inverse ``v`` satisfies ``y + v(y) + u(y + v(y)) = y``, so it is iterated as
    ``v <- -u(y + v)`` starting from ``v = -u(y)``. This converges when the deformation is a
    contraction-perturbed identity (``|grad u| < 1``), i.e. for any fold-free, moderate
    registration result; large affine parts converge more slowly.

    Args:
        displacement: ``[k, j, i, 3]`` LPS mm field ``u`` on ``grid`` (fixed -> moving).
        grid: the grid of ``u`` (fixed space).
        output_grid: where to lay the inverse (moving space, e.g. the case grid when ``u``
            maps a template to a case); defaults to ``grid``.
        iterations: maximum number of fixed-point iterations.
        tolerance_mm: stop when the largest update is below this (LPS mm).

    Returns:
        ``[k, j, i, 3]`` float32 LPS mm field on ``output_grid``: moving point ``y`` maps to
        fixed point ``y + v(y)``.

    Raises:
        GeometryError: if ``displacement`` does not lie on ``grid``.
    """
    check_displacement(displacement, grid)
    output_grid = grid if output_grid is None else output_grid
    source = _as_tensor(displacement)
    inverse = np.empty((*output_grid.shape_kji, 3), dtype=np.float32)
    for k0, k1 in _slabs(output_grid):
        points = grid_points_lps(output_grid, k0, k1)
        current = -_sample_field(source, grid, points)
        for _ in range(iterations):
            updated = -_sample_field(source, grid, points + current)
            change = float(np.max(np.abs(updated - current))) if updated.size else 0.0
            current = updated
            if change < tolerance_mm:
                break
        inverse[k0:k1] = current
    return inverse


def affine_displacement(
    affine_lps: npt.NDArray[np.floating], grid: Volume
) -> npt.NDArray[np.float32]:
    """The field ``u(x) = T(x) - x`` of a 4x4 LPS mm affine transform ``T`` on ``grid``."""
    matrix = np.asarray(affine_lps, dtype=np.float64)
    out = np.empty((*grid.shape_kji, 3), dtype=np.float32)
    for k0, k1 in _slabs(grid):
        points = grid_points_lps(grid, k0, k1)
        out[k0:k1] = points @ (matrix[:3, :3] - np.eye(3)).T + matrix[:3, 3]
    return out
