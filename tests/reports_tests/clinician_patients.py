"""Patients for the clinician report: CTs, PFTs and finished jobs written as rows, no imaging.

``worsening_patient`` follows the example of the report's summary: CTs 2012-03-01 and
2013-04-02, ILD extent 12.3 % → 18.9 % (atlasnet), FVC 90 → 79 (−11 points, ATS/ERS worsening),
mean log-Jacobian −0.08 with the strongest shrinkage in the lower lungs, and the worsening
classifier's output. ``stable_patient``: extent 5.0 % → 5.2 %, FVC 95 → 93, DLCO 70 → 68,
mean log-Jacobian +0.01, no classifier output.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from django.utils import timezone

_serial = itertools.count(1)

WORSENING_CLASSIFIER = {
    "model_version": "jacs-clf 0.3.1",
    "functional": {"probability": 0.81, "threshold": 0.5, "predicted": True},
    "morphologic": {"probability": 0.35, "threshold": 0.5, "predicted": False},
    "template_mean_log_jacobian": -0.07,
}


def _uid() -> str:
    return f"2.25.{next(_serial)}{timezone.now().microsecond}"


def make_patient(project, patient_id: str, *, deidentified: bool = True):
    from studies.models import Patient

    return Patient.objects.create(
        project=project, patient_id=patient_id, sex="F", deidentified=deidentified
    )


def add_ct(patient, date: dt.date, *, description: str = "Chest CT"):
    from studies.models import Series, Study

    study = Study.objects.create(
        patient=patient, study_instance_uid=_uid(), study_date=date, description=description
    )
    return Series.objects.create(
        study=study, series_instance_uid=_uid(), modality="CT", series_number=2
    )


def add_pft(patient, date: dt.date, **values: float | None):
    from studies.models import PftResult

    return PftResult.objects.create(
        patient=patient, date=date, **{f"{k}_pct_predicted": v for k, v in values.items()}
    )


def add_segmentation(
    series,
    extent_pct: float,
    *,
    engine: str = "atlasnet",
    version: str = "2.0",
    lung_ml: float = 4000.0,
    finished: dt.datetime | None = None,
    status: str = "succeeded",
    error: str = "",
):
    from jobs.models import Job

    result: dict[str, Any] = {}
    if status == "succeeded":
        result = {
            "engine": engine,
            "version": version,
            "extent_pct": extent_pct,
            "lung_ml": lung_ml,
            "ild_ml": round(lung_ml * extent_pct / 100, 3),
        }
    return Job.objects.create(
        kind="segmentation",
        status=status,
        series=series,
        engine=engine,
        engine_version=version if status == "succeeded" else "",
        result=result,
        error=error,
        finished=finished or (timezone.now() if status in ("succeeded", "failed") else None),
    )


def add_registration(
    baseline,
    followup,
    mean_log_jacobian: float,
    *,
    regional: dict[str, float] | None = None,
    folding_fraction: float = 0.0004,
    worsening: dict[str, Any] | None = None,
    status: str = "succeeded",
    error: str = "",
):
    from jobs.models import Job

    result: dict[str, Any] = {}
    if status == "succeeded":
        result = {
            "backend": "torch",
            "version": "torch-ffd 1.2",
            "mean_log_jacobian": mean_log_jacobian,
            "regional": regional
            or {
                name: mean_log_jacobian
                for name in ("superior", "inferior", "anterior", "posterior")
            },
            "folding_fraction": folding_fraction,
        }
        if worsening is not None:
            result["worsening"] = worsening
    return Job.objects.create(
        kind="registration",
        status=status,
        series=followup,
        baseline_series=baseline,
        engine="torch",
        engine_version="torch-ffd 1.2" if status == "succeeded" else "",
        result=result,
        error=error,
        finished=timezone.now() if status in ("succeeded", "failed") else None,
    )


def worsening_patient(project, patient_id: str = "SSC-0042", *, deidentified: bool = True):
    patient = make_patient(project, patient_id, deidentified=deidentified)
    baseline = add_ct(patient, dt.date(2012, 3, 1))
    followup = add_ct(patient, dt.date(2013, 4, 2))
    add_segmentation(baseline, 12.3)
    add_segmentation(followup, 18.9)
    add_pft(patient, dt.date(2012, 2, 20), fvc=90.0, dlco=60.0, tlc=85.0, kco=75.0)
    add_pft(patient, dt.date(2012, 9, 1), fvc=86.0, dlco=58.0, tlc=83.0, kco=74.0)
    add_pft(patient, dt.date(2013, 4, 10), fvc=79.0, dlco=55.0, tlc=78.0, kco=72.0)
    add_registration(
        baseline,
        followup,
        -0.08,
        regional={"superior": -0.01, "inferior": -0.12, "anterior": -0.03, "posterior": -0.1},
        worsening=WORSENING_CLASSIFIER,
    )
    return patient


def stable_patient(project, patient_id: str = "SSC-0077"):
    patient = make_patient(project, patient_id)
    baseline = add_ct(patient, dt.date(2015, 6, 10))
    followup = add_ct(patient, dt.date(2016, 6, 14))
    add_segmentation(baseline, 5.0)
    add_segmentation(followup, 5.2)
    add_pft(patient, dt.date(2015, 6, 1), fvc=95.0, dlco=70.0, tlc=92.0, kco=80.0)
    add_pft(patient, dt.date(2016, 6, 20), fvc=93.0, dlco=68.0, tlc=91.0, kco=79.0)
    add_registration(
        baseline,
        followup,
        0.01,
        regional={"superior": 0.02, "inferior": 0.0, "anterior": 0.01, "posterior": 0.005},
    )
    return patient
