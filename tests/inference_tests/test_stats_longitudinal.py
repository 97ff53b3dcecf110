"""Functional worsening, log-Jacobian by group and vs PFT changes, extent-change criterion."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from inference.stats.correlation import spearman
from inference.stats.longitudinal import (
    classify_functional,
    compare_mean_log_jacobian,
    extent_change_criterion,
    functional_change,
    functional_worsening,
    pft_change_correlations,
)

NAN = math.nan


@pytest.mark.parametrize(
    ("fvc_before", "fvc_after", "dlco_before", "dlco_after", "expected"),
    [
        (80, 70, 60, 60, True),  # FVC drop exactly 10 points
        (80, 71, 60, 60, False),  # 9 points
        (80, 80, 60, 45, True),  # DLCO drop exactly 15 points
        (80, 80, 60, 46, False),  # 14 points
        (64.1, 54.1, 60, 60, True),  # 64.1 − 54.1 is 9.999999999999993 in binary
        (60, 60, 30.4, 15.4, True),  # 30.4 − 15.4 is 14.999999999999998
        (70, 85, 40, 60, False),  # improvement
        (100, 89, 70, 54, True),  # both
        (80, 60, None, None, True),  # one criterion met is enough, DLCO missing
        (80, 80, NAN, 40, False),  # DLCO missing, decided on FVC (paper's practice)
        (None, None, 60, 40, True),
        (None, None, None, None, None),  # nothing measured: cannot classify
    ],
)
def test_functional_worsening(
    fvc_before: float | None,
    fvc_after: float | None,
    dlco_before: float | None,
    dlco_after: float | None,
    expected: bool | None,
) -> None:
    assert functional_worsening(fvc_before, fvc_after, dlco_before, dlco_after) is expected


def test_undetermined_policy_needs_both_pairs_to_call_stability() -> None:
    assert functional_worsening(80, 80, None, 40, missing="undetermined") is None
    assert functional_worsening(80, 80, 60, 60, missing="undetermined") is False
    assert functional_worsening(80, 65, None, None, missing="undetermined") is True


def test_functional_change_reports_each_criterion() -> None:
    change = functional_change(91.0, 83.0, 63.0, 47.0)
    assert (change.fvc_change, change.dlco_change) == (-8.0, -16.0)
    assert (change.fvc_worsened, change.dlco_worsened, change.worsening) == (False, True, True)
    missing = functional_change(91.0, 83.0, None, 47.0)
    assert missing.dlco_worsened is None
    assert json.loads(json.dumps(missing.to_dict(), allow_nan=False))["dlco_change"] is None


def test_functional_worsening_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="fvc_before"):
        functional_worsening(-5, 80, 60, 60)
    with pytest.raises(ValueError, match="missing"):
        functional_worsening(80, 80, 60, 60, missing="drop")  # type: ignore[arg-type]


def test_classify_functional_is_the_scalar_rule_per_patient() -> None:
    result = classify_functional(
        [80, 80, np.nan, 90], [70, 79, np.nan, 90], [60, 60, np.nan, 60], [60, 60, np.nan, 44]
    )
    assert result == [True, False, None, True]
    with pytest.raises(ValueError, match="length"):
        classify_functional([80], [70, 60], [60], [60])


# -------------------------------------------------------------------------- log-Jacobian


def test_two_groups_of_mean_log_jacobian_use_mann_whitney() -> None:
    rng = np.random.default_rng(0)
    worsening, stable = rng.normal(0.05, 0.06, 30), rng.normal(0.01, 0.06, 40)
    values = np.concatenate([worsening, stable, [0.2]])
    labels: list[str | None] = ["worsening"] * 30 + ["stability"] * 40 + [None]
    row = compare_mean_log_jacobian(values, labels)
    assert row.label == "Mean log-Jacobian"
    assert list(row.summaries) == ["worsening", "stability"]
    assert row.test == "mann-whitney"
    reference = scipy.stats.mannwhitneyu(worsening, stable, alternative="two-sided")
    assert row.p_value == pytest.approx(reference.pvalue)
    assert row.summaries["worsening"].median == pytest.approx(np.median(worsening))


def test_three_groups_of_mean_log_jacobian_use_kruskal_wallis_in_given_order() -> None:
    values = [0.05, 0.10, -0.01, 0.01, 0.04, -0.07, -0.08, -0.15, 0.0]
    labels = ["w", "w", "w", "s", "s", "s", "i", "i", "i"]
    row = compare_mean_log_jacobian(values, labels, order=["w", "s", "i"])
    assert list(row.summaries) == ["w", "s", "i"]
    assert row.test == "kruskal-wallis"
    expected = scipy.stats.kruskal(values[:3], values[3:6], values[6:]).pvalue
    assert row.p_value == pytest.approx(expected)
    with pytest.raises(ValueError, match="not in order"):
        compare_mean_log_jacobian(values, labels, order=["w", "s"])


def test_pft_change_correlations_use_after_minus_before() -> None:
    log_jac = np.array([-0.1, -0.05, 0.0, 0.05, 0.1, 0.15])
    before: dict[str, list[float]] = {
        "FVC": [90, 90, 90, 90, 90, 90],
        "DLCO": [60, 60, np.nan, 60, 60, 60],
    }
    # FVC falls more as the log-Jacobian rises: ρ = −1; DLCO change random, one missing
    after: dict[str, list[float]] = {
        "FVC": [95, 92, 90, 85, 80, 70],
        "DLCO": [50, 70, 55, 58, 61, 40],
    }
    table = pft_change_correlations(log_jac, before, after)
    assert table["FVC"].rho == -1.0
    dlco_change = np.array(after["DLCO"], float) - np.array(before["DLCO"], float)
    assert table["DLCO"] == spearman(log_jac, dlco_change)
    assert table["DLCO"].n_dropped == 1
    with pytest.raises(ValueError, match="different PFTs"):
        pft_change_correlations(log_jac, before, {"FVC": after["FVC"]})


# ------------------------------------------------------------------ extent-change criterion


def test_extent_change_criterion_fits_on_training_and_scores_the_test_set() -> None:
    # training: negatives −2, −1, 0.5, 1.0; positives 0.82, 0.9, 2, 3. Youden J at each cut:
    # ≥3 .25, ≥2 .5, ≥1.0 .25, ≥0.9 .5, ≥0.82 .75 (sens 4/4, spec 3/4), ≥0.5 .5 → cut 0.82
    train_change = [-2.0, -1.0, 0.5, 1.0, 0.82, 0.9, 2.0, 3.0]
    train_worsened = [0, 0, 0, 0, 1, 1, 1, 1]
    test_change = [0.9, 4.0, 0.1, -3.0, 1.5, 0.0]
    test_worsened = [1, 1, 1, 0, 0, 0]
    result = extent_change_criterion(train_change, train_worsened, test_change, test_worsened)
    assert result.threshold_pct == 0.82
    assert (result.training.sensitivity, result.training.specificity) == (1.0, 0.75)
    # test predictions: 0.9 ✓, 4.0 ✓, 0.1 ✗ (FN), −3 ✓ TN, 1.5 ✗ FP, 0.0 ✓ TN
    counts = result.test.confusion
    assert (counts.tp, counts.fn, counts.tn, counts.fp) == (2, 1, 2, 1)
    assert result.test.accuracy.estimate == pytest.approx(4 / 6)
    payload = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert payload["threshold_pct"] == 0.82
    assert payload["test"]["sensitivity"]["successes"] == 2
