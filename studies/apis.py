"""REST API for the study store and lung function. Each view: validate, call one service or
selector, render."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.access import has_role, projects_for
from core.exceptions import ApplicationError
from core.models import Role
from studies import selectors
from studies.models import PftResult, Series
from studies.services.clinical import import_clinical_csv
from studies.services.ingest import ingest_datasets_bytes
from studies.services.pft import import_pft_csv, import_pft_records

WRITE_ROLES = (Role.COORDINATOR,)


def require_role(request: Request, *roles: str) -> None:
    if not has_role(request.user, *roles):
        raise ApplicationError("your role may not do this", status_code=status.HTTP_403_FORBIDDEN)


def project_for_write(request: Request, slug: str | None) -> Any:
    projects = projects_for(request.user)
    if not slug:
        if projects.count() == 1:
            return projects.get()
        raise ApplicationError("name the project to import into (field 'project')")
    project = projects.filter(slug=slug).first()
    if project is None:
        raise ApplicationError(f"unknown project {slug!r}", status_code=status.HTTP_404_NOT_FOUND)
    return project


class PftOutputSerializer(serializers.ModelSerializer):
    patient_id = serializers.CharField(source="patient.patient_id")

    class Meta:
        model = PftResult
        fields = [
            "id",
            "patient_id",
            "date",
            "fvc_pct_predicted",
            "tlc_pct_predicted",
            "dlco_pct_predicted",
            "kco_pct_predicted",
            "fvc_l",
            "tlc_l",
            "dlco_mmol_min_kpa",
            "kco_mmol_min_kpa_l",
        ]


class SeriesOutputSerializer(serializers.ModelSerializer):
    instance_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Series
        fields = [
            "id",
            "series_instance_uid",
            "modality",
            "series_number",
            "description",
            "frame_of_reference_uid",
            "convolution_kernel",
            "instance_count",
            "geometry",
        ]


def study_payload(study: Any) -> dict[str, Any]:
    pft = selectors.closest_pft(study)
    return {
        "id": str(study.id),
        "study_instance_uid": study.study_instance_uid,
        "patient_id": study.patient.patient_id,
        "study_date": study.study_date,
        "accession_number": study.accession_number,
        "description": study.description,
        "series": SeriesOutputSerializer(selectors.series_for_study(study), many=True).data,
        "closest_pft": PftOutputSerializer(pft).data if pft else None,
    }


class PatientListApi(APIView):
    def get(self, request: Request) -> Response:
        patients = selectors.patients_for(request.user).select_related("project")
        if query := request.query_params.get("q"):
            patients = patients.filter(patient_id__icontains=query)
        if cohort := request.query_params.get("cohort"):
            patients = patients.filter(cohort=cohort)
        return Response(
            [
                {
                    "id": str(p.id),
                    "patient_id": p.patient_id,
                    "project": p.project.slug,
                    "sex": p.sex,
                    "birth_date": p.birth_date,
                    "cohort": p.cohort,
                    "deidentified": p.deidentified,
                }
                for p in patients
            ]
        )


class PatientDetailApi(APIView):
    def get(self, request: Request, patient_id: str) -> Response:
        patient = get_object_or_404(
            selectors.patients_for(request.user).prefetch_related(
                Prefetch("pfts", queryset=PftResult.objects.order_by("date"))
            ),
            patient_id=patient_id,
        )
        studies = selectors.studies_for(request.user).filter(patient=patient).order_by("study_date")
        return Response(
            {
                "patient_id": patient.patient_id,
                "project": patient.project.slug,
                "sex": patient.sex,
                "birth_date": patient.birth_date,
                "cohort": patient.cohort,
                "studies": [study_payload(s) for s in studies],
                "pfts": PftOutputSerializer(patient.pfts.all(), many=True).data,
            }
        )


class StudyListApi(APIView):
    class FilterSerializer(serializers.Serializer):
        patient_id = serializers.CharField(required=False)
        accession_number = serializers.CharField(required=False)
        date_from = serializers.DateField(required=False)
        date_to = serializers.DateField(required=False)
        project = serializers.SlugField(required=False)

    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        studies = selectors.search_studies(request.user, dict(filters.validated_data))
        return Response(
            [
                {
                    "id": str(s.id),
                    "study_instance_uid": s.study_instance_uid,
                    "patient_id": s.patient.patient_id,
                    "study_date": s.study_date,
                    "accession_number": s.accession_number,
                    "description": s.description,
                    "series_count": s.series_count,  # type: ignore[attr-defined]
                }
                for s in studies
            ]
        )


class StudyDetailApi(APIView):
    def get(self, request: Request, study_instance_uid: str) -> Response:
        study = get_object_or_404(
            selectors.studies_for(request.user), study_instance_uid=study_instance_uid
        )
        return Response(study_payload(study))


class SeriesDetailApi(APIView):
    def get(self, request: Request, series_instance_uid: str) -> Response:
        series = get_object_or_404(
            selectors.series_for(request.user), series_instance_uid=series_instance_uid
        )
        return Response(SeriesOutputSerializer(series).data)


class UploadApi(APIView):
    """POST multipart ``files`` (DICOM files or .zip) with ``project`` and ``deidentify``."""

    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        project = serializers.SlugField(required=False)
        # Not a BooleanField: DRF reads an absent checkbox in form data as False, and an
        # upload that omits the field must still be de-identified.
        deidentify = serializers.ChoiceField(
            choices=["true", "false", "1", "0"], required=False, allow_blank=True
        )

    def post(self, request: Request) -> Response:
        require_role(request, *WRITE_ROLES)
        form = self.InputSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        project = project_for_write(request, form.validated_data.get("project"))
        uploads = request.FILES.getlist("files")
        if not uploads:
            raise ApplicationError("no files: send them as multipart field 'files'")
        items = _expand_uploads(uploads)
        choice = form.validated_data.get("deidentify") or ""
        deidentify = settings.DEIDENTIFY_BY_DEFAULT if not choice else choice in ("true", "1")
        report = ingest_datasets_bytes(items, project=project, deidentify=deidentify)
        code: int = status.HTTP_201_CREATED if report.stored else status.HTTP_200_OK
        if report.rejected and not report.stored and not report.duplicate:
            code = status.HTTP_400_BAD_REQUEST
        return Response(report.to_dict(), status=code)


def _expand_uploads(uploads: list[Any]) -> list[tuple[str, bytes]]:
    """Read uploaded files; .zip uploads go through the same safe expansion as the CLI."""
    import tempfile
    from pathlib import Path

    from studies.archive import ArchiveError, RejectedInput, expand_inputs

    items: list[tuple[str, bytes]] = []
    for upload in uploads:
        name = str(upload.name)
        if name.lower().endswith(".zip"):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "upload.zip"
                with path.open("wb") as handle:
                    for chunk in upload.chunks():
                        handle.write(chunk)
                for item in expand_inputs([path]):
                    display = f"{name}:{item.display_name.split('/', 1)[-1]}"
                    if isinstance(item, RejectedInput):
                        raise ApplicationError(f"{display}: {item.reason}")
                    try:
                        with item.open() as member:
                            items.append((display, member.read()))
                    except ArchiveError as exc:
                        raise ApplicationError(f"{display}: {exc}") from None
        else:
            items.append((name, upload.read()))
    return items


class PftListApi(APIView):
    parser_classes = [JSONParser, MultiPartParser]

    def get(self, request: Request) -> Response:
        pfts = selectors.pfts_for(request.user)
        if patient_id := request.query_params.get("patient_id"):
            pfts = pfts.filter(patient__patient_id=patient_id)
        return Response(PftOutputSerializer(pfts, many=True).data)

    def post(self, request: Request) -> Response:
        """A CSV file in multipart field ``file``, or a JSON list of rows (or one row)."""
        require_role(request, *WRITE_ROLES)
        allowed = set(projects_for(request.user).values_list("pk", flat=True))
        upload = request.FILES.get("file")
        if upload is not None:
            try:
                text = upload.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                raise ApplicationError("the CSV file is not UTF-8 text") from None
            report = import_pft_csv(text, allowed_project_ids=allowed)
        else:
            data = request.data
            records = data if isinstance(data, list) else [data]
            if not records or not all(isinstance(r, dict) for r in records):
                raise ApplicationError("send a CSV as 'file' or a JSON object / list of objects")
            report = import_pft_records(records, allowed_project_ids=allowed)
        return Response(report.to_dict(), status=status.HTTP_201_CREATED)


class ClinicalImportApi(APIView):
    """Table 1 characteristics (SSc subtype, mRSS, autoantibodies) from a CSV in field ``file``."""

    parser_classes = [MultiPartParser]

    def post(self, request: Request) -> Response:
        require_role(request, *WRITE_ROLES)
        upload = request.FILES.get("file")
        if upload is None:
            raise ApplicationError("send the CSV file in multipart field 'file'")
        try:
            text = upload.read().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ApplicationError("the CSV file is not UTF-8 text") from None
        allowed = set(projects_for(request.user).values_list("pk", flat=True))
        report = import_clinical_csv(text, allowed_project_ids=allowed)
        return Response(report.to_dict(), status=status.HTTP_200_OK)
