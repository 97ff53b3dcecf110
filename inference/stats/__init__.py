"""Statistics of the two SSc-ILD papers, as pure functions on numpy arrays.

* :mod:`~inference.stats.agreement` — Dice per slice, median (IQR), bootstrap CIs (cluster
  option), the reader × reader table (Chassagnon 2020, Table 2).
* :mod:`~inference.stats.staple` — STAPLE consensus of several readers.
* :mod:`~inference.stats.correlation` — Spearman ρ, P, Fisher-z CI (SE 1.06/√(n−3)) (Table 3).
* :mod:`~inference.stats.tables` — Table 1 rows (median [IQR], counts (%), Kruskal-Wallis /
  Mann-Whitney / Fisher P) and Goh staging.
* :mod:`~inference.stats.longitudinal` — functional worsening, log-Jacobian by group and vs PFT
  changes, the ILD-extent-change criterion (Chassagnon 2021).
* :mod:`~inference.stats.diagnostic` — confusion, sensitivity/specificity/accuracy/PPV/NPV with
  Clopper-Pearson CIs, ROC curve, AUC and cut-off.

Every result object has ``to_dict()`` returning JSON-serialisable values (NaN → ``None``).
"""

from __future__ import annotations

from inference.stats.agreement import (
    AgreementMatrix,
    BootstrapCI,
    MedianIQR,
    SliceDice,
    bootstrap_ci,
    dice,
    dice_per_slice,
    pairwise_matrix,
    pool_slices,
    summarize,
)
from inference.stats.correlation import (
    Correlation,
    correlation_table,
    fisher_ci,
    format_p,
    spearman,
    spearman_rho,
)
from inference.stats.diagnostic import (
    Confusion,
    DiagnosticMetrics,
    Proportion,
    RocCurve,
    RocThreshold,
    clopper_pearson,
    confusion,
    diagnostic_metrics,
    metrics_from_confusion,
    roc_curve,
    roc_threshold,
)
from inference.stats.longitudinal import (
    ExtentChangeCriterion,
    FunctionalChange,
    classify_functional,
    compare_mean_log_jacobian,
    extent_change_criterion,
    functional_change,
    functional_worsening,
    pft_change_correlations,
)
from inference.stats.staple import StapleResult, staple
from inference.stats.tables import (
    CategoricalRow,
    ContinuousRow,
    categorical_from_counts,
    describe_categorical,
    describe_continuous,
    fisher_exact_any,
    format_table,
    goh_stage,
)

__all__ = [
    "AgreementMatrix",
    "BootstrapCI",
    "CategoricalRow",
    "Confusion",
    "ContinuousRow",
    "Correlation",
    "DiagnosticMetrics",
    "ExtentChangeCriterion",
    "FunctionalChange",
    "MedianIQR",
    "Proportion",
    "RocCurve",
    "RocThreshold",
    "SliceDice",
    "StapleResult",
    "bootstrap_ci",
    "categorical_from_counts",
    "classify_functional",
    "clopper_pearson",
    "compare_mean_log_jacobian",
    "confusion",
    "correlation_table",
    "describe_categorical",
    "describe_continuous",
    "diagnostic_metrics",
    "dice",
    "dice_per_slice",
    "extent_change_criterion",
    "fisher_ci",
    "fisher_exact_any",
    "format_p",
    "format_table",
    "functional_change",
    "functional_worsening",
    "goh_stage",
    "metrics_from_confusion",
    "pairwise_matrix",
    "pft_change_correlations",
    "pool_slices",
    "roc_curve",
    "roc_threshold",
    "spearman",
    "spearman_rho",
    "staple",
    "summarize",
]
