"""Reports API (/api/v1/reports/...): JSON tables, CSV / XLSX / ZIP exports, DICOM SEG, and the
drill-down overlay image. Coordinators only, except a reader's SEG of their own read (through
``contours_visible_to``) and overlay images, which fetch every mask through the blinding
selectors."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.models import Structure
from annotation.selectors import assignments_for, studies_for
from core.exceptions import ApplicationError
from inference.stats._common import jsonable
from reports import selectors
from reports.params import flag, parse_query, uuid_or_404
from reports.services import agreement, dashboards, exports, seg
from reports.services.compare import compare_png
from studies.models import Series


def ok(data: Any) -> Response:
    """JSON with NaN / infinity as null (JSON has neither)."""
    return Response(jsonable(data))


CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "zip": "application/zip",
}


class StudyListApi(APIView):
    def get(self, request: Request) -> Response:
        selectors.ensure_report_access(request.user)
        studies = selectors.report_studies_for(request.user)
        return ok(
            {
                "results": [
                    {
                        "id": str(s.pk),
                        "name": s.name,
                        "project": s.project.slug,
                        "longitudinal": s.longitudinal,
                    }
                    for s in studies
                ],
                "cohorts": selectors.cohorts_of(selectors.report_patients_for(request.user)),
            }
        )


class AgreementApi(APIView):
    def get(self, request: Request, study_id: str) -> Response:
        """Table 2 (median (IQR) Dice of every pair), intra-observer and consensus Dice."""
        study = dashboards.study_for(request.user, study_id)
        query = parse_query(request.user, request.query_params, reading_study=study)
        report = dashboards.agreement_report(request.user, study, query)
        data = report.to_dict()
        if report.sync is not None:
            data["sync"] = report.sync.__dict__
        return ok(data)


class AgreementSlicesApi(APIView):
    def get(self, request: Request, study_id: str) -> Response:
        """The per-slice Dice behind one cell (``a`` and ``b`` rater keys) or every cell."""
        study = dashboards.study_for(request.user, study_id)
        query = parse_query(request.user, request.query_params, reading_study=study)
        agreement.sync_study(study)
        rows = agreement.slice_rows(
            study,
            query.agreement_filters(),
            request.query_params.get("a"),
            request.query_params.get("b"),
        )
        return ok({"count": len(rows), "empty_rule": agreement.EMPTY_RULE_TEXT, "results": rows})


class AgreementRefreshApi(APIView):
    def post(self, request: Request, study_id: str) -> Response:
        """Recompute every stale row now (``force=1``: check every row, ignore the fingerprint)."""
        study = dashboards.study_for(request.user, study_id)
        result = agreement.sync_study(study, force=flag(request.query_params, "force", False))
        return ok(result.__dict__)


class CharacteristicsApi(APIView):
    def get(self, request: Request) -> Response:
        """Table 1 by cohort, with the per-patient rows and the source of every extent."""
        report = dashboards.cohort_reports(
            request.user, parse_query(request.user, request.query_params)
        )
        table = report.characteristics
        return ok(
            {
                "sources": report.sources,
                "cohorts": report.cohorts,
                "table": table.cells(),
                "numbers": table.numbers(),
                "patients": [row.to_dict(report.sources) for row in table.patients],
            }
        )


class CorrelationApi(APIView):
    def get(self, request: Request) -> Response:
        """Table 3 by cohort and extent source, with every number."""
        report = dashboards.cohort_reports(
            request.user, parse_query(request.user, request.query_params)
        )
        return ok(
            {
                "sources": report.sources,
                "cohorts": report.cohorts,
                "table": report.correlation.cells(),
                "numbers": report.correlation.numbers(),
            }
        )


class LongitudinalApi(APIView):
    def get(self, request: Request) -> Response:
        report = dashboards.longitudinal_report(
            request.user, parse_query(request.user, request.query_params)
        )
        return ok(
            {
                "source": report.source,
                "functional": report.functional.cells(),
                "morphologic": report.morphologic.cells(),
                "jacobian_by_group": report.jacobian_cells(),
                "jacobian_vs_pft": report.correlation_cells(),
                "jacobian_vs_pft_error": report.correlation_error,
                "classifiers": [c.to_dict() for c in report.classifiers],
                "patients": [r.to_dict() for r in report.rows],
            }
        )


def file_response(data: bytes, filename: str, content_type: str) -> HttpResponse:
    response = HttpResponse(data, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class ExportApi(APIView):
    def get(self, request: Request, report: str, fmt: str) -> HttpResponse:
        """``<report>.csv?table=NAME`` (one table), ``<report>.xlsx`` (one sheet per table) or
        ``<report>.zip`` (every table as CSV + the XLSX + a README)."""
        if fmt not in CONTENT_TYPES:
            raise ApplicationError("format must be csv, xlsx or zip", status_code=404)
        tables = dashboards.tables(
            request.user,
            report,
            parse_query(request.user, request.query_params),
            inline_max_rows=dashboards.INLINE_MAX_ROWS,
        )
        if fmt == "csv":
            name = request.query_params.get("table") or (tables[0].name if tables else "")
            table = exports.find(tables, name)
            if table is None:
                raise ApplicationError(
                    f"no table {name!r}; tables: {', '.join(t.name for t in tables)}",
                    status_code=404,
                )
            return file_response(exports.to_csv(table), f"{table.name}.csv", CONTENT_TYPES["csv"])
        if fmt == "xlsx":
            return file_response(exports.to_xlsx(tables), f"{report}.xlsx", CONTENT_TYPES["xlsx"])
        return file_response(exports.bundle(tables), f"{report}.zip", CONTENT_TYPES["zip"])


class SegApi(APIView):
    def get(self, request: Request, assignment_id: str) -> HttpResponse:
        """The read's contours on one series as DICOM SEG (``series`` = Series Instance UID,
        default the case's series). Readers: their own reads only."""
        assignment = get_object_or_404(assignments_for(request.user), pk=assignment_id)
        series = None
        if uid := request.query_params.get("series"):
            case = assignment.case
            series = get_object_or_404(
                Series.objects.filter(pk__in=[case.series_id, case.baseline_series_id]),
                series_instance_uid=uid,
            )
        result = seg.assignment_seg(request.user, assignment, series)
        return file_response(result.data, result.filename, "application/dicom")


class CompareImageApi(APIView):
    def get(self, request: Request, study_id: str) -> HttpResponse:
        """PNG of one slice with two raters' masks (``a`` amber, ``b`` cyan)."""
        params = request.query_params
        study = get_object_or_404(studies_for(request.user), pk=study_id)
        case = get_object_or_404(study.cases.all(), pk=uuid_or_404(params.get("case"), "case"))
        structure = params.get("structure", Structure.ILD.value)
        if structure not in Structure.values:
            raise ApplicationError("structure must be ild or lung")
        data = compare_png(
            request.user,
            case=case,
            sop_instance_uid=params.get("sop", ""),
            structure=structure,
            rater_a=params.get("a", ""),
            rater_b=params.get("b", ""),
        )
        return HttpResponse(data, content_type="image/png")
