from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from rest_framework.authtoken.views import obtain_auth_token

from core.apis import MeApi
from studies import apis as study_apis
from studies import views as study_views

api_v1 = [
    path("auth/token/", obtain_auth_token, name="api-token"),
    path("me/", MeApi.as_view(), name="api-me"),
    path("patients/", study_apis.PatientListApi.as_view(), name="api-patients"),
    path("patients/<str:patient_id>/", study_apis.PatientDetailApi.as_view(), name="api-patient"),
    path("studies/", study_apis.StudyListApi.as_view(), name="api-studies"),
    path(
        "studies/<str:study_instance_uid>/", study_apis.StudyDetailApi.as_view(), name="api-study"
    ),
    path(
        "series/<str:series_instance_uid>/", study_apis.SeriesDetailApi.as_view(), name="api-series"
    ),
    path("uploads/", study_apis.UploadApi.as_view(), name="api-uploads"),
    path("pfts/", study_apis.PftListApi.as_view(), name="api-pfts"),
    path("clinical/", study_apis.ClinicalImportApi.as_view(), name="api-clinical"),
]

urlpatterns = [
    path("", study_views.home, name="home"),
    path("patients/<str:patient_id>/", study_views.patient_detail, name="patient-detail"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("dicomweb/", include("studies.dicomweb.urls")),
    path("healthz", study_views.healthz, name="healthz"),
    path("", include("annotation.urls")),
    path("", include("jobs.urls")),
    path("", include("reports.urls")),
]
