"""Read-side queries. Every one is narrowed to the projects the user may see."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db.models import Count, QuerySet

from core.access import projects_for
from studies.models import Instance, Patient, PftResult, Series, Study
from studies.services.geometry import refresh_series_geometry

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import User

# Both papers pair a CT with lung function measured within three months of it.
PFT_WINDOW = timedelta(days=92)


def patients_for(user: User | AnonymousUser) -> QuerySet[Patient]:
    return Patient.objects.filter(project__in=projects_for(user))


def studies_for(user: User | AnonymousUser) -> QuerySet[Study]:
    return Study.objects.filter(patient__project__in=projects_for(user)).select_related("patient")


def series_for(user: User | AnonymousUser) -> QuerySet[Series]:
    return (
        Series.objects.filter(study__patient__project__in=projects_for(user))
        .select_related("study", "study__patient")
        .annotate(instance_count=Count("instances"))
    )


def instances_for(user: User | AnonymousUser) -> QuerySet[Instance]:
    return Instance.objects.filter(series__study__patient__project__in=projects_for(user))


def pfts_for(user: User | AnonymousUser) -> QuerySet[PftResult]:
    return PftResult.objects.filter(patient__project__in=projects_for(user)).select_related(
        "patient"
    )


def closest_pft(study: Study) -> PftResult | None:
    """The patient's PFT nearest to the CT date, if one lies within ±3 months."""
    if study.study_date is None:
        return None
    candidates = PftResult.objects.filter(
        patient_id=study.patient_id,
        date__gte=study.study_date - PFT_WINDOW,
        date__lte=study.study_date + PFT_WINDOW,
    )
    return min(
        candidates,
        key=lambda pft: (abs((pft.date - study.study_date).days), pft.date),  # type: ignore[operator]
        default=None,
    )


def search_studies(user: User | AnonymousUser, params: dict[str, Any]) -> QuerySet[Study]:
    queryset = studies_for(user)
    if value := params.get("patient_id"):
        queryset = queryset.filter(patient__patient_id__icontains=value)
    if value := params.get("accession_number"):
        queryset = queryset.filter(accession_number=value)
    if value := params.get("date_from"):
        queryset = queryset.filter(study_date__gte=value)
    if value := params.get("date_to"):
        queryset = queryset.filter(study_date__lte=value)
    if value := params.get("project"):
        queryset = queryset.filter(patient__project__slug=value)
    return queryset.annotate(series_count=Count("series", distinct=True)).order_by(
        "patient__patient_id", "study_date"
    )


def series_for_study(study: Study) -> QuerySet[Series]:
    """The study's series with their instance counts, each geometry summary up to date (made
    again here for the series that ingest has added instances to since it was made)."""
    series = study.series.annotate(instance_count=Count("instances")).order_by("series_number")
    stale = [s.series_instance_uid for s in series if s.geometry_stale]
    if not stale:
        return series  # evaluated: the caller reads these rows
    refresh_series_geometry(stale)
    return series.all()
