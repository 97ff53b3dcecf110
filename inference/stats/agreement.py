"""Agreement between contours: Dice per slice, median (IQR), bootstrap CIs, the reader-pair table.

Dice similarity coefficient (Chassagnon et al. 2020, Radiology 295:E1, "Statistical Analysis")::

    DSC = 2 |S1 ∩ S2| / (|S1| + |S2|)

**Empty-slice rule (both masks empty).** The ratio is ``0 / 0`` and carries no information about
agreement: there was nothing to contour. The paper reports "median DSC" over the annotated test
slices, which were chosen because they showed disease; a slice where *neither* reader drew
anything would otherwise enter as an arbitrary 1.0 (or 0.0) and pull the median toward it, the
more so the more healthy slices a CT has. So by default (``empty="skip"``) such a slice is
**excluded** from per-slice statistics and only **counted** (``SliceDice.n_both_empty``,
``MedianIQR.n_excluded``), so a report can say "median 0.70 (IQR 0.63–0.77) over 388 slices;
12 slices empty for both readers excluded". The alternatives are explicit:

* ``empty="nan"`` keeps the slice, with Dice ``NaN`` (per-slice arrays stay aligned with ``k``);
  :func:`summarize` then drops and counts the ``NaN`` in the same way.
* ``empty="one"`` counts two empty masks as perfect agreement (e.g. to credit an algorithm for
  finding no disease in a healthy slice). Use it knowingly: it inflates medians.

A slice where one mask is empty and the other is not has Dice ``0.0`` and is always kept: that is
disagreement, not absence of information.

Quantiles (median, quartiles) use numpy's default linear interpolation (Hyndman & Fan type 7,
R's default), so results match ``np.percentile`` and R's ``quantile``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr, ndtri

from inference.stats._common import EN_DASH, FloatArray, format_number, jsonable
from inference.volume import GeometryError, Volume

EmptyRule = Literal["nan", "one", "skip"]
BootstrapMethod = Literal["percentile", "bca"]
MaskLike = Volume | npt.ArrayLike

_EMPTY_RULES: tuple[str, ...] = ("nan", "one", "skip")


# --------------------------------------------------------------------------------------- Dice


def _check_rule(empty: str) -> None:
    if empty not in _EMPTY_RULES:
        raise ValueError(f"empty must be one of {_EMPTY_RULES}, got {empty!r}")


def _as_mask(value: MaskLike) -> npt.NDArray[np.bool_]:
    array = value.array if isinstance(value, Volume) else np.asarray(value)
    if array.dtype == np.bool_:
        return np.asarray(array, dtype=np.bool_)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError("a mask contains NaN or infinite values")
    return np.asarray(array != 0)


def _mask_pair(a: MaskLike, b: MaskLike) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    if isinstance(a, Volume) and isinstance(b, Volume) and not a.same_grid(b):
        raise GeometryError("the two masks are not on the same grid")
    mask_a, mask_b = _as_mask(a), _as_mask(b)
    if mask_a.shape != mask_b.shape:
        raise GeometryError(f"mask shapes differ: {mask_a.shape} vs {mask_b.shape}")
    return mask_a, mask_b


def dice(a: MaskLike, b: MaskLike, *, empty: EmptyRule = "skip") -> float:
    """Dice similarity coefficient of two binary masks of the same shape (any dimension).

    Args:
        a: mask (array or ``Volume``); non-zero / ``True`` is foreground.
        b: mask of the same shape (and grid, when both are ``Volume``).
        empty: what two empty masks give (see the module docstring): ``"skip"`` (default) and
            ``"nan"`` both return ``NaN`` for a single pair, the marker that per-slice
            statistics exclude and count; ``"one"`` returns ``1.0``.

    Returns:
        Dice in ``[0, 1]`` (unitless), or ``NaN`` for two empty masks unless ``empty="one"``.

    Raises:
        GeometryError: if the shapes (or the grids of two ``Volume``) differ.
        ValueError: if ``empty`` is unknown or a float mask holds NaN/inf.
    """
    _check_rule(empty)
    mask_a, mask_b = _mask_pair(a, b)
    size_a, size_b = int(np.count_nonzero(mask_a)), int(np.count_nonzero(mask_b))
    if size_a + size_b == 0:
        return 1.0 if empty == "one" else math.nan
    overlap = int(np.count_nonzero(mask_a & mask_b))
    return 2.0 * overlap / (size_a + size_b)


@dataclass(frozen=True, eq=False)
class SliceDice:
    """Per-slice Dice of one pair of raters (optionally pooled over patients).

    Attributes:
        values: Dice of each kept slice (``NaN`` for both-empty slices when ``empty="nan"``).
        slice_index: index ``k`` of each value in its own volume.
        n_both_empty: slices where both masks were empty (dropped, NaN or 1.0 by ``empty``).
        empty: the empty-slice rule used.
        clusters: per value, the patient (cluster) it belongs to, or ``None`` when unknown;
            pass it to :func:`bootstrap_ci` to resample patients rather than slices.
    """

    values: FloatArray
    slice_index: npt.NDArray[np.int64]
    n_both_empty: int
    empty: EmptyRule
    clusters: npt.NDArray[np.str_] | None = None

    def summary(self) -> MedianIQR:
        """Median (IQR) of the values, with the excluded both-empty slices counted."""
        return summarize(self)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "values": self.values,
                "slice_index": self.slice_index,
                "n_both_empty": self.n_both_empty,
                "empty": self.empty,
                "clusters": None if self.clusters is None else self.clusters,
                "summary": self.summary().to_dict(),
            }
        )


def dice_per_slice(
    a_kji: MaskLike,
    b_kji: MaskLike,
    *,
    empty: EmptyRule = "skip",
    slices: npt.ArrayLike | None = None,
    patient: str | None = None,
) -> SliceDice:
    """Dice of each axial slice ``k`` of two 3D masks indexed ``[k, j, i]``.

    Args:
        a_kji: first rater's mask, ``[k, j, i]`` (array or ``Volume``), non-zero = disease.
        b_kji: second rater's mask on the same grid.
        empty: rule for slices empty in both masks (module docstring); default ``"skip"``
            excludes them and counts them in ``n_both_empty``.
        slices: indices ``k`` to compare, e.g. the slices both readers annotated in a
            partially annotated test set (the paper's readers contoured 400 selected images);
            default all slices, in order.
        patient: label recorded as the cluster of every value (for a patient-level bootstrap).

    Returns:
        :class:`SliceDice` with the kept values in slice order.

    Raises:
        GeometryError: if shapes/grids differ or the masks are not 3D.
        ValueError: if ``empty`` is unknown or a slice index is out of range.
    """
    _check_rule(empty)
    mask_a, mask_b = _mask_pair(a_kji, b_kji)
    if mask_a.ndim != 3:
        raise GeometryError(f"per-slice Dice needs 3D masks [k, j, i], got {mask_a.shape}")
    n_k = mask_a.shape[0]
    if slices is None:
        ks = np.arange(n_k, dtype=np.int64)
    else:
        ks = np.atleast_1d(np.asarray(slices, dtype=np.int64))
        if ks.ndim != 1 or (ks.size and (ks.min() < 0 or ks.max() >= n_k)):
            raise ValueError(f"slice indices must be in [0, {n_k}), got {ks.tolist()}")
    flat_a = mask_a[ks].reshape(ks.size, -1)
    flat_b = mask_b[ks].reshape(ks.size, -1)
    size_a = np.count_nonzero(flat_a, axis=1)
    size_b = np.count_nonzero(flat_b, axis=1)
    overlap = np.count_nonzero(flat_a & flat_b, axis=1)
    total = size_a + size_b
    both_empty = total == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(both_empty, math.nan, 2.0 * overlap / np.maximum(total, 1))
    if empty == "one":
        values = np.where(both_empty, 1.0, values)
    keep = ~both_empty if empty == "skip" else np.ones(ks.size, dtype=bool)
    kept = values[keep].astype(np.float64)
    clusters = None if patient is None else np.full(kept.size, str(patient))
    return SliceDice(
        values=kept,
        slice_index=ks[keep],
        n_both_empty=int(np.count_nonzero(both_empty)),
        empty=empty,
        clusters=clusters,
    )


def pool_slices(per_patient: Mapping[str, SliceDice]) -> SliceDice:
    """Concatenate the per-slice Dice of several patients, recording each value's patient.

    Args:
        per_patient: patient label → :class:`SliceDice` (all computed with the same rule).

    Returns:
        One :class:`SliceDice` whose ``clusters`` name the patient of every value.

    Raises:
        ValueError: if the mapping is empty or the empty-slice rules differ.
    """
    if not per_patient:
        raise ValueError("no patients to pool")
    rules = {item.empty for item in per_patient.values()}
    if len(rules) != 1:
        raise ValueError(f"cannot pool slices computed with different empty rules: {rules}")
    labels = [np.full(item.values.size, str(name)) for name, item in per_patient.items()]
    return SliceDice(
        values=np.concatenate([item.values for item in per_patient.values()]),
        slice_index=np.concatenate([item.slice_index for item in per_patient.values()]),
        n_both_empty=sum(item.n_both_empty for item in per_patient.values()),
        empty=next(iter(rules)),
        clusters=np.concatenate(labels).astype(np.str_),
    )


# -------------------------------------------------------------------------------- Median (IQR)


@dataclass(frozen=True)
class MedianIQR:
    """Median and quartiles (linear interpolation, type 7) of the finite values.

    Attributes:
        median, q1, q3: in the units of the input (``NaN`` when ``n == 0``).
        n: number of values used.
        n_excluded: values left out (NaN, or both-empty slices under ``empty="skip"``).
    """

    median: float
    q1: float
    q3: float
    n: int
    n_excluded: int = 0

    def format(self, decimals: int = 2, brackets: str = "()") -> str:
        """``"0.70 (0.63–0.77)"`` (Table 2 style) or, with ``brackets="[]"``, ``"55 [50–64]"``.

        Returns ``"NA"`` when there were no values.
        """
        if self.n == 0:
            return "NA"
        open_, close = brackets[0], brackets[-1]
        low, mid, high = (format_number(v, decimals) for v in (self.q1, self.median, self.q3))
        return f"{mid} {open_}{low}{EN_DASH}{high}{close}"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "median": self.median,
                "q1": self.q1,
                "q3": self.q3,
                "n": self.n,
                "n_excluded": self.n_excluded,
            }
        )


def summarize(values: npt.ArrayLike | SliceDice, *, n_excluded: int = 0) -> MedianIQR:
    """Median (IQR) of ``values``, leaving out and counting NaN.

    Args:
        values: 1-D numbers (any unit) or a :class:`SliceDice`, whose both-empty slices
            (skipped under ``empty="skip"``) are added to ``n_excluded``.
        n_excluded: values already removed upstream, added to the count.

    Returns:
        :class:`MedianIQR`; all-NaN or empty input gives NaN statistics with ``n == 0``.

    Raises:
        ValueError: if ``values`` is not one-dimensional or ``n_excluded`` is negative.
    """
    if n_excluded < 0:
        raise ValueError(f"n_excluded must be >= 0, got {n_excluded}")
    if isinstance(values, SliceDice):
        if values.empty == "skip":
            n_excluded += values.n_both_empty
        values = values.values
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if array.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {array.shape}")
    finite = array[~np.isnan(array)]
    n_excluded += int(array.size - finite.size)
    if finite.size == 0:
        return MedianIQR(math.nan, math.nan, math.nan, 0, n_excluded)
    q1, median, q3 = np.percentile(finite, [25.0, 50.0, 75.0])
    return MedianIQR(float(median), float(q1), float(q3), int(finite.size), n_excluded)


# ----------------------------------------------------------------------------------- Bootstrap


@dataclass(frozen=True)
class BootstrapCI:
    """A bootstrap confidence interval.

    Attributes:
        estimate: the statistic on the observed data.
        low, high: interval bounds (``NaN`` when BCa cannot be computed, e.g. the estimate lies
            outside the bootstrap distribution).
        confidence: nominal two-sided coverage, e.g. 0.95.
        method: ``"percentile"`` or ``"bca"``.
        n_resamples: bootstrap replicates drawn.
        n: observations used (rows with NaN dropped).
        n_dropped: rows dropped because they held NaN.
        n_clusters: clusters resampled, or ``None`` for an ordinary (row) bootstrap.
        seed: seed of ``numpy.random.default_rng`` used for the draws.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    method: BootstrapMethod
    n_resamples: int
    n: int
    n_dropped: int
    n_clusters: int | None
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self.__dict__)


