"""Dice, the empty-slice rule, median (IQR), the bootstrap and the Table 2 reader matrix."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
from scipy.spatial.distance import dice as scipy_dice_dissimilarity

from inference.stats.agreement import (
    MedianIQR,
    SliceDice,
    bootstrap_ci,
    dice,
    dice_per_slice,
    pairwise_matrix,
    pool_slices,
    summarize,
)
from inference.volume import GeometryError, Volume


def _three_slices() -> tuple[np.ndarray, np.ndarray]:
    """Slice 0: a has 4 voxels, b 2 of them; slice 1: a only; slice 2: both empty."""
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[0, :2, :2] = True
    b[0, :2, :1] = True
    a[1, 0, 0] = True
    return a, b


# ------------------------------------------------------------------------------------ dice


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 1, 0, 0], [1, 1, 0, 0], 1.0),
        ([1, 1, 0, 0], [0, 0, 1, 1], 0.0),
        ([1, 1, 1, 1], [1, 1, 0, 0], 2 * 2 / (4 + 2)),
        ([1, 1, 1, 0], [0, 1, 1, 1], 2 * 2 / (3 + 3)),
        ([1, 0, 0, 0], [0, 0, 0, 0], 0.0),
    ],
)
def test_dice_hand_computed(a: list[int], b: list[int], expected: float) -> None:
    assert dice(np.array(a), np.array(b)) == pytest.approx(expected)


def test_dice_matches_scipy_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for fraction in (0.05, 0.3, 0.7):
        a = rng.random((6, 20, 20)) < fraction
        b = rng.random((6, 20, 20)) < fraction
        expected = 1.0 - scipy_dice_dissimilarity(a.ravel(), b.ravel())
        assert dice(a, b) == pytest.approx(expected, abs=1e-12)


def test_dice_treats_nonzero_labels_as_foreground() -> None:
    assert dice(np.array([0, 2, 5]), np.array([0, 1, 0])) == pytest.approx(2 * 1 / 3)


@pytest.mark.parametrize(
    ("rule", "expected"), [("skip", math.nan), ("nan", math.nan), ("one", 1.0)]
)
def test_dice_of_two_empty_masks_follows_the_rule(rule: str, expected: float) -> None:
    value = dice(np.zeros(5), np.zeros(5), empty=rule)  # type: ignore[arg-type]
    assert value == expected or (math.isnan(value) and math.isnan(expected))


def test_dice_default_rule_marks_empty_pair_as_nan() -> None:
    assert math.isnan(dice(np.zeros((2, 2)), np.zeros((2, 2))))


def test_dice_rejects_bad_input() -> None:
    with pytest.raises(GeometryError):
        dice(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError, match="empty must be"):
        dice(np.zeros(4), np.zeros(4), empty="zero")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        dice(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))


def test_dice_checks_volume_grids() -> None:
    a = Volume(np.ones((2, 2, 2), np.uint8))
    b = Volume(np.ones((2, 2, 2), np.uint8), spacing_mm=(2.0, 1.0, 1.0))
    assert dice(a, a) == 1.0
    with pytest.raises(GeometryError, match="same grid"):
        dice(a, b)


# --------------------------------------------------------------------------- per slice


def test_dice_per_slice_skips_and_counts_both_empty_slices_by_default() -> None:
    a, b = _three_slices()
    result = dice_per_slice(a, b)
    np.testing.assert_allclose(result.values, [4 / 6, 0.0])
    assert result.slice_index.tolist() == [0, 1]
    assert result.n_both_empty == 1
    summary = result.summary()
    assert (summary.n, summary.n_excluded) == (2, 1)
    assert summary.median == pytest.approx(2 / 6)


def test_dice_per_slice_nan_rule_keeps_alignment_with_k() -> None:
    a, b = _three_slices()
    result = dice_per_slice(a, b, empty="nan")
    assert result.slice_index.tolist() == [0, 1, 2]
    assert result.values[:2].tolist() == pytest.approx([4 / 6, 0.0])
    assert math.isnan(result.values[2])
    assert (result.summary().n, result.summary().n_excluded) == (2, 1)


def test_dice_per_slice_one_rule_counts_empty_as_agreement() -> None:
    a, b = _three_slices()
    result = dice_per_slice(a, b, empty="one")
    np.testing.assert_allclose(result.values, [4 / 6, 0.0, 1.0])
    assert (result.summary().n, result.summary().n_excluded) == (3, 0)
    assert result.summary().median == pytest.approx(4 / 6)


def test_dice_per_slice_agrees_with_dice_of_each_slice() -> None:
    rng = np.random.default_rng(3)
    a = rng.random((8, 10, 10)) < 0.2
    b = rng.random((8, 10, 10)) < 0.2
    result = dice_per_slice(a, b)
    assert result.values.tolist() == pytest.approx([dice(a[k], b[k]) for k in range(8)])


def test_dice_per_slice_restricts_to_annotated_slices() -> None:
    a, b = _three_slices()
    result = dice_per_slice(a, b, slices=[1, 2])
    assert result.slice_index.tolist() == [1]
    assert result.n_both_empty == 1
    with pytest.raises(ValueError, match="slice indices"):
        dice_per_slice(a, b, slices=[3])


def test_dice_per_slice_needs_3d() -> None:
    with pytest.raises(GeometryError, match="3D"):
        dice_per_slice(np.zeros((4, 4)), np.zeros((4, 4)))


def test_pool_slices_records_patients() -> None:
    a, b = _three_slices()
    pooled = pool_slices({"p1": dice_per_slice(a, b), "p2": dice_per_slice(a, a)})
    assert pooled.values.tolist() == pytest.approx([4 / 6, 0.0, 1.0, 1.0])
    assert pooled.clusters is not None
    assert pooled.clusters.tolist() == ["p1", "p1", "p2", "p2"]
    assert pooled.n_both_empty == 2
    with pytest.raises(ValueError, match="different empty rules"):
        pool_slices({"p1": dice_per_slice(a, b), "p2": dice_per_slice(a, b, empty="one")})


# ---------------------------------------------------------------------------- summarize


def test_summarize_hand_computed_quartiles() -> None:
    # linear interpolation (type 7): positions 0.75, 1.5, 2.25 of the sorted values
    summary = summarize([4.0, 1.0, 3.0, 2.0])
    assert (summary.median, summary.q1, summary.q3) == pytest.approx((2.5, 1.75, 3.25))
    assert (summary.n, summary.n_excluded) == (4, 0)


def test_summarize_matches_numpy_and_counts_nan() -> None:
    values = np.array([0.7, np.nan, 0.63, 0.77, 0.5, np.nan, 0.9])
    summary = summarize(values, n_excluded=3)
    finite = values[~np.isnan(values)]
    assert summary.median == pytest.approx(np.median(finite))
    assert summary.q1 == pytest.approx(np.percentile(finite, 25))
    assert summary.q3 == pytest.approx(np.percentile(finite, 75))
    assert (summary.n, summary.n_excluded) == (5, 5)


def test_summarize_of_nothing_is_na() -> None:
    summary = summarize([np.nan])
    assert summary.n == 0 and summary.n_excluded == 1 and math.isnan(summary.median)
    assert summary.format() == "NA"
    assert json.dumps(summary.to_dict(), allow_nan=False)


def test_median_iqr_formats_like_the_tables() -> None:
    summary = MedianIQR(median=0.704, q1=0.6251, q3=0.7749, n=10)
    assert summary.format() == "0.70 (0.63\u20130.77)"
    assert MedianIQR(55.0, 50.0, 64.0, 17).format(0, brackets="[]") == "55 [50\u201364]"


# ---------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize("statistic", [np.median, np.mean])
def test_bootstrap_matches_scipy_bootstrap(method: str, statistic: object) -> None:
    values = np.random.default_rng(1).normal(size=25)
    ours = bootstrap_ci(values, statistic, n_resamples=400, method=method, seed=11)  # type: ignore[arg-type]
    reference = scipy.stats.bootstrap(
        (values,),
        statistic,  # type: ignore[arg-type]
        n_resamples=400,
        method="BCa" if method == "bca" else "percentile",
        rng=np.random.default_rng(11),
    )
    assert ours.low == pytest.approx(reference.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(reference.confidence_interval.high, abs=1e-12)
    assert ours.estimate == pytest.approx(float(statistic(values)))  # type: ignore[operator]


def test_bootstrap_is_seeded() -> None:
    values = np.random.default_rng(2).normal(size=30)
    first = bootstrap_ci(values, n_resamples=300, seed=5)
    assert bootstrap_ci(values, n_resamples=300, seed=5) == first
    assert bootstrap_ci(values, n_resamples=300, seed=6) != first
    assert first.low < first.estimate < first.high
    assert json.loads(json.dumps(first.to_dict(), allow_nan=False))["seed"] == 5


def test_bootstrap_of_constant_values_collapses() -> None:
    result = bootstrap_ci([0.7, 0.7, 0.7], n_resamples=50, method="bca")
    assert (result.low, result.estimate, result.high) == (0.7, 0.7, 0.7)


def test_cluster_bootstrap_resamples_whole_clusters() -> None:
    # cluster "a" has 1 row, cluster "b" has 3: a replicate of 2 clusters has 2, 4 or 6 rows
    # with probabilities 1/4, 1/2, 1/4, so the 2.5 % and 97.5 % quantiles are exactly 2 and 6.
    result = bootstrap_ci(
        [0.0, 1.0, 1.0, 1.0],
        lambda rows: rows.size,
        clusters=["a", "b", "b", "b"],
        n_resamples=400,
        seed=0,
    )
    assert (result.low, result.high) == (2.0, 6.0)
    assert result.n_clusters == 2


def test_cluster_bootstrap_with_singleton_clusters_is_the_plain_bootstrap() -> None:
    values = np.random.default_rng(4).random(20)
    plain = bootstrap_ci(values, n_resamples=200, seed=9)
    clustered = bootstrap_ci(values, clusters=np.arange(20), n_resamples=200, seed=9)
    assert (clustered.low, clustered.high) == (plain.low, plain.high)


def test_cluster_bootstrap_widens_the_interval_for_correlated_slices() -> None:
    rng = np.random.default_rng(5)
    patient_level = rng.normal(0.7, 0.08, size=8)
    values = np.repeat(patient_level, 20) + rng.normal(0, 0.005, size=160)
    clusters = np.repeat(np.arange(8), 20)
    naive = bootstrap_ci(values, np.mean, n_resamples=300, seed=1)
    clustered = bootstrap_ci(values, np.mean, clusters=clusters, n_resamples=300, seed=1)
    assert (clustered.high - clustered.low) > 3 * (naive.high - naive.low)


def test_bootstrap_resamples_paired_rows_and_drops_nan_rows() -> None:
    rows = np.array([[1.0, 2.0], [2.0, np.nan], [3.0, 5.0], [4.0, 9.0]])
    result = bootstrap_ci(rows, lambda r: float(np.mean(r[:, 1] - r[:, 0])), n_resamples=100)
    assert (result.n, result.n_dropped) == (3, 1)
    assert result.estimate == pytest.approx((1 + 2 + 5) / 3)


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_ci([1.0, np.nan])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="clusters"):
        bootstrap_ci([1.0, 2.0], clusters=["a"])
    with pytest.raises(ValueError, match="2 clusters"):
        bootstrap_ci([1.0, 2.0], clusters=["a", "a"])


# ------------------------------------------------------------------------------ Table 2


def _matrix_input() -> dict[tuple[str, str], object]:
    return {
        ("Radiologist 1", "Radiologist 2"): [0.6, 0.7, 0.8],
        ("Radiologist 3", "Radiologist 1"): [0.5, 0.6, 0.7, 0.8, 0.9],
        ("Radiologist 2", "Radiologist 3"): [0.71, 0.71],
        ("Radiologist 1", "AtlasNet"): [0.74],
    }


def test_pairwise_matrix_has_the_layout_of_table_2() -> None:
    matrix = pairwise_matrix(
        _matrix_input(),  # type: ignore[arg-type]
        raters=["Radiologist 1", "Radiologist 2", "Radiologist 3", "AtlasNet"],
    )
    assert matrix.table() == [
        ["Reader", "Radiologist 2", "Radiologist 3", "AtlasNet"],
        [
            "Radiologist 1",
            "0.70 (0.65\u20130.75)",
            "0.70 (0.60\u20130.80)",
            "0.74 (0.74\u20130.74)",
        ],
        ["Radiologist 2", "...", "0.71 (0.71\u20130.71)", "NA"],
        ["Radiologist 3", "...", "...", "NA"],
    ]
    medians = matrix.medians()
    np.testing.assert_allclose(medians, medians.T)
    assert medians[0, 2] == pytest.approx(0.7)
    assert np.isnan(np.diag(medians)).all()
    # reversed pair normalised to table order, and looked up in either order
    assert (
        matrix.get("Radiologist 3", "Radiologist 1")
        is matrix.cells[("Radiologist 1", "Radiologist 3")]
    )


def test_pairwise_matrix_counts_skipped_slices_and_serialises() -> None:
    a, b = _three_slices()
    matrix = pairwise_matrix({("R1", "R2"): dice_per_slice(a, b)})
    cell = matrix.cells[("R1", "R2")]
    assert (cell.n, cell.n_excluded) == (2, 1)
    payload = json.loads(json.dumps(matrix.to_dict(), allow_nan=False))
    assert payload["cells"][0]["n_excluded"] == 1
    assert payload["raters"] == ["R1", "R2"]


def test_pairwise_matrix_rejects_duplicates_and_self_pairs() -> None:
    with pytest.raises(ValueError, match="twice"):
        pairwise_matrix({("A", "B"): [0.5], ("B", "A"): [0.6]})
    with pytest.raises(ValueError, match="self-pair"):
        pairwise_matrix({("A", "A"): [0.5]})
    with pytest.raises(ValueError, match="not in raters"):
        pairwise_matrix({("A", "B"): [0.5]}, raters=["A"])


def test_slice_dice_to_dict_is_json() -> None:
    a, b = _three_slices()
    payload = dice_per_slice(a, b, empty="nan", patient="p1").to_dict()
    text = json.dumps(payload, allow_nan=False)
    assert json.loads(text)["values"][2] is None
    assert isinstance(dice_per_slice(a, b), SliceDice)
