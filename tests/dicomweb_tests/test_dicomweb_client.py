"""Interoperability: dicomweb-client, with its default arguments, against a live server."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import RLELossless, generate_uid
from rest_framework.authtoken.models import Token

from tests.dicom_builders import ct_slice
from tests.dicomweb_tests.conftest import expected_pixels, store_series

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client_for(live_server):
    def make(user, base: str = "/dicomweb") -> DICOMwebClient:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {Token.objects.create(user=user).key}"
        return DICOMwebClient(url=live_server.url + base, session=session)

    return make


def test_search_metadata_frames_and_retrieve(client_for, reader_a, project):
    series = store_series(project, 3, patient_id="HOSP-001")
    client = client_for(reader_a)
    study_uid, series_uid = series.study.study_instance_uid, series.series_instance_uid

    studies = client.search_for_studies(search_filters={"PatientID": "HOSP-001"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [study_uid]
    assert client.search_for_series(study_uid)[0]["0020000E"]["Value"] == [series_uid]
    instances = client.search_for_instances(study_uid, series_uid)
    sops = sorted(i["00080018"]["Value"][0] for i in instances)
    assert len(sops) == 3

    metadata = client.retrieve_series_metadata(study_uid, series_uid)
    by_number = {m["00200013"]["Value"][0]: m["00080018"]["Value"][0] for m in metadata}
    (frame,) = client.retrieve_instance_frames(study_uid, series_uid, by_number[2], [1])
    assert frame == expected_pixels(1)

    datasets = client.retrieve_series(study_uid, series_uid)
    assert sorted(ds.SOPInstanceUID for ds in datasets) == sops
    instance = client.retrieve_instance(study_uid, series_uid, by_number[3])
    assert instance.PixelData == expected_pixels(2)
    assert len(client.retrieve_study(study_uid)) == 3


def test_compressed_frames_reach_dicomweb_client_compressed(client_for, reader_a, project):
    series = store_series(project, 1, compress=RLELossless)
    sop = series.instances.get().sop_instance_uid
    client = client_for(reader_a)
    (frame,) = client.retrieve_instance_frames(
        series.study.study_instance_uid, series.series_instance_uid, sop, [1]
    )
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    options: dict[str, Any] = {
        "rows": 16,
        "columns": 16,
        "samples_per_pixel": 1,
        "bits_allocated": 16,
        "bits_stored": 16,
        "pixel_representation": 1,
        "photometric_interpretation": "MONOCHROME2",
        "number_of_frames": 1,
    }
    decoded, _ = get_decoder(RLELossless).as_array(encapsulate([frame]), **options)
    assert decoded.astype("<i2").tobytes() == expected_pixels(0)


def test_store_instances(client_for, coordinator, project):
    study, series = generate_uid(), generate_uid()
    datasets = [ct_slice(study_uid=study, series_uid=series, index=i) for i in range(2)]
    client = client_for(coordinator, "/dicomweb/projects/ssc")
    result = client.store_instances(datasets)
    referenced = result.ReferencedSOPSequence
    assert len(referenced) == 2
    stored_uid = referenced[0].ReferencedSOPInstanceUID
    found = client.search_for_instances(search_filters={"SOPInstanceUID": stored_uid})
    assert len(found) == 1
