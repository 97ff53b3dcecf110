"""Job API (/api/v1/jobs/...): request segmentation and registration, follow them, fetch outputs."""

from __future__ import annotations

from django.urls import include, path

from jobs import apis

api = [
    path("", apis.JobListApi.as_view(), name="api-jobs"),
    path(
        "segmentation/",
        apis.SegmentationRequestApi.as_view(),
        name="api-jobs-request-segmentation",
    ),
    path(
        "registration/",
        apis.RegistrationRequestApi.as_view(),
        name="api-jobs-request-registration",
    ),
    path("<uuid:job_id>/", apis.JobDetailApi.as_view(), name="api-job"),
    path("<uuid:job_id>/seg.dcm", apis.DicomSegApi.as_view(), name="api-job-dicom-seg"),
    path("<uuid:job_id>/overlay/", apis.OverlayApi.as_view(), name="api-job-overlay"),
    path("<uuid:job_id>/overlay.npz", apis.OverlayNpzApi.as_view(), name="api-job-overlay-npz"),
]

urlpatterns = [path("api/v1/jobs/", include(api))]
