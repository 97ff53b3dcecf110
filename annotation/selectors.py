"""Read-side queries for reading studies.

Blinding lives HERE and only here: every endpoint or export that returns a contour goes through
:func:`contours_visible_to`, and every one that returns model output asks
:func:`model_output_visible_to` (or excludes :func:`series_blinded_for`). A reader sees only the
contours of their own reads and, while a repeat read of a case is open, not even their earlier
read of it; other readers' contours never. Coordinators (and site admins) of the project see all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Sum

from annotation.models import Assignment, ContourVersion, ReadingCase, ReadingStudy
from core.access import is_site_admin, projects_for
from core.models import Role
from studies.models import Series

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import User

    AnyUser = User | AnonymousUser


def is_coordinator(user: AnyUser) -> bool:
    return bool(
        user.is_authenticated
        and (is_site_admin(user) or getattr(user, "role", None) == Role.COORDINATOR)
    )


def studies_for(user: AnyUser) -> QuerySet[ReadingStudy]:
    """Studies a coordinator manages, or a reader has assignments in."""
    studies = ReadingStudy.objects.filter(project__in=projects_for(user))
    if is_coordinator(user):
        return studies
    return studies.filter(assignments__reader_id=user.pk).distinct()


def managed_studies_for(user: AnyUser) -> QuerySet[ReadingStudy]:
    if not is_coordinator(user):
        return ReadingStudy.objects.none()
    return ReadingStudy.objects.filter(project__in=projects_for(user))


def assignments_for(user: AnyUser) -> QuerySet[Assignment]:
    """A reader's own assignments; everything in their projects for a coordinator."""
    assignments = Assignment.objects.filter(study__project__in=projects_for(user)).select_related(
        "study", "case", "case__series", "case__series__study", "case__baseline_series__study"
    )
    if is_coordinator(user):
        return assignments
    return assignments.filter(reader_id=user.pk)


def contours_visible_to(user: AnyUser) -> QuerySet[ContourVersion]:
    """THE blinding filter: every contour version ``user`` may receive, from any endpoint."""
    contours = ContourVersion.objects.filter(assignment__study__project__in=projects_for(user))
    if is_coordinator(user):
        return contours
    if getattr(user, "role", None) != Role.RADIOLOGIST:
        return ContourVersion.objects.none()
    # Intra-observer blinding: an open read of a case hides the reader's other reads of it.
    other_open_read = (
        Assignment.objects.filter(reader_id=user.pk, case=OuterRef("assignment__case"))
        .exclude(pk=OuterRef("assignment_id"))
        .exclude(status=Assignment.Status.SUBMITTED)
    )
    return contours.filter(assignment__reader_id=user.pk).filter(~Exists(other_open_read))


def latest_contours(contours: QuerySet[ContourVersion]) -> QuerySet[ContourVersion]:
    """The newest version of each (assignment, structure, slice) among ``contours``."""
    newer = ContourVersion.objects.filter(
        assignment=OuterRef("assignment"),
        structure=OuterRef("structure"),
        referenced_sop_instance_uid=OuterRef("referenced_sop_instance_uid"),
        version__gt=OuterRef("version"),
    )
    return contours.filter(~Exists(newer))


def model_output_visible_to(user: AnyUser, case: ReadingCase) -> bool:
    """Model output for a case: coordinators always; a reader only after submitting every read
    of the case, and only when the study allows it."""
    if (
        not user.is_authenticated
        or not projects_for(user).filter(pk=case.study.project_id).exists()
    ):
        return False
    if is_coordinator(user):
        return True
    if not case.study.allow_model_overlay_after_submit:
        return False
    reads = Assignment.objects.filter(case=case, reader_id=user.pk)
    return reads.exists() and not reads.exclude(status=Assignment.Status.SUBMITTED).exists()


def series_blinded_for(user: AnyUser) -> QuerySet[Series]:
    """Series whose model output and derived contours ``user`` must not receive (for other apps'
    endpoints: jobs results, exports): those of cases with an open read by ``user``, and those of
    cases where the study forbids the overlay."""
    if not user.is_authenticated or is_coordinator(user):
        return Series.objects.none()
    cases = ReadingCase.objects.filter(assignments__reader_id=user.pk).filter(
        Q(study__allow_model_overlay_after_submit=False)
        | Q(assignments__reader_id=user.pk, assignments__status__in=["assigned", "in_progress"])
    )
    return Series.objects.filter(
        Q(reading_cases__in=cases) | Q(baseline_reading_cases__in=cases)
    ).distinct()


def worklist(user: AnyUser) -> list[Assignment]:
    return list(
        Assignment.objects.filter(reader_id=user.pk, study__project__in=projects_for(user))
        .select_related("study", "case")
        .order_by("study__created", "order")
    )


def next_assignment(user: AnyUser) -> Assignment | None:
    """The reader's next case: an open read in progress first, else the first not submitted."""
    open_reads = [a for a in worklist(user) if a.status != Assignment.Status.SUBMITTED]
    in_progress = [a for a in open_reads if a.status == Assignment.Status.IN_PROGRESS]
    candidates = in_progress or open_reads
    return candidates[0] if candidates else None


@dataclass(frozen=True)
class ReaderProgress:
    reader_id: int
    username: str
    total: int
    submitted: int
    in_progress: int
    reading_ms: int


def study_progress(study: ReadingStudy) -> list[ReaderProgress]:
    rows = (
        study.assignments.values("reader_id", "reader__username")
        .annotate(
            total=Count("id"),
            submitted=Count("id", filter=Q(status=Assignment.Status.SUBMITTED)),
            in_progress=Count("id", filter=Q(status=Assignment.Status.IN_PROGRESS)),
        )
        .order_by("reader__username")
    )
    times = dict(
        study.assignments.filter(reading_times__kind="case")
        .values("reader_id")
        .annotate(ms=Sum("reading_times__duration_ms"))
        .values_list("reader_id", "ms")
    )
    return [
        ReaderProgress(
            reader_id=row["reader_id"],
            username=row["reader__username"],
            total=row["total"],
            submitted=row["submitted"],
            in_progress=row["in_progress"],
            reading_ms=int(times.get(row["reader_id"]) or 0),
        )
        for row in rows
    ]


def reading_times(assignment: Assignment) -> dict[str, object]:
    """Total time on the case and per slice (ms)."""
    per_slice = dict(
        assignment.reading_times.filter(kind="slice")
        .values("sop_instance_uid")
        .annotate(ms=Sum("duration_ms"))
        .values_list("sop_instance_uid", "ms")
    )
    case_ms = assignment.reading_times.filter(kind="case").aggregate(ms=Sum("duration_ms"))["ms"]
    return {"case_ms": int(case_ms or 0), "slice_ms": {k: int(v) for k, v in per_slice.items()}}
