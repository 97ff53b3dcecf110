"""The apex → right dome slice protocol on small synthetic lung masks (no Django)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.protocols import (
    LEFT_LUNG,
    RIGHT_LUNG,
    ProtocolError,
    equally_spaced_slices,
    equally_spaced_targets,
    lung_range,
    nearest_slices,
)
from inference.volume import GeometryError, Volume

SPACING = (2.0, 2.0, 2.5)  # i, j, k mm


def synthetic_lungs(
    *, apex_z: float = 150.0, right_dome_z: float = 40.0, left_dome_z: float = 25.0, flip_k=False
) -> Volume:
    """Two dome-floored lungs: floor = dome - r²/60, roof = apex - r²/25 (LPS z mm, k up)."""
    nk, nj, ni = 80, 64, 96
    z = np.arange(nk) * SPACING[2]  # origin z = 0, +z to the head
    y = (np.arange(nj) - nj / 2) * SPACING[1]
    x = (np.arange(ni) - ni / 2) * SPACING[0]
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    labels = np.zeros((nk, nj, ni), dtype=np.uint8)
    for label, cx, dome in ((RIGHT_LUNG, -45.0, right_dome_z), (LEFT_LUNG, 45.0, left_dome_z)):
        r2 = (xx - cx) ** 2 + (yy / 1.4) ** 2
        inside = (r2 < 36.0**2) & (zz >= dome - r2 / 60.0) & (zz <= apex_z - r2 / 25.0)
        labels[inside] = label
    direction = np.eye(3)
    origin = (float(x[0]), float(y[0]), 0.0)
    if flip_k:  # slices stored head first
        labels = labels[::-1].copy()
        direction = np.diag([1.0, 1.0, -1.0])
        origin = (float(x[0]), float(y[0]), float(z[-1]))
    return Volume(labels, SPACING, origin, direction)


def heights_of(volume: Volume) -> list[float]:
    k = np.arange(volume.shape_kji[0])
    return volume.index_to_lps(np.stack([0 * k, 0 * k, k], axis=1))[:, 2].tolist()


@pytest.mark.parametrize("flip_k", [False, True])
def test_it_finds_the_apex_and_the_right_dome(flip_k):
    found = lung_range(synthetic_lungs(flip_k=flip_k))
    assert found.apex_z_mm == pytest.approx(150.0, abs=SPACING[2])
    # The right dome (40 mm), not the lower left one (25 mm).
    assert found.dome_z_mm == pytest.approx(40.0, abs=2 * SPACING[2])


def test_it_picks_twenty_slices_apex_first_equally_spaced():
    lungs = synthetic_lungs()
    heights = heights_of(lungs)
    selection = equally_spaced_slices(lungs, heights, 20)
    chosen = [heights[i] for i in selection.indices]
    assert len(chosen) == 20
    assert chosen[0] == pytest.approx(selection.lung_range.apex_z_mm, abs=SPACING[2])
    assert chosen[-1] == pytest.approx(selection.lung_range.dome_z_mm, abs=SPACING[2])
    steps = np.diff(chosen)
    assert np.all(steps < 0)
    assert np.ptp(steps) <= SPACING[2] + 1e-6


def test_it_drops_repeats_when_the_range_has_fewer_slices_than_asked():
    assert nearest_slices([0.0, 5.0, 10.0], equally_spaced_targets(10.0, 0.0, 7)) == [2, 1, 0]


@pytest.mark.parametrize(
    ("targets", "expected"),
    [([12.0, 1.0], [2, 0]), ([4.9, 5.1], [1]), ([-100.0], [0])],
)
def test_nearest_slices_table(targets, expected):
    assert nearest_slices([0.0, 5.0, 10.0], targets) == expected


def test_it_refuses_an_empty_mask():
    with pytest.raises(ProtocolError, match="no lung"):
        lung_range(Volume(np.zeros((4, 8, 8), dtype=np.uint8)))


def test_it_refuses_fewer_than_two_slices():
    with pytest.raises(ProtocolError):
        equally_spaced_targets(10.0, 0.0, 1)


def test_it_refuses_non_axial_slices():
    sagittal = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with pytest.raises(GeometryError, match="axial"):
        lung_range(Volume(np.ones((4, 8, 8), dtype=np.uint8), direction=sagittal))
