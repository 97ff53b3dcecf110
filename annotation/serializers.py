"""Plain renderers shared by the APIs and the exports (no business logic)."""

from __future__ import annotations

import base64
from typing import Any

from annotation.models import Assignment, ContourVersion, ReadingCase


def contour_to_dict(contour: ContourVersion, *, include_mask: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(contour.pk),
        "assignment": str(contour.assignment_id),
        "structure": contour.structure,
        "referenced_sop_instance_uid": contour.referenced_sop_instance_uid,
        "frame_of_reference_uid": contour.frame_of_reference_uid,
        "version": contour.version,
        "parent_version": contour.version - 1 if contour.parent_id else None,
        "schema_version": contour.schema_version,
        "geometry": contour.geometry,
        "pixel_count": contour.pixel_count,
        "area_mm2": round(contour.area_mm2, 3),
        "author": contour.author.get_username() if contour.author_id else None,
        "created": contour.created.isoformat(),
        "client_edit_id": str(contour.client_edit_id) if contour.client_edit_id else None,
    }
    if include_mask:
        data["mask"] = {
            "rows": contour.mask_rows,
            "columns": contour.mask_columns,
            "encoding": "packbits-msb-row-major+zlib+base64",
            "data": base64.b64encode(bytes(contour.mask)).decode("ascii"),
        }
    return data


def series_to_dict(series: Any, slices: list[str]) -> dict[str, Any] | None:
    if series is None:
        return None
    return {
        "study_instance_uid": series.study.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "frame_of_reference_uid": series.frame_of_reference_uid,
        "protocol_sop_instance_uids": slices,
    }


def case_to_dict(case: ReadingCase) -> dict[str, Any]:
    return {
        "id": str(case.pk),
        "label": case.label,
        "protocol_status": case.protocol_status,
        "protocol_error": case.protocol_error,
        "series": series_to_dict(case.series, list(case.slice_sop_instance_uids)),
        "baseline": series_to_dict(
            case.baseline_series, list(case.baseline_slice_sop_instance_uids)
        ),
        "protocol_details": case.protocol_details,
    }


def assignment_to_dict(assignment: Assignment) -> dict[str, Any]:
    study = assignment.study
    return {
        "id": str(assignment.pk),
        "study": {
            "id": str(study.pk),
            "name": study.name,
            "protocol": study.protocol,
            "protocol_slice_count": study.protocol_slice_count,
            "longitudinal": study.longitudinal,
            "allow_model_overlay_after_submit": study.allow_model_overlay_after_submit,
        },
        "order": assignment.order,
        "is_repeat": assignment.is_repeat,
        "status": assignment.status,
        "locked": assignment.is_locked,
        "started_at": assignment.started_at.isoformat() if assignment.started_at else None,
        "submitted_at": assignment.submitted_at.isoformat() if assignment.submitted_at else None,
        "case": case_to_dict(assignment.case),
        "assessment": (assignment.assessment.call if hasattr(assignment, "assessment") else None),
    }
