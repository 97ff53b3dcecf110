"""Table 1 and Table 3 from the app's rows, checked against scipy and hand computations."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from scipy import stats

from jobs.models import Job
from reports.services import dashboards
from reports.services.characteristics import characteristics_table, patient_rows
from reports.services.correlation import correlation_report
from studies.models import Patient, PftResult, Series, Study

pytestmark = pytest.mark.django_db

COHORTS = {"training": 6, "test": 7, "correlation": 9, "external": 6}


def make_patient(
    project, name, cohort, *, sex, age, extent, pft, pft_offset_days=10, engine="atlasnet"
):
    ct_date = dt.date(2020, 6, 1)
    patient = Patient.objects.create(
        project=project,
        patient_id=name,
        sex=sex,
        birth_date=ct_date - dt.timedelta(days=round(age * 365.25)),
        cohort=cohort,
    )
    study = Study.objects.create(
        patient=patient, study_instance_uid=f"1.2.3.{name}", study_date=ct_date
    )
    series = Series.objects.create(
        study=study, series_instance_uid=f"1.2.3.{name}.1", modality="CT"
    )
    if pft is not None:
        tlc, fvc, dlco, kco = pft
        PftResult.objects.create(
            patient=patient,
            date=ct_date + dt.timedelta(days=pft_offset_days),
            tlc_pct_predicted=tlc,
            fvc_pct_predicted=fvc,
            dlco_pct_predicted=dlco,
            kco_pct_predicted=kco,
        )
    if extent is not None:
        Job.objects.create(
            kind="segmentation",
            status=Job.Status.SUCCEEDED,
            series=series,
            engine=engine,
            result={"extent_pct": extent},
        )
    return patient


@pytest.fixture
def cohort_patients(project):
    rng = np.random.default_rng(3)
    made = []
    n = 0
    for cohort, size in COHORTS.items():
        for _ in range(size):
            n += 1
            extent = float(np.round(rng.uniform(0, 40), 1))
            made.append(
                make_patient(
                    project,
                    f"ILD-{n:04d}",
                    cohort,
                    sex="F" if rng.random() < 0.7 else "M",
                    age=float(rng.integers(35, 75)),
                    extent=extent,
                    pft=(
                        float(100 - extent + rng.normal(0, 8)),
                        float(95 - extent + rng.normal(0, 10)),
                        float(70 - extent + rng.normal(0, 8)),
                        float(80 - 0.5 * extent + rng.normal(0, 10)),
                    ),
                )
            )
    return made


def rows_for(project_patients, sources=("atlasnet",), **kwargs):
    return patient_rows(Patient.objects.all(), sources=list(sources), **kwargs)


def test_table1_p_values_are_scipy_s(cohort_patients):
    rows = rows_for(cohort_patients)
    groups = ["training", "test", "correlation"]
    table = characteristics_table(
        rows,
        sources=["atlasnet"],
        test_groups=groups,
        comparisons=[("correlation", "external")],
    )
    assert table.groups == ["training", "test", "correlation", "external"]
    assert table.header()[1:4] == ["training (n = 6)", "test (n = 7)", "correlation (n = 9)"]
    lines = {key: (row, extra) for key, row, _, extra in table.rows}
    ages = {g: [r.age_years for r in rows if r.cohort == g] for g in groups}
    age_row, age_extra = lines["age"]
    assert age_row.test == "kruskal-wallis"
    assert age_row.p_value == pytest.approx(stats.kruskal(*ages.values()).pvalue)
    external_age = [r.age_years for r in rows if r.cohort == "external"]
    assert age_extra["correlation|external"] == pytest.approx(
        stats.mannwhitneyu(ages["correlation"], external_age, alternative="two-sided").pvalue
    )
    _, women_extra = lines["women"]
    women = {g: sum(r.woman for r in rows if r.cohort == g) for g in ("correlation", "external")}
    counts = {g: sum(r.cohort == g for r in rows) for g in ("correlation", "external")}
    expected = stats.fisher_exact(
        [
            [women["correlation"], women["external"]],
            [counts["correlation"] - women["correlation"], counts["external"] - women["external"]],
        ]
    ).pvalue
    assert women_extra["correlation|external"] == pytest.approx(expected)
    median_age = float(np.median(ages["test"]))
    cells = table.cells()
    age_cells = next(c for c in cells if c[0] == "Age (y)")
    assert age_cells[2].startswith(f"{median_age:.0f} [")


def test_goh_stage_counts_extents_above_20_percent(cohort_patients):
    rows = rows_for(cohort_patients)
    table = characteristics_table(rows, sources=["atlasnet"])
    goh = next(row for key, row, _, _ in table.rows if key == "goh[atlasnet]")
    for cohort in table.groups:
        expected = sum(r.extent("atlasnet").extent_pct > 20.0 for r in rows if r.cohort == cohort)
        assert goh.counts[cohort]["extensive"] == expected


def test_pft_outside_three_months_is_missing(project):
    make_patient(
        project,
        "ILD-LATE",
        "test",
        sex="F",
        age=50,
        extent=5.0,
        pft=(90, 90, 60, 70),
        pft_offset_days=120,
    )
    (row,) = rows_for(None)
    assert row.pft == {"tlc": None, "fvc": None, "dlco": None, "kco": None}


def test_table3_is_scipy_spearman_with_the_fieller_fisher_interval(cohort_patients):
    rows = rows_for(cohort_patients)
    report = correlation_report(rows, sources=["atlasnet"], cohorts=["correlation", "test"])
    column = next(c for c in report.columns if c.cohort == "correlation")
    members = [r for r in rows if r.cohort == "correlation"]
    x = [r.extent("atlasnet").extent_pct for r in members]
    for name in ("tlc", "fvc", "dlco", "kco"):
        y = [r.pft[name] for r in members]
        expected = stats.spearmanr(x, y)
        result = column.cells[name]
        assert result.rho == pytest.approx(expected.statistic)
        assert result.p_value == pytest.approx(expected.pvalue)
        n = len(x)
        half = 1.959963984540054 * 1.06 / math.sqrt(n - 3)
        z = math.atanh(expected.statistic)
        assert (result.ci_low, result.ci_high) == pytest.approx(
            (math.tanh(z - half), math.tanh(z + half))
        )
    assert report.cells()[0][1].startswith("correlation (n = 9) · atlasnet")
    dlco = next(r for r in report.cells() if r[0] == "Predicted DLCO (%)")
    assert dlco[1] == f"{column.cells['dlco'].rho:.2f}"


def test_fewer_than_three_pairs_is_na_not_an_error(project):
    for i in range(2):
        make_patient(
            project, f"ILD-S{i}", "test", sex="F", age=50, extent=5.0 + i, pft=(90, 90, 60, 70)
        )
    report = correlation_report(rows_for(None), sources=["atlasnet"], cohorts=["test"])
    assert report.cells()[1][1] == "NA"
    assert "at least 3" in report.columns[0].errors["tlc"]


def test_every_number_says_where_the_extent_came_from(project, make_study, reader_a, reader_b):
    """A patient with an engine job uses it; one without falls back to the readers' contours
    (mean over reads of sum ILD / sum lung over the slices with lung drawn)."""
    from tests.annotation_tests.conftest import ingest_series
    from tests.reports_tests.conftest import assignment_of, draw, instances_of, submit

    with_job = make_patient(
        project, "ILD-JOB", "test", sex="F", age=50, extent=33.0, pft=(90, 90, 60, 70)
    )
    series = ingest_series(project, patient_id="HOSP-READ")
    Patient.objects.filter(pk=series.study.patient_id).update(cohort="test")
    study = make_study(readers=[reader_a, reader_b], series_list=[series])
    s = instances_of(study.cases.get())
    a, b = assignment_of(study, reader_a), assignment_of(study, reader_b)
    for reader, ild_size in ((a, 8), (b, 4)):
        draw(reader, s[0], structure="lung", x0=-14, y0=-14, size=24)  # 12x12 = 144 px
        draw(reader, s[0], size=ild_size)
        draw(reader, s[1], structure="lung", x0=-14, y0=-14, size=24)
        submit(reader)
    rows = {r.patient: r for r in rows_for(None)}
    assert rows["ILD-JOB"].extent("atlasnet").source == "engine:atlasnet"
    reader_row = next(r for r in rows.values() if r.patient != "ILD-JOB")
    extent = reader_row.extent("atlasnet")
    assert extent.source == "readers"
    # A: 16 / 288 px, B: 4 / 288 px -> mean of 5.56 % and 1.39 %
    assert extent.extent_pct == pytest.approx((100 * 16 / 288 + 100 * 4 / 288) / 2)
    strict = {r.patient: r for r in rows_for(None, mode="engine")}
    assert strict[reader_row.patient].extent("atlasnet").extent_pct is None
    assert with_job.patient_id in rows


def test_dashboard_defaults_to_every_engine_found(cohort_patients, coordinator):
    report = dashboards.cohort_reports(coordinator, dashboards.Query())
    assert report.sources == ["atlasnet"]
    assert report.cohorts == ["training", "test", "correlation", "external"]


def test_table1_subtype_skin_score_and_antibody_rows(cohort_patients):
    rng = np.random.default_rng(11)
    for patient in cohort_patients:
        flags = [bool(v) for v in rng.random(3) < (0.2, 0.5, 0.25)]
        Patient.objects.filter(pk=patient.pk).update(
            ssc_subtype="diffuse" if rng.random() < 0.5 else "limited",
            mrss=int(rng.integers(0, 30)),
            anticentromere=flags[0],
            anti_scl70=flags[1],
            other_autoantibodies=flags[2],
        )
    # one patient with an unrecorded antibody and no positive one: "none" is unknown for them
    Patient.objects.filter(pk=cohort_patients[0].pk).update(
        anticentromere=None, anti_scl70=False, other_autoantibodies=False
    )
    rows = rows_for(cohort_patients)
    groups = ["training", "test", "correlation"]
    table = characteristics_table(rows, sources=["atlasnet"], test_groups=groups)
    lines = {key: row for key, row, _, _ in table.rows}
    stored = {p.pk: p for p in Patient.objects.all()}

    diffuse = lines["diffuse"]
    for cohort in table.groups:
        members = [stored[r.patient_pk] for r in rows if r.cohort == cohort]
        assert diffuse.counts[cohort][True] == sum(p.ssc_subtype == "diffuse" for p in members)

    skin = {g: [stored[r.patient_pk].mrss for r in rows if r.cohort == g] for g in groups}
    assert lines["mrss"].p_value == pytest.approx(stats.kruskal(*skin.values()).pvalue)

    none_row = lines["antibody[none]"]
    for cohort in table.groups:
        members = [stored[r.patient_pk] for r in rows if r.cohort == cohort]
        known_none = [
            p
            for p in members
            if None not in (p.anticentromere, p.anti_scl70, p.other_autoantibodies)
            and not (p.anticentromere or p.anti_scl70 or p.other_autoantibodies)
        ]
        assert none_row.counts[cohort][True] == len(known_none)
    first_cohort = next(r.cohort for r in rows if r.patient_pk == cohort_patients[0].pk)
    assert none_row.n_missing[first_cohort] == 1
    labels = [cells[0] for cells in table.cells()]
    assert "Diffuse SSc" in labels and "Autoantibodies: Anti-Scl-70" in labels
