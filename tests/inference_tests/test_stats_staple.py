"""STAPLE consensus on synthetic raters whose sensitivity and specificity are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference.stats.agreement import dice
from inference.stats.staple import staple
from inference.volume import GeometryError, Volume

# (sensitivity, specificity) of each synthetic rater
RATERS = [(0.90, 0.98), (0.80, 0.99), (0.95, 0.96)]


def _truth() -> np.ndarray:
    k, j, i = np.ogrid[:24, :40, :40]
    return (k - 12) ** 2 + (j - 20) ** 2 + (i - 20) ** 2 <= 10**2


def _noisy_raters(truth: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for sensitivity, specificity in RATERS:
        keep = rng.random(truth.shape) < sensitivity  # foreground found
        false_alarm = rng.random(truth.shape) > specificity  # background called disease
        masks.append(np.where(truth, keep, false_alarm))
    return masks


def test_staple_recovers_known_rater_performance() -> None:
    truth = _truth()
    masks = _noisy_raters(truth)
    result = staple(masks)
    for (sensitivity, specificity), est_sens, est_spec in zip(
        RATERS, result.sensitivity, result.specificity, strict=True
    ):
        assert est_sens == pytest.approx(sensitivity, abs=0.02)
        assert est_spec == pytest.approx(specificity, abs=0.01)
    # the consensus is closer to the truth than any single rater
    consensus_dice = dice(result.consensus, truth)
    assert consensus_dice > max(dice(mask, truth) for mask in masks)
    assert consensus_dice > 0.97
    assert result.probability.shape == truth.shape
    assert result.probability.min() >= 0.0 and result.probability.max() <= 1.0
    np.testing.assert_array_equal(result.consensus, result.probability >= 0.5)


def test_staple_of_identical_masks_is_the_mask() -> None:
    truth = _truth()
    result = staple([truth, truth, truth])
    np.testing.assert_array_equal(result.consensus, truth)
    assert result.sensitivity == pytest.approx((1.0, 1.0, 1.0))
    assert result.specificity == pytest.approx((1.0, 1.0, 1.0))


def test_staple_threshold_controls_the_consensus() -> None:
    # voxels where the raters disagree get probabilities near 0.05–0.07 or 0.95–0.97
    masks = _noisy_raters(_truth(), seed=1)
    loose, default, strict = (staple(masks, threshold=t) for t in (0.06, 0.5, 0.99))
    assert loose.consensus.sum() > default.consensus.sum() > strict.consensus.sum()
    for result, threshold in ((loose, 0.06), (strict, 0.99)):
        np.testing.assert_array_equal(result.consensus, result.probability >= threshold)


def test_staple_keeps_volume_geometry() -> None:
    truth = _truth().astype(np.uint8)
    volumes = [
        Volume(mask.astype(np.uint8), (0.7, 0.7, 1.25), (-150.0, -170.0, -300.0))
        for mask in _noisy_raters(truth > 0)
    ]
    result = staple(volumes)
    consensus = result.consensus_volume()
    assert consensus.spacing_mm == (0.7, 0.7, 1.25)
    assert consensus.origin_lps_mm == (-150.0, -170.0, -300.0)
    assert result.probability_volume().array.dtype == np.float64
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["shape"] == [24, 40, 40]


def test_staple_on_arrays_has_no_geometry() -> None:
    masks = _noisy_raters(_truth())
    with pytest.raises(GeometryError, match="geometry"):
        staple(masks).consensus_volume()


def test_staple_rejects_bad_input() -> None:
    truth = _truth()
    with pytest.raises(ValueError, match="at least two"):
        staple([truth])
    with pytest.raises(ValueError, match="empty"):
        staple([np.zeros((4, 4, 4)), np.zeros((4, 4, 4))])
    with pytest.raises(GeometryError, match="shapes"):
        staple([truth, truth[:-1]])
    with pytest.raises(GeometryError, match="same grid"):
        staple(
            [Volume(truth.astype(np.uint8)), Volume(truth.astype(np.uint8), spacing_mm=(2, 1, 1))]
        )
    with pytest.raises(GeometryError, match="mix"):
        staple([Volume(truth.astype(np.uint8)), truth])
