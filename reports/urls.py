"""Report pages (/reports/...) and their API (/api/v1/reports/...).

The views are imported on their first request (:class:`core.lazy_views.LazyView`): they bring
scipy, SimpleITK and highdicom, which a worker serving only the viewer and DICOMweb never needs.
"""

from __future__ import annotations

from django.urls import include, path

from core.lazy_views import LazyView

api = [
    path("studies/", LazyView("reports.apis.StudyListApi"), name="api-reports-studies"),
    path(
        "studies/<uuid:study_id>/agreement/",
        LazyView("reports.apis.AgreementApi"),
        name="api-reports-agreement",
    ),
    path(
        "studies/<uuid:study_id>/agreement/slices/",
        LazyView("reports.apis.AgreementSlicesApi"),
        name="api-reports-agreement-slices",
    ),
    path(
        "studies/<uuid:study_id>/agreement/refresh/",
        LazyView("reports.apis.AgreementRefreshApi"),
        name="api-reports-agreement-refresh",
    ),
    path(
        "studies/<uuid:study_id>/compare.png",
        LazyView("reports.apis.CompareImageApi"),
        name="api-reports-compare",
    ),
    path(
        "characteristics/",
        LazyView("reports.apis.CharacteristicsApi"),
        name="api-reports-characteristics",
    ),
    path("correlation/", LazyView("reports.apis.CorrelationApi"), name="api-reports-correlation"),
    path(
        "longitudinal/", LazyView("reports.apis.LongitudinalApi"), name="api-reports-longitudinal"
    ),
    path(
        "export/<str:report>.<str:fmt>",
        LazyView("reports.apis.ExportApi"),
        name="api-reports-export",
    ),
    path(
        "assignments/<uuid:assignment_id>/seg/",
        LazyView("reports.apis.SegApi"),
        name="api-reports-seg",
    ),
]

urlpatterns = [
    path("api/v1/reports/", include(api)),
    path("reports/", LazyView("reports.views.index"), name="reports-home"),
    path("reports/cohorts/", LazyView("reports.views.cohorts"), name="reports-cohorts"),
    path(
        "reports/longitudinal/", LazyView("reports.views.longitudinal"), name="reports-longitudinal"
    ),
    path(
        "reports/studies/<uuid:study_id>/agreement/",
        LazyView("reports.views.agreement_page"),
        name="reports-agreement",
    ),
    path(
        "reports/studies/<uuid:study_id>/agreement/pair/",
        LazyView("reports.views.agreement_pair"),
        name="reports-agreement-pair",
    ),
    path(
        "reports/studies/<uuid:study_id>/compare/",
        LazyView("reports.views.compare"),
        name="reports-compare",
    ),
    path(
        "reports/registrations/<uuid:job_id>/viewer/",
        LazyView("reports.views_viewer.longitudinal_viewer"),
        name="reports-longitudinal-viewer",
    ),
    path(
        "reports/patients/<str:patient_id>/",
        LazyView("reports.views.patient_report"),
        name="reports-patient",
    ),
    path(
        "reports/patients/<str:patient_id>/report.pdf",
        LazyView("reports.views.patient_report_pdf"),
        name="reports-patient-pdf",
    ),
]
