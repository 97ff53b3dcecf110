"""Patient-characteristics tables (Table 1) and Goh staging.

Continuous variables: median [IQR] per group; groups compared with the Mann-Whitney U test
(two groups; ``scipy.stats.mannwhitneyu``, two-sided, ``method="auto"``: exact when a group has
≤ 8 values and there are no ties, otherwise the normal approximation with tie and continuity
correction) or the Kruskal-Wallis H test (three or more groups, tie-corrected). Groups without a
value are shown as "..." and left out of the test, as Table 1 does for the AtlasNet extent of the
training set.

Categorical variables: counts (%) per group, percentages of the patients with a known value;
groups compared with Fisher's exact test on the levels × groups contingency table (rows or
columns that are all zero are dropped first):

* 2 × 2: ``scipy.stats.fisher_exact`` (two-sided, the probabilities-as-extreme rule).
* 2 × c or r × 2: the exact Fisher-Freeman-Halton test, by enumerating every table with the
  observed margins (multivariate hypergeometric probabilities) and summing those no more
  probable than the observed one — the P value R's ``fisher.test`` gives. This is the common
  Table 1 case (a yes/no characteristic across 2–4 datasets) and is exact and deterministic.
* larger tables (or 2 × c tables with more than ``MAX_EXACT_TABLES`` candidate tables): the
  same statistic by Monte Carlo (``scipy.stats.fisher_exact`` with a seeded
  ``MonteCarloMethod``, 9,999 tables); ``CategoricalRow.test`` says
  ``"fisher-freeman-halton-monte-carlo"`` so the report can say so.

Goh staging (Goh et al., AJRCCM 2008): extent of ILD on CT > 20 % of lung volume = extensive,
otherwise limited.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats
from scipy.special import gammaln

from inference.stats._common import format_number, jsonable
from inference.stats.agreement import MedianIQR, summarize
from inference.stats.correlation import format_p

GohStage = Literal["limited", "extensive"]
GOH_THRESHOLD_PCT = 20.0
MAX_EXACT_TABLES = 2_000_000
MONTE_CARLO_RESAMPLES = 9_999

# ---------------------------------------------------------------------------------- continuous


@dataclass(frozen=True)
class ContinuousRow:
    """One continuous characteristic across groups.

    Attributes:
        label: the characteristic, e.g. ``"Age (y)"``.
        summaries: group → median [IQR] of its non-NaN values.
        test: ``"mann-whitney"``, ``"kruskal-wallis"`` or ``None`` (fewer than 2 groups with
            values).
        statistic: U (of the first tested group) or H; NaN without a test.
        p_value: two-sided P; NaN without a test or when every value is identical.
        tested_groups: the groups that entered the test.
    """

    label: str
    summaries: Mapping[str, MedianIQR]
    test: str | None
    statistic: float
    p_value: float
    tested_groups: tuple[str, ...]

    def cells(self, decimals: int = 1) -> list[str]:
        """``[label, "55 [50–64]" per group ("..." without values), P]``."""
        cells = [self.label]
        for summary in self.summaries.values():
            cells.append("..." if summary.n == 0 else summary.format(decimals, brackets="[]"))
        cells.append(format_p(self.p_value).removeprefix("= ") if self.test else "")
        return cells

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "kind": "continuous",
                "label": self.label,
                "groups": {name: s.to_dict() for name, s in self.summaries.items()},
                "test": self.test,
                "statistic": self.statistic,
                "p_value": self.p_value,
                "tested_groups": list(self.tested_groups),
            }
        )


def describe_continuous(groups: Mapping[str, npt.ArrayLike], *, label: str = "") -> ContinuousRow:
    """Median [IQR] per group and the Mann-Whitney (2 groups) or Kruskal-Wallis (≥ 3) P value.

    Args:
        groups: group name → 1-D values per patient in any unit (NaN = missing, left out and
            counted in ``MedianIQR.n_excluded``). Order is kept for display.
        label: the row's label.

    Returns:
        :class:`ContinuousRow`.

    Raises:
        ValueError: if there is no group or a group's values are not 1-D.
    """
    if not groups:
        raise ValueError("describe_continuous needs at least one group")
    summaries = {name: summarize(values) for name, values in groups.items()}
    samples = {}
    for name, values in groups.items():
        array = np.atleast_1d(np.asarray(values, dtype=np.float64))
        array = array[~np.isnan(array)]
        if array.size:
            samples[name] = array
    tested = tuple(samples)
    test: str | None = None
    statistic = p_value = math.nan
    if len(samples) == 2:
        test = "mann-whitney"
        first, second = samples.values()
        result = stats.mannwhitneyu(first, second, alternative="two-sided")
        statistic, p_value = float(result.statistic), float(result.pvalue)
    elif len(samples) >= 3:
        test = "kruskal-wallis"
        pooled = np.concatenate(list(samples.values()))
        if np.ptp(pooled) > 0:  # Kruskal-Wallis is undefined when every value ties
            h, p = stats.kruskal(*samples.values())
            statistic, p_value = float(h), float(p)
    return ContinuousRow(label, summaries, test, statistic, p_value, tested)


# --------------------------------------------------------------------------------- categorical


@dataclass(frozen=True)
class CategoricalRow:
    """One categorical characteristic across groups.

    Attributes:
        label: the characteristic, e.g. ``"Women"``.
        levels: the categories, in display order (``(True, False)`` for yes/no data).
        counts: group → level → number of patients.
        n: group → patients with a known value (the percentage denominator).
        n_missing: group → patients with a missing value.
        test: ``"fisher"`` (2 × 2), ``"fisher-freeman-halton"`` (exact, 2 × c / r × 2),
            ``"fisher-freeman-halton-monte-carlo"`` or ``None`` (table degenerate).
        p_value: two-sided P (NaN without a test).
    """

    label: str
    levels: tuple[Hashable, ...]
    counts: Mapping[str, Mapping[Hashable, int]]
    n: Mapping[str, int]
    n_missing: Mapping[str, int]
    test: str | None
    p_value: float

    def percent(self, group: str, level: Hashable) -> float:
        """Percentage of ``group``'s known values equal to ``level`` (NaN for an empty group)."""
        total = self.n[group]
        return 100.0 * self.counts[group][level] / total if total else math.nan

    def cells(self, level: Hashable | None = None, decimals: int = 0) -> list[str]:
        """``[label, "14 (82)" per group, P]`` for ``level`` (default the first level)."""
        shown = self.levels[0] if level is None else level
        cells = [self.label]
        for group in self.counts:
            count = self.counts[group][shown]
            pct = self.percent(group, shown)
            cells.append(f"{count} ({format_number(pct, decimals)})" if self.n[group] else "...")
        cells.append(format_p(self.p_value).removeprefix("= ") if self.test else "")
        return cells

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "kind": "categorical",
                "label": self.label,
                "levels": [str(level) for level in self.levels],
                "groups": {
                    group: {
                        "n": self.n[group],
                        "n_missing": self.n_missing[group],
                        "counts": {str(k): v for k, v in self.counts[group].items()},
                    }
                    for group in self.counts
                },
                "test": self.test,
                "p_value": self.p_value,
            }
        )


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(math.isnan(value))
    except TypeError:
        return False


