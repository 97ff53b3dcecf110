"""Classical engine on real CT (skipped when ../shared/data/real is absent).

No manual lung masks come with these scans, so the checks are anatomical: plausible volumes, two
lungs on the right sides, nothing outside the body or in the trachea, and agreement with the
voxel counts lungmask's R231 network gives on its own test slices.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from inference.segmentation import classical
from inference.segmentation.engines import SegmentationResult
from inference.volume import Volume

pytestmark = pytest.mark.real_data

RealData = Callable[[str], Path]


def _read(path: Path) -> Volume:
    imageio = pytest.importorskip("inference.imageio")
    volume: Volume = imageio.read_image(path)
    return volume


def _body(ct: Volume) -> np.ndarray:
    """Everything inside the skin (tissue above -500 HU, largest component, holes filled)."""
    tissue = np.asarray(ct.array, dtype=np.int32) > -500
    labels, _ = ndimage.label(tissue)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == np.argmax(sizes)
    return np.asarray(ndimage.binary_fill_holes(body, structure=np.ones((1, 3, 3), bool)))


def _x_mm(volume: Volume, mask: np.ndarray) -> float:
    k, j, i = np.nonzero(mask)
    return float(volume.index_to_lps(np.stack([i, j, k], -1))[:, 0].mean())


def _check_anatomy(ct: Volume, result: SegmentationResult) -> np.ndarray:
    """Assert what any right lung mask of a thorax satisfies; returns the body mask."""
    assert result.label_map.same_grid(ct)
    assert result.lungs_lr is not None
    lr = result.lungs_lr.array
    right_ml = np.count_nonzero(lr == 1) * ct.voxel_volume_ml
    left_ml = np.count_nonzero(lr == 2) * ct.voxel_volume_ml
    assert right_ml > 700 and left_ml > 500
    assert _x_mm(ct, lr == 1) < _x_mm(ct, lr == 2)  # LPS +x is the patient's left
    lungs = np.asarray(result.label_map.array) != 0
    # No lung outside the body, none touching the in-plane border (room air).
    body = _body(ct)
    assert not (lungs & ~body).any()
    assert not lungs[:, :, [0, -1]].any() and not lungs[:, [0, -1], :].any()
    # The lungs lie inside the thorax: their in-plane extent stays well inside the body's.
    body_x = np.flatnonzero(body.any(axis=(0, 1)))
    lung_x = np.flatnonzero(lungs.any(axis=(0, 1)))
    assert lung_x[0] > body_x[0] and lung_x[-1] < body_x[-1]
    return body


def test_popi_full_thorax(real_data: RealData) -> None:
    ct = _read(real_data("popi-00-ct"))
    result = classical.segment(ct)
    assert 3000.0 <= result.lung_ml <= 7000.0
    body = _check_anatomy(ct, result)
    # Trachea excluded: the midline air tube of the top slice is not lung.
    top = int(np.argmax([ct.index_to_lps([0, 0, k])[2] for k in range(ct.shape_kji[0])]))
    air = np.asarray(ct.array[top], dtype=np.int32) < -900
    blobs, _ = ndimage.label(air & body[top])
    assert blobs.max() >= 1
    assert not (result.label_map.array[top] > 0)[blobs > 0].any()
    # A healthy thorax: little ILD.
    assert result.extent_pct < 10.0


def test_lung1_thick_slices(real_data: RealData) -> None:
    ct = _read(real_data("pyradiomics-lung1") / "lung1_image.nrrd")
    result = classical.segment(ct)
    # The scan stops above the lung bases, hence a little under 3 L.
    assert 2000.0 <= result.lung_ml <= 7000.0
    _check_anatomy(ct, result)


def test_lungmask_slices_agree_with_r231_voxel_counts(real_data: RealData) -> None:
    ct = _read(real_data("lungmask-2slice"))
    lungs = classical.lung_mask(ct).array
    right, left = np.count_nonzero(lungs == 1), np.count_nonzero(lungs == 2)
    # lungmask R231 on these two slices: 64752 right-lung and 36536 left-lung voxels.
    assert right == pytest.approx(64752, rel=0.1)
    assert left == pytest.approx(36536, rel=0.12)
