"""Resampling with SimpleITK: to isotropic spacing, or onto another image's grid.

The paper resamples both CTs to 1 mm isotropic before registration (Chassagnon et al., Radiology
2021, "Elastic Registration"); the spacing is configurable here. Images use linear (or B-spline)
interpolation; masks and label maps must use ``"nearest"``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import SimpleITK as sitk

from inference.volume import Volume

ResampleInterpolation = Literal["linear", "nearest", "bspline"]

_SITK_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


def _interpolator(interpolation: str) -> int:
    if interpolation not in _SITK_INTERPOLATORS:
        raise ValueError(
            f"interpolation must be one of {sorted(_SITK_INTERPOLATORS)}, got {interpolation!r}"
        )
    return int(_SITK_INTERPOLATORS[interpolation])


def _default(volume: Volume, default_value: float | None) -> float:
    if default_value is not None:
        return float(default_value)
    return float(np.min(volume.array)) if volume.array.size else 0.0


def resample_isotropic(
    volume: Volume,
    spacing_mm: float = 1.0,
    *,
    interpolation: ResampleInterpolation = "linear",
    default_value: float | None = None,
) -> Volume:
    """Resample to a cubic voxel of ``spacing_mm`` over the same physical extent.

    The origin (centre of the first voxel) and the direction are kept; the number of voxels per
    axis is ``round((n - 1) * old_spacing / spacing_mm) + 1`` so the last voxel centre stays
    within half a new voxel of the old one.

    Args:
        volume: any 3D volume.
        spacing_mm: new spacing along i, j and k (mm).
        interpolation: ``"linear"`` / ``"bspline"`` for images, ``"nearest"`` for masks.
        default_value: value outside the input; ``None`` means its minimum.

    Returns:
        A Volume with the input's dtype.

    Raises:
        ValueError: if ``spacing_mm`` is not positive or the interpolation is unknown.
    """
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    size_ijk = [
        max(1, round((n - 1) * s / spacing_mm) + 1)
        for n, s in zip(volume.shape_kji[::-1], volume.spacing_mm, strict=True)
    ]
    image = volume.to_sitk()
    resampled = sitk.Resample(
        image,
        [int(n) for n in size_ijk],
        sitk.Transform(),
        _interpolator(interpolation),
        image.GetOrigin(),
        (float(spacing_mm),) * 3,
        image.GetDirection(),
        _default(volume, default_value),
        image.GetPixelID(),
    )
    return Volume.from_sitk(resampled)


def resample_to_grid(
    volume: Volume,
    grid: Volume,
    *,
    interpolation: ResampleInterpolation = "linear",
    default_value: float | None = None,
) -> Volume:
    """Resample ``volume`` onto ``grid``'s voxels (identity transform, physical LPS space).

    Used to bring a user-supplied mask onto a resampled image grid (``"nearest"``).

    Returns:
        A Volume on ``grid`` with the input's dtype.

    Raises:
        ValueError: if the interpolation is unknown.
    """
    if volume.same_grid(grid):
        return volume
    reference = grid.to_sitk()
    resampled = sitk.Resample(
        volume.to_sitk(),
        reference,
        sitk.Transform(),
        _interpolator(interpolation),
        _default(volume, default_value),
    )
    return Volume.from_sitk(resampled)


def mask_box(mask: Volume, *, margin_mm: float = 10.0) -> tuple[slice, slice, slice]:
    """The ``[k, j, i]`` bounding box of ``mask != 0`` plus ``margin_mm``, clipped to the grid.

    Raises:
        ValueError: if the mask is empty.
    """
    nonzero = np.nonzero(mask.array)
    if nonzero[0].size == 0:
        raise ValueError("mask is empty")
    spacing_kji = mask.spacing_mm[::-1]
    slices = []
    for axis, n in enumerate(mask.shape_kji):
        pad = math.ceil(margin_mm / spacing_kji[axis])
        lo = max(0, int(nonzero[axis].min()) - pad)
        hi = min(n, int(nonzero[axis].max()) + pad + 1)
        slices.append(slice(lo, hi))
    return (slices[0], slices[1], slices[2])


def crop_to_mask(
    volume: Volume, mask: Volume, *, margin_mm: float = 10.0
) -> tuple[Volume, tuple[slice, slice, slice]]:
    """Crop a volume to the bounding box of ``mask`` (same grid) plus ``margin_mm``.

    Returns:
        The cropped Volume (origin moved accordingly) and the ``[k, j, i]`` slices used, so the
        same crop can be applied to other volumes on the grid (:meth:`Volume.crop`).

    Raises:
        ValueError: if the mask is empty or not on the volume's grid.
    """
    if not mask.same_grid(volume):
        raise ValueError("mask must lie on the volume's grid")
    box = mask_box(mask, margin_mm=margin_mm)
    return volume.crop(box), box


def dilate_mask(mask: Volume, radius_mm: float) -> Volume:
    """Binary dilation of ``mask != 0`` by a box of half-width ``radius_mm`` along each axis.

    A box (not a ball) is enough for cost-function regions and is fast on 1 mm CT.

    Returns:
        A uint8 0/1 Volume on the mask's grid.
    """
    import torch
    import torch.nn.functional as F

    inside = torch.from_numpy((np.asarray(mask.array) != 0).astype(np.float32))[None, None]
    radius_kji = [round(radius_mm / s) for s in mask.spacing_mm[::-1]]
    with torch.no_grad():
        # A box is separable: three 1D max-pools instead of one (2r+1)^3 window.
        for axis, r in enumerate(radius_kji):
            if r > 0:
                kernel = [1, 1, 1]
                padding = [0, 0, 0]
                kernel[axis], padding[axis] = 2 * r + 1, r
                inside = F.max_pool3d(inside, tuple(kernel), stride=1, padding=tuple(padding))
    return mask.with_array(inside[0, 0].numpy().astype(np.uint8))
