"""What a dashboard or an export asks for, in one call per report: access, the patients in
scope, the extent sources, then the statistics services.

Every entry point takes the requesting user and narrows to what a coordinator of their projects
may see (``reports.selectors``); the management command passes ``user=None`` (trusted, local).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db.models import QuerySet

from annotation.models import ReadingStudy, Structure
from core.exceptions import ApplicationError
from reports import selectors
from reports.services import agreement, characteristics, correlation, exports, longitudinal
from reports.services.extent import READERS, SourceMode, engines_available
from studies.models import Patient, Series

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import User

    AnyUser = User | AnonymousUser | None

REPORTS = ("agreement", "characteristics", "correlation", "longitudinal", "all")


@dataclass(frozen=True)
class Query:
    reading_study: ReadingStudy | None = None
    cohorts: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # engines and/or "readers"; empty: every engine found
    mode: SourceMode = "auto"
    comparisons: tuple[tuple[str, str], ...] = ()
    test_cohorts_p: tuple[str, ...] = ()  # cohorts the main P value compares (default: all)
    structure: str = Structure.ILD.value
    engines: tuple[str, ...] | None = None
    include_open: bool = False
    ci: bool = True
    n_resamples: int = 2000
    train_cohorts: tuple[str, ...] = longitudinal.DEFAULT_TRAIN
    test_cohorts: tuple[str, ...] = longitudinal.DEFAULT_TEST
    extra: dict[str, Any] = field(default_factory=dict)

    def agreement_filters(self, structure: str | None = None) -> agreement.Filters:
        return agreement.Filters(
            structure=structure or self.structure,
            cohorts=self.cohorts,
            engines=self.engines,
            include_open=self.include_open,
            ci=self.ci,
            n_resamples=self.n_resamples,
        )


def patients_in_scope(user: AnyUser) -> QuerySet[Patient]:
    if user is None:
        return Patient.objects.all()
    selectors.ensure_report_access(user)
    return selectors.report_patients_for(user)


def study_for(user: AnyUser, study_id: Any) -> ReadingStudy:
    studies = ReadingStudy.objects.all() if user is None else selectors.report_studies_for(user)
    if user is not None:
        selectors.ensure_report_access(user)
    study = studies.filter(pk=study_id).first()
    if study is None:
        raise ApplicationError("reading study not found", status_code=404)
    return study


def resolve_sources(patients: QuerySet[Patient], requested: Sequence[str]) -> list[str]:
    if requested:
        return list(dict.fromkeys(requested))
    series_ids = list(
        Series.objects.filter(study__patient__in=patients, modality="CT").values_list(
            "pk", flat=True
        )
    )
    return engines_available(series_ids) or [READERS]


# A page computes at most this many stale per-slice rows itself (a few seconds); more (a first
# computation of a large study, minutes) goes to the background task.
INLINE_MAX_ROWS = 4000


def request_sync(study: ReadingStudy) -> None:
    """Queue a background computation of the study's stale rows (after this transaction)."""
    from django.db import transaction

    from reports.tasks import sync_agreement

    transaction.on_commit(lambda: sync_agreement.delay(study_pk=str(study.pk)))


def agreement_report(user: AnyUser, study: ReadingStudy, query: Query) -> agreement.AgreementReport:
    report = agreement.agreement_report(study, query.agreement_filters(), max_rows=INLINE_MAX_ROWS)
    if report.sync is not None and report.sync.pending:
        request_sync(study)
    return report


@dataclass
class CohortReports:
    sources: list[str]
    cohorts: list[str]
    characteristics: characteristics.CharacteristicsTable
    correlation: correlation.CorrelationReport


def cohort_reports(user: AnyUser, query: Query) -> CohortReports:
    """Table 1 and Table 3 over the same patients and the same extent sources."""
    patients = patients_in_scope(user)
    sources = resolve_sources(patients, query.sources)
    rows = characteristics.patient_rows(
        patients,
        sources=sources,
        reading_study=query.reading_study,
        cohorts=query.cohorts,
        mode=query.mode,
    )
    table = characteristics.characteristics_table(
        rows,
        sources=sources,
        groups=query.cohorts or None,
        test_groups=query.test_cohorts_p or None,
        comparisons=query.comparisons,
    )
    cohorts = table.groups
    return CohortReports(
        sources=sources,
        cohorts=cohorts,
        characteristics=table,
        correlation=correlation.correlation_report(rows, sources=sources, cohorts=cohorts),
    )


def longitudinal_report(user: AnyUser, query: Query) -> longitudinal.LongitudinalReport:
    patients = patients_in_scope(user)
    source = resolve_sources(patients, query.sources)[0]
    rows = longitudinal.longitudinal_rows(
        patients,
        reading_study=query.reading_study,
        cohorts=query.cohorts,
        source=source,
        mode=query.mode,
    )
    return longitudinal.longitudinal_report(
        rows, source=source, train_cohorts=query.train_cohorts, test_cohorts=query.test_cohorts
    )


def tables(
    user: AnyUser, report: str, query: Query, *, inline_max_rows: int | None = None
) -> list[exports.Table]:
    """Every table of ``report`` (``"all"``: every report; agreement needs a reading study).

    Exports are complete or nothing: with more than ``inline_max_rows`` stale per-slice rows
    the background computation is queued and a 503 says to retry (``None``: compute inline,
    as the management command does)."""
    if report not in REPORTS:
        raise ApplicationError(f"unknown report {report!r}; one of {', '.join(REPORTS)}")
    out: list[exports.Table] = []
    if report in ("agreement", "all"):
        if query.reading_study is None:
            if report == "agreement":
                raise ApplicationError("the agreement report needs a reading_study")
        else:
            study = study_for(user, query.reading_study.pk)
            synced = agreement.sync_study(study, max_rows=inline_max_rows)
            if synced.pending:
                request_sync(study)
                raise ApplicationError(
                    f"{synced.pending} per-slice comparisons are being computed; "
                    "retry the export in a few minutes",
                    status_code=503,
                )
            for structure in agreement.STRUCTURES:
                filters = query.agreement_filters(structure)
                out += exports.agreement_tables(agreement.agreement_report(study, filters))
    if report in ("characteristics", "correlation", "all"):
        cohort = cohort_reports(user, query)
        if report in ("characteristics", "all"):
            out += exports.characteristics_tables(cohort.characteristics)
        if report in ("correlation", "all"):
            out += exports.correlation_tables(cohort.correlation)
    if report in ("longitudinal", "all"):
        out += exports.longitudinal_tables(longitudinal_report(user, query))
    return out