def describe_categorical(
    groups: Mapping[str, Sequence[Any] | npt.ArrayLike],
    *,
    label: str = "",
    levels: Sequence[Hashable] | None = None,
    seed: int = 0,
) -> CategoricalRow:
    """Counts (%) per group of a categorical variable and Fisher's exact P.

    Args:
        groups: group name → one value per patient: ``bool`` for yes/no characteristics
            (e.g. woman), or category labels (e.g. ``"limited"`` / ``"diffuse"``). ``None`` and
            NaN are missing: counted in ``n_missing``, excluded from percentages and the test.
        label: the row's label.
        levels: categories in display order; default ``(True, False)`` when every value is
            boolean, otherwise the sorted distinct values.
        seed: seed for the Monte Carlo P of tables larger than 2 × c.

    Returns:
        :class:`CategoricalRow`.

    Raises:
        ValueError: if there is no group, or a value is not among ``levels``.
    """
    if not groups:
        raise ValueError("describe_categorical needs at least one group")
    known: dict[str, list[Hashable]] = {}
    missing: dict[str, int] = {}
    for name, values in groups.items():
        items = np.asarray(values, dtype=object).ravel().tolist()
        present = [item for item in items if not _is_missing(item)]
        known[name] = [bool(v) if isinstance(v, np.bool_) else v for v in present]
        missing[name] = len(items) - len(present)
    if levels is None:
        distinct = {value for values in known.values() for value in values}
        if distinct and all(isinstance(value, bool) for value in distinct):
            levels = (True, False)
        else:
            levels = tuple(sorted(distinct, key=str))
    counts: dict[str, dict[Hashable, int]] = {}
    for name, values in known.items():
        unknown = {value for value in values if value not in levels}
        if unknown:
            raise ValueError(f"group {name!r} has values not in levels {list(levels)}: {unknown}")
        counts[name] = {level: sum(1 for value in values if value == level) for level in levels}
    return categorical_from_counts(counts, label=label, n_missing=missing, seed=seed)


