"""Follow-up statistics (Chassagnon et al. 2021): functional worsening, log-Jacobian by group,
log-Jacobian vs PFT changes, and the ILD-extent-change criterion.

**Functional worsening** (ATS/ERS/JRS/ALAT criteria as applied in the paper's Methods): a drop
of at least 10 points of FVC % predicted, *or* at least 15 points of DLCO % predicted, between
baseline and follow-up. Drops are absolute differences of percent-predicted values
(``before − after``), not relative changes. A tolerance of 1e-9 points makes "at least" robust
to floating-point subtraction (64.1 − 54.1 = 9.999999999999993 counts as 10).

**Missing values** are explicit. One criterion met is enough, whatever is missing. Otherwise:

* ``missing="available"`` (default; what the paper did — it classified all 212 patients
  although 25 lacked DLCO): decide on the measurements available — ``False`` if at least one
  pair (FVC or DLCO) is complete, ``None`` if neither is.
* ``missing="undetermined"``: ``False`` only when both pairs are complete; otherwise ``None``.

``None`` means "cannot be classified"; callers must drop or report such patients, never count
them as stable.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from inference.stats._common import as_float_1d, jsonable
from inference.stats.correlation import CiMethod, Correlation, correlation_table
from inference.stats.diagnostic import (
    DiagnosticMetrics,
    RocThreshold,
    ThresholdCriterion,
    diagnostic_metrics,
    roc_threshold,
)
from inference.stats.tables import ContinuousRow, describe_continuous

MissingPolicy = Literal["available", "undetermined"]

FVC_DROP_POINTS = 10.0
DLCO_DROP_POINTS = 15.0
_TOLERANCE = 1e-9


def _value(x: float | None, name: str) -> float:
    if x is None:
        return math.nan
    value = float(x)
    if math.isinf(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative % predicted value or missing, got {x}")
    return value


@dataclass(frozen=True)
class FunctionalChange:
    """PFT change between baseline and follow-up and the worsening decision.

    Attributes:
        fvc_change, dlco_change: ``after − before`` in % predicted points (NaN when missing).
        fvc_worsened, dlco_worsened: each criterion, ``None`` when its pair is incomplete.
        worsening: the decision (see the module docstring), ``None`` when undetermined.
    """

    fvc_change: float
    dlco_change: float
    fvc_worsened: bool | None
    dlco_worsened: bool | None
    worsening: bool | None

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self.__dict__)


def functional_change(
    fvc_before: float | None,
    fvc_after: float | None,
    dlco_before: float | None,
    dlco_after: float | None,
    *,
    missing: MissingPolicy = "available",
) -> FunctionalChange:
    """Changes in FVC and DLCO (% predicted) and the ATS/ERS/JRS/ALAT worsening decision.

    Args:
        fvc_before, fvc_after: FVC in % predicted at baseline / follow-up (``None``/NaN missing).
        dlco_before, dlco_after: DLCO (Hb-corrected) in % predicted (``None``/NaN missing).
        missing: ``"available"`` or ``"undetermined"`` (module docstring).

    Raises:
        ValueError: for a negative or infinite value, or an unknown ``missing`` policy.
    """
    if missing not in ("available", "undetermined"):
        raise ValueError(f"missing must be 'available' or 'undetermined', got {missing!r}")
    fvc_change = _value(fvc_after, "fvc_after") - _value(fvc_before, "fvc_before")
    dlco_change = _value(dlco_after, "dlco_after") - _value(dlco_before, "dlco_before")
    fvc_worsened = None if math.isnan(fvc_change) else -fvc_change >= FVC_DROP_POINTS - _TOLERANCE
    dlco_worsened = (
        None if math.isnan(dlco_change) else -dlco_change >= DLCO_DROP_POINTS - _TOLERANCE
    )
    criteria = (fvc_worsened, dlco_worsened)
    worsening: bool | None
    if any(criterion is True for criterion in criteria):
        worsening = True
    elif all(criterion is not None for criterion in criteria) or (
        missing == "available" and any(criterion is not None for criterion in criteria)
    ):
        worsening = False
    else:
        worsening = None
    return FunctionalChange(fvc_change, dlco_change, fvc_worsened, dlco_worsened, worsening)


def functional_worsening(
    fvc_before: float | None,
    fvc_after: float | None,
    dlco_before: float | None,
    dlco_after: float | None,
    *,
    missing: MissingPolicy = "available",
) -> bool | None:
    """``True`` if FVC % predicted dropped ≥ 10 points or DLCO % predicted dropped ≥ 15 points.

    Returns ``None`` when missing values prevent a decision (module docstring). Arguments and
    errors as :func:`functional_change`.
    """
    return functional_change(
        fvc_before, fvc_after, dlco_before, dlco_after, missing=missing
    ).worsening


def classify_functional(
    fvc_before: npt.ArrayLike,
    fvc_after: npt.ArrayLike,
    dlco_before: npt.ArrayLike,
    dlco_after: npt.ArrayLike,
    *,
    missing: MissingPolicy = "available",
) -> list[bool | None]:
    """:func:`functional_worsening` for every patient (1-D arrays, NaN = missing).

    Raises:
        ValueError: if the arrays differ in length, or as :func:`functional_change`.
    """
    arrays = [
        as_float_1d(values, name)
        for values, name in (
            (fvc_before, "fvc_before"),
            (fvc_after, "fvc_after"),
            (dlco_before, "dlco_before"),
            (dlco_after, "dlco_after"),
        )
    ]
    if len({array.size for array in arrays}) != 1:
        raise ValueError(f"PFT arrays differ in length: {[array.size for array in arrays]}")
    return [
        functional_worsening(float(a), float(b), float(c), float(d), missing=missing)
        for a, b, c, d in zip(*arrays, strict=True)
    ]


# --------------------------------------------------------------------- log-Jacobian by group


def compare_mean_log_jacobian(
    mean_log_jacobian: npt.ArrayLike,
    group: Sequence[Hashable | None],
    *,
    order: Sequence[Hashable] | None = None,
) -> ContinuousRow:
    """Median [IQR] of the per-patient mean log-Jacobian in each group, and its P value.

    Two groups (e.g. functional worsening vs stability) are compared with Mann-Whitney U,
    three or more (morphologic worsening / stability / improvement) with Kruskal-Wallis.

    Args:
        mean_log_jacobian: per patient, the mean of ``log det J`` over the lung (unitless;
            negative = shrinkage of the follow-up relative to baseline). NaN = missing.
        group: per patient, the group label; ``None`` leaves the patient out.
        order: group labels in display order; default order of first appearance.

    Returns:
        :class:`~inference.stats.tables.ContinuousRow` labelled ``"Mean log-Jacobian"``, with
        groups named ``str(label)``.

    Raises:
        ValueError: if lengths differ or a label is not in ``order``.
    """
    values = as_float_1d(mean_log_jacobian, "mean_log_jacobian")
    labels = list(group)
    if len(labels) != values.size:
        raise ValueError(f"{values.size} values but {len(labels)} group labels")
    names: list[Hashable] = list(order) if order is not None else []
    if order is None:
        for label in labels:
            if label is not None and label not in names:
                names.append(label)
    unknown = {label for label in labels if label is not None and label not in names}
    if unknown:
        raise ValueError(f"group labels {unknown} are not in order {names}")
    groups = {
        str(name): values[np.array([label == name for label in labels], dtype=bool)]
        for name in names
    }
    return describe_continuous(groups, label="Mean log-Jacobian")


def pft_change_correlations(
    mean_log_jacobian: npt.ArrayLike,
    before: Mapping[str, npt.ArrayLike],
    after: Mapping[str, npt.ArrayLike],
    *,
    confidence: float = 0.95,
    ci: CiMethod = "fisher",
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Correlation]:
    """Spearman ρ of the mean log-Jacobian with the change of each PFT (``after − before``).

    Args:
        mean_log_jacobian: per patient (unitless).
        before, after: PFT name (``"TLC"``, ``"FVC"``, ``"DLCO"``, ``"KCO"``) → per-patient
            % predicted at baseline / follow-up, same keys; NaN drops the patient for that PFT.
        confidence, ci, n_resamples, seed: as in :func:`inference.stats.correlation.spearman`
            (default Fisher z interval with SE 1.06/√(n−3)).

    Returns:
        PFT name → :class:`Correlation` of the mean log-Jacobian with its change.

    Raises:
        ValueError: if the keys differ, lengths differ, or fewer than 3 complete pairs remain.
    """
    if set(before) != set(after):
        raise ValueError(
            f"before and after name different PFTs: {sorted(before)} vs {sorted(after)}"
        )
    changes = {}
    for name in before:
        first, second = as_float_1d(before[name], name), as_float_1d(after[name], name)
        if first.size != second.size:
            raise ValueError(f"{name}: before and after differ in length")
        changes[name] = second - first
    return correlation_table(
        mean_log_jacobian, changes, confidence=confidence, ci=ci, n_resamples=n_resamples, seed=seed
    )


# ------------------------------------------------------------- ILD-extent-change criterion


@dataclass(frozen=True)
class ExtentChangeCriterion:
    """Worsening called when the ILD extent increased by at least ``threshold_pct`` points.

    Attributes:
        threshold_pct: cut-off on the extent change (follow-up − baseline, % of lung volume),
            chosen by ROC on the training set.
        training: the ROC fit (curve, AUC, training sensitivity/specificity).
        test: performance of the cut-off on the test set (exact CIs).
    """

    threshold_pct: float
    training: RocThreshold
    test: DiagnosticMetrics

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "threshold_pct": self.threshold_pct,
                "training": self.training.to_dict(),
                "test": self.test.to_dict(),
            }
        )


def extent_change_criterion(
    train_change_pct: npt.ArrayLike,
    train_worsened: npt.ArrayLike,
    test_change_pct: npt.ArrayLike,
    test_worsened: npt.ArrayLike,
    *,
    criterion: ThresholdCriterion = "youden",
    confidence: float = 0.95,
) -> ExtentChangeCriterion:
    """Choose an extent-change cut-off by ROC on the training set; evaluate it on the test set.

    Args:
        train_change_pct: training patients' ILD extent change (follow-up − baseline, in
            percentage points of lung volume); higher = more likely worsening.
        train_worsened: training reference (functional or morphologic worsening), 0/1.
        test_change_pct, test_worsened: the same for the held-out test set.
        criterion: ROC cut-off rule (``"youden"`` default).
        confidence: level of the test-set Clopper-Pearson intervals.

    Raises:
        ValueError: as :func:`~inference.stats.diagnostic.roc_threshold` and
            :func:`~inference.stats.diagnostic.diagnostic_metrics`, or on non-finite test
            values.
    """
    fit = roc_threshold(train_change_pct, train_worsened, criterion=criterion)
    test_scores = as_float_1d(test_change_pct, "test_change_pct")
    if not np.all(np.isfinite(test_scores)):
        raise ValueError("test_change_pct must be finite")
    metrics = diagnostic_metrics(test_worsened, fit.predict(test_scores), confidence=confidence)
    return ExtentChangeCriterion(threshold_pct=fit.threshold, training=fit, test=metrics)
