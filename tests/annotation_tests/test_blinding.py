"""Blinding is enforced by the server: one test per endpoint that can return a contour or model
output. Reader B has contoured the case; reader A (who has not submitted) must not get B's work."""

from __future__ import annotations

import numpy as np
import pytest

from annotation.models import ContourVersion
from annotation.selectors import contours_visible_to, series_blinded_for
from tests.annotation_tests.conftest import assignment_of, first_slice, save

pytestmark = pytest.mark.django_db


@pytest.fixture
def b_contour(study, reader_b, api_client_for):
    assignment = assignment_of(study, reader_b)
    response = save(api_client_for(reader_b), assignment, first_slice(assignment))
    assert response.status_code == 201
    return ContourVersion.objects.get(pk=response.json()["id"])


def test_contour_list_of_another_readers_read_is_not_found(b_contour, reader_a, api_client_for):
    url = f"/api/v1/reading/assignments/{b_contour.assignment_id}/contours/?mask=1"
    assert api_client_for(reader_a).get(url).status_code == 404


def test_contour_history_of_another_readers_read_is_not_found(b_contour, reader_a, api_client_for):
    url = (
        f"/api/v1/reading/assignments/{b_contour.assignment_id}/contours/history/"
        f"?structure=ild&sop={b_contour.referenced_sop_instance_uid}"
    )
    assert api_client_for(reader_a).get(url).status_code == 404


def test_contour_detail_by_id_is_not_found(b_contour, reader_a, api_client_for):
    response = api_client_for(reader_a).get(f"/api/v1/reading/contours/{b_contour.pk}/")
    assert response.status_code == 404


def test_contour_detail_stays_hidden_after_the_reader_submits(
    b_contour, study, reader_a, api_client_for
):
    client = api_client_for(reader_a)
    client.post(f"/api/v1/reading/assignments/{assignment_of(study, reader_a).pk}/submit/")
    assert client.get(f"/api/v1/reading/contours/{b_contour.pk}/").status_code == 404


def test_own_contour_list_holds_only_own_contours(b_contour, study, reader_a, api_client_for):
    assignment = assignment_of(study, reader_a)
    client = api_client_for(reader_a)
    save(client, assignment, first_slice(assignment))
    listed = client.get(f"/api/v1/reading/assignments/{assignment.pk}/contours/").json()["results"]
    assert [c["author"] for c in listed] == ["reader-a"]


def test_export_gives_a_reader_only_their_own_contours(b_contour, study, reader_a, api_client_for):
    response = api_client_for(reader_a).get(f"/api/v1/reading/studies/{study.pk}/export/")
    assert response.status_code == 200
    assert str(b_contour.pk) not in response.content.decode()
    assert response.json()["contours"] == []


def test_export_gives_the_coordinator_every_read(b_contour, study, coordinator, api_client_for):
    response = api_client_for(coordinator).get(f"/api/v1/reading/studies/{study.pk}/export/")
    assert [c["id"] for c in response.json()["contours"]] == [str(b_contour.pk)]
    assert response.json()["contours"][0]["mask"]["rows"] == 16


def test_export_is_not_found_for_a_clinician_and_an_outsider(
    b_contour, study, clinician, outsider, api_client_for
):
    for user in (clinician, outsider):
        response = api_client_for(user).get(f"/api/v1/reading/studies/{study.pk}/export/")
        assert response.status_code == 404


def test_assignment_detail_of_another_reader_is_not_found(b_contour, reader_a, api_client_for):
    url = f"/api/v1/reading/assignments/{b_contour.assignment_id}/"
    assert api_client_for(reader_a).get(url).status_code == 404


def test_viewer_page_of_another_readers_read_is_not_found(b_contour, reader_a, client):
    client.force_login(reader_a)
    assert client.get(f"/reading/assignments/{b_contour.assignment_id}/").status_code == 404


@pytest.fixture
def model_output(study, settings, tmp_path):
    """A succeeded segmentation job with a label map for the case's series."""
    from jobs.models import Job

    settings.STORAGE_ROOT = tmp_path
    case = study.cases.get()
    instances = list(case.series.instances.all())
    labels = np.zeros((len(instances), 16, 16), dtype=np.uint8)
    labels[:, 4:8, 4:8] = 2
    np.savez(
        tmp_path / "labels.npz",
        labels=labels,
        sop_instance_uids=[i.sop_instance_uid for i in instances],
    )
    Job.objects.create(
        kind="segmentation",
        status="succeeded",
        series=case.series,
        result={"label_map_npz": "labels.npz"},
    )
    return instances[0]


