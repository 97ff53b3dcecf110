"""Reading pages (/reading/...) and their API (/api/v1/reading/...)."""

from __future__ import annotations

from django.urls import include, path

from annotation import apis, views

api = [
    path("worklist/", apis.WorklistApi.as_view(), name="api-reading-worklist"),
    path(
        "assignments/<uuid:assignment_id>/",
        apis.AssignmentDetailApi.as_view(),
        name="api-reading-assignment",
    ),
    path(
        "assignments/<uuid:assignment_id>/contours/",
        apis.ContourListApi.as_view(),
        name="api-reading-contours",
    ),
    path(
        "assignments/<uuid:assignment_id>/contours/history/",
        apis.ContourHistoryApi.as_view(),
        name="api-reading-contour-history",
    ),
    path(
        "assignments/<uuid:assignment_id>/submit/",
        apis.SubmitApi.as_view(),
        name="api-reading-submit",
    ),
    path(
        "assignments/<uuid:assignment_id>/reopen/",
        apis.ReopenApi.as_view(),
        name="api-reading-reopen",
    ),
    path(
        "assignments/<uuid:assignment_id>/assessment/",
        apis.AssessmentApi.as_view(),
        name="api-reading-assessment",
    ),
    path(
        "assignments/<uuid:assignment_id>/timing/",
        apis.TimingApi.as_view(),
        name="api-reading-timing",
    ),
    path(
        "assignments/<uuid:assignment_id>/model-overlay/",
        apis.ModelOverlayApi.as_view(),
        name="api-reading-model-overlay",
    ),
    path(
        "contours/<uuid:contour_id>/", apis.ContourDetailApi.as_view(), name="api-reading-contour"
    ),
    path("studies/", apis.StudyListApi.as_view(), name="api-reading-studies"),
    path(
        "studies/<uuid:study_id>/cases/",
        apis.StudyCasesApi.as_view(),
        name="api-reading-study-cases",
    ),
    path(
        "studies/<uuid:study_id>/readers/",
        apis.StudyReadersApi.as_view(),
        name="api-reading-study-readers",
    ),
    path(
        "studies/<uuid:study_id>/progress/",
        apis.StudyProgressApi.as_view(),
        name="api-reading-study-progress",
    ),
    path(
        "studies/<uuid:study_id>/export/",
        apis.StudyExportApi.as_view(),
        name="api-reading-study-export",
    ),
]

urlpatterns = [
    path("api/v1/reading/", include(api)),
    path("reading/", views.reading_home, name="reading-home"),
    path("reading/next/", views.reading_next, name="reading-next"),
    path("reading/assignments/<uuid:assignment_id>/", views.viewer, name="reading-viewer"),
    path("reading/assignments/<uuid:assignment_id>/reopen/", views.reopen, name="reading-reopen"),
    path("reading/studies/new/", views.study_new, name="reading-study-new"),
    path("reading/studies/<uuid:study_id>/", views.study_detail, name="reading-study"),
]
