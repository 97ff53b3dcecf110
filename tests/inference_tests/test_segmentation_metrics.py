"""Dice and friends: the values, the empty-empty rule, the per-slice medians."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.segmentation.metrics import (
    dice,
    dice_per_slice,
    median_slice_dice,
    volume_difference_pct,
)
from inference.volume import GeometryError, Volume


def _masks() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[0, :2, :2] = True  # 4 voxels
    b[0, :2, :1] = True  # 2 voxels, inside a
    a[1, 0, 0] = True  # slice 1: a only
    return a, b


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 1, 0, 0], [1, 1, 0, 0], 1.0),
        ([1, 1, 0, 0], [0, 0, 1, 1], 0.0),
        ([1, 1, 1, 1], [1, 1, 0, 0], 2 * 2 / 6),
        ([1, 0, 0, 0], [0, 0, 0, 0], 0.0),
    ],
)
def test_dice_values(a: list[int], b: list[int], expected: float) -> None:
    assert dice(np.array(a), np.array(b)) == pytest.approx(expected)


def test_empty_empty_is_nan_by_default_and_can_be_one() -> None:
    empty = np.zeros((2, 2, 2), bool)
    assert math.isnan(dice(empty, empty))
    assert dice(empty, empty, empty_value=1.0) == 1.0


def test_label_compares_one_class() -> None:
    a = np.array([[[0, 1, 2, 2]]])
    b = np.array([[[0, 1, 1, 2]]])
    assert dice(a, b, label=2) == pytest.approx(2 * 1 / 3)
    assert dice(a, b) == 1.0  # non-zero voxels agree


def test_per_slice_dice_marks_empty_slices_nan() -> None:
    a, b = _masks()
    per_slice = dice_per_slice(a, b)
    assert per_slice[0] == pytest.approx(2 * 2 / 6)
    assert per_slice[1] == 0.0
    assert math.isnan(per_slice[2])
    assert dice_per_slice(a, b, empty_value=1.0)[2] == 1.0


def test_median_slice_dice_uses_the_slices_where_truth_has_foreground() -> None:
    a, b = _masks()
    # Truth b has foreground in slice 0 only.
    assert median_slice_dice(a, b) == pytest.approx(2 * 2 / 6)
    assert math.isnan(median_slice_dice(a, np.zeros_like(b)))


def test_volume_difference() -> None:
    a, b = _masks()
    assert volume_difference_pct(a, b) == pytest.approx(100.0 * (5 - 2) / 2)


def test_volumes_on_different_grids_are_refused() -> None:
    a = Volume(np.zeros((2, 2, 2), np.uint8), (1.0, 1.0, 1.0))
    b = Volume(np.zeros((2, 2, 2), np.uint8), (1.0, 1.0, 2.0))
    with pytest.raises(GeometryError):
        dice(a, b)
    with pytest.raises(GeometryError):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))
