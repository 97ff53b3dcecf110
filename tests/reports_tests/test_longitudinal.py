"""Follow-up statistics: worsening, visual calls, log-Jacobian (fabricated registration jobs),
classifiers; checked against scipy, statsmodels and hand-computed cases."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from annotation.models import Assignment, ReadingCase, ReadingStudy, VisualAssessment
from jobs.models import Job
from reports.services import dashboards
from reports.services.longitudinal import (
    longitudinal_report,
    longitudinal_rows,
    registration_summaries,
)
from studies.models import Patient, PftResult, Series, Study

pytestmark = pytest.mark.django_db


def ct(patient, name, date):
    study = Study.objects.create(patient=patient, study_instance_uid=f"1.9.{name}", study_date=date)
    return Series.objects.create(study=study, series_instance_uid=f"1.9.{name}.1", modality="CT")


def pft(patient, date, fvc, dlco, tlc=90.0, kco=80.0):
    PftResult.objects.create(
        patient=patient,
        date=date,
        fvc_pct_predicted=fvc,
        dlco_pct_predicted=dlco,
        tlc_pct_predicted=tlc,
        kco_pct_predicted=kco,
    )


def registration(series, baseline, value, **result):
    return Job.objects.create(
        kind="registration",
        status=Job.Status.SUCCEEDED,
        series=series,
        baseline_series=baseline,
        engine="torch",
        result={"summary": {"mean_log_jacobian": value}, **result},
    )


@pytest.fixture
def follow_up(project, reader_a, reader_b):
    """20 patients (training 12, test 8): FVC/DLCO drops, visual calls, mean log-Jacobian."""
    rng = np.random.default_rng(11)
    reading = ReadingStudy.objects.create(project=project, name="Follow-up", longitudinal=True)
    base_date, follow_date = dt.date(2018, 1, 10), dt.date(2021, 1, 10)
    for n in range(20):
        cohort = "training" if n < 12 else "test"
        patient = Patient.objects.create(
            project=project,
            patient_id=f"ILD-F{n:02d}",
            cohort=cohort,
            sex="F" if n % 3 else "M",
            birth_date=dt.date(1960 + n % 10, 3, 1),
        )
        baseline, followup = ct(patient, f"{n}b", base_date), ct(patient, f"{n}f", follow_date)
        worse = n % 2 == 0
        fvc_drop = 12.0 if worse and n % 4 == 0 else float(rng.uniform(-3, 8))
        dlco_drop = 16.0 if worse and n % 4 == 2 else float(rng.uniform(-3, 10))
        pft(patient, base_date, 90.0, 70.0)
        pft(patient, follow_date + dt.timedelta(days=20), 90.0 - fvc_drop, 70.0 - dlco_drop)
        value = float((0.06 if worse else 0.0) + rng.normal(0, 0.03))
        called = bool(value > 0.03)
        classifier = {"probability": 0.9 if called else 0.1, "threshold": 0.5, "predicted": called}
        registration(followup, baseline, value, worsening={"functional": classifier})
        case = ReadingCase.objects.create(
            study=reading,
            series=followup,
            baseline_series=baseline,
            label=f"Case {n}",
            protocol_status="ready",
        )
        calls = (
            ["worse", "worse"]
            if worse
            else (["stable", "improved"] if n == 5 else ["stable", "stable"])
        )
        if n == 7:
            calls = ["improved", "improved"]
        for order, (reader, call) in enumerate(zip((reader_a, reader_b), calls, strict=True)):
            assignment = Assignment.objects.create(
                study=reading,
                case=case,
                reader=reader,
                order=n * 2 + order + 1,
                status="submitted",
                submitted_at=dt.datetime(2021, 2, 1, tzinfo=dt.UTC),
            )
            VisualAssessment.objects.create(assignment=assignment, call=call)
    return reading


def test_registration_adapter_reads_fabricated_jobs(project):
    patient = Patient.objects.create(project=project, patient_id="ILD-R")
    assert registration_summaries(patient) is None
    baseline, followup = (
        ct(patient, "rb", dt.date(2019, 1, 1)),
        ct(patient, "rf", dt.date(2020, 1, 1)),
    )
    registration(followup, baseline, -0.04)
    Job.objects.create(
        kind="registration", status=Job.Status.FAILED, series=followup, baseline_series=baseline
    )
    (summary,) = registration_summaries(patient)
    assert summary.mean_log_jacobian == -0.04
    assert summary.baseline_series_uid == baseline.series_instance_uid
    assert summary.followup_series_uid == followup.series_instance_uid


def test_functional_worsening_and_visual_majority(follow_up):
    rows = {r.patient: r for r in longitudinal_rows(Patient.objects.all(), reading_study=follow_up)}
    assert rows["ILD-F00"].change.worsening is True and rows["ILD-F00"].change.fvc_worsened
    assert rows["ILD-F02"].change.dlco_worsened is True
    assert rows["ILD-F01"].change.worsening is False
    assert rows["ILD-F00"].visual == "worse"
    assert rows["ILD-F05"].visual is None and rows["ILD-F05"].visual_votes == "improved 1, stable 1"
    assert rows["ILD-F07"].visual == "improved"
    assert rows["ILD-F00"].interval_months == pytest.approx(1096 / 30.4375)


def test_log_jacobian_by_group_and_vs_pft_change_are_scipy_s(follow_up):
    rows = longitudinal_rows(Patient.objects.all(), reading_study=follow_up)
    report = longitudinal_report(rows, source="readers")
    functional = report.jacobian_by_group[0]
    worse = [r.mean_log_jacobian for r in rows if r.change.worsening]
    stable = [r.mean_log_jacobian for r in rows if r.change.worsening is False]
    assert functional.p_value == pytest.approx(
        stats.mannwhitneyu(worse, stable, alternative="two-sided").pvalue
    )
    morphologic = report.jacobian_by_group[1]
    groups = [
        [r.mean_log_jacobian for r in rows if r.visual == g]
        for g in ("worse", "stable", "improved")
    ]
    assert morphologic.test == "kruskal-wallis"
    assert morphologic.p_value == pytest.approx(stats.kruskal(*groups).pvalue)
    x = [r.mean_log_jacobian for r in rows]
    fvc_change = [r.pft_change("fvc") for r in rows]
    expected = stats.spearmanr(x, fvc_change)
    assert report.correlations["FVC"].rho == pytest.approx(expected.statistic)
    assert report.correlations["FVC"].p_value == pytest.approx(expected.pvalue)
    assert report.correlations["FVC"].n == 20


def test_group_table_counts_and_p_values(follow_up):
    rows = longitudinal_rows(Patient.objects.all(), reading_study=follow_up)
    report = longitudinal_report(rows, source="readers")
    cells = report.functional.cells()
    n_worse = sum(bool(r.change.worsening) for r in rows)
    assert cells[0][2] == f"Functional worsening (n = {n_worse})"
    morph = next(
        line for line in report.functional.lines if line[0] == "Morphologic worsening at CT"
    )
    row = morph[2]
    worse_w = sum(1 for r in rows if r.change.worsening and r.visual == "worse")
    worse_s = sum(1 for r in rows if r.change.worsening is False and r.visual == "worse")
    n_w = sum(1 for r in rows if r.change.worsening and r.visual is not None)
    n_s = sum(1 for r in rows if r.change.worsening is False and r.visual is not None)
    assert row.p_value == pytest.approx(
        stats.fisher_exact([[worse_w, worse_s], [n_w - worse_w, n_s - worse_s]]).pvalue
    )


def test_classifiers_use_training_cut_off_and_exact_test_intervals(follow_up):
    rows = longitudinal_rows(Patient.objects.all(), reading_study=follow_up)
    report = longitudinal_report(rows, source="readers")
    jacobian = next(
        c
        for c in report.classifiers
        if c.name == "Mean log-Jacobian" and c.reference.startswith("functional")
    )
    threshold = jacobian.criterion.threshold_pct
    train = [r for r in rows if r.cohort == "training"]
    assert threshold in {r.mean_log_jacobian for r in train}
    test = [r for r in rows if r.cohort == "test"]
    tp = sum(1 for r in test if r.change.worsening and r.mean_log_jacobian >= threshold)
    positives = sum(1 for r in test if r.change.worsening)
    sensitivity = jacobian.criterion.test.sensitivity
    assert (sensitivity.successes, sensitivity.total) == (tp, positives)
    low, high = proportion_confint(tp, positives, alpha=0.05, method="beta")
    assert (sensitivity.ci_low, sensitivity.ci_high) == pytest.approx((low, high))
    # the registration jobs' own predictions are scored too
    predicted = next(c for c in report.classifiers if c.name == "Registration classifier")
    assert predicted.metrics.confusion.total == len(
        [r for r in test if r.change.worsening is not None]
    )
    # no extent anywhere: that classifier says why instead of failing
    extent = next(c for c in report.classifiers if c.name == "ILD extent change")
    assert extent.criterion is None and "both classes" in extent.error


def test_dashboard_entry_point(follow_up, coordinator):
    report = dashboards.longitudinal_report(coordinator, dashboards.Query(reading_study=follow_up))
    assert len(report.rows) == 20 and report.n_without_registration == 0
