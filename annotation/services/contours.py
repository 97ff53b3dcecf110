"""Saving a contour: a new immutable version, or a conflict that names the latest one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.models import Assignment, ContourVersion
from annotation.services import geometry
from core.exceptions import ApplicationError
from core.models import User
from studies.models import Instance


class ContourConflict(ApplicationError):
    """The slice changed since the version the client edited (another tab, another window)."""

    status_code = 409

    def __init__(self, latest: ContourVersion | None, base_version: int):
        from annotation.serializers import contour_to_dict

        latest_version = latest.version if latest else 0
        super().__init__(
            f"this slice was saved elsewhere (version {latest_version}) after the version you "
            f"edited ({base_version}): keep yours, take theirs or merge",
            extra={
                "conflict": True,
                "base_version": base_version,
                "latest": contour_to_dict(latest) if latest else None,
            },
        )


@dataclass(frozen=True)
class SaveResult:
    contour: ContourVersion
    created: bool


def allowed_sop_instance_uids(assignment: Assignment) -> set[str]:
    """Slices the reader may contour: the protocol slices, or every slice of the case's series."""
    case = assignment.case
    if case.slice_sop_instance_uids:
        return set(case.slice_sop_instance_uids) | set(case.baseline_slice_sop_instance_uids)
    series_ids = [case.series_id] + ([case.baseline_series_id] if case.baseline_series_id else [])
    return set(
        Instance.objects.filter(series_id__in=series_ids).values_list("sop_instance_uid", flat=True)
    )


def ensure_writable(assignment: Assignment, user: User) -> None:
    if assignment.reader_id != user.pk:
        raise ApplicationError("only the assigned reader may edit this read", status_code=403)
    if assignment.is_locked:
        raise ApplicationError(
            "this read is submitted and locked; ask the coordinator to reopen it",
            status_code=423,
        )


def save_contour(
    *,
    assignment: Assignment,
    user: User,
    structure: str,
    referenced_sop_instance_uid: str,
    base_version: int,
    geometry_json: dict[str, Any],
    client_edit_id: uuid.UUID | None = None,
) -> SaveResult:
    """Append a version for (assignment, structure, slice) on top of ``base_version``.

    Raises ContourConflict (409) when the latest version is not ``base_version``; a retry of an
    already stored edit (same ``client_edit_id``) returns the stored version instead.
    """
    schema_version = geometry.validate_geometry(geometry_json)
    with transaction.atomic():
        # One writer per read at a time: the row lock serialises concurrent saves (two tabs).
        locked = Assignment.objects.select_for_update().get(pk=assignment.pk)
        ensure_writable(locked, user)
        if client_edit_id is not None:
            stored = ContourVersion.objects.filter(
                assignment=locked, client_edit_id=client_edit_id
            ).first()
            if stored is not None:
                return SaveResult(stored, created=False)
        if referenced_sop_instance_uid not in allowed_sop_instance_uids(locked):
            raise ApplicationError(
                f"slice {referenced_sop_instance_uid} is not part of this case's protocol",
                extra={"field": "referenced_sop_instance_uid"},
            )
        instance = Instance.objects.select_related("series").get(
            sop_instance_uid=referenced_sop_instance_uid
        )
        latest = (
            ContourVersion.objects.filter(
                assignment=locked,
                structure=structure,
                referenced_sop_instance_uid=referenced_sop_instance_uid,
            )
            .order_by("-version")
            .first()
        )
        latest_version = latest.version if latest else 0
        if base_version != latest_version:
            raise ContourConflict(latest, base_version)
        grid = geometry.SliceGrid.from_instance(instance)
        mask = geometry.rasterize_geometry(geometry_json, grid)
        pixel_count = int(mask.sum())
        try:
            with transaction.atomic():
                contour = ContourVersion.objects.create(
                    assignment=locked,
                    structure=structure,
                    referenced_sop_instance_uid=referenced_sop_instance_uid,
                    frame_of_reference_uid=instance.series.frame_of_reference_uid,
                    version=latest_version + 1,
                    parent=latest,
                    schema_version=schema_version,
                    geometry=geometry_json,
                    mask=geometry.pack_mask(mask),
                    mask_rows=grid.rows,
                    mask_columns=grid.columns,
                    pixel_count=pixel_count,
                    area_mm2=pixel_count * grid.pixel_area_mm2,
                    author=user,
                    client_edit_id=client_edit_id,
                )
                # Agreement numbers follow the new contour without recomputing everything.
                transaction.on_commit(lambda: _refresh_agreement(contour))
        except IntegrityError:
            # Only reachable without the row lock (SQLite): someone took this version number.
            raise ContourConflict(
                ContourVersion.objects.filter(
                    assignment=locked,
                    structure=structure,
                    referenced_sop_instance_uid=referenced_sop_instance_uid,
                )
                .order_by("-version")
                .first(),
                base_version,
            ) from None
        if locked.status == Assignment.Status.ASSIGNED:
            Assignment.objects.filter(pk=locked.pk).update(
                status=Assignment.Status.IN_PROGRESS, started_at=timezone.now()
            )
    return SaveResult(contour, created=True)


def _refresh_agreement(contour: ContourVersion) -> None:
    from reports.tasks import refresh_agreement_for_contour

    refresh_agreement_for_contour.delay(contour_pk=str(contour.pk))
