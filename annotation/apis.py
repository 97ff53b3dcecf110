"""REST API for reading: worklist, the viewer's read, contours (versions, conflicts), submission,
reopen, assessments, reading times, model overlay, coordinator setup, progress and exports.

Every view that returns a contour takes it from ``selectors.contours_visible_to``.
"""

from __future__ import annotations

import base64
from typing import Any

from django.shortcuts import get_object_or_404
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors
from annotation.models import (
    Assignment,
    ReadingCase,
    ReadingStudy,
    Structure,
    VisualAssessment,
)
from annotation.serializers import assignment_to_dict, contour_to_dict
from annotation.services import contours as contour_services
from annotation.services import geometry, model_output, reading, setup
from core.access import projects_for
from core.exceptions import ApplicationError
from core.models import User
from studies.models import Series


def _assignment(request: Request, assignment_id: str) -> Assignment:
    return get_object_or_404(selectors.assignments_for(request.user), pk=assignment_id)


def _managed_study(request: Request, study_id: str) -> ReadingStudy:
    if not selectors.is_coordinator(request.user):
        raise ApplicationError("only coordinators manage reading studies", status_code=403)
    return get_object_or_404(selectors.managed_studies_for(request.user), pk=study_id)


class WorklistApi(APIView):
    def get(self, request: Request) -> Response:
        items = selectors.worklist(request.user)
        upcoming = selectors.next_assignment(request.user)
        return Response(
            {
                "total": len(items),
                "submitted": sum(a.status == Assignment.Status.SUBMITTED for a in items),
                "next": str(upcoming.pk) if upcoming else None,
                "results": [
                    {
                        "id": str(a.pk),
                        "study": a.study.name,
                        "case": a.case.label,
                        "order": a.order,
                        "is_repeat": a.is_repeat,
                        "status": a.status,
                        "ready": a.case.protocol_status == ReadingCase.ProtocolStatus.READY,
                    }
                    for a in items
                ],
            }
        )


class AssignmentDetailApi(APIView):
    def get(self, request: Request, assignment_id: str) -> Response:
        assignment = _assignment(request, assignment_id)
        assignment = reading.open_assignment(assignment, request.user)  # type: ignore[arg-type]
        data = assignment_to_dict(assignment)
        data["reading_times"] = selectors.reading_times(assignment)
        data["model_overlay_available"] = selectors.model_output_visible_to(
            request.user, assignment.case
        )
        return Response(data)


class ContourListApi(APIView):
    class InputSerializer(serializers.Serializer):
        structure = serializers.ChoiceField(choices=Structure.choices)
        referenced_sop_instance_uid = serializers.CharField(max_length=64)
        base_version = serializers.IntegerField(min_value=0)
        geometry = serializers.JSONField()
        client_edit_id = serializers.UUIDField(required=False, allow_null=True)

    def get(self, request: Request, assignment_id: str) -> Response:
        """Latest version of every contoured slice of the read (blinded)."""
        assignment = _assignment(request, assignment_id)
        visible = selectors.contours_visible_to(request.user).filter(assignment=assignment)
        if sop := request.query_params.get("sop"):
            visible = visible.filter(referenced_sop_instance_uid=sop)
        latest = selectors.latest_contours(visible).select_related("author")
        include_mask = request.query_params.get("mask") == "1"
        return Response(
            {"results": [contour_to_dict(c, include_mask=include_mask) for c in latest]}
        )

    def post(self, request: Request, assignment_id: str) -> Response:
        assignment = _assignment(request, assignment_id)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data: dict[str, Any] = payload.validated_data  # type: ignore[assignment]
        result = contour_services.save_contour(
            assignment=assignment,
            user=request.user,  # type: ignore[arg-type]
            structure=data["structure"],
            referenced_sop_instance_uid=data["referenced_sop_instance_uid"],
            base_version=data["base_version"],
            geometry_json=data["geometry"],
            client_edit_id=data.get("client_edit_id"),
        )
        return Response(
            contour_to_dict(result.contour),
            status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
        )


class ContourHistoryApi(APIView):
    def get(self, request: Request, assignment_id: str) -> Response:
        """Every version of one slice and structure, oldest first (blinded)."""
        assignment = _assignment(request, assignment_id)
        versions = (
            selectors.contours_visible_to(request.user)
            .filter(
                assignment=assignment,
                structure=request.query_params.get("structure", ""),
                referenced_sop_instance_uid=request.query_params.get("sop", ""),
            )
            .select_related("author")
            .order_by("version")
        )
        return Response({"results": [contour_to_dict(c) for c in versions]})


