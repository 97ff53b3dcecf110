"""Table 1 rows (median [IQR], counts (%), Mann-Whitney / Kruskal-Wallis / Fisher P) and Goh."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from inference.stats.tables import (
    CategoricalRow,
    ContinuousRow,
    _exact_two_row,
    categorical_from_counts,
    describe_categorical,
    describe_continuous,
    fisher_exact_any,
    format_table,
    goh_stage,
)

# ----------------------------------------------------------------------------- continuous


def test_two_groups_use_mann_whitney_hand_computed() -> None:
    # complete separation of 3 vs 3: U = 0, exact two-sided P = 2 / C(6, 3) = 0.1
    row = describe_continuous({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]}, label="Age (y)")
    assert row.test == "mann-whitney"
    assert row.statistic == 0.0
    assert row.p_value == pytest.approx(0.1)
    assert row.cells(decimals=0) == ["Age (y)", "2 [2\u20133]", "5 [5\u20136]", ".100"]  # half up


def test_two_groups_match_scipy_mann_whitney() -> None:
    rng = np.random.default_rng(0)
    first, second = rng.normal(55, 10, 40).round(), rng.normal(60, 10, 31).round()
    row = describe_continuous({"PFT set": first, "external": second})
    reference = scipy.stats.mannwhitneyu(first, second, alternative="two-sided")
    assert row.p_value == pytest.approx(reference.pvalue)
    assert row.summaries["external"].median == pytest.approx(np.median(second))


def test_three_groups_use_kruskal_wallis_hand_computed() -> None:
    # rank sums 3, 7, 11 of N = 6: H = 12/(6·7)·(9 + 49 + 121)/2 − 3·7 = 4.5714;
    # with 2 df the χ² survival is exp(−H/2) = 0.10170
    row = describe_continuous({"a": [1, 2], "b": [3, 4], "c": [5, 6]})
    assert row.test == "kruskal-wallis"
    assert row.statistic == pytest.approx(32 / 7)
    assert row.p_value == pytest.approx(math.exp(-16 / 7))
    assert row.p_value == pytest.approx(0.10170, abs=1e-5)


def test_three_groups_match_scipy_kruskal_with_ties_and_nan() -> None:
    groups: dict[str, list[float]] = {
        "training": [55, 50, 64, 70, 41, np.nan],
        "test": [55, 46, 64, 64, 80],
        "pft": [58, 48, 67, 67, 67, 30, 90],
    }
    row = describe_continuous(groups)
    clean = [np.array(v, float)[~np.isnan(np.array(v, float))] for v in groups.values()]
    assert row.p_value == pytest.approx(scipy.stats.kruskal(*clean).pvalue)
    assert (row.summaries["training"].n, row.summaries["training"].n_excluded) == (5, 1)


def test_groups_without_values_are_shown_and_left_out_of_the_test() -> None:
    # Table 1: AtlasNet extent is "..." for the training set and tested across the other two
    row = describe_continuous({"training": [], "test": [17.5, 30.8], "pft": [12.7, 4.0, 24.7]})
    assert row.test == "mann-whitney"
    assert row.tested_groups == ("test", "pft")
    assert row.cells()[1] == "..."


def test_identical_values_give_no_p_value() -> None:
    row = describe_continuous({"a": [1, 1], "b": [1, 1], "c": [1]})
    assert row.test == "kruskal-wallis" and math.isnan(row.p_value)
    assert json.dumps(row.to_dict(), allow_nan=False)


# ---------------------------------------------------------------------------- categorical


def test_two_by_two_uses_fisher_hand_computed() -> None:
    # [[3, 0], [0, 3]]: the two most extreme tables each have probability 1/C(6,3) → P = 0.1
    row = describe_categorical({"a": [True] * 3, "b": [False] * 3}, label="Women")
    assert row.test == "fisher"
    assert row.p_value == pytest.approx(0.1)
    assert row.cells() == ["Women", "3 (100)", "0 (0)", ".100"]


def test_two_by_two_matches_scipy() -> None:
    table = [[79, 98], [12, 23]]
    p_value, test = fisher_exact_any(table)
    assert test == "fisher"
    assert p_value == pytest.approx(scipy.stats.fisher_exact(table).pvalue)


def test_exact_enumeration_agrees_with_scipy_on_two_by_two_tables() -> None:
    for table in ([[8, 2], [1, 5]], [[3, 7], [9, 1]], [[0, 5], [4, 4]], [[10, 10], [10, 10]]):
        array = np.array(table)
        ours = _exact_two_row(array[0], array.sum(axis=0))
        assert ours == pytest.approx(scipy.stats.fisher_exact(array).pvalue, rel=1e-9)


def test_two_by_three_exact_hand_computed() -> None:
    # column totals (2, 2, 2), top row 2: 3 tables like (2,0,0) weigh C(2,2)=1 each, 3 like
    # (1,1,0) weigh 2·2 = 4 each; total C(6,2) = 15. Observed (2,0,0) is least likely: P = 3/15.
    p_value, test = fisher_exact_any([[2, 0, 0], [0, 2, 2]])
    assert test == "fisher-freeman-halton"
    assert p_value == pytest.approx(0.2)


def test_two_by_three_reproduces_table_1_of_the_2020_paper() -> None:
    # women 14/17, 17/20, 137/171 → P = .942; diffuse SSc 6/17, 13/20, 83/171 → P = .199
    women = categorical_from_counts(
        {
            "training": {True: 14, False: 3},
            "test": {True: 17, False: 3},
            "pft": {True: 137, False: 34},
        }
    )
    diffuse = categorical_from_counts(
        {
            "training": {True: 6, False: 11},
            "test": {True: 13, False: 7},
            "pft": {True: 83, False: 88},
        }
    )
    assert women.test == "fisher-freeman-halton"
    assert round(women.p_value, 3) == 0.942
    assert round(diffuse.p_value, 3) == 0.199
    assert women.cells() == ["", "14 (82)", "17 (85)", "137 (80)", ".942"]


def test_two_by_three_agrees_with_scipy_monte_carlo() -> None:
    table = np.array([[6, 13, 83], [11, 7, 88]])
    exact, _ = fisher_exact_any(table)
    method = scipy.stats.MonteCarloMethod(n_resamples=20000, rng=np.random.default_rng(0))
    monte_carlo = scipy.stats.fisher_exact(table, method=method).pvalue
    assert exact == pytest.approx(monte_carlo, abs=0.01)
    transposed, test = fisher_exact_any(table.T)
    assert test == "fisher-freeman-halton" and transposed == pytest.approx(exact)


def test_larger_tables_use_seeded_monte_carlo() -> None:
    table = [[5, 2, 1], [1, 6, 2], [2, 1, 7]]
    first = fisher_exact_any(table, seed=1)
    assert first[1] == "fisher-freeman-halton-monte-carlo"
    assert fisher_exact_any(table, seed=1) == first
    assert 0.0 < first[0] < 0.05


def test_degenerate_tables_have_no_test() -> None:
    assert fisher_exact_any([[3, 4], [0, 0]])[1] is None
    with pytest.raises(ValueError, match="non-negative"):
        fisher_exact_any([[1, -1], [2, 2]])


def test_categorical_levels_and_missing_values() -> None:
    row = describe_categorical(
        {
            "worsening": ["limited", "diffuse", None, "limited", float("nan")],
            "stable": ["limited", "limited", "diffuse"],
        },
        label="SSc subtype",
        levels=["limited", "diffuse"],
    )
    assert row.n == {"worsening": 3, "stable": 3}
    assert row.n_missing == {"worsening": 2, "stable": 0}
    assert row.counts["worsening"] == {"limited": 2, "diffuse": 1}
    assert row.percent("worsening", "limited") == pytest.approx(200 / 3)
    assert row.cells("diffuse") == ["SSc subtype", "1 (33)", "1 (33)", "> .999"]
    payload = json.loads(json.dumps(row.to_dict(), allow_nan=False))
    assert payload["groups"]["worsening"]["n_missing"] == 2


def test_categorical_rejects_unknown_levels() -> None:
    with pytest.raises(ValueError, match="not in levels"):
        describe_categorical({"a": ["x", "y"]}, levels=["x"])


def test_format_table_assembles_rows() -> None:
    rows: list[ContinuousRow | CategoricalRow] = [
        describe_continuous({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]}, label="Age"),
        describe_categorical({"a": [True, True, False], "b": [True, False, False]}, label="Women"),
    ]
    table = format_table(rows, decimals=1)
    assert table[0] == ["Characteristic", "a", "b", "P Value"]
    assert table[1][:3] == ["Age", "2.0 [1.5\u20132.5]", "5.0 [4.5\u20135.5]"]
    assert table[2][:3] == ["Women", "2 (67)", "1 (33)"]
    with pytest.raises(ValueError, match="same groups"):
        format_table([rows[0], describe_continuous({"c": [1.0]})])


# ------------------------------------------------------------------------------------ Goh


@pytest.mark.parametrize(
    ("extent_pct", "stage"),
    [
        (0.0, "limited"),
        (12.7, "limited"),
        (20.0, "limited"),
        (20.01, "extensive"),
        (100, "extensive"),
    ],
)
def test_goh_stage(extent_pct: float, stage: str) -> None:
    assert goh_stage(extent_pct) == stage


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 100.5, float("inf")])
def test_goh_stage_rejects_non_percentages(bad: float) -> None:
    with pytest.raises(ValueError, match="extent_pct"):
        goh_stage(bad)
