"""Classifier performance: confusion counts, proportions with exact CIs, ROC and a cut-off.

As in Chassagnon et al. 2021 ("Depiction of Disease Worsening"): sensitivity, specificity,
accuracy, PPV and NPV, each as ``k of n`` with an exact Clopper-Pearson 95 % CI::

    low  = Beta⁻¹(α/2;     k,     n − k + 1)   (0 when k = 0)
    high = Beta⁻¹(1 − α/2; k + 1, n − k)       (1 when k = n)

e.g. sensitivity 16 of 18 → 89 % (95 % CI: 65 %, 99 %). A proportion with ``n = 0`` (no
predicted positives for the PPV, say) is undefined: estimate and bounds are NaN.

ROC: a case is called positive when ``score ≥ threshold``; higher scores mean "more likely
positive" (pass ``-score`` otherwise). The curve steps through every distinct score, from
``+inf`` (nobody positive) down to the smallest score (everybody positive). The AUC is the
trapezoidal area, equal to the Mann-Whitney ``U / (n_pos · n_neg)`` with ties counted half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from inference.stats._common import BoolArray, FloatArray, format_number, jsonable

ThresholdCriterion = Literal["youden", "closest_topleft"]


def _as_binary(values: npt.ArrayLike, name: str) -> BoolArray:
    array = np.atleast_1d(np.asarray(values))
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be boolean or 0/1, got dtype {array.dtype}")
    if not np.all(np.isin(array, (0, 1))):
        raise ValueError(f"{name} must hold only 0/1 (or booleans); NaN is not allowed")
    return np.asarray(array == 1)


# ------------------------------------------------------------------------------ proportions


def clopper_pearson(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided confidence interval of a binomial proportion.

    Args:
        successes: ``k``, with ``0 ≤ k ≤ total``.
        total: ``n`` trials; ``n = 0`` gives ``(NaN, NaN)``.
        confidence: two-sided level in ``(0, 1)``.

    Returns:
        ``(low, high)`` as fractions in ``[0, 1]``.

    Raises:
        ValueError: if the counts are negative, ``k > n`` or ``confidence`` is out of range.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if total < 0 or successes < 0 or successes > total:
        raise ValueError(f"need 0 <= successes <= total, got {successes} of {total}")
    if total == 0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low = (
        0.0
        if successes == 0
        else float(stats.beta.ppf(alpha / 2, successes, total - successes + 1))
    )
    high = (
        1.0
        if successes == total
        else float(stats.beta.ppf(1 - alpha / 2, successes + 1, total - successes))
    )
    return low, high


@dataclass(frozen=True)
class Proportion:
    """``successes`` of ``total`` with its exact CI (fractions, not percent)."""

    successes: int
    total: int
    estimate: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95

    @classmethod
    def of(cls, successes: int, total: int, confidence: float = 0.95) -> Proportion:
        """Build from counts (Clopper-Pearson CI). Raises ``ValueError`` as
        :func:`clopper_pearson`."""
        low, high = clopper_pearson(successes, total, confidence)
        estimate = successes / total if total else math.nan
        return cls(successes, total, estimate, low, high, confidence)

    def format(self) -> str:
        """``"89% (16 of 18; 95% CI: 65%, 99%)"`` — whole percents, as in the paper."""
        pct = [format_number(100 * v, 0) for v in (self.estimate, self.ci_low, self.ci_high)]
        level = format_number(100 * self.confidence, 0)
        return f"{pct[0]}% ({self.successes} of {self.total}; {level}% CI: {pct[1]}%, {pct[2]}%)"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self.__dict__)


# -------------------------------------------------------------------------------- confusion


@dataclass(frozen=True)
class Confusion:
    """Counts of a binary classification against a reference (positive = worsening, say)."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def to_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn}