class ContourDetailApi(APIView):
    def get(self, request: Request, contour_id: str) -> Response:
        contour = get_object_or_404(
            selectors.contours_visible_to(request.user).select_related("author"), pk=contour_id
        )
        return Response(contour_to_dict(contour, include_mask=True))


class SubmitApi(APIView):
    def post(self, request: Request, assignment_id: str) -> Response:
        assignment = reading.submit(_assignment(request, assignment_id), request.user)  # type: ignore[arg-type]
        return Response(assignment_to_dict(assignment))


class ReopenApi(APIView):
    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)

    def post(self, request: Request, assignment_id: str) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        assignment = _assignment(request, assignment_id)
        entry = reading.reopen(
            assignment,
            request.user,  # type: ignore[arg-type]
            reason=payload.validated_data["reason"],  # type: ignore[index]
        )
        return Response(
            {"assignment": str(assignment.pk), "reason": entry.reason, "at": entry.created}
        )


class AssessmentApi(APIView):
    class InputSerializer(serializers.Serializer):
        call = serializers.ChoiceField(choices=VisualAssessment.Call.choices)
        comment = serializers.CharField(required=False, allow_blank=True, max_length=2000)

    def post(self, request: Request, assignment_id: str) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data: dict[str, Any] = payload.validated_data  # type: ignore[assignment]
        assessment = reading.record_assessment(
            _assignment(request, assignment_id),
            request.user,  # type: ignore[arg-type]
            call=data["call"],
            comment=data.get("comment", ""),
        )
        return Response({"call": assessment.call, "comment": assessment.comment})


class TimingApi(APIView):
    class EventSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=["slice", "case"])
        sop_instance_uid = serializers.CharField(required=False, allow_blank=True, max_length=64)
        started_at = serializers.DateTimeField()
        duration_ms = serializers.IntegerField(min_value=0, max_value=24 * 3600 * 1000)

    class InputSerializer(serializers.Serializer):
        events = serializers.ListField(child=serializers.DictField(), max_length=1000)

    def post(self, request: Request, assignment_id: str) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        events = self.EventSerializer(data=payload.validated_data["events"], many=True)  # type: ignore[index]
        events.is_valid(raise_exception=True)
        kept = reading.record_times(
            _assignment(request, assignment_id),
            request.user,  # type: ignore[arg-type]
            [
                reading.TimingEvent(
                    kind=e["kind"],
                    sop_instance_uid=e.get("sop_instance_uid", ""),
                    started_at=e["started_at"],
                    duration_ms=e["duration_ms"],
                )
                for e in events.validated_data  # type: ignore[union-attr]
            ],
        )
        return Response({"recorded": kept}, status=status.HTTP_201_CREATED)


class ModelOverlayApi(APIView):
    def get(self, request: Request, assignment_id: str) -> Response:
        assignment = _assignment(request, assignment_id)
        if not selectors.model_output_visible_to(request.user, assignment.case):
            raise ApplicationError(
                "model output is hidden until you submit this case (if the study shows it at all)",
                status_code=403,
            )
        sop = request.query_params.get("sop", "")
        structure = request.query_params.get("structure", Structure.ILD)
        case = assignment.case
        series = (
            case.baseline_series
            if case.baseline_series
            and case.baseline_series.instances.filter(sop_instance_uid=sop).exists()
            else case.series
        )
        mask = model_output.model_mask(series, sop, structure)  # type: ignore[arg-type]
        if mask is None:
            raise ApplicationError("no model output for this slice", status_code=404)
        return Response(
            {
                "referenced_sop_instance_uid": sop,
                "structure": structure,
                "mask": {
                    "rows": int(mask.shape[0]),
                    "columns": int(mask.shape[1]),
                    "encoding": "packbits-msb-row-major+zlib+base64",
                    "data": base64.b64encode(geometry.pack_mask(mask)).decode("ascii"),
                },
            }
        )


# ---------------------------------------------------------------------------------------------
# Coordinator


