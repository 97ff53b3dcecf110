"""Overlap metrics between masks: Dice (3D and per slice) and volume agreement.

Dice similarity coefficient, as in Chassagnon et al. 2020: ``DSC = 2 |A ∩ B| / (|A| + |B|)``.

**Empty-empty rule.** When both masks are empty the ratio is ``0 / 0``. By default the result is
``NaN`` ("undefined": nothing to agree on, so the slice or case should be left out of a median),
which is what the paper's per-slice medians over annotated slices need. Pass
``empty_value=1.0`` to count two empty masks as perfect agreement instead (e.g. to reward an
engine for finding no ILD in a healthy slice). One empty mask and one non-empty gives ``0.0``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from inference.volume import GeometryError, Volume

MaskLike = Volume | npt.NDArray[np.generic]


def _mask(value: MaskLike, label: int | None) -> npt.NDArray[np.bool_]:
    array = value.array if isinstance(value, Volume) else np.asarray(value)
    if label is None:
        return array.astype(bool, copy=False)
    return np.asarray(array == label)


def _pair(
    a: MaskLike, b: MaskLike, label: int | None
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    if isinstance(a, Volume) and isinstance(b, Volume) and not a.same_grid(b):
        raise GeometryError("the two masks are not on the same grid")
    mask_a, mask_b = _mask(a, label), _mask(b, label)
    if mask_a.shape != mask_b.shape:
        raise GeometryError(f"mask shapes differ: {mask_a.shape} vs {mask_b.shape}")
    return mask_a, mask_b


def dice(
    a: MaskLike, b: MaskLike, *, label: int | None = None, empty_value: float = math.nan
) -> float:
    """Dice coefficient of two masks of the same shape.

    Args:
        a: mask (``Volume`` or array, any shape); non-zero is foreground unless ``label`` is given.
        b: mask of the same shape (and grid, when both are ``Volume``).
        label: compare ``a == label`` with ``b == label`` instead of non-zero voxels.
        empty_value: returned when both masks are empty (default ``NaN``; ``1.0`` to count
            empty-empty as agreement).

    Raises:
        GeometryError: if the shapes (or the grids of two ``Volume``) differ.
    """
    mask_a, mask_b = _pair(a, b, label)
    size_a, size_b = int(np.count_nonzero(mask_a)), int(np.count_nonzero(mask_b))
    if size_a + size_b == 0:
        return float(empty_value)
    overlap = int(np.count_nonzero(mask_a & mask_b))
    return 2.0 * overlap / (size_a + size_b)


def dice_per_slice(
    a: MaskLike, b: MaskLike, *, label: int | None = None, empty_value: float = math.nan
) -> npt.NDArray[np.float64]:
    """Dice of every axial slice ``k`` of two 3D masks ``[k, j, i]``.

    Returns:
        ``float64`` array of length ``n_k``; slices empty in both masks get ``empty_value``
        (``NaN`` by default, so ``np.nanmedian`` gives the median over slices with something in
        them).

    Raises:
        GeometryError: if the shapes differ or the masks are not 3D.
    """
    mask_a, mask_b = _pair(a, b, label)
    if mask_a.ndim != 3:
        raise GeometryError(f"per-slice Dice needs 3D masks [k, j, i], got {mask_a.shape}")
    size_a = np.count_nonzero(mask_a, axis=(1, 2)).astype(np.float64)
    size_b = np.count_nonzero(mask_b, axis=(1, 2)).astype(np.float64)
    overlap = np.count_nonzero(mask_a & mask_b, axis=(1, 2)).astype(np.float64)
    total = size_a + size_b
    result = np.full(total.shape, float(empty_value))
    nonempty = total > 0
    result[nonempty] = 2.0 * overlap[nonempty] / total[nonempty]
    return result


def median_slice_dice(
    prediction: MaskLike,
    truth: MaskLike,
    *,
    label: int | None = None,
) -> float:
    """Median per-slice Dice over the slices where ``truth`` has foreground (``NaN`` if none).

    This is the figure Chassagnon et al. 2020 report for ILD contours (median over annotated
    slices that show disease).
    """
    per_slice = dice_per_slice(prediction, truth, label=label)
    truth_mask = _mask(truth, label)
    has_truth = np.count_nonzero(truth_mask, axis=(1, 2)) > 0
    if not has_truth.any():
        return math.nan
    return float(np.median(per_slice[has_truth]))


def volume_difference_pct(
    prediction: MaskLike, truth: MaskLike, *, label: int | None = None
) -> float:
    """Signed volume difference ``(|P| - |T|) / |T| * 100`` (``NaN`` when the truth is empty)."""
    mask_p, mask_t = _pair(prediction, truth, label)
    size_t = int(np.count_nonzero(mask_t))
    if size_t == 0:
        return math.nan
    return 100.0 * (int(np.count_nonzero(mask_p)) - size_t) / size_t
