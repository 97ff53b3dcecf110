"""STOW-RS: the ingest service behind multipart uploads, and the standard response."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from studies.models import Instance, UidMapping
from tests.dicom_builders import ct_series_bytes, ct_slice, to_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("helper_processes")]

BOUNDARY = "f00dcafe"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(files: list[bytes], part_type: str = "application/dicom") -> bytes:
    body = b""
    for data in files:
        body += f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def post(client, url, body, content_type=CONTENT_TYPE):
    return client.generic(
        "POST", url, body, content_type=content_type, HTTP_ACCEPT="application/dicom+json"
    )


def test_it_stores_and_answers_with_the_referenced_sop_sequence(api_client_for, coordinator):
    files = ct_series_bytes(3)
    response = post(api_client_for(coordinator), "/dicomweb/studies", multipart(files))
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/dicom+json"
    body = response.json()
    referenced = body["00081199"]["Value"]
    assert len(referenced) == 3
    stored = set(Instance.objects.values_list("sop_instance_uid", flat=True))
    assert {r["00081155"]["Value"][0] for r in referenced} == stored
    # De-identified by default, like every import: new UIDs, flagged as coerced.
    assert all(r["00081196"]["Value"] == [0xB000] for r in referenced)
    assert UidMapping.objects.filter(level="instance").count() == 3
    assert body["00081190"]["Value"][0].startswith("http://testserver/dicomweb/studies/")
    assert "00081198" not in body


def test_partial_failure_is_202_with_reasons(api_client_for, coordinator):
    good = ct_series_bytes(1)[0]
    mr = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    mr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    response = post(
        api_client_for(coordinator), "/dicomweb/studies", multipart([good, to_bytes(mr), b"junk"])
    )
    assert response.status_code == 202
    failed = response.json()["00081198"]["Value"]
    assert [f["00081197"]["Value"][0] for f in failed] == [0x0122, 0xC000]
    assert failed[0]["00081155"]["Value"] == [mr.SOPInstanceUID]
    assert "not CT Image Storage" in response["Warning"]


def test_each_failure_reason_has_its_code(api_client_for, coordinator):
    client = api_client_for(coordinator)
    kept = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    post(client, "/dicomweb/studies", multipart([to_bytes(kept)]))
    changed = ct_slice(study_uid=kept.StudyInstanceUID, series_uid=kept.SeriesInstanceUID, index=0)
    changed.SOPInstanceUID = kept.SOPInstanceUID  # another image under a stored UID
    changed.PixelData = bytes(len(changed.PixelData))
    no_position = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    del no_position.ImagePositionPatient
    mr = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    mr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    parts = [to_bytes(changed), to_bytes(no_position), to_bytes(mr), b"not DICOM"]
    response = post(client, "/dicomweb/studies", multipart(parts))
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"]
    # Conflict (0111), does not match its SOP class (A900), SOP class not supported (0122),
    # cannot understand (C000): from the kind of refusal, whatever words the reason uses.
    assert [f["00081197"]["Value"][0] for f in failed] == [0x0111, 0xA900, 0x0122, 0xC000]
    assert "a different file is already stored" in failed[0]["00000902"]["Value"][0]


def test_all_failed_is_409(api_client_for, coordinator):
    response = post(api_client_for(coordinator), "/dicomweb/studies", multipart([b"junk"]))
    assert response.status_code == 409
    assert "00081199" not in response.json()


def test_resending_is_idempotent(api_client_for, coordinator):
    files = ct_series_bytes(2)
    client = api_client_for(coordinator)
    post(client, "/dicomweb/studies", multipart(files))
    again = post(client, "/dicomweb/studies", multipart(files))
    assert again.status_code == 200
    assert len(again.json()["00081199"]["Value"]) == 2
    assert Instance.objects.count() == 2


def test_study_scoped_store_fails_instances_of_other_studies(api_client_for, coordinator):
    study = generate_uid()
    mine = ct_series_bytes(1, study_uid=study)
    other = ct_series_bytes(1)
    response = post(
        api_client_for(coordinator), f"/dicomweb/studies/{study}", multipart(mine + other)
    )
    assert response.status_code == 202
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0x0110]


def test_project_url_stores_into_that_project(api_client_for, coordinator, project, other_project):
    from core.models import Membership

    Membership.objects.create(user=coordinator, project=other_project)
    client = api_client_for(coordinator)
    ambiguous = post(client, "/dicomweb/studies", multipart(ct_series_bytes(1)))
    assert ambiguous.status_code == 400
    assert "/dicomweb/projects/other/studies" in ambiguous.json()["detail"]
    response = post(client, "/dicomweb/projects/other/studies", multipart(ct_series_bytes(1)))
    assert response.status_code == 200
    assert Instance.objects.get().series.study.patient.project == other_project


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        'multipart/related; type="application/dicom+json"; boundary=f00dcafe',
        "text/plain",
    ],
)
def test_wrong_content_types_are_415(api_client_for, coordinator, content_type):
    response = post(
        api_client_for(coordinator),
        "/dicomweb/studies",
        multipart(ct_series_bytes(1)),
        content_type,
    )
    assert response.status_code == 415


def test_oversized_uploads_are_413(api_client_for, coordinator, settings):
    settings.MAX_UPLOAD_BYTES = 1000
    response = post(api_client_for(coordinator), "/dicomweb/studies", multipart(ct_series_bytes(1)))
    assert response.status_code == 413
    assert not Instance.objects.exists()


@pytest.mark.parametrize(
    "tail",
    [b"--f00dcafe\r\nContent-Type: application/dicom\r\n\r\nnever closed", b"--f00dcafe"],
)
def test_a_body_that_breaks_off_stores_none_of_its_parts(
    api_client_for, coordinator, monkeypatch, tail
):
    """Parts are prepared while the body is read, and batches of them stored as they fill;
    but not before the whole body has been read: a flaw at its end stores nothing."""
    monkeypatch.setattr("studies.services.ingest.BATCH_SIZE", 2)
    body = multipart(ct_series_bytes(9))[: -len(f"--{BOUNDARY}--\r\n")] + tail
    response = post(api_client_for(coordinator), "/dicomweb/studies", body)
    assert response.status_code == 400
    assert "malformed multipart body" in response.json()["detail"]
    assert not Instance.objects.exists()
    assert not UidMapping.objects.exists()


def test_readers_may_not_store(api_client_for, reader_a):
    response = post(api_client_for(reader_a), "/dicomweb/studies", multipart(ct_series_bytes(1)))
    assert response.status_code == 403
