"""Read-side queries for jobs. Every one is narrowed to the user's projects (studies.selectors)
and model output is withheld from series the user is blinded to (annotation.selectors)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from django.db.models import Count, QuerySet

from annotation.selectors import series_blinded_for
from jobs.models import Job
from studies import selectors as study_selectors
from studies.models import Patient, Series

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import User

    AnyUser = User | AnonymousUser


def jobs_for(user: AnyUser) -> QuerySet[Job]:
    """Jobs on series of patients the user may see (status, progress and errors)."""
    return Job.objects.filter(
        series__study__patient__in=study_selectors.patients_for(user)
    ).select_related("series", "series__study__patient", "baseline_series")


def blinded_series_ids(user: AnyUser) -> set[Any]:
    return set(series_blinded_for(user).values_list("pk", flat=True))


def output_hidden(job: Job, blinded_ids: Iterable[Any]) -> bool:
    """Whether the job's model output (result, label map, SEG, overlays) must be withheld."""
    blinded = set(blinded_ids)
    return job.series_id in blinded or (
        job.baseline_series_id is not None and job.baseline_series_id in blinded
    )


def model_output_visible(user: AnyUser, job: Job) -> bool:
    return not output_hidden(job, blinded_series_ids(user))


def primary_ct_series(patient: Patient) -> list[Series]:
    """One CT series per study, in study date order: the one with the most images (then the
    lowest series number). Registration pairs and the patient page's change table use these."""
    chosen: list[Series] = []
    for study in patient.studies.order_by("study_date", "study_time"):
        series = (
            study.series.filter(modality="CT")
            .annotate(image_count=Count("instances"))
            .order_by("-image_count", "series_number")
            .first()
        )
        if series is not None:
            chosen.append(series)
    return chosen


def consecutive_pairs(patient: Patient) -> list[tuple[Series, Series]]:
    """(baseline, follow-up) for every two consecutive CT studies of the patient."""
    series = primary_ct_series(patient)
    return list(pairwise(series))


def latest_job(
    kind: str, series: Series, *, baseline_series: Series | None = None, engine: str | None = None
) -> Job | None:
    """The newest job of ``kind`` on ``series`` (and ``baseline_series``), any status."""
    jobs = Job.objects.filter(kind=kind, series=series, baseline_series=baseline_series)
    if engine:
        jobs = jobs.filter(engine=engine)
    return jobs.order_by("-created").first()


def latest_succeeded(
    kind: str, series: Series, *, baseline_series: Series | None = None, engine: str | None = None
) -> Job | None:
    jobs = Job.objects.filter(
        kind=kind, series=series, baseline_series=baseline_series, status=Job.Status.SUCCEEDED
    )
    if engine:
        jobs = jobs.filter(engine=engine)
    return jobs.order_by("-finished", "-created").first()


@dataclass(frozen=True)
class SegmentationRow:
    series: Series
    job: Job | None  # the newest job, whatever its status
    done: Job | None  # the newest successful one (its numbers are shown)
    hidden: bool

    @property
    def extent_pct(self) -> float | None:
        return None if self.done is None else self.done.result.get("extent_pct")


@dataclass(frozen=True)
class RegistrationRow:
    baseline: Series
    followup: Series
    job: Job | None
    done: Job | None
    hidden: bool
    extent_change_pct: float | None
    folding_pct: float | None


def patient_quantification(user: AnyUser, patient: Patient) -> dict[str, Any]:
    """What the patient page shows: ILD extent per CT series and, per consecutive pair, the
    registration's log-Jacobian summary and the change in extent (same engine on both)."""
    blinded = blinded_series_ids(user)
    rows: dict[Any, SegmentationRow] = {}
    for study in study_selectors.studies_for(user).filter(patient=patient):
        for series in study.series.filter(modality="CT"):
            job = latest_job(Job.Kind.SEGMENTATION, series)
            done = latest_succeeded(Job.Kind.SEGMENTATION, series)
            rows[series.pk] = SegmentationRow(series, job, done, series.pk in blinded)
    pairs = []
    for baseline, followup in consecutive_pairs(patient):
        job = latest_job(Job.Kind.REGISTRATION, followup, baseline_series=baseline)
        done = latest_succeeded(Job.Kind.REGISTRATION, followup, baseline_series=baseline)
        hidden = baseline.pk in blinded or followup.pk in blinded
        change = None
        first, second = rows.get(baseline.pk), rows.get(followup.pk)
        if (
            first is not None
            and second is not None
            and first.done is not None
            and second.done is not None
            and first.done.engine == second.done.engine
            and first.extent_pct is not None
            and second.extent_pct is not None
        ):
            change = round(float(second.extent_pct) - float(first.extent_pct), 2)
        folding = None
        if done is not None and done.result.get("folding_fraction") is not None:
            folding = 100.0 * float(done.result["folding_fraction"])
        pairs.append(RegistrationRow(baseline, followup, job, done, hidden, change, folding))
    ordered = sorted(
        rows.values(),
        key=lambda r: (
            r.series.study.study_date is None,
            r.series.study.study_date,
            r.series.series_number or 0,
        ),
    )
    return {"segmentations": ordered, "registrations": pairs}