def confusion(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> Confusion:
    """Confusion counts of predictions against the reference standard.

    Args:
        y_true: reference per patient, boolean or 0/1 (1 = positive).
        y_pred: prediction per patient, boolean or 0/1, same length.

    Raises:
        ValueError: on different lengths, or values other than booleans / 0 / 1 (NaN included:
            decide missing cases before calling).
    """
    truth, pred = _as_binary(y_true, "y_true"), _as_binary(y_pred, "y_pred")
    if truth.size != pred.size:
        raise ValueError(f"y_true and y_pred differ in length: {truth.size} vs {pred.size}")
    return Confusion(
        tp=int(np.count_nonzero(truth & pred)),
        fp=int(np.count_nonzero(~truth & pred)),
        tn=int(np.count_nonzero(~truth & ~pred)),
        fn=int(np.count_nonzero(truth & ~pred)),
    )


@dataclass(frozen=True)
class DiagnosticMetrics:
    """Sensitivity, specificity, accuracy, PPV and NPV with exact CIs."""

    confusion: Confusion
    sensitivity: Proportion
    specificity: Proportion
    accuracy: Proportion
    ppv: Proportion
    npv: Proportion

    def to_dict(self) -> dict[str, Any]:
        return {
            "confusion": self.confusion.to_dict(),
            **{
                name: getattr(self, name).to_dict()
                for name in ("sensitivity", "specificity", "accuracy", "ppv", "npv")
            },
        }


def metrics_from_confusion(counts: Confusion, *, confidence: float = 0.95) -> DiagnosticMetrics:
    """:class:`DiagnosticMetrics` from confusion counts (see :func:`diagnostic_metrics`)."""
    c = counts
    return DiagnosticMetrics(
        confusion=c,
        sensitivity=Proportion.of(c.tp, c.tp + c.fn, confidence),
        specificity=Proportion.of(c.tn, c.tn + c.fp, confidence),
        accuracy=Proportion.of(c.tp + c.tn, c.total, confidence),
        ppv=Proportion.of(c.tp, c.tp + c.fp, confidence),
        npv=Proportion.of(c.tn, c.tn + c.fn, confidence),
    )


def diagnostic_metrics(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, *, confidence: float = 0.95
) -> DiagnosticMetrics:
    """Sensitivity, specificity, accuracy, PPV, NPV with exact Clopper-Pearson CIs.

    Args:
        y_true: reference standard per patient (boolean or 0/1; 1 = positive).
        y_pred: classifier output per patient (boolean or 0/1).
        confidence: two-sided level of every interval.

    Returns:
        :class:`DiagnosticMetrics`; an undefined proportion (zero denominator) is NaN.

    Raises:
        ValueError: as :func:`confusion`, or for ``confidence`` outside ``(0, 1)``.
    """
    return metrics_from_confusion(confusion(y_true, y_pred), confidence=confidence)


# ---------------------------------------------------------------------------------------- ROC


@dataclass(frozen=True, eq=False)
class RocCurve:
    """Empirical ROC curve.

    Attributes:
        thresholds: decreasing cut-offs, ``+inf`` first then each distinct score.
        tpr: sensitivity at each cut-off (``score ≥ threshold`` is positive).
        fpr: 1 − specificity at each cut-off.
        auc: trapezoidal area under the curve.
        n_positive, n_negative: reference counts.
    """

    thresholds: FloatArray
    tpr: FloatArray
    fpr: FloatArray
    auc: float
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "thresholds": self.thresholds,
                "tpr": self.tpr,
                "fpr": self.fpr,
                "auc": self.auc,
                "n_positive": self.n_positive,
                "n_negative": self.n_negative,
            }
        )


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> RocCurve:
    """ROC curve and AUC of ``scores`` against binary ``labels``.

    Args:
        scores: 1-D finite numbers, higher = more likely positive (e.g. ILD extent change, %).
        labels: reference per case, boolean or 0/1.

    Raises:
        ValueError: on different lengths, non-finite scores, or labels of one class only.
    """
    score = np.atleast_1d(np.asarray(scores, dtype=np.float64))
    label = _as_binary(labels, "labels")
    if score.ndim != 1 or score.size != label.size:
        raise ValueError(
            f"scores and labels must be 1-D of equal length: {score.shape}, {label.shape}"
        )
    if not np.all(np.isfinite(score)):
        raise ValueError("scores must be finite")
    n_pos, n_neg = int(np.count_nonzero(label)), int(np.count_nonzero(~label))
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both classes, got {n_pos} positive and {n_neg} negative")
    distinct = np.unique(score)[::-1]
    # counts of positives / negatives with score >= each distinct threshold
    pos_sorted, neg_sorted = np.sort(score[label]), np.sort(score[~label])
    tp = n_pos - np.searchsorted(pos_sorted, distinct, side="left")
    fp = n_neg - np.searchsorted(neg_sorted, distinct, side="left")
    thresholds = np.concatenate([[np.inf], distinct])
    tpr = np.concatenate([[0.0], tp / n_pos])
    fpr = np.concatenate([[0.0], fp / n_neg])
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return RocCurve(thresholds, tpr, fpr, auc, n_pos, n_neg)


@dataclass(frozen=True)
class RocThreshold:
    """The chosen cut-off, its training-set performance and the curve it came from."""

    threshold: float
    sensitivity: float
    specificity: float
    criterion: ThresholdCriterion
    curve: RocCurve

    @property
    def youden_j(self) -> float:
        return self.sensitivity + self.specificity - 1.0

    def predict(self, scores: npt.ArrayLike) -> BoolArray:
        """Apply the cut-off: ``score ≥ threshold`` is positive."""
        return np.asarray(np.asarray(scores, dtype=np.float64) >= self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "threshold": self.threshold,
                "sensitivity": self.sensitivity,
                "specificity": self.specificity,
                "youden_j": self.youden_j,
                "criterion": self.criterion,
                "auc": self.curve.auc,
                "curve": self.curve.to_dict(),
            }
        )


def roc_threshold(
    scores: npt.ArrayLike, labels: npt.ArrayLike, *, criterion: ThresholdCriterion = "youden"
) -> RocThreshold:
    """Best cut-off on an ROC curve (fit on the training set, then apply to the test set).

    Args:
        scores: 1-D finite numbers, higher = more likely positive.
        labels: reference per case, boolean or 0/1.
        criterion: ``"youden"`` maximises sensitivity + specificity − 1; ``"closest_topleft"``
            minimises ``(1 − sens)² + (1 − spec)²``. Ties go to the highest threshold (the more
            specific rule). The ``+inf`` end point (nobody positive) is never chosen.

    Returns:
        :class:`RocThreshold` whose threshold is an observed score (``score ≥ t`` positive).

    Raises:
        ValueError: as :func:`roc_curve`, or for an unknown criterion.
    """
    if criterion not in ("youden", "closest_topleft"):
        raise ValueError(f"criterion must be 'youden' or 'closest_topleft', got {criterion!r}")
    curve = roc_curve(scores, labels)
    tpr, specificity = curve.tpr[1:], 1.0 - curve.fpr[1:]
    if criterion == "youden":
        objective = tpr + specificity - 1.0
    else:
        objective = -((1.0 - tpr) ** 2 + (1.0 - specificity) ** 2)
    # thresholds are decreasing, so argmax's first maximum is the highest threshold
    best = int(np.argmax(np.round(objective, 12)))
    return RocThreshold(
        threshold=float(curve.thresholds[best + 1]),
        sensitivity=float(tpr[best]),
        specificity=float(specificity[best]),
        criterion=criterion,
        curve=curve,
    )