def _default_statistic(values: FloatArray) -> float:
    return float(np.median(values))


def bootstrap_ci(
    values: npt.ArrayLike,
    statistic: Callable[[FloatArray], Any] = _default_statistic,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: BootstrapMethod = "percentile",
    clusters: npt.ArrayLike | None = None,
    seed: int = 0,
) -> BootstrapCI:
    """Seeded bootstrap confidence interval of ``statistic(values)``.

    Rows are drawn with replacement (``rng.integers(0, n, (n_resamples, n))`` with
    ``rng = numpy.random.default_rng(seed)``, the same draws as ``scipy.stats.bootstrap``).
    With ``clusters``, whole clusters are drawn instead (``n_clusters`` per replicate) and all
    their rows are kept together: slices are nested in patients and are not independent, so
    resampling slices would make the interval too narrow.

    Percentile: the ``(1 ± confidence)/2`` quantiles of the replicates. BCa (Efron 1987): bias
    correction from the share of replicates below the estimate (ties count half) and
    acceleration from the jackknife (leave one row, or one cluster, out). BCa is unreliable for
    the median of small samples (the jackknife of a median is not smooth), hence the default.

    Args:
        values: ``(n,)`` numbers, or ``(n, m)`` rows resampled together (paired data, e.g.
            ``np.column_stack([x, y])`` for a correlation); rows holding NaN are dropped.
        statistic: function of an array shaped like ``values`` returning a number; default
            the median of a 1-D array.
        n_resamples: number of bootstrap replicates (positive).
        confidence: two-sided level in ``(0, 1)``.
        method: ``"percentile"`` or ``"bca"``.
        clusters: ``(n,)`` cluster label of each row (e.g. patient id), or ``None``.
        seed: seed for ``numpy.random.default_rng``; the same seed gives the same interval.

    Returns:
        :class:`BootstrapCI`. When all replicates are equal the interval collapses to that value.

    Raises:
        ValueError: on fewer than 2 rows (or 2 clusters) after dropping NaN, a bad
            ``confidence``/``n_resamples``/``method``, or ``clusters`` of the wrong length.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    if method not in ("percentile", "bca"):
        raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}")
    data = np.asarray(values, dtype=np.float64)
    if data.ndim == 0:
        data = data.reshape(1)
    if data.ndim not in (1, 2):
        raise ValueError(f"values must be (n,) or (n, m), got shape {data.shape}")
    row_ok = ~np.isnan(data) if data.ndim == 1 else ~np.isnan(data).any(axis=1)
    labels: npt.NDArray[Any] | None = None
    if clusters is not None:
        labels = np.asarray(clusters)
        if labels.shape != (data.shape[0],):
            raise ValueError(
                f"clusters must have one label per row ({data.shape[0]}), got {labels.shape}"
            )
        labels = labels[row_ok]
    n_dropped = int(np.count_nonzero(~row_ok))
    data = data[row_ok]
    n = data.shape[0]
    rng = np.random.default_rng(seed)
    estimate = float(statistic(data))

    if labels is None:
        if n < 2:
            raise ValueError(f"bootstrap needs at least 2 observations, got {n}")
        draws = rng.integers(0, n, (n_resamples, n))
        replicates = np.array([float(statistic(data[row])) for row in draws])
        groups: list[npt.NDArray[np.intp]] = [np.array([i]) for i in range(n)]
        n_clusters: int | None = None
    else:
        _, inverse = np.unique(labels, return_inverse=True)
        groups = [np.flatnonzero(inverse == g) for g in range(int(inverse.max()) + 1)]
        n_clusters = len(groups)
        if n_clusters < 2:
            raise ValueError(f"a cluster bootstrap needs at least 2 clusters, got {n_clusters}")
        draws = rng.integers(0, n_clusters, (n_resamples, n_clusters))
        replicates = np.array(
            [float(statistic(data[np.concatenate([groups[g] for g in row])])) for row in draws]
        )

    alpha = (1.0 - confidence) / 2.0
    if np.ptp(replicates) == 0.0:
        low = high = float(replicates[0])
    elif method == "percentile":
        low, high = (float(q) for q in np.quantile(replicates, [alpha, 1.0 - alpha]))
    else:
        low, high = _bca(data, statistic, groups, estimate, replicates, alpha)
    return BootstrapCI(
        estimate=estimate,
        low=low,
        high=high,
        confidence=confidence,
        method=method,
        n_resamples=n_resamples,
        n=n,
        n_dropped=n_dropped,
        n_clusters=n_clusters,
        seed=seed,
    )


def _bca(
    data: FloatArray,
    statistic: Callable[[FloatArray], Any],
    groups: Sequence[npt.NDArray[np.intp]],
    estimate: float,
    replicates: FloatArray,
    alpha: float,
) -> tuple[float, float]:
    """BCa bounds (Efron & Tibshirani 1993, eqs 14.10–14.15), jackknife over ``groups``."""
    share_below = (
        np.count_nonzero(replicates < estimate) + np.count_nonzero(replicates <= estimate)
    ) / (2.0 * replicates.size)
    z0 = float(ndtri(share_below))
    everything = np.arange(data.shape[0])
    jackknife = np.array(
        [float(statistic(data[np.setdiff1d(everything, group)])) for group in groups]
    )
    deviation = jackknife.mean() - jackknife
    denominator = float(np.sum(deviation**2)) ** 1.5
    acceleration = float(np.sum(deviation**3)) / (6.0 * denominator) if denominator > 0 else 0.0
    if not math.isfinite(z0):
        return math.nan, math.nan
    bounds = []
    for z_alpha in (float(ndtri(alpha)), -float(ndtri(alpha))):
        shifted = z0 + z_alpha
        bounds.append(float(ndtr(z0 + shifted / (1.0 - acceleration * shifted))))
    low, high = np.quantile(replicates, bounds)
    return float(low), float(high)


# ------------------------------------------------------------------------- Reader-pair matrix


@dataclass(frozen=True)
class AgreementMatrix:
    """Median (IQR) Dice for every pair of raters, in the layout of Table 2.

    Attributes:
        raters: rater names in table order.
        cells: ``(rater_a, rater_b)`` with ``a`` before ``b`` in ``raters`` → summary.
    """

    raters: tuple[str, ...]
    cells: Mapping[tuple[str, str], MedianIQR] = field(default_factory=dict)

    def get(self, rater_a: str, rater_b: str) -> MedianIQR | None:
        """Summary of a pair in either order, ``None`` when that pair was not given."""
        return self.cells.get((rater_a, rater_b)) or self.cells.get((rater_b, rater_a))

    def medians(self) -> FloatArray:
        """``raters × raters`` symmetric array of medians; NaN on the diagonal and for gaps."""
        size = len(self.raters)
        out = np.full((size, size), math.nan)
        for (a, b), summary in self.cells.items():
            i, j = self.raters.index(a), self.raters.index(b)
            out[i, j] = out[j, i] = summary.median
        return out

    def table(self, decimals: int = 2) -> list[list[str]]:
        """Rows of strings as in Table 2: header ``["Reader", raters[1:]...]``, then one row per
        ``raters[:-1]``; the upper triangle holds ``"median (q1–q3)"``, the diagonal and lower
        triangle ``"..."``, and a pair that was not given ``"NA"``."""
        rows = [["Reader", *self.raters[1:]]]
        for i, rater in enumerate(self.raters[:-1]):
            row = [rater]
            for j, other in enumerate(self.raters[1:], start=1):
                summary = self.get(rater, other)
                if j <= i:
                    row.append("...")
                else:
                    row.append("NA" if summary is None else summary.format(decimals))
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        cells = [
            {"rater_a": a, "rater_b": b, "text": summary.format(2), **summary.to_dict()}
            for (a, b), summary in self.cells.items()
        ]
        return jsonable({"raters": list(self.raters), "cells": cells, "table": self.table()})


def pairwise_matrix(
    per_slice_dice: Mapping[tuple[str, str], npt.ArrayLike | SliceDice],
    *,
    raters: Sequence[str] | None = None,
) -> AgreementMatrix:
    """Summarize per-slice Dice of each rater pair into the reader × reader table (Table 2).

    Args:
        per_slice_dice: ``(rater_a, rater_b)`` → per-slice Dice values (or :class:`SliceDice`);
            each unordered pair at most once, ``rater_a != rater_b``.
        raters: table order; default the order of first appearance in the keys.

    Returns:
        :class:`AgreementMatrix` keyed by pairs in table order.

    Raises:
        ValueError: for a self-pair, a pair given twice (in either order), or a rater missing
            from ``raters``.
    """
    order: list[str] = list(raters) if raters is not None else []
    if raters is None:
        for a, b in per_slice_dice:
            for name in (a, b):
                if name not in order:
                    order.append(name)
    if len(set(order)) != len(order):
        raise ValueError(f"raters must be unique, got {order}")
    cells: dict[tuple[str, str], MedianIQR] = {}
    for (a, b), values in per_slice_dice.items():
        if a == b:
            raise ValueError(f"self-pair ({a!r}, {b!r}); summarize intra-rater Dice separately")
        for name in (a, b):
            if name not in order:
                raise ValueError(f"rater {name!r} is not in raters {order}")
        key = (a, b) if order.index(a) < order.index(b) else (b, a)
        if key in cells:
            raise ValueError(f"pair {key} given twice")
        cells[key] = summarize(values)
    return AgreementMatrix(raters=tuple(order), cells=cells)
