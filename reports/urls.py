"""Report pages (/reports/...) and their API (/api/v1/reports/...)."""

from __future__ import annotations

from django.urls import include, path

from reports import apis, views, views_viewer

api = [
    path("studies/", apis.StudyListApi.as_view(), name="api-reports-studies"),
    path(
        "studies/<uuid:study_id>/agreement/",
        apis.AgreementApi.as_view(),
        name="api-reports-agreement",
    ),
    path(
        "studies/<uuid:study_id>/agreement/slices/",
        apis.AgreementSlicesApi.as_view(),
        name="api-reports-agreement-slices",
    ),
    path(
        "studies/<uuid:study_id>/agreement/refresh/",
        apis.AgreementRefreshApi.as_view(),
        name="api-reports-agreement-refresh",
    ),
    path(
        "studies/<uuid:study_id>/compare.png",
        apis.CompareImageApi.as_view(),
        name="api-reports-compare",
    ),
    path("characteristics/", apis.CharacteristicsApi.as_view(), name="api-reports-characteristics"),
    path("correlation/", apis.CorrelationApi.as_view(), name="api-reports-correlation"),
    path("longitudinal/", apis.LongitudinalApi.as_view(), name="api-reports-longitudinal"),
    path("export/<str:report>.<str:fmt>", apis.ExportApi.as_view(), name="api-reports-export"),
    path(
        "assignments/<uuid:assignment_id>/seg/",
        apis.SegApi.as_view(),
        name="api-reports-seg",
    ),
]

urlpatterns = [
    path("api/v1/reports/", include(api)),
    path("reports/", views.index, name="reports-home"),
    path("reports/cohorts/", views.cohorts, name="reports-cohorts"),
    path("reports/longitudinal/", views.longitudinal, name="reports-longitudinal"),
    path(
        "reports/studies/<uuid:study_id>/agreement/",
        views.agreement_page,
        name="reports-agreement",
    ),
    path(
        "reports/studies/<uuid:study_id>/agreement/pair/",
        views.agreement_pair,
        name="reports-agreement-pair",
    ),
    path("reports/studies/<uuid:study_id>/compare/", views.compare, name="reports-compare"),
    path(
        "reports/registrations/<uuid:job_id>/viewer/",
        views_viewer.longitudinal_viewer,
        name="reports-longitudinal-viewer",
    ),
    path("reports/patients/<str:patient_id>/", views.patient_report, name="reports-patient"),
    path(
        "reports/patients/<str:patient_id>/report.pdf",
        views.patient_report_pdf,
        name="reports-patient-pdf",
    ),
]
