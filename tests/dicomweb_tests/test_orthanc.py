"""Interoperability with Orthanc as a DICOMweb peer: it pulls a series from us (WADO-RS,
after a QIDO) and pushes one to us (STOW-RS), authenticating with HTTP Basic."""

from __future__ import annotations

import pytest

from studies.models import Instance, Series
from tests.dicom_builders import ct_series_bytes
from tests.dicomweb_tests import orthanc_harness
from tests.dicomweb_tests.conftest import store_series

pytestmark = [
    pytest.mark.external,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not orthanc_harness.available(),
        reason="Orthanc + DICOMweb plugin not installed (apt-get install orthanc orthanc-dicomweb)",
    ),
]


@pytest.fixture
def orthanc(live_server, coordinator):
    peer = {
        "Url": f"{live_server.url}/dicomweb/projects/ssc/",
        "Username": "coordinator",
        "Password": "pw",
        # Django's test server cannot read chunked bodies (gunicorn can: see the benchmark).
        "ChunkedTransfers": False,
    }
    server = orthanc_harness.Orthanc(peers={"ild": peer})
    yield server
    server.stop()


def test_orthanc_pulls_a_series_from_us(orthanc, project):
    series = store_series(project, 4, patient_id="PULL-1")
    study_uid = series.study.study_instance_uid
    found = orthanc.post("/dicom-web/servers/ild/get", {"Uri": "/studies"})
    assert any(s["0020000D"]["Value"] == [study_uid] for s in found), orthanc.log_text()[-2000:]

    orthanc.post(
        "/dicom-web/servers/ild/retrieve",
        {"Resources": [{"Study": study_uid, "Series": series.series_instance_uid}]},
    )

    pulled = orthanc.post(
        "/tools/find",
        {"Level": "Instance", "Query": {"SeriesInstanceUID": series.series_instance_uid}},
    )
    assert len(pulled) == 4, orthanc.log_text()[-3000:]
    stored = set(series.instances.values_list("sop_instance_uid", flat=True))
    tags = [orthanc.get(f"/instances/{i}/simplified-tags") for i in pulled]
    assert {t["SOPInstanceUID"] for t in tags} == stored


def test_orthanc_pushes_a_series_to_us(orthanc, project):
    files = ct_series_bytes(3, patient_id="PUSH-1")
    for data in files:
        orthanc.upload(data)
    (orthanc_series,) = orthanc.get("/series")

    orthanc.post("/dicom-web/servers/ild/stow", {"Resources": [orthanc_series]})

    series = Series.objects.get()
    assert series.study.patient.project == project
    assert Instance.objects.filter(series=series).count() == 3
    # De-identified like every import: the pseudonym replaces the sent PatientID.
    assert series.study.patient.patient_id != "PUSH-1"
