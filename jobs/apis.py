"""REST API for segmentation and registration jobs (/api/v1/jobs/...).

Every view narrows jobs to the user's projects (``jobs.selectors.jobs_for`` → studies.selectors)
and withholds model output (result, DICOM SEG, overlays) from series the user is blinded to
(``annotation.selectors.series_blinded_for``): status and progress stay visible.

Viewer overlays (``GET /api/v1/jobs/<id>/overlay/?sop=<SOPInstanceUID>``): a PNG, RGBA, 8 bits,
``Rows × Columns`` of that CT image, to draw over it pixel for pixel.

* segmentation job: lung without ILD ``(0, 160, 255, 60)``, ILD ``(255, 64, 0, 150)``,
  elsewhere transparent;
* registration job (``sop`` of a *baseline* image): the log-Jacobian inside the registration's
  lung mask on a blue-white-red scale clipped to ``±range`` (query ``range``, default 0.25):
  blue = shrinkage from baseline to follow-up, red = expansion; alpha 170; outside the lung
  transparent. Response headers ``X-Overlay-Range`` (the range used) and
  ``X-Followup-Slice-Index`` / ``X-Followup-Sop-Instance-Uid`` (the follow-up slice that
  matches this baseline slice).

``GET /api/v1/jobs/<id>/overlay.npz`` returns the whole volume for a client that renders itself:
for segmentation the label-map npz (``labels`` uint8 ``[k, j, i]`` 0/1/2,
``sop_instance_uids``), for registration ``log_jacobian_baseline.npz`` (``log_jacobian`` float16
``[k, j, i]`` on the baseline grid, ``lung`` uint8, ``sop_instance_uids``,
``followup_slice_index``, ``followup_sop_instance_uids``, geometry); see ``jobs.registration``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from django.http import FileResponse, HttpResponse
from django.shortcuts import get_object_or_404
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.access import has_role
from core.exceptions import ApplicationError
from core.models import Role
from jobs import selectors, services
from jobs.models import Job
from jobs.slices import npz_member, npz_small
from studies import selectors as study_selectors
from studies.services import storage

REQUEST_ROLES = (Role.COORDINATOR,)
DEFAULT_LOG_JACOBIAN_RANGE = 0.25
SEGMENTATION_COLOURS = {1: (0, 160, 255, 60), 2: (255, 64, 0, 150)}
OVERLAY_ALPHA = 170


def job_payload(job: Job, *, hidden: bool) -> dict[str, Any]:
    base = f"/api/v1/jobs/{job.pk}/"
    links = {"self": base}
    if job.status == Job.Status.SUCCEEDED and not hidden:
        if job.kind in (Job.Kind.SEGMENTATION, Job.Kind.REGISTRATION):
            links["overlay"] = f"{base}overlay/?sop={{sop_instance_uid}}"
            links["overlay_npz"] = f"{base}overlay.npz"
        if job.kind == Job.Kind.SEGMENTATION and job.result.get("dicom_seg"):
            links["dicom_seg"] = f"{base}seg.dcm"
    return {
        "id": str(job.pk),
        "kind": job.kind,
        "status": job.status,
        "progress": round(job.progress, 3),
        "error": job.error,
        "engine": job.engine,
        "engine_version": job.engine_version,
        "params": job.params,
        "series_instance_uid": job.series.series_instance_uid if job.series else None,
        "baseline_series_instance_uid": (
            job.baseline_series.series_instance_uid if job.baseline_series else None
        ),
        "patient_id": job.series.study.patient.patient_id if job.series else None,
        "attempts": job.attempts,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "result": None if hidden else job.result,
        "result_hidden": hidden,
        "links": links,
    }


def _require_coordinator(request: Request) -> None:
    if not has_role(request.user, *REQUEST_ROLES):
        raise ApplicationError(
            "only coordinators may request model runs", status_code=status.HTTP_403_FORBIDDEN
        )


def _job(request: Request, job_id: str) -> Job:
    return get_object_or_404(selectors.jobs_for(request.user), pk=job_id)


def _visible_output(request: Request, job_id: str) -> Job:
    """A succeeded job whose model output the user may receive."""
    job = _job(request, job_id)
    if not selectors.model_output_visible(request.user, job):
        raise ApplicationError(
            "model output for this series is hidden while you have an open read of it",
            status_code=status.HTTP_403_FORBIDDEN,
        )
    if job.status != Job.Status.SUCCEEDED:
        raise ApplicationError(
            f"the job has no output (status: {job.status})", status_code=status.HTTP_404_NOT_FOUND
        )
    return job


def _stored(relpath: str | None) -> Path:
    path = storage.absolute(relpath) if relpath else None
    if path is None or not path.is_file():
        raise ApplicationError(
            "the job's output file is no longer stored; run the job again",
            status_code=status.HTTP_404_NOT_FOUND,
        )
    return path


class JobListApi(APIView):
    class FilterSerializer(serializers.Serializer):
        series = serializers.CharField(required=False)
        patient_id = serializers.CharField(required=False)
        kind = serializers.ChoiceField(choices=Job.Kind.choices, required=False)
        status = serializers.ChoiceField(choices=Job.Status.choices, required=False)

    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        jobs = selectors.jobs_for(request.user)
        if value := data.get("series"):
            jobs = jobs.filter(series__series_instance_uid=value) | jobs.filter(
                baseline_series__series_instance_uid=value
            )
        if value := data.get("patient_id"):
            jobs = jobs.filter(series__study__patient__patient_id=value)
        if value := data.get("kind"):
            jobs = jobs.filter(kind=value)
        if value := data.get("status"):
            jobs = jobs.filter(status=value)
        blinded = selectors.blinded_series_ids(request.user)
        return Response(
            [
                job_payload(job, hidden=selectors.output_hidden(job, blinded))
                for job in jobs.order_by("-created")[:500]
            ]
        )


class SegmentationRequestApi(APIView):
    class InputSerializer(serializers.Serializer):
        series_instance_uid = serializers.CharField()
        engine = serializers.CharField(default="classical")
        force = serializers.BooleanField(default=False)

    def post(self, request: Request) -> Response:
        _require_coordinator(request)
        form = self.InputSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        series = get_object_or_404(
            study_selectors.series_for(request.user),
            series_instance_uid=data["series_instance_uid"],
        )
        job = services.request_segmentation(series, engine=data["engine"], force=data["force"])
        hidden = not selectors.model_output_visible(request.user, job)
        return Response(job_payload(job, hidden=hidden), status=status.HTTP_202_ACCEPTED)


class RegistrationRequestApi(APIView):
    class InputSerializer(serializers.Serializer):
        baseline_series_instance_uid = serializers.CharField()
        followup_series_instance_uid = serializers.CharField()
        backend = serializers.CharField(default="torch")
        spacing_mm = serializers.FloatField(required=False, min_value=0.5, max_value=16.0)
        force = serializers.BooleanField(default=False)

    def post(self, request: Request) -> Response:
        _require_coordinator(request)
        form = self.InputSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        visible = study_selectors.series_for(request.user)
        baseline = get_object_or_404(
            visible, series_instance_uid=data["baseline_series_instance_uid"]
        )
        followup = get_object_or_404(
            visible, series_instance_uid=data["followup_series_instance_uid"]
        )
        params = {"spacing_mm": data["spacing_mm"]} if "spacing_mm" in data else None
        job = services.request_registration(
            baseline, followup, backend=data["backend"], params=params, force=data["force"]
        )
        hidden = not selectors.model_output_visible(request.user, job)
        return Response(job_payload(job, hidden=hidden), status=status.HTTP_202_ACCEPTED)


class JobDetailApi(APIView):
    def get(self, request: Request, job_id: str) -> Response:
        job = _job(request, job_id)
        hidden = not selectors.model_output_visible(request.user, job)
        return Response(job_payload(job, hidden=hidden))


class DicomSegApi(APIView):
    """The segmentation as DICOM SEG (application/dicom), referencing the source CT images."""

    def get(self, request: Request, job_id: str) -> FileResponse:
        job = _visible_output(request, job_id)
        if job.kind != Job.Kind.SEGMENTATION:
            raise ApplicationError("only segmentation jobs have a DICOM SEG")
        if not job.result.get("dicom_seg"):
            reason = job.result.get("dicom_seg_error", "it was not written")
            raise ApplicationError(
                f"no DICOM SEG for this job: {reason}", status_code=status.HTTP_404_NOT_FOUND
            )
        path = _stored(job.result["dicom_seg"])
        uid = job.series.series_instance_uid if job.series else "series"
        return FileResponse(
            path.open("rb"),
            as_attachment=True,
            filename=f"seg-{job.engine}-{uid}.dcm",
            content_type="application/dicom",
        )


def _npz_relpath(job: Job) -> str | None:
    if job.kind == Job.Kind.SEGMENTATION:
        return job.result.get("label_map_npz")
    if job.kind == Job.Kind.REGISTRATION:
        return job.result.get("log_jacobian")
    raise ApplicationError("this kind of job has no overlay")


class OverlayNpzApi(APIView):
    def get(self, request: Request, job_id: str) -> FileResponse:
        job = _visible_output(request, job_id)
        path = _stored(_npz_relpath(job))
        return FileResponse(
            path.open("rb"),
            as_attachment=True,
            filename=f"{job.kind}-{job.pk}.npz",
            content_type="application/octet-stream",
        )


class OverlayApi(APIView):
    class FilterSerializer(serializers.Serializer):
        sop = serializers.CharField()
        range = serializers.FloatField(
            required=False, min_value=0.01, max_value=5.0, default=DEFAULT_LOG_JACOBIAN_RANGE
        )

    def get(self, request: Request, job_id: str) -> HttpResponse:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        sop, value_range = filters.validated_data["sop"], filters.validated_data["range"]
        job = _visible_output(request, job_id)
        path = _stored(_npz_relpath(job))
        headers: dict[str, str] = {"Cache-Control": "private, max-age=300"}
        uids = [str(u) for u in npz_small(path, "sop_instance_uids")]
        if sop not in uids:
            raise ApplicationError(
                "this image is not a slice of the job's series",
                status_code=status.HTTP_404_NOT_FOUND,
            )
        k = uids.index(sop)
        if job.kind == Job.Kind.SEGMENTATION:
            rgba = segmentation_rgba(np.asarray(npz_member(path, "labels")[k]))
        else:
            values = np.asarray(npz_member(path, "log_jacobian")[k], dtype=np.float32)
            inside = np.asarray(npz_member(path, "lung")[k]) > 0
            rgba = log_jacobian_rgba(values, inside, value_range)
            headers["X-Overlay-Range"] = f"{value_range:g}"
            headers["X-Followup-Slice-Index"] = str(int(npz_small(path, "followup_slice_index")[k]))
            headers["X-Followup-Sop-Instance-Uid"] = str(
                npz_small(path, "followup_sop_instance_uids")[k]
            )
        return HttpResponse(png_bytes(rgba), content_type="image/png", headers=headers)


def segmentation_rgba(labels_ji: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    rgba = np.zeros((*labels_ji.shape, 4), dtype=np.uint8)
    for label, colour in SEGMENTATION_COLOURS.items():
        rgba[labels_ji == label] = colour
    return rgba


def _diverging_lut() -> npt.NDArray[np.uint8]:
    # blue (shrinkage) → white (no change) → red (expansion), 256 entries.
    anchors = np.array(
        [[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77], [103, 0, 31]],
        dtype=np.float64,
    )
    positions = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, positions, anchors[:, c]) for c in range(3)], axis=-1).astype(
        np.uint8
    )


_LUT = _diverging_lut()


def log_jacobian_rgba(
    values_ji: npt.NDArray[np.float32], inside_ji: npt.NDArray[np.bool_], value_range: float
) -> npt.NDArray[np.uint8]:
    scaled = (np.clip(values_ji, -value_range, value_range) + value_range) / (2 * value_range)
    index = np.rint(np.nan_to_num(scaled, nan=0.5) * 255).astype(np.intp)
    rgba = np.zeros((*values_ji.shape, 4), dtype=np.uint8)
    rgba[..., :3] = _LUT[index]
    rgba[..., 3] = np.where(inside_ji, OVERLAY_ALPHA, 0)
    rgba[~inside_ji, :3] = 0
    return rgba


def png_bytes(rgba: npt.NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
