"""Spearman ρ, its P value and its Fisher-z (Fieller) or bootstrap confidence interval."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from inference.stats.correlation import (
    correlation_table,
    fisher_ci,
    format_p,
    spearman,
    spearman_rho,
)

Z_975 = 1.959963984540054


def test_spearman_hand_computed() -> None:
    # ranks differ by d = (-1, 1, -1, 1, 0): ρ = 1 − 6·Σd² / (n(n² − 1)) = 1 − 24/120 = 0.8
    result = spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert result.rho == pytest.approx(0.8)
    # t = ρ √((n − 2)/(1 − ρ²)) = 0.8 · √(3 / 0.36) = 2.3094; two-sided, 3 df
    t = 0.8 * math.sqrt(3 / 0.36)
    assert t == pytest.approx(2.309401, abs=1e-6)
    assert result.p_value == pytest.approx(2 * scipy.stats.t.sf(t, 3))
    assert result.p_value == pytest.approx(0.10408, abs=1e-4)
    # Fisher z with the Fieller SE 1.06/√(n − 3): z = artanh 0.8 = 1.098612, SE = 0.749533
    half = Z_975 * 1.06 / math.sqrt(2)
    assert result.ci_low == pytest.approx(math.tanh(1.0986123 - half), abs=1e-6)
    assert result.ci_high == pytest.approx(math.tanh(1.0986123 + half), abs=1e-6)
    assert (result.ci_low, result.ci_high) == pytest.approx((-0.35438, 0.98834), abs=1e-4)
    assert (result.n, result.n_dropped, result.ci_method) == (5, 0, "fisher")


def test_spearman_with_ties_uses_mid_ranks() -> None:
    # y ranks (1, 2, 3.5, 5, 3.5); Pearson of ranks with x = 1..5 → 0.8207826816681233
    assert spearman_rho([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)


@pytest.mark.parametrize("n", [6, 20, 171])
def test_spearman_matches_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = np.round(-0.6 * x + rng.normal(size=n), 1)  # rounded: ties in y
    ours = spearman(x, y)
    reference = scipy.stats.spearmanr(x, y)
    assert ours.rho == pytest.approx(reference.statistic, abs=1e-12)
    assert ours.p_value == pytest.approx(reference.pvalue, rel=1e-9)


def test_spearman_drops_incomplete_pairs() -> None:
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0])
    y = np.array([3.0, 1.0, 2.0, np.nan, 6.0, 5.0, 9.0])
    ours = spearman(x, y)
    keep = ~(np.isnan(x) | np.isnan(y))
    reference = scipy.stats.spearmanr(x[keep], y[keep])
    assert (ours.n, ours.n_dropped) == (5, 2)
    assert ours.rho == pytest.approx(reference.statistic)
    assert ours.p_value == pytest.approx(reference.pvalue)


def test_spearman_of_a_monotone_relation() -> None:
    result = spearman([1, 2, 3, 4], [10, 20, 30, 1000])
    assert result.rho == 1.0 and result.p_value == 0.0
    assert (result.ci_low, result.ci_high) == (1.0, 1.0)


def test_spearman_of_a_constant_is_undefined() -> None:
    result = spearman([1, 2, 3, 4], [5, 5, 5, 5])
    assert math.isnan(result.rho) and math.isnan(result.p_value) and math.isnan(result.ci_low)
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["rho"] is None


def test_spearman_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        spearman([1, 2, np.nan], [1, 2, 3])
    with pytest.raises(ValueError, match="length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="ci must be"):
        spearman([1, 2, 3], [1, 2, 3], ci="exact")  # type: ignore[arg-type]


def test_fisher_ci_needs_four_pairs() -> None:
    assert all(math.isnan(v) for v in fisher_ci(0.5, 3))
    result = spearman([1, 2, 3], [1, 3, 2])
    assert result.rho == pytest.approx(0.5)
    assert math.isnan(result.ci_low) and math.isnan(result.ci_high)


def test_fisher_ci_reproduces_the_2021_paper_within_rounding() -> None:
    # Chassagnon 2021: mean log-Jacobian vs ΔFVC%, R = −0.38 (95% CI: −0.25, −0.49), n = 212
    low, high = fisher_ci(-0.38, 212)
    assert low == pytest.approx(-0.49, abs=0.01)
    assert high == pytest.approx(-0.25, abs=0.01)


def test_fisher_ci_is_wider_than_pearson_by_the_fieller_factor() -> None:
    low, high = fisher_ci(0.3, 50)
    width_z = math.atanh(high) - math.atanh(low)
    assert width_z == pytest.approx(2 * Z_975 * 1.06 / math.sqrt(47))


def test_bootstrap_ci_matches_scipy_paired_bootstrap() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    ours = spearman(x, y, ci="bootstrap", n_resamples=300, seed=3)

    def rho(a: np.ndarray, b: np.ndarray) -> float:
        return float(scipy.stats.spearmanr(a, b).statistic)

    reference = scipy.stats.bootstrap(
        (x, y),
        rho,
        paired=True,
        vectorized=False,
        n_resamples=300,
        method="percentile",
        rng=np.random.default_rng(3),
    )
    assert ours.ci_low == pytest.approx(reference.confidence_interval.low, abs=1e-12)
    assert ours.ci_high == pytest.approx(reference.confidence_interval.high, abs=1e-12)
    assert ours.ci_method == "bootstrap-percentile"
    assert ours.ci_low < ours.rho < ours.ci_high


def test_correlation_table_per_outcome() -> None:
    extent = [5.0, 10.0, 12.0, 20.0, 30.0, 40.0]
    table = correlation_table(
        extent,
        {
            "TLC": [100, 95, 90, 80, 70, 60],
            "DLCO": [80, np.nan, 60, 65, 40, 30],
        },
    )
    assert list(table) == ["TLC", "DLCO"]
    assert table["TLC"].rho == -1.0
    assert table["DLCO"].n == 5 and table["DLCO"].n_dropped == 1
    assert table["DLCO"].rho == pytest.approx(-0.9)
    with pytest.raises(ValueError, match="KCO"):
        correlation_table(extent, {"KCO": [1, np.nan, np.nan, np.nan, np.nan, 2]})


@pytest.mark.parametrize(
    ("p", "text"),
    [(0.0004, "< .001"), (0.023, "= .023"), (0.09, "= .090"), (0.9424, "= .942"), (1.0, "> .999")],
)
def test_format_p(p: float, text: str) -> None:
    assert format_p(p) == text


def test_correlation_formats_for_a_report() -> None:
    result = spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert result.format() == "ρ = 0.80 (95% CI: -0.35, 0.99); P = .104"