class StudyListApi(APIView):
    class InputSerializer(serializers.Serializer):
        project = serializers.SlugField()
        name = serializers.CharField(max_length=200)
        description = serializers.CharField(required=False, allow_blank=True)
        protocol = serializers.ChoiceField(
            choices=ReadingStudy.Protocol.choices, default=ReadingStudy.Protocol.EQUALLY_SPACED
        )
        protocol_slice_count = serializers.IntegerField(min_value=2, max_value=500, default=20)
        randomize_seed = serializers.IntegerField(default=0)
        repeat_fraction = serializers.FloatField(min_value=0.0, max_value=1.0, default=0.0)
        allow_model_overlay_after_submit = serializers.BooleanField(default=False)
        longitudinal = serializers.BooleanField(default=False)

    def get(self, request: Request) -> Response:
        return Response(
            {
                "results": [
                    {"id": str(s.pk), "name": s.name, "project": s.project.slug}
                    for s in selectors.studies_for(request.user).select_related("project")
                ]
            }
        )

    def post(self, request: Request) -> Response:
        if not selectors.is_coordinator(request.user):
            raise ApplicationError("only coordinators set up reading studies", status_code=403)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data: dict[str, Any] = dict(payload.validated_data)  # type: ignore[arg-type]
        project = get_object_or_404(projects_for(request.user), slug=data.pop("project"))
        study = setup.create_study(project=project, created_by=request.user, **data)  # type: ignore[arg-type]
        return Response({"id": str(study.pk), "name": study.name}, status=status.HTTP_201_CREATED)


class StudyCasesApi(APIView):
    class CaseSerializer(serializers.Serializer):
        series_instance_uid = serializers.CharField(max_length=64)
        baseline_series_instance_uid = serializers.CharField(
            max_length=64, required=False, allow_blank=True
        )

    def post(self, request: Request, study_id: str) -> Response:
        study = _managed_study(request, study_id)
        payload = self.CaseSerializer(data=request.data.get("cases", []), many=True)
        payload.is_valid(raise_exception=True)
        series = Series.objects.filter(study__patient__project=study.project)
        specs = [
            setup.CaseSpec(
                series=get_object_or_404(series, series_instance_uid=c["series_instance_uid"]),
                baseline_series=(
                    get_object_or_404(series, series_instance_uid=c["baseline_series_instance_uid"])
                    if c.get("baseline_series_instance_uid")
                    else None
                ),
            )
            for c in payload.validated_data  # type: ignore[union-attr]
        ]
        cases = setup.add_cases(study, specs)
        return Response(
            {"cases": [{"id": str(c.pk), "label": c.label} for c in cases]},
            status=status.HTTP_201_CREATED,
        )


class StudyReadersApi(APIView):
    class InputSerializer(serializers.Serializer):
        readers = serializers.ListField(child=serializers.CharField(max_length=150), min_length=1)

    def post(self, request: Request, study_id: str) -> Response:
        study = _managed_study(request, study_id)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        names = payload.validated_data["readers"]  # type: ignore[index]
        readers = list(User.objects.filter(username__in=names))
        if len(readers) != len(set(names)):
            raise ApplicationError("unknown reader username")
        assignments = setup.assign_readers(study, readers)
        return Response({"assignments": len(assignments)}, status=status.HTTP_201_CREATED)


class StudyProgressApi(APIView):
    def get(self, request: Request, study_id: str) -> Response:
        study = _managed_study(request, study_id)
        return Response(
            {
                "study": study.name,
                "cases": study.cases.count(),
                "cases_ready": study.cases.filter(protocol_status="ready").count(),
                "readers": [vars(p) for p in selectors.study_progress(study)],
            }
        )


class StudyExportApi(APIView):
    def get(self, request: Request, study_id: str) -> Response:
        """The latest contour of every slice of every read the caller may see (blinded)."""
        study = get_object_or_404(selectors.studies_for(request.user), pk=study_id)
        contours = (
            selectors.latest_contours(
                selectors.contours_visible_to(request.user).filter(assignment__study=study)
            )
            .select_related("author", "assignment", "assignment__case", "assignment__reader")
            .order_by("assignment__case__label", "assignment__reader__username", "structure")
        )
        return Response(
            {
                "study": study.name,
                "contours": [
                    {
                        **contour_to_dict(c, include_mask=True),
                        "case": c.assignment.case.label,
                        "reader": c.assignment.reader.get_username(),
                        "is_repeat": c.assignment.is_repeat,
                    }
                    for c in contours
                ],
            }
        )