def categorical_from_counts(
    counts: Mapping[str, Mapping[Hashable, int]],
    *,
    label: str = "",
    n_missing: Mapping[str, int] | None = None,
    seed: int = 0,
) -> CategoricalRow:
    """:func:`describe_categorical` from counts already tallied (group → level → count).

    Every group must list the same levels (in display order).

    Raises:
        ValueError: on no group, differing levels, or a negative count.
    """
    if not counts:
        raise ValueError("categorical_from_counts needs at least one group")
    level_sets = [tuple(levels) for levels in counts.values()]
    if any(set(levels) != set(level_sets[0]) for levels in level_sets):
        raise ValueError("every group must list the same levels")
    levels = level_sets[0]
    table = np.array(
        [[counts[group][level] for group in counts] for level in levels], dtype=np.int64
    )
    if table.size and table.min() < 0:
        raise ValueError("counts must be non-negative")
    p_value, test = fisher_exact_any(table, seed=seed)
    return CategoricalRow(
        label=label,
        levels=levels,
        counts={group: dict(counts[group]) for group in counts},
        n={group: int(sum(counts[group].values())) for group in counts},
        n_missing={group: int((n_missing or {}).get(group, 0)) for group in counts},
        test=test,
        p_value=p_value,
    )


def _log_binomial(n: npt.ArrayLike, k: npt.ArrayLike) -> npt.NDArray[np.float64]:
    n_, k_ = np.asarray(n, dtype=np.float64), np.asarray(k, dtype=np.float64)
    return np.asarray(gammaln(n_ + 1) - gammaln(k_ + 1) - gammaln(n_ - k_ + 1), dtype=np.float64)


def _exact_two_row(top: npt.NDArray[np.int64], columns: npt.NDArray[np.int64]) -> float | None:
    """Exact Fisher-Freeman-Halton P of a 2 × c table (``None`` when too many tables)."""
    row_total = int(top.sum())
    observed = float(np.sum(_log_binomial(columns, top)))
    sums = np.zeros(1, dtype=np.int64)
    log_weight = np.zeros(1)
    remaining = int(columns.sum())
    for column in columns[:-1]:
        remaining -= int(column)
        x = np.arange(int(column) + 1)
        new_sums = (sums[:, None] + x[None, :]).ravel()
        new_weight = (log_weight[:, None] + _log_binomial(column, x)[None, :]).ravel()
        # keep partial tables that can still be completed with the remaining columns
        feasible = (new_sums <= row_total) & (new_sums >= row_total - remaining)
        sums, log_weight = new_sums[feasible], new_weight[feasible]
        if sums.size > MAX_EXACT_TABLES:
            return None
    log_weight = log_weight + _log_binomial(columns[-1], row_total - sums)
    log_total = float(_log_binomial(int(columns.sum()), row_total))
    # relative tolerance as in scipy.stats.fisher_exact, so ties in probability count as extreme
    as_extreme = log_weight <= observed + math.log1p(1e-7)
    return float(min(1.0, np.exp(log_weight[as_extreme] - log_total).sum()))


