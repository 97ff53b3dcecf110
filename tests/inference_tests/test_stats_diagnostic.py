"""Confusion counts, Clopper-Pearson CIs, sensitivity … NPV, ROC curve, AUC and cut-off."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from inference.stats.diagnostic import (
    Confusion,
    Proportion,
    clopper_pearson,
    confusion,
    diagnostic_metrics,
    metrics_from_confusion,
    roc_curve,
    roc_threshold,
)


def test_confusion_hand_counted() -> None:
    truth = [1, 1, 1, 0, 0, 0, 0]
    pred = [1, 0, 1, 1, 0, 0, 0]
    assert confusion(truth, pred) == Confusion(tp=2, fp=1, tn=3, fn=1)
    assert confusion(np.array(truth, bool), np.array(pred, bool)).total == 7


def test_confusion_rejects_non_binary_input() -> None:
    with pytest.raises(ValueError, match="0/1"):
        confusion([1, 2], [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        confusion([1.0, math.nan], [1, 0])
    with pytest.raises(ValueError, match="length"):
        confusion([1, 0, 1], [1, 0])


# ------------------------------------------------------------------------- Clopper-Pearson


def test_clopper_pearson_closed_forms_at_the_edges() -> None:
    # k = 0: upper bound solves (1 − p)^n = α/2; k = n: lower bound solves p^n = α/2
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))
    assert clopper_pearson(1, 1) == pytest.approx((0.025, 1.0))


@pytest.mark.parametrize("total", [1, 5, 18, 40, 212])
def test_clopper_pearson_matches_statsmodels(total: int) -> None:
    # statsmodels is a dev-only cross-check (pyproject dev extra), never a library dependency
    proportion_confint = pytest.importorskip("statsmodels.stats.proportion").proportion_confint
    for successes in sorted({0, 1, total // 3, total // 2, total - 1, total}):
        for confidence in (0.95, 0.9):
            expected = proportion_confint(successes, total, alpha=1 - confidence, method="beta")
            assert clopper_pearson(successes, total, confidence) == pytest.approx(
                expected, abs=1e-10
            )


def test_clopper_pearson_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson(1, 4, confidence=1.0)
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))


# Every proportion the 2021 paper reports, with its whole-percent 95 % CI.
PAPER_PROPORTIONS = [
    (16, 18, 65, 99),
    (17, 22, 55, 92),
    (33, 40, 67, 93),
    (16, 21, 53, 92),
    (17, 19, 67, 99),
    (11, 14, 49, 95),
    # the paper prints "60%, 93%"; the exact lower bound is 60.65 %, so it was truncated there
    # (statsmodels' method="beta" agrees with us); every other bound rounds as printed
    (21, 26, 61, 93),
    (32, 40, 64, 91),
    (11, 16, 41, 89),
    (21, 24, 68, 97),
    (11, 18, 36, 83),
    (16, 22, 50, 89),
    (27, 40, 51, 81),
    (10, 14, 42, 92),
    (17, 26, 44, 83),
]


@pytest.mark.parametrize(("k", "n", "low_pct", "high_pct"), PAPER_PROPORTIONS)
def test_clopper_pearson_reproduces_the_2021_paper(
    k: int, n: int, low_pct: int, high_pct: int
) -> None:
    low, high = clopper_pearson(k, n)
    assert (round(100 * low), round(100 * high)) == (low_pct, high_pct)


def test_diagnostic_metrics_reproduce_the_functional_classifier() -> None:
    # 16 TP, 17 TN, 5 FP, 2 FN (functional worsening, test set of 40)
    truth = [1] * 16 + [0] * 17 + [0] * 5 + [1] * 2
    pred = [1] * 16 + [0] * 17 + [1] * 5 + [0] * 2
    metrics = diagnostic_metrics(truth, pred)
    assert metrics.confusion == Confusion(tp=16, fp=5, tn=17, fn=2)
    assert metrics.sensitivity.format() == "89% (16 of 18; 95% CI: 65%, 99%)"
    assert metrics.specificity.format() == "77% (17 of 22; 95% CI: 55%, 92%)"
    assert metrics.accuracy.format() == "83% (33 of 40; 95% CI: 67%, 93%)"
    assert metrics.ppv.format() == "76% (16 of 21; 95% CI: 53%, 92%)"
    assert metrics.npv.format() == "89% (17 of 19; 95% CI: 67%, 99%)"


def test_undefined_proportions_are_nan_and_serialise_as_null() -> None:
    metrics = metrics_from_confusion(Confusion(tp=0, fp=0, tn=7, fn=3))
    assert math.isnan(metrics.ppv.estimate) and metrics.ppv.total == 0
    assert metrics.sensitivity == Proportion.of(0, 3)
    payload = json.loads(json.dumps(metrics.to_dict(), allow_nan=False))
    assert payload["ppv"]["estimate"] is None
    assert payload["confusion"] == {"tp": 0, "fp": 0, "tn": 7, "fn": 3}


# ------------------------------------------------------------------------------------ ROC


def test_roc_curve_hand_computed() -> None:
    curve = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert curve.thresholds.tolist() == [math.inf, 0.8, 0.4, 0.35, 0.1]
    assert curve.tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert curve.fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert curve.auc == pytest.approx(0.75)


def test_auc_equals_mann_whitney_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.normal(size=60) + labels, 1)  # ties across classes
    curve = roc_curve(scores, labels)
    u = scipy.stats.mannwhitneyu(scores[labels], scores[~labels]).statistic
    assert curve.auc == pytest.approx(u / (labels.sum() * (~labels).sum()))


def test_roc_threshold_youden_hand_computed() -> None:
    # negatives 1, 2, 4; positives 3, 5, 6, 7.  J at ≥7: .25, ≥6: .5, ≥5: .75, ≥4: .42, ≥3: .67
    scores = [1, 2, 4, 3, 5, 6, 7]
    labels = [0, 0, 0, 1, 1, 1, 1]
    fit = roc_threshold(scores, labels)
    assert fit.threshold == 5.0
    assert (fit.sensitivity, fit.specificity) == (0.75, 1.0)
    assert fit.youden_j == pytest.approx(0.75)
    assert fit.curve.auc == pytest.approx(11 / 12)
    assert fit.predict([4.9, 5.0, 8.0]).tolist() == [False, True, True]
    assert roc_threshold(scores, labels, criterion="closest_topleft").threshold == 5.0


def test_roc_threshold_ties_go_to_the_higher_threshold() -> None:
    # J = 0.5 at both 0.8 and 0.35
    assert roc_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]).threshold == 0.8


def test_roc_criteria_can_disagree() -> None:
    # one positive scores lowest (0); the others 5, 7, 8, 9, 10; negatives 1–4 and 6
    scores = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    labels = [1, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1]
    youden = roc_threshold(scores, labels)
    topleft = roc_threshold(scores, labels, criterion="closest_topleft")
    assert youden.threshold == 7.0  # sens 4/6, spec 5/5 → J .667
    assert topleft.threshold == 5.0  # sens 5/6, spec 4/5 → distance² .0678 < .111
    assert json.dumps(youden.to_dict(), allow_nan=False)


def test_roc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_curve([1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="finite"):
        roc_curve([1.0, math.nan], [1, 0])
