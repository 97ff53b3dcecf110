"""The job API and the patient page: who may request, who sees what, blinding, file formats."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from annotation.models import Assignment
from annotation.services import setup
from jobs import services
from jobs.models import Job
from studies.services import storage
from tests.jobs_tests.conftest import FAST_REGISTRATION

pytestmark = pytest.mark.django_db


@pytest.fixture
def segmented(baseline_series, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = services.request_segmentation(baseline_series)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    return job


@pytest.fixture
def registered(baseline_series, followup_series, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = services.request_registration(
            baseline_series, followup_series, params=FAST_REGISTRATION
        )
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    return job


@pytest.fixture
def open_read(project, coordinator, reader_a, baseline_series):
    """reader A has an unsubmitted read of the baseline series."""
    study = setup.create_study(
        project=project,
        name="Blinded",
        created_by=coordinator,
        protocol="all_slices",
        allow_model_overlay_after_submit=True,
    )
    setup.add_cases(study, [setup.CaseSpec(series=baseline_series)], compute_protocol=False)
    setup.assign_readers(study, [reader_a])
    return study.assignments.get(reader=reader_a)


def sop_with_ild(job: Job) -> tuple[str, np.ndarray]:
    with np.load(storage.absolute(job.result["label_map_npz"])) as data:
        labels = data["labels"]
        k = int(np.argmax((labels == 2).sum(axis=(1, 2))))
        return str(data["sop_instance_uids"][k]), labels[k]


def test_a_coordinator_requests_a_segmentation_and_follows_it(
    api_client_for, coordinator, baseline_series, django_capture_on_commit_callbacks
):
    client = api_client_for(coordinator)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/jobs/segmentation/",
            {"series_instance_uid": baseline_series.series_instance_uid},
            format="json",
        )
    assert response.status_code == 202, response.json()
    assert response.json()["status"] == "queued"
    detail = client.get(f"/api/v1/jobs/{response.json()['id']}/").json()

    assert detail["status"] == "succeeded" and detail["progress"] == 1.0
    assert detail["engine"] == "classical" and detail["engine_version"]
    assert detail["result"]["extent_pct"] > 0 and not detail["result_hidden"]
    assert set(detail["links"]) == {"self", "overlay", "overlay_npz", "dicom_seg"}


def test_a_coordinator_requests_a_registration(
    api_client_for, coordinator, baseline_series, followup_series
):
    response = api_client_for(coordinator).post(
        "/api/v1/jobs/registration/",
        {
            "baseline_series_instance_uid": baseline_series.series_instance_uid,
            "followup_series_instance_uid": followup_series.series_instance_uid,
            "spacing_mm": 3.0,
        },
        format="json",
    )

    assert response.status_code == 202, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    assert job.kind == Job.Kind.REGISTRATION and job.status == Job.Status.QUEUED
    assert job.params["spacing_mm"] == 3.0 and job.engine == "torch"
    assert job.baseline_series == baseline_series and job.series == followup_series


def test_a_bad_pair_is_a_400(api_client_for, coordinator, baseline_series, followup_series):
    response = api_client_for(coordinator).post(
        "/api/v1/jobs/registration/",
        {
            "baseline_series_instance_uid": followup_series.series_instance_uid,
            "followup_series_instance_uid": baseline_series.series_instance_uid,
        },
        format="json",
    )
    assert response.status_code == 400
    assert "dated before the baseline" in response.json()["detail"]


def test_readers_and_clinicians_may_not_request_runs(
    api_client_for, reader_a, clinician, baseline_series
):
    for user in (reader_a, clinician):
        response = api_client_for(user).post(
            "/api/v1/jobs/segmentation/",
            {"series_instance_uid": baseline_series.series_instance_uid},
            format="json",
        )
        assert response.status_code == 403
    assert not Job.objects.exists()


def test_outsiders_see_nothing(api_client_for, outsider, segmented, baseline_series):
    client = api_client_for(outsider)

    assert client.get(f"/api/v1/jobs/{segmented.pk}/").status_code == 404
    assert client.get(f"/api/v1/jobs/{segmented.pk}/seg.dcm").status_code == 404
    assert client.get("/api/v1/jobs/").json() == []
    response = client.post(
        "/api/v1/jobs/segmentation/",
        {"series_instance_uid": baseline_series.series_instance_uid},
        format="json",
    )
    assert response.status_code == 404


def test_a_reader_with_an_open_read_gets_status_but_no_model_output(
    api_client_for, reader_a, segmented, open_read
):
    client = api_client_for(reader_a)
    sop, _ = sop_with_ild(segmented)

    detail = client.get(f"/api/v1/jobs/{segmented.pk}/").json()
    listed = client.get("/api/v1/jobs/", {"kind": "segmentation"}).json()

    assert detail["status"] == "succeeded"
    assert detail["result"] is None and detail["result_hidden"] is True
    assert detail["links"] == {"self": f"/api/v1/jobs/{segmented.pk}/"}
    assert [j["result"] for j in listed] == [None]
    for path in ("seg.dcm", "overlay.npz", f"overlay/?sop={sop}"):
        assert client.get(f"/api/v1/jobs/{segmented.pk}/{path}").status_code == 403


def test_the_reader_gets_it_once_every_read_is_submitted(
    api_client_for, reader_a, segmented, open_read
):
    from django.utils import timezone

    Assignment.objects.filter(pk=open_read.pk).update(
        status=Assignment.Status.SUBMITTED, submitted_at=timezone.now()
    )

    detail = api_client_for(reader_a).get(f"/api/v1/jobs/{segmented.pk}/").json()

    assert detail["result"]["extent_pct"] > 0


def test_a_blinded_baseline_hides_the_registration_too(
    api_client_for, reader_a, clinician, registered, open_read
):
    hidden = api_client_for(reader_a).get(f"/api/v1/jobs/{registered.pk}/").json()
    shown = api_client_for(clinician).get(f"/api/v1/jobs/{registered.pk}/").json()

    assert hidden["result"] is None
    assert shown["result"]["mean_log_jacobian"] < 0


def test_the_dicom_seg_downloads(api_client_for, coordinator, segmented, baseline_series):
    response = api_client_for(coordinator).get(f"/api/v1/jobs/{segmented.pk}/seg.dcm")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom"
    seg = pydicom.dcmread(io.BytesIO(b"".join(response.streaming_content)))
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == baseline_series.series_instance_uid


def test_the_segmentation_overlay_is_a_png_of_the_slice(api_client_for, clinician, segmented):
    sop, labels = sop_with_ild(segmented)

    response = api_client_for(clinician).get(f"/api/v1/jobs/{segmented.pk}/overlay/", {"sop": sop})

    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(response.content)))
    assert image.shape == (64, 64, 4)
    assert np.array_equal(image[..., 3] == 150, labels == 2)  # ILD opaque-ish
    assert np.all(image[labels == 0] == 0)  # background transparent


def test_the_log_jacobian_overlay_is_a_png_of_the_baseline_slice(
    api_client_for, coordinator, registered
):
    client = api_client_for(coordinator)
    with np.load(storage.absolute(registered.result["log_jacobian"])) as data:
        lung = data["lung"] > 0
        k = int(np.argmax(lung.sum(axis=(1, 2))))
        sop = str(data["sop_instance_uids"][k])

    response = client.get(f"/api/v1/jobs/{registered.pk}/overlay/", {"sop": sop, "range": 0.5})
    npz = client.get(f"/api/v1/jobs/{registered.pk}/overlay.npz")

    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(response.content)))
    assert image.shape == (64, 64, 4)
    assert np.array_equal(image[..., 3] > 0, lung[k])
    assert response["X-Overlay-Range"] == "0.5"
    expected = registered.result["followup_slice_for_baseline_slice"][k]
    assert response["X-Followup-Slice-Index"] == str(expected)
    assert npz.status_code == 200
    with np.load(io.BytesIO(b"".join(npz.streaming_content))) as data:
        assert data["log_jacobian"].shape == (24, 64, 64)


def test_an_image_of_another_series_has_no_overlay(api_client_for, coordinator, segmented):
    response = api_client_for(coordinator).get(
        f"/api/v1/jobs/{segmented.pk}/overlay/", {"sop": "1.2.3.4"}
    )
    assert response.status_code == 404


def test_the_patient_page_shows_extent_and_change(
    client, coordinator, segmented, registered, followup_series, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.request_segmentation(followup_series)
    client.force_login(coordinator)
    patient_id = followup_series.study.patient.patient_id

    page = client.get(f"/patients/{patient_id}/").content.decode()

    assert f"{segmented.result['extent_pct']:.1f} %" in page
    assert f"classical {segmented.engine_version}" in page
    assert f"{registered.result['mean_log_jacobian']:.3f}" in page
    assert " points" in page  # the extent change of the pair


def test_the_patient_page_hides_model_output_from_a_blinded_reader(
    client, reader_a, segmented, open_read
):
    client.force_login(reader_a)
    patient_id = segmented.series.study.patient.patient_id

    page = client.get(f"/patients/{patient_id}/").content.decode()

    assert "hidden while you have an open read" in page
    assert f"{segmented.result['extent_pct']:.1f} %" not in page