def fisher_exact_any(table: npt.ArrayLike, *, seed: int = 0) -> tuple[float, str | None]:
    """Two-sided Fisher (2 × 2) or Fisher-Freeman-Halton (r × c) P of a contingency table.

    Args:
        table: non-negative integer counts, rows = levels, columns = groups.
        seed: seed for the Monte Carlo estimate used beyond 2 × c.

    Returns:
        ``(p_value, test)`` with ``test`` as in :class:`CategoricalRow`; ``(NaN, None)`` when,
        after dropping all-zero rows and columns, fewer than two rows or columns remain.

    Raises:
        ValueError: if the table is not 2-D or holds negative or non-integer counts.
    """
    array = np.asarray(table, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"a contingency table must be 2-D, got shape {array.shape}")
    if array.size and (array.min() < 0 or not np.all(array == np.round(array))):
        raise ValueError("a contingency table holds non-negative integer counts")
    counts = array.astype(np.int64)
    counts = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0]
    if min(counts.shape) < 2:
        return math.nan, None
    if counts.shape == (2, 2):
        return float(stats.fisher_exact(counts).pvalue), "fisher"
    if 2 in counts.shape:
        two_row = counts if counts.shape[0] == 2 else counts.T
        exact = _exact_two_row(two_row[0], two_row.sum(axis=0))
        if exact is not None:
            return exact, "fisher-freeman-halton"
    method = stats.MonteCarloMethod(
        n_resamples=MONTE_CARLO_RESAMPLES, rng=np.random.default_rng(seed)
    )
    result = stats.fisher_exact(counts, method=method)
    return float(result.pvalue), "fisher-freeman-halton-monte-carlo"


# ----------------------------------------------------------------------------------- the table


def format_table(
    rows: Sequence[ContinuousRow | CategoricalRow], *, decimals: int = 1
) -> list[list[str]]:
    """Rows of strings: header ``["Characteristic", groups..., "P Value"]`` then each row.

    Continuous rows use ``decimals``; categorical rows show their first level, percentages
    without decimals (as in Table 1).

    Raises:
        ValueError: if the rows do not share the same groups in the same order.
    """
    if not rows:
        return []
    groups = _groups(rows[0])
    if any(_groups(row) != groups for row in rows):
        raise ValueError("all rows must have the same groups in the same order")
    out = [["Characteristic", *groups, "P Value"]]
    for row in rows:
        out.append(row.cells(decimals=decimals) if isinstance(row, ContinuousRow) else row.cells())
    return out


def _groups(row: ContinuousRow | CategoricalRow) -> list[str]:
    return list(row.summaries) if isinstance(row, ContinuousRow) else list(row.counts)


# -------------------------------------------------------------------------------------- Goh


def goh_stage(extent_pct: float) -> GohStage:
    """Goh stage from the ILD extent on CT: ``"extensive"`` if > 20 %, else ``"limited"``.

    Goh et al. also resolve *visually indeterminate* extents with FVC < 70 % predicted; with a
    measured extent there is no indeterminate band, so only the 20 % cut-off applies. Exactly
    20 % is limited.

    Args:
        extent_pct: diseased lung volume / whole lung volume, in percent (0–100).

    Raises:
        ValueError: if ``extent_pct`` is NaN, infinite, negative or above 100.
    """
    value = float(extent_pct)
    if not math.isfinite(value) or value < 0.0 or value > 100.0:
        raise ValueError(f"extent_pct must be a percentage in [0, 100], got {extent_pct}")
    return "extensive" if value > GOH_THRESHOLD_PCT else "limited"