def overlay(client, assignment, instance):
    return client.get(
        f"/api/v1/reading/assignments/{assignment.pk}/model-overlay/"
        f"?sop={instance.sop_instance_uid}&structure=ild"
    )


def test_model_overlay_is_forbidden_before_submission(
    model_output, study, reader_a, api_client_for
):
    assignment = assignment_of(study, reader_a)
    assert overlay(api_client_for(reader_a), assignment, model_output).status_code == 403
    assert series_blinded_for(reader_a).filter(pk=study.cases.get().series_id).exists()


def test_model_overlay_is_shown_after_submission_when_the_study_allows(
    model_output, study, reader_a, api_client_for
):
    study.allow_model_overlay_after_submit = True
    study.save()
    assignment = assignment_of(study, reader_a)
    client = api_client_for(reader_a)
    client.post(f"/api/v1/reading/assignments/{assignment.pk}/submit/")
    response = overlay(client, assignment, model_output)
    assert response.status_code == 200
    assert response.json()["mask"]["rows"] == 16
    assert not series_blinded_for(reader_a).exists()


def test_model_overlay_stays_forbidden_after_submission_when_the_study_forbids(
    model_output, study, reader_a, api_client_for
):
    assignment = assignment_of(study, reader_a)
    client = api_client_for(reader_a)
    client.post(f"/api/v1/reading/assignments/{assignment.pk}/submit/")
    assert overlay(client, assignment, model_output).status_code == 403


def test_a_repeat_read_hides_the_readers_own_first_read(
    make_study, reader_a, series, api_client_for
):
    study = make_study(readers=[reader_a], series_list=[series], repeat_fraction=1.0)
    first, repeat = assignment_of(study, reader_a), assignment_of(study, reader_a, is_repeat=True)
    client = api_client_for(reader_a)
    contour_id = save(client, first, first_slice(first)).json()["id"]
    client.post(f"/api/v1/reading/assignments/{first.pk}/submit/")
    # The repeat is open: the first read's contour is out of reach everywhere.
    assert client.get(f"/api/v1/reading/contours/{contour_id}/").status_code == 404
    assert client.get(f"/api/v1/reading/assignments/{first.pk}/contours/").json()["results"] == []
    assert client.get(f"/api/v1/reading/studies/{study.pk}/export/").json()["contours"] == []
    client.post(f"/api/v1/reading/assignments/{repeat.pk}/submit/")
    assert client.get(f"/api/v1/reading/contours/{contour_id}/").status_code == 200


def test_the_selector_gives_clinicians_and_outsiders_nothing(
    b_contour, clinician, outsider, coordinator
):
    assert not contours_visible_to(clinician).exists()
    assert not contours_visible_to(outsider).exists()
    assert contours_visible_to(coordinator).count() == 1


def test_dicomweb_gives_a_reader_the_ct_and_nothing_derived(b_contour, study, reader_a, client):
    """DICOMweb serves the study store (CT only): no contour, SEG or RT object of reader B."""
    series = study.cases.get().series
    client.force_login(reader_a)
    base = f"/dicomweb/studies/{series.study.study_instance_uid}"
    headers = {"HTTP_ACCEPT": "application/dicom+json"}
    found = client.get(f"{base}/series", **headers)
    assert found.status_code == 200
    assert [s["00080060"]["Value"] for s in found.json()] == [["CT"]]
    instances = client.get(f"{base}/series/{series.series_instance_uid}/instances", **headers)
    sop_classes = {i["00080016"]["Value"][0] for i in instances.json()}
    assert sop_classes == {"1.2.840.10008.5.1.4.1.1.2"}
    metadata = client.get(f"{base}/series/{series.series_instance_uid}/metadata", **headers)
    assert metadata.status_code == 200
    assert b_contour.referenced_sop_instance_uid.encode() in metadata.content
    assert (
        b"reader-b" not in metadata.content and str(b_contour.pk).encode() not in metadata.content
    )
