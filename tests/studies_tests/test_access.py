"""Every API returns only what the user's projects allow; tokens work beside sessions."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from studies.models import Patient, PatientIdentity, PftResult
from studies.services.ingest import ingest_datasets_bytes
from tests.dicom_builders import ct_series_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def stored(project, other_project):
    ingest_datasets_bytes(
        [(f"{i}", d) for i, d in enumerate(ct_series_bytes(2, patient_id="MINE"))], project=project
    )
    ingest_datasets_bytes(
        [(f"{i}", d) for i, d in enumerate(ct_series_bytes(2, patient_id="THEIRS"))],
        project=other_project,
    )
    mine = Patient.objects.get(project=project)
    theirs = Patient.objects.get(project=other_project)
    PftResult.objects.create(patient=mine, date="2024-01-01", fvc_pct_predicted=80)
    PftResult.objects.create(patient=theirs, date="2024-01-01", fvc_pct_predicted=70)
    return mine, theirs


def test_lists_show_only_the_users_projects(stored, clinician, api_client_for):
    mine, _ = stored
    client = api_client_for(clinician)
    assert [p["patient_id"] for p in client.get("/api/v1/patients/").json()] == [mine.patient_id]
    assert {s["patient_id"] for s in client.get("/api/v1/studies/").json()} == {mine.patient_id}
    assert [p["patient_id"] for p in client.get("/api/v1/pfts/").json()] == [mine.patient_id]


def test_details_of_other_projects_are_not_found(stored, clinician, api_client_for):
    _, theirs = stored
    client = api_client_for(clinician)
    assert client.get(f"/api/v1/patients/{theirs.patient_id}/").status_code == 404
    study = theirs.studies.get()
    assert client.get(f"/api/v1/studies/{study.study_instance_uid}/").status_code == 404
    series = study.series.get()
    assert client.get(f"/api/v1/series/{series.series_instance_uid}/").status_code == 404


def test_patient_detail_links_each_ct_to_its_pft(stored, clinician, api_client_for):
    mine, _ = stored
    body = api_client_for(clinician).get(f"/api/v1/patients/{mine.patient_id}/").json()
    assert len(body["studies"]) == 1
    assert body["studies"][0]["series"][0]["instance_count"] == 2


def test_site_admin_sees_everything(stored, site_admin, api_client_for):
    assert len(api_client_for(site_admin).get("/api/v1/patients/").json()) == 2


def test_anonymous_requests_are_refused(stored):
    assert APIClient().get("/api/v1/patients/").status_code in (401, 403)


def test_token_authentication_works_for_scripts(stored, clinician):
    token = Token.objects.create(user=clinician)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/me/").json()["username"] == "clinician"


def test_token_endpoint_issues_tokens(clinician):
    response = APIClient().post("/api/v1/auth/token/", {"username": "clinician", "password": "pw"})
    assert response.status_code == 200 and response.json()["token"]


def test_only_admins_can_read_the_identity_key(stored, coordinator, site_admin, client):
    assert PatientIdentity.objects.count() == 2
    client.force_login(coordinator)
    assert client.get("/admin/studies/patientidentity/").status_code in (302, 403)
    client.force_login(site_admin)
    assert client.get("/admin/studies/patientidentity/").status_code == 200


def test_clinicians_cannot_upload_or_import(stored, clinician, api_client_for):
    client = api_client_for(clinician)
    assert client.post("/api/v1/uploads/", {}, format="multipart").status_code == 403
    assert client.post("/api/v1/pfts/", [], format="json").status_code == 403


def test_coordinator_uploads_into_their_project(project, coordinator, api_client_for):
    from django.core.files.uploadedfile import SimpleUploadedFile

    files = [SimpleUploadedFile(f"{i}.dcm", d) for i, d in enumerate(ct_series_bytes(2))]
    response = api_client_for(coordinator).post(
        "/api/v1/uploads/", {"files": files, "project": "ssc"}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    assert response.json()["stored"] == 2


def test_coordinator_cannot_upload_into_a_foreign_project(
    project, other_project, coordinator, api_client_for
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    files = [SimpleUploadedFile("0.dcm", ct_series_bytes(1)[0])]
    response = api_client_for(coordinator).post(
        "/api/v1/uploads/", {"files": files, "project": "other"}, format="multipart"
    )
    assert response.status_code == 404


def test_pft_api_rejects_bad_rows_with_details(stored, coordinator, api_client_for):
    mine, _ = stored
    response = api_client_for(coordinator).post(
        "/api/v1/pfts/",
        [{"patient_id": mine.patient_id, "date": "2024-02-30", "fvc_pct_predicted": 80}],
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["line"] == 1


def test_an_upload_without_the_deidentify_field_is_deidentified(
    project, coordinator, api_client_for
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    files = [SimpleUploadedFile("0.dcm", ct_series_bytes(1, patient_id="REAL-ID")[0])]
    api_client_for(coordinator).post("/api/v1/uploads/", {"files": files}, format="multipart")
    assert Patient.objects.get().patient_id != "REAL-ID"


def test_an_upload_can_opt_out_of_deidentification(project, coordinator, api_client_for):
    from django.core.files.uploadedfile import SimpleUploadedFile

    files = [SimpleUploadedFile("0.dcm", ct_series_bytes(1, patient_id="REAL-ID")[0])]
    api_client_for(coordinator).post(
        "/api/v1/uploads/", {"files": files, "deidentify": "false"}, format="multipart"
    )
    assert Patient.objects.get().patient_id == "REAL-ID"
