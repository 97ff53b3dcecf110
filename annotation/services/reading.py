"""A reader's actions on a read (open, submit, assess, time) and the coordinator's reopen."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from annotation.models import (
    Assignment,
    AssignmentReopen,
    ReadingCase,
    ReadingTimeEvent,
    VisualAssessment,
)
from annotation.selectors import is_coordinator
from annotation.services.contours import ensure_writable
from core.access import projects_for
from core.exceptions import ApplicationError
from core.models import User

# A single timing event longer than this is a forgotten tab, not reading.
MAX_EVENT_MS = 30 * 60 * 1000


def open_assignment(assignment: Assignment, user: User) -> Assignment:
    """Mark a read as started the first time its reader opens it."""
    if assignment.reader_id == user.pk and assignment.status == Assignment.Status.ASSIGNED:
        Assignment.objects.filter(pk=assignment.pk, status=Assignment.Status.ASSIGNED).update(
            status=Assignment.Status.IN_PROGRESS, started_at=timezone.now()
        )
        assignment.refresh_from_db()
    return assignment


def submit(assignment: Assignment, user: User) -> Assignment:
    with transaction.atomic():
        locked = Assignment.objects.select_for_update().get(pk=assignment.pk)
        ensure_writable(locked, user)
        if locked.case.protocol_status != ReadingCase.ProtocolStatus.READY:
            raise ApplicationError("the case's slices are not ready yet")
        if (
            locked.study.longitudinal
            and not VisualAssessment.objects.filter(assignment=locked).exists()
        ):
            raise ApplicationError(
                "record improvement, stability or worsening before submitting",
                extra={"field": "assessment"},
            )
        locked.status = Assignment.Status.SUBMITTED
        locked.submitted_at = timezone.now()
        locked.started_at = locked.started_at or locked.submitted_at
        locked.save(update_fields=["status", "submitted_at", "started_at", "modified"])
    return locked


def reopen(assignment: Assignment, user: User, *, reason: str) -> AssignmentReopen:
    if (
        not is_coordinator(user)
        or not projects_for(user).filter(pk=assignment.study.project_id).exists()
    ):
        raise ApplicationError("only the study's coordinator may reopen a read", status_code=403)
    reason = reason.strip()
    if not reason:
        raise ApplicationError("give the reason for reopening", extra={"field": "reason"})
    with transaction.atomic():
        locked = Assignment.objects.select_for_update().get(pk=assignment.pk)
        if locked.status != Assignment.Status.SUBMITTED:
            raise ApplicationError("only a submitted read can be reopened")
        entry = AssignmentReopen.objects.create(
            assignment=locked,
            reopened_by=user,
            reason=reason,
            previous_submitted_at=locked.submitted_at,
        )
        locked.status = Assignment.Status.IN_PROGRESS
        locked.submitted_at = None
        locked.save(update_fields=["status", "submitted_at", "modified"])
    return entry


def record_assessment(
    assignment: Assignment, user: User, *, call: str, comment: str = ""
) -> VisualAssessment:
    with transaction.atomic():
        locked = Assignment.objects.select_for_update().get(pk=assignment.pk)
        ensure_writable(locked, user)
        if not locked.study.longitudinal:
            raise ApplicationError("visual assessments belong to longitudinal studies")
        assessment, _ = VisualAssessment.objects.update_or_create(
            assignment=locked, defaults={"call": call, "comment": comment}
        )
    return assessment


@dataclass(frozen=True)
class TimingEvent:
    kind: str
    sop_instance_uid: str
    started_at: datetime
    duration_ms: int


def record_times(assignment: Assignment, user: User, events: Sequence[TimingEvent]) -> int:
    """Store reading-time events of the assignment's own reader; returns how many were kept."""
    if assignment.reader_id != user.pk:
        raise ApplicationError("only the assigned reader records reading time", status_code=403)
    if assignment.is_locked:
        return 0
    rows = [
        ReadingTimeEvent(
            assignment=assignment,
            kind=event.kind,
            sop_instance_uid=event.sop_instance_uid if event.kind == "slice" else "",
            started_at=event.started_at,
            duration_ms=min(event.duration_ms, MAX_EVENT_MS),
        )
        for event in events
        if event.duration_ms > 0 and (event.kind == "case" or event.sop_instance_uid)
    ]
    ReadingTimeEvent.objects.bulk_create(rows)
    return len(rows)
