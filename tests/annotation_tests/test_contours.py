"""Saving contours: versions, masks, conflicts, idempotent retries, locking and reopening."""

from __future__ import annotations

import uuid

import pytest
from django.db import IntegrityError

from annotation.models import AssignmentReopen, ContourVersion
from annotation.services.geometry import unpack_mask
from tests.annotation_tests.conftest import assignment_of, first_slice, save, square_lps

pytestmark = pytest.mark.django_db


def test_it_stores_points_uid_frame_and_mask_as_version_1(study, reader_a, api_client_for):
    assignment = assignment_of(study, reader_a)
    instance = first_slice(assignment)
    response = save(api_client_for(reader_a), assignment, instance)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["version"] == 1 and body["parent_version"] is None
    contour = ContourVersion.objects.get(pk=body["id"])
    assert contour.referenced_sop_instance_uid == instance.sop_instance_uid
    assert contour.frame_of_reference_uid == instance.series.frame_of_reference_uid
    assert contour.geometry["polygons"][0][0] == square_lps(instance)[0]
    assert unpack_mask(bytes(contour.mask), contour.mask_rows, contour.mask_columns).sum() == 16
    assert contour.area_mm2 == pytest.approx(64.0)


def test_an_edit_appends_a_version_and_keeps_the_old_one(study, reader_a, api_client_for):
    assignment = assignment_of(study, reader_a)
    instance = first_slice(assignment)
    client = api_client_for(reader_a)
    save(client, assignment, instance)
    response = save(
        client, assignment, instance, base_version=1, rings=[square_lps(instance, size=4)]
    )
    assert response.json()["version"] == 2
    assert list(ContourVersion.objects.values_list("version", "pixel_count")) == [(1, 16), (2, 4)]


def test_a_stale_base_version_is_a_conflict_that_returns_the_latest(
    study, reader_a, api_client_for
):
    assignment = assignment_of(study, reader_a)
    instance = first_slice(assignment)
    tab_1, tab_2 = api_client_for(reader_a), api_client_for(reader_a)
    save(tab_1, assignment, instance)
    save(tab_1, assignment, instance, base_version=1)
    response = save(
        tab_2, assignment, instance, base_version=1, rings=[square_lps(instance, size=2)]
    )
    assert response.status_code == 409
    assert response.json()["latest"]["version"] == 2
    assert ContourVersion.objects.count() == 2
    # "keep mine": resend on top of theirs
    assert save(tab_2, assignment, instance, base_version=2).json()["version"] == 3


def test_a_retried_save_returns_the_stored_version(study, reader_a, api_client_for):
    assignment = assignment_of(study, reader_a)
    instance = first_slice(assignment)
    client = api_client_for(reader_a)
    edit = str(uuid.uuid4())
    first = save(client, assignment, instance, client_edit_id=edit)
    again = save(client, assignment, instance, client_edit_id=edit)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert ContourVersion.objects.count() == 1


def test_the_database_refuses_a_duplicate_version(study, reader_a, api_client_for):
    assignment = assignment_of(study, reader_a)
    instance = first_slice(assignment)
    save(api_client_for(reader_a), assignment, instance)
    contour = ContourVersion.objects.get()
    contour.pk = None
    contour.client_edit_id = None
    with pytest.raises(IntegrityError):
        contour.save(force_insert=True)


def test_a_slice_outside_the_protocol_is_refused(make_study, reader_a, api_client_for, project):
    from studies.models import Instance
    from tests.annotation_tests.conftest import ingest_series

    study = make_study(readers=[reader_a], series_list=[ingest_series(project)])
    other = Instance.objects.exclude(series=study.cases.get().series).first()
    assert other is None  # only one series so far; make another
    stranger = ingest_series(project, patient_id="HOSP-002").instances.first()
    response = save(api_client_for(reader_a), assignment_of(study, reader_a), stranger)
    assert response.status_code == 400
    assert "protocol" in response.json()["detail"]


def test_another_reader_cannot_write_into_a_read(study, reader_a, reader_b, api_client_for):
    assignment = assignment_of(study, reader_a)
    response = save(api_client_for(reader_b), assignment, first_slice(assignment))
    assert response.status_code == 404


def test_a_submitted_read_is_locked(study, reader_a, api_client_for):
    assignment = assignment_of(study, reader_a)
    client = api_client_for(reader_a)
    assert client.post(f"/api/v1/reading/assignments/{assignment.pk}/submit/").status_code == 200
    response = save(client, assignment, first_slice(assignment))
    assert response.status_code == 423
    assert client.post(f"/api/v1/reading/assignments/{assignment.pk}/submit/").status_code == 423


def test_a_coordinator_reopens_with_a_recorded_reason(study, reader_a, coordinator, api_client_for):
    assignment = assignment_of(study, reader_a)
    api_client_for(reader_a).post(f"/api/v1/reading/assignments/{assignment.pk}/submit/")
    url = f"/api/v1/reading/assignments/{assignment.pk}/reopen/"
    coordinator_client = api_client_for(coordinator)
    assert coordinator_client.post(url, {"reason": " "}, format="json").status_code == 400
    assert api_client_for(reader_a).post(url, {"reason": "mine"}, format="json").status_code == 403
    response = coordinator_client.post(url, {"reason": "missed the lower lobes"}, format="json")
    assert response.status_code == 200
    entry = AssignmentReopen.objects.get()
    assert (entry.reason, entry.reopened_by) == ("missed the lower lobes", coordinator)
    assert save(api_client_for(reader_a), assignment, first_slice(assignment)).status_code == 201


def test_an_empty_polygon_list_records_a_deletion(study, reader_a, api_client_for):
    assignment = assignment_of(study, reader_a)
    instance = first_slice(assignment)
    client = api_client_for(reader_a)
    save(client, assignment, instance)
    response = save(client, assignment, instance, base_version=1, rings=[])
    assert response.json()["pixel_count"] == 0
    listed = client.get(f"/api/v1/reading/assignments/{assignment.pk}/contours/").json()["results"]
    assert [(c["version"], c["geometry"]["polygons"]) for c in listed] == [(2, [])]
