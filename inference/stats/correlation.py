"""Spearman rank correlation with a P value and a confidence interval (Table 3; 2021 paper).

ρ is Pearson's correlation of the mid-ranks (ties get the average rank); the two-sided P value
uses Student's t with ``n − 2`` degrees of freedom, ``t = ρ √((n − 2) / (1 − ρ²))`` — the same
as ``scipy.stats.spearmanr`` and R's ``cor.test(method = "spearman", exact = FALSE)``.

The default confidence interval back-transforms a Fisher z interval whose standard error is
``1.06 / √(n − 3)`` (Fieller, Hartley & Pearson 1957, Biometrika 44:470 — the variance of the
z-transformed Spearman ρ is larger than Pearson's ``1 / (n − 3)``)::

    z = artanh(ρ);  [lo, hi] = tanh(z ∓ z_{1−α/2} · 1.06 / √(n − 3))

It needs ``n ≥ 4``. A percentile/BCa bootstrap over pairs is available as ``ci="bootstrap"``.
Pairs where either value is NaN are dropped and counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from inference.stats._common import FloatArray, as_float_1d, format_number, jsonable
from inference.stats.agreement import BootstrapMethod, bootstrap_ci

CiMethod = Literal["fisher", "bootstrap"]

FIELLER_SE_FACTOR = 1.06


@dataclass(frozen=True)
class Correlation:
    """Spearman ρ between two variables.

    Attributes:
        rho: Spearman ρ in ``[-1, 1]`` (``NaN`` when a variable is constant).
        p_value: two-sided P (t approximation), ``NaN`` when ``rho`` is.
        ci_low, ci_high: confidence interval of ρ (``NaN`` when it cannot be computed).
        n: complete pairs used.
        n_dropped: pairs dropped because a value was NaN.
        confidence: nominal level of the interval.
        ci_method: ``"fisher"`` (Fieller SE) or ``"bootstrap-percentile"`` / ``"bootstrap-bca"``.
    """

    rho: float
    p_value: float
    ci_low: float
    ci_high: float
    n: int
    n_dropped: int = 0
    confidence: float = 0.95
    ci_method: str = "fisher"

    def format(self, decimals: int = 2) -> str:
        """``"ρ = -0.38 (95% CI: -0.49, -0.25); P < .001"``, P in the journal's style."""
        level = format_number(100 * self.confidence, 0)
        return (
            f"ρ = {format_number(self.rho, decimals)} ({level}% CI: "
            f"{format_number(self.ci_low, decimals)}, {format_number(self.ci_high, decimals)}); "
            f"P {format_p(self.p_value)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self.__dict__)


def format_p(p_value: float) -> str:
    """A P value in the papers' style, with the relation: ``"< .001"``, ``"= .023"``, ``"> .999"``.

    Three decimals, leading zero dropped (as in Table 1: ".752", ".017"); NaN gives ``"NA"``.
    """
    if not math.isfinite(p_value):
        return "NA"
    if p_value < 0.001:
        return "< .001"
    if p_value > 0.999:
        return "> .999"
    return "= " + f"{p_value:.3f}".lstrip("0")


def _ranks_correlation(x: FloatArray, y: FloatArray) -> float:
    rank_x, rank_y = stats.rankdata(x), stats.rankdata(y)
    dx, dy = rank_x - rank_x.mean(), rank_y - rank_y.mean()
    denominator = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    if denominator == 0.0:
        return math.nan
    return float(np.clip(np.sum(dx * dy) / denominator, -1.0, 1.0))


def spearman_rho(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Spearman ρ of two equal-length 1-D arrays without NaN (mid-ranks for ties).

    Raises:
        ValueError: if the lengths differ or the arrays are not 1-D.
    """
    xa, ya = as_float_1d(x, "x"), as_float_1d(y, "y")
    if xa.size != ya.size:
        raise ValueError(f"x and y differ in length: {xa.size} vs {ya.size}")
    return _ranks_correlation(xa, ya)


def fisher_ci(rho: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Fisher-z confidence interval of a Spearman ρ with SE ``1.06 / √(n − 3)`` (Fieller).

    Returns ``(NaN, NaN)`` when ``n < 4`` or ρ is NaN; ``(±1, ±1)`` when ρ is ±1.

    Raises:
        ValueError: if ``confidence`` is not in ``(0, 1)``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n < 4 or not math.isfinite(rho):
        return math.nan, math.nan
    if abs(rho) >= 1.0:
        return rho, rho
    z = math.atanh(rho)
    half_width = (
        float(stats.norm.ppf(0.5 + confidence / 2.0)) * FIELLER_SE_FACTOR / math.sqrt(n - 3)
    )
    return math.tanh(z - half_width), math.tanh(z + half_width)


def _p_value(rho: float, n: int) -> float:
    if not math.isfinite(rho):
        return math.nan
    if abs(rho) >= 1.0:
        return 0.0
    t = rho * math.sqrt((n - 2) / ((1.0 - rho) * (1.0 + rho)))
    return float(2.0 * stats.t.sf(abs(t), n - 2))


def spearman(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    confidence: float = 0.95,
    ci: CiMethod = "fisher",
    n_resamples: int = 2000,
    bootstrap_method: BootstrapMethod = "percentile",
    seed: int = 0,
) -> Correlation:
    """Spearman ρ of ``x`` and ``y`` with a two-sided P value and a confidence interval.

    Args:
        x: 1-D values (e.g. ILD extent in % of lung volume, or mean log-Jacobian, unitless).
        y: 1-D values of the same length (e.g. DLCO in % predicted); NaN in either drops the pair.
        confidence: level of the interval.
        ci: ``"fisher"`` (SE 1.06/√(n−3), default) or ``"bootstrap"`` (pairs resampled,
            seeded).
        n_resamples: bootstrap replicates (``ci="bootstrap"`` only).
        bootstrap_method: ``"percentile"`` or ``"bca"`` (``ci="bootstrap"`` only).
        seed: bootstrap seed.

    Returns:
        :class:`Correlation`. A constant variable gives ρ = P = NaN and a NaN interval.

    Raises:
        ValueError: if lengths differ, fewer than 3 complete pairs remain, or ``ci`` is unknown.
    """
    if ci not in ("fisher", "bootstrap"):
        raise ValueError(f"ci must be 'fisher' or 'bootstrap', got {ci!r}")
    xa, ya = as_float_1d(x, "x"), as_float_1d(y, "y")
    if xa.size != ya.size:
        raise ValueError(f"x and y differ in length: {xa.size} vs {ya.size}")
    complete = ~(np.isnan(xa) | np.isnan(ya))
    xa, ya = xa[complete], ya[complete]
    n = int(xa.size)
    if n < 3:
        raise ValueError(f"Spearman correlation needs at least 3 complete pairs, got {n}")
    rho = _ranks_correlation(xa, ya)
    p_value = _p_value(rho, n)
    if ci == "fisher":
        low, high = fisher_ci(rho, n, confidence)
        method = "fisher"
    elif not math.isfinite(rho):
        low = high = math.nan
        method = f"bootstrap-{bootstrap_method}"
    else:

        def statistic(rows: FloatArray) -> float:
            return _ranks_correlation(rows[:, 0], rows[:, 1])

        result = bootstrap_ci(
            np.column_stack([xa, ya]),
            statistic,
            n_resamples=n_resamples,
            confidence=confidence,
            method=bootstrap_method,
            seed=seed,
        )
        low, high = result.low, result.high
        method = f"bootstrap-{bootstrap_method}"
    return Correlation(
        rho=rho,
        p_value=p_value,
        ci_low=low,
        ci_high=high,
        n=n,
        n_dropped=int(np.count_nonzero(~complete)),
        confidence=confidence,
        ci_method=method,
    )


def correlation_table(
    x: npt.ArrayLike,
    outcomes: Mapping[str, npt.ArrayLike],
    *,
    confidence: float = 0.95,
    ci: CiMethod = "fisher",
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Correlation]:
    """Spearman ρ of one variable against several (Table 3: extent vs TLC, FVC, DLCO, KCO).

    Args:
        x: 1-D values per patient (e.g. ILD extent, % of lung volume).
        outcomes: name → 1-D values per patient in the same order (e.g. ``"DLCO"`` → % predicted);
            NaN drops the patient for that outcome only.
        confidence, ci, n_resamples, seed: as in :func:`spearman`.

    Returns:
        name → :class:`Correlation`, in the order of ``outcomes``.

    Raises:
        ValueError: as :func:`spearman`, naming the outcome.
    """
    table: dict[str, Correlation] = {}
    for name, values in outcomes.items():
        try:
            table[name] = spearman(
                x, values, confidence=confidence, ci=ci, n_resamples=n_resamples, seed=seed
            )
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from error
    return table
