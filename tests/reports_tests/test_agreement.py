"""Per-slice Dice rows, the Table 2 matrix, intra-observer, engines, STAPLE, bootstrap, and the
incremental update after a new contour."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from inference.stats import bootstrap_ci, dice, staple, summarize
from reports.models import AgreementState, BootstrapCache, SliceAgreement
from reports.services import agreement
from tests.reports_tests.conftest import (
    assignment_of,
    draw,
    instances_of,
    mask_of,
    submit,
    write_label_map,
)

pytestmark = pytest.mark.django_db


def set_dice(mask_a, mask_b):
    """An independent Dice: pixel sets, no numpy arithmetic."""
    a = {(r, c) for r, c in zip(*np.nonzero(mask_a), strict=True)}
    b = {(r, c) for r, c in zip(*np.nonzero(mask_b), strict=True)}
    if not a and not b:
        return None
    return 2 * len(a & b) / (len(a) + len(b))


@pytest.fixture
def read_study(three_readers, reader_a, reader_b, reader_c):
    """A, B, C draw ILD on slices 0, 1, 3 (slice 2 and 4: nobody) and lung on every slice."""
    study = three_readers
    case = study.cases.get()
    s = instances_of(case)
    a, b, c = (assignment_of(study, r) for r in (reader_a, reader_b, reader_c))
    draw(a, s[0], x0=-10, size=8)
    draw(b, s[0], x0=-8, size=8)
    draw(c, s[0], x0=-10, size=6)
    draw(a, s[1], size=6)
    draw(c, s[1], x0=-6, y0=-6, size=6)
    for reader in (a, b, c):
        draw(reader, s[3], size=10)
    for k, inst in enumerate(s):
        draw(a, inst, structure="lung", x0=-14, y0=-14, size=24)
        draw(b, inst, structure="lung", x0=-14 + (k % 2) * 2, y0=-14, size=24)
        draw(c, inst, structure="lung", x0=-12, y0=-12, size=22)
    for reader in (a, b, c):
        submit(reader)
    return study


def latest_masks(study, structure):
    from annotation.models import ContourVersion
    from annotation.selectors import latest_contours

    masks = {}
    for contour in latest_contours(
        ContourVersion.objects.filter(assignment__study=study, structure=structure)
    ):
        masks[(contour.assignment_id, contour.referenced_sop_instance_uid)] = mask_of(contour)
    return masks


def test_every_row_matches_the_library_dice_and_an_independent_one(read_study):
    agreement.sync_study(read_study)
    rows = SliceAgreement.objects.filter(study=read_study, kind="inter")
    assert rows.count() == 3 * 5 * 2  # 3 reader pairs x 5 slices x (ILD, lung)
    for structure in ("ild", "lung"):
        masks = latest_masks(read_study, structure)
        empty = np.zeros((16, 16), dtype=bool)
        for row in rows.filter(structure=structure):
            mask_a = masks.get((row.assignment_a_id, row.sop_instance_uid), empty)
            mask_b = masks.get((row.assignment_b_id, row.sop_instance_uid), empty)
            expected = set_dice(mask_a, mask_b)
            if expected is None:
                assert row.dice is None
                assert math.isnan(dice(mask_a, mask_b))
            else:
                assert row.dice == pytest.approx(expected, abs=1e-12)
                assert row.dice == pytest.approx(dice(mask_a, mask_b), abs=1e-12)
            assert (row.size_a, row.size_b) == (int(mask_a.sum()), int(mask_b.sum()))
            assert row.overlap == int((mask_a & mask_b).sum())


def test_hand_computed_case(three_readers, reader_a, reader_b):
    """A: 4x4 square at columns/rows 3..6; B: shifted one pixel right -> overlap 3x4 = 12,
    Dice = 24/32 = 0.75."""
    s = instances_of(three_readers.cases.get())
    a, b = assignment_of(three_readers, reader_a), assignment_of(three_readers, reader_b)
    draw(a, s[0], x0=-10, size=8)
    draw(b, s[0], x0=-8, size=8)
    agreement.sync_study(three_readers)
    row = SliceAgreement.objects.get(
        rater_a=f"r:{reader_a.pk}", rater_b=f"r:{reader_b.pk}", structure="ild", slice_index=0
    )
    assert (row.size_a, row.size_b, row.overlap) == (16, 16, 12)
    assert row.dice == 0.75


def test_both_empty_slices_are_excluded_and_counted(read_study, reader_a, reader_b):
    report = agreement.agreement_report(read_study, agreement.Filters(ci=False))
    pair = next(
        p
        for p in report.pairs
        if p.kind == "inter" and {p.rater_a, p.rater_b} == {f"r:{reader_a.pk}", f"r:{reader_b.pk}"}
    )
    # slices 2 and 4 are empty for both; slice 1: A drew, B did not -> Dice 0 kept
    assert pair.summary.n == 3 and pair.summary.n_excluded == 2
    values = [v for v in pair.values if not np.isnan(v)]
    assert 0.0 in values
    assert pair.summary.median == pytest.approx(float(np.median(values)))
    assert pair.summary.q1 == pytest.approx(float(np.percentile(values, 25)))


def test_table2_layout(read_study, reader_a, reader_b, reader_c):
    report = agreement.agreement_report(read_study, agreement.Filters(ci=False))
    assert report.table[0] == ["Reader", "reader-b", "reader-c"]
    assert [row[0] for row in report.table[1:]] == ["reader-a", "reader-b"]
    assert report.table[2][1] == "..."
    ab = next(p for p in report.pairs if {p.label_a, p.label_b} == {"reader-a", "reader-b"})
    assert report.table[1][1] == summarize(ab.values).format(2)
    assert report.table_keys[1][1] is not None


def test_only_submitted_reads_count_unless_asked(three_readers, reader_a, reader_b):
    s = instances_of(three_readers.cases.get())
    a, b = assignment_of(three_readers, reader_a), assignment_of(three_readers, reader_b)
    draw(a, s[0])
    draw(b, s[0])
    submit(a)
    assert agreement.agreement_report(three_readers, agreement.Filters(ci=False)).pairs == []
    report = agreement.agreement_report(
        three_readers, agreement.Filters(ci=False, include_open=True)
    )
    assert {p.kind for p in report.pairs} == {"inter"}


def test_intra_observer_compares_first_and_repeat_read(make_study, reader_a, reader_b, series):
    study = make_study(readers=[reader_a, reader_b], series_list=[series], repeat_fraction=1.0)
    s = instances_of(study.cases.get())
    first = assignment_of(study, reader_a)
    repeat = assignment_of(study, reader_a, is_repeat=True)
    draw(first, s[0], x0=-10, size=8)
    draw(repeat, s[0], x0=-10, size=6)
    for item in (first, repeat):
        submit(item)
    report = agreement.agreement_report(study, agreement.Filters(ci=False))
    (intra,) = report.of_kind("intra")
    assert (intra.label_a, intra.label_b) == ("reader-a", "reader-a (repeat)")
    # 4x4 vs 3x3 squares sharing a corner: 2*9/(16+9)
    assert intra.summary.median == pytest.approx(18 / 25)
    assert intra.summary.n_excluded == 4


def engine_labels(case, ild_squares):
    """Label slices: lung everywhere in a 12x12 block, ILD on the given (slice, r0, c0, n)."""
    labels = {}
    for k, inst in enumerate(instances_of(case)):
        slice_labels = np.zeros((16, 16), dtype=np.uint8)
        slice_labels[2:14, 2:14] = 1
        for kk, r0, c0, n in ild_squares:
            if kk == k:
                slice_labels[r0 : r0 + n, c0 : c0 + n] = 2
        labels[inst.sop_instance_uid] = slice_labels
    return labels


def test_reader_vs_engine_rows_use_the_label_map(read_study, reader_a):
    case = read_study.cases.get()
    labels = engine_labels(case, [(0, 3, 3, 4), (3, 3, 3, 5)])
    job = write_label_map(case.series, labels, engine="atlasnet")
    agreement.sync_study(read_study)
    masks = latest_masks(read_study, "ild")
    a = assignment_of(read_study, reader_a)
    rows = SliceAgreement.objects.filter(kind="engine", rater_a=f"r:{reader_a.pk}", structure="ild")
    assert rows.count() == 5 and {r.engine_job_id for r in rows} == {job.pk}
    for row in rows:
        reader = masks.get((a.pk, row.sop_instance_uid), np.zeros((16, 16), bool))
        engine = labels[row.sop_instance_uid] == 2
        expected = set_dice(reader, engine)
        assert row.dice == (None if expected is None else pytest.approx(expected))
    lung_row = SliceAgreement.objects.filter(kind="engine", structure="lung").first()
    lung_engine = labels[lung_row.sop_instance_uid] > 0
    lung_reader = latest_masks(read_study, "lung")[
        (lung_row.assignment_a_id, lung_row.sop_instance_uid)
    ]
    assert lung_row.dice == pytest.approx(set_dice(lung_reader, lung_engine))
    report = agreement.agreement_report(read_study, agreement.Filters(ci=False))
    assert report.table[0] == ["Reader", "reader-b", "reader-c", "atlasnet"]


def test_engine_grid_mismatch_is_an_error_not_an_empty_slice(read_study):
    case = read_study.cases.get()
    labels = {i.sop_instance_uid: np.zeros((8, 8), np.uint8) for i in instances_of(case)}
    write_label_map(case.series, labels, engine="tiny")
    agreement.sync_study(read_study)
    rows = SliceAgreement.objects.filter(kind="engine")
    assert rows.exists() and all(r.error and r.dice is None for r in rows)
    report = agreement.agreement_report(read_study, agreement.Filters(ci=False))
    engine = report.of_kind("engine")[0]
    assert engine.n_errors == 5 and engine.summary.n == 0


def test_staple_consensus_is_the_majority_and_engines_are_scored_against_it(
    three_readers, reader_a, reader_b, reader_c
):
    case = three_readers.cases.get()
    s = instances_of(case)
    a, b, c = (assignment_of(three_readers, r) for r in (reader_a, reader_b, reader_c))
    draw(a, s[0], x0=-10, size=8)  # rows/cols 3..6
    draw(b, s[0], x0=-10, size=8)
    draw(c, s[0], x0=-10, size=12)  # rows/cols 3..8: a superset drawn by one reader only
    for item in (a, b, c):
        submit(item)
    engine_ild = np.zeros((16, 16), np.uint8)
    engine_ild[3:7, 3:9] = 2  # 4 x 6
    write_label_map(case.series, {s[0].sop_instance_uid: engine_ild}, engine="unet")
    agreement.sync_study(three_readers)
    consensus = agreement.consensus_mask(case, "ild", s[0].sop_instance_uid)
    majority = mask_of(a.contours.get())
    # the library's STAPLE on the same three masks agrees
    direct = staple([mask_of(x.contours.get()) for x in (a, b, c)]).consensus
    assert np.array_equal(consensus, majority) and np.array_equal(direct, majority)
    row = SliceAgreement.objects.get(
        kind="consensus", rater_a="e:unet", slice_index=0, structure="ild"
    )
    assert row.dice == pytest.approx(set_dice(engine_ild == 2, majority))
    reader_rows = SliceAgreement.objects.filter(
        kind="consensus", rater_a__startswith="r:", structure="ild"
    )
    assert reader_rows.filter(slice_index=0, rater_a=f"r:{reader_a.pk}").get().dice == 1.0


def test_bootstrap_interval_is_the_library_cluster_bootstrap_and_is_cached(
    make_study, reader_a, reader_b, project
):
    series_list = [ingest_case(project, n) for n in range(3)]
    study = make_study(readers=[reader_a, reader_b], series_list=series_list)
    for case in study.cases.all():
        s = instances_of(case)
        a, b = (case.assignments.get(reader=r) for r in (reader_a, reader_b))
        for k, inst in enumerate(s[:3]):
            draw(a, inst, x0=-10, size=8)
            draw(b, inst, x0=-10 + 2 * (k % 2), size=8 - 2 * (k // 2))
        submit(a)
        submit(b)
    filters = agreement.Filters(n_resamples=300)
    report = agreement.agreement_report(study, filters)
    (pair,) = report.of_kind("inter")
    values, clusters, _ = agreement.pair_values(study, filters)[
        ("inter", pair.rater_a, pair.rater_b)
    ]
    direct = bootstrap_ci(values, clusters=clusters, n_resamples=300, seed=0)
    assert (pair.ci.low, pair.ci.high) == (direct.low, direct.high)
    assert pair.ci.n_clusters == 3
    cached = BootstrapCache.objects.count()
    again = agreement.agreement_report(study, filters).of_kind("inter")[0]
    assert BootstrapCache.objects.count() == cached
    assert (again.ci.low, again.ci.high) == (direct.low, direct.high)


def ingest_case(project, n):
    from tests.annotation_tests.conftest import ingest_series

    return ingest_series(project, patient_id=f"HOSP-{n:03d}")


def test_refresh_for_contour_recomputes_only_the_touched_rows(read_study, reader_a, reader_b):
    agreement.sync_study(read_study)
    before = {
        (r.structure, r.sop_instance_uid, r.rater_a, r.rater_b): r.pk
        for r in SliceAgreement.objects.all()
    }
    a = assignment_of(read_study, reader_a)
    from annotation.services.reading import reopen
    from core.models import User

    coordinator = User.objects.get(username="coordinator")
    reopen(a, coordinator, reason="fix slice 0")
    s = instances_of(read_study.cases.get())
    contour = draw(a, s[0], x0=-8, size=8)  # now identical to B's square
    result = agreement.refresh_for_contour(contour)
    after = {
        (r.structure, r.sop_instance_uid, r.rater_a, r.rater_b): r
        for r in SliceAgreement.objects.all()
    }
    changed = {key for key, row in after.items() if before.get(key) != row.pk}
    # A's ILD pairs on slice 0, and the case's ILD consensus (A's read left it when reopened)
    touched = {
        key
        for key in after
        if key[0] == "ild"
        and ((key[1] == s[0].sop_instance_uid and f"r:{reader_a.pk}" in key[2:]) or "staple" in key)
    }
    assert all(key[0] == "ild" for key in changed)
    assert changed == touched and result.rows_computed == len(touched)
    ab = after[("ild", s[0].sop_instance_uid, f"r:{reader_a.pk}", f"r:{reader_b.pk}")]
    assert ab.dice == 1.0 and ab.contour_a_id == contour.pk
    # reopening took A's read out of the lung consensus too: the next sync finds those rows
    later = agreement.sync_study(read_study)
    assert later.rows_computed == 5 * 3
    assert set(
        SliceAgreement.objects.filter(structure="lung", rater_b="staple").values_list(
            "structure", flat=True
        )
    ) == {"lung"}


def test_after_refresh_for_contour_the_study_is_in_sync(three_readers, reader_a, reader_b):
    s = instances_of(three_readers.cases.get())
    a, b = assignment_of(three_readers, reader_a), assignment_of(three_readers, reader_b)
    draw(a, s[0])
    draw(b, s[0])
    agreement.sync_study(three_readers)
    contour = draw(b, s[1], size=4)
    result = agreement.refresh_for_contour(contour)
    assert result.rows_computed == 2  # A/B and B/C on slice 1; nothing else
    assert agreement.sync_study(three_readers).skipped
    row = SliceAgreement.objects.get(structure="ild", slice_index=1, rater_b=f"r:{reader_b.pk}")
    assert row.contour_b_id == contour.pk and row.dice == 0.0


def test_sync_without_the_hook_recomputes_only_stale_rows(read_study, reader_a, coordinator):
    agreement.sync_study(read_study)
    a = assignment_of(read_study, reader_a)
    from annotation.services.reading import reopen

    reopen(a, coordinator, reason="again")
    s = instances_of(read_study.cases.get())
    draw(a, s[3], structure="lung", x0=-10, y0=-10, size=10)
    result = agreement.sync_study(read_study)
    assert not result.skipped
    # A's two lung pairs on slice 3, plus the consensus rows of both structures (reopening
    # took A's read out of the consensus): 5 slices x 3 readers x 2 structures
    assert result.rows_computed == 2 + 30
    assert AgreementState.objects.get(study=read_study).rows_computed == 32
    assert agreement.sync_study(read_study).skipped


def test_a_deleted_contour_is_an_empty_mask(read_study, reader_a, reader_b, coordinator):
    from annotation.services.reading import reopen

    a = assignment_of(read_study, reader_a)
    reopen(a, coordinator, reason="remove")
    s = instances_of(read_study.cases.get())
    contour = draw(a, s[1], rings=[])
    agreement.refresh_for_contour(contour)
    row = SliceAgreement.objects.get(
        structure="ild",
        sop_instance_uid=s[1].sop_instance_uid,
        rater_a=f"r:{reader_a.pk}",
        rater_b=f"r:{reader_b.pk}",
    )
    assert row.dice is None and row.size_a == 0  # both empty now


def test_pairs_are_every_combination(read_study):
    agreement.sync_study(read_study)
    keys = set(SliceAgreement.objects.filter(kind="inter").values_list("rater_a", "rater_b"))
    readers = sorted({k for pair in keys for k in pair})
    assert len(keys) == len(list(itertools.combinations(readers, 2)))


def test_a_large_first_computation_goes_to_the_background(
    read_study, coordinator, api_client_for, monkeypatch, django_capture_on_commit_callbacks
):
    from reports.services import dashboards

    monkeypatch.setattr(dashboards, "INLINE_MAX_ROWS", 10)
    client = api_client_for(coordinator)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        body = client.get(f"/api/v1/reports/studies/{read_study.pk}/agreement/?ci=0").json()
    assert body["sync"]["pending"] > 10 and any("background" in n for n in body["notes"])
    assert len(callbacks) == 1  # the task ran (eagerly in tests): every row is there now
    assert SliceAgreement.objects.filter(study=read_study).count() == body["sync"]["rows_total"]
    body = client.get(f"/api/v1/reports/studies/{read_study.pk}/agreement/?ci=0").json()
    assert body["sync"]["skipped"] and body["pairs"]
