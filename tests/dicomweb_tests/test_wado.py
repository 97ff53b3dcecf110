"""WADO-RS: metadata, frames (native and compressed), instances, bulk data, rendered."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from studies.models import Instance
from tests.dicomweb_tests.conftest import expected_pixels, path_of, split_multipart

pytestmark = pytest.mark.django_db

OCTET_ANY = "multipart/related; type=application/octet-stream; transfer-syntax=*"
EXPLICIT = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"


def sops(series) -> list[str]:
    return list(
        series.instances.order_by("instance_number").values_list("sop_instance_uid", flat=True)
    )


def test_series_metadata_is_dicom_json_with_pixel_data_by_reference(
    api_client_for, reader_a, series
):
    response = api_client_for(reader_a).get(
        path_of(series, "metadata"), HTTP_ACCEPT="application/dicom+json"
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom+json"
    items = response.json()
    assert [i["00080018"]["Value"][0] for i in items] == sops(series)
    first = items[0]
    assert first["00280010"] == {"vr": "US", "Value": [16]}
    assert first["00200032"]["Value"] == [-16.0, -16.0, 0.0]
    uri = first["7FE00010"]["BulkDataURI"]
    assert uri.startswith("http://testserver/dicomweb/studies/")
    assert uri.endswith(f"/instances/{sops(series)[0]}/bulkdata/7FE00010")
    assert "InlineBinary" not in str(first)


def test_metadata_of_rows_stored_before_the_cache_is_filled_on_first_use(
    api_client_for, reader_a, series
):
    Instance.objects.update(dicom_json="")
    response = api_client_for(reader_a).get(path_of(series, "metadata"))
    assert len(response.json()) == 3
    assert not Instance.objects.filter(dicom_json="").exists()


def test_study_and_instance_metadata(api_client_for, reader_a, series):
    client = api_client_for(reader_a)
    study = client.get(f"/dicomweb/studies/{series.study.study_instance_uid}/metadata")
    assert len(study.json()) == 3
    one = client.get(path_of(series, "instances", sops(series)[1], "metadata"))
    assert [i["00080018"]["Value"][0] for i in one.json()] == [sops(series)[1]]


def test_native_frames_are_the_stored_pixels_labelled_with_the_transfer_syntax(
    api_client_for, reader_a, series
):
    response = api_client_for(reader_a).get(
        path_of(series, "instances", sops(series)[2], "frames", "1"), HTTP_ACCEPT=OCTET_ANY
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    ((headers, content),) = split_multipart(response)
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={EXPLICIT}"
    assert content == expected_pixels(2)


def test_several_frames_come_as_several_parts(api_client_for, reader_a, project):
    from tests.dicomweb_tests.conftest import store_series

    series = store_series(project, 1)
    instance = series.instances.get()
    # Turn the stored single frame into a 3-frame record of the same file's bytes: the fast
    # path only needs the offset and length, so the first frame repeats 3 x 1/3 of it.
    Instance.objects.filter(pk=instance.pk).update(number_of_frames=2, rows=8, columns=16)
    response = api_client_for(reader_a).get(
        path_of(series, "instances", instance.sop_instance_uid, "frames", "2,1"),
        HTTP_ACCEPT=OCTET_ANY,
    )
    parts = split_multipart(response)
    pixels = expected_pixels(0)
    assert [content for _, content in parts] == [pixels[256:], pixels[:256]]


def test_compressed_frames_are_sent_compressed_when_accepted(api_client_for, reader_a, rle_series):
    response = api_client_for(reader_a).get(
        path_of(rle_series, "instances", sops(rle_series)[1], "frames", "1"), HTTP_ACCEPT=OCTET_ANY
    )
    ((headers, content),) = split_multipart(response)
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={RLE}"
    from pydicom.pixels import get_decoder

    # An RLE segment header: 64 bytes, segment count first (2 for 16-bit).
    assert int.from_bytes(content[:4], "little") == 2
    assert get_decoder(RLE).is_available


def test_compressed_frames_are_decoded_when_explicit_le_is_asked_for(
    api_client_for, reader_a, rle_series
):
    response = api_client_for(reader_a).get(
        path_of(rle_series, "instances", sops(rle_series)[1], "frames", "1"),
        HTTP_ACCEPT=f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT}',
    )
    ((headers, content),) = split_multipart(response)
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={EXPLICIT}"
    assert content == expected_pixels(1)


def test_frames_in_a_transfer_syntax_we_cannot_make_are_406(api_client_for, reader_a, series):
    response = api_client_for(reader_a).get(
        path_of(series, "instances", sops(series)[0], "frames", "1"),
        HTTP_ACCEPT='multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90',
    )
    assert response.status_code == 406


@pytest.mark.parametrize("frames", ["0", "2", "1,x"])
def test_bad_frame_numbers(api_client_for, reader_a, series, frames):
    response = api_client_for(reader_a).get(
        path_of(series, "instances", sops(series)[0], "frames", frames), HTTP_ACCEPT=OCTET_ANY
    )
    assert response.status_code in (400, 404)


def test_retrieve_series_sends_every_instance_as_application_dicom(
    api_client_for, reader_a, series
):
    response = api_client_for(reader_a).get(
        path_of(series), HTTP_ACCEPT='multipart/related; type="application/dicom"'
    )
    assert response.status_code == 200
    parts = split_multipart(response)
    datasets = [pydicom.dcmread(io.BytesIO(content)) for _, content in parts]
    assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(sops(series))
    assert all(ds.file_meta.TransferSyntaxUID == EXPLICIT for ds in datasets)


def test_retrieve_without_transfer_syntax_transcodes_to_explicit_le(
    api_client_for, reader_a, rle_series
):
    sop = sops(rle_series)[0]
    client = api_client_for(reader_a)
    as_stored = split_multipart(
        client.get(
            path_of(rle_series, "instances", sop),
            HTTP_ACCEPT='multipart/related; type="application/dicom"; transfer-syntax=*',
        )
    )
    explicit = split_multipart(client.get(path_of(rle_series, "instances", sop)))
    assert pydicom.dcmread(io.BytesIO(as_stored[0][1])).file_meta.TransferSyntaxUID == RLE
    decoded = pydicom.dcmread(io.BytesIO(explicit[0][1]))
    assert decoded.file_meta.TransferSyntaxUID == EXPLICIT
    assert decoded.PixelData == expected_pixels(0)


def test_bulkdata_uri_from_metadata_resolves_to_the_pixels(api_client_for, reader_a, series):
    client = api_client_for(reader_a)
    (meta,) = client.get(path_of(series, "instances", sops(series)[1], "metadata")).json()
    uri = meta["7FE00010"]["BulkDataURI"].removeprefix("http://testserver")
    ((_, content),) = split_multipart(client.get(uri, HTTP_ACCEPT=OCTET_ANY))
    assert content == expected_pixels(1)


def test_rendered_ct_uses_the_lung_window_by_default(api_client_for, reader_a, project):
    from tests.dicomweb_tests.conftest import store_series

    series = store_series(project, 1, size=16, fill=-1200)  # HU -1200 .. -945
    sop = sops(series)[0]
    client = api_client_for(reader_a)
    response = client.get(path_of(series, "instances", sop, "rendered"), HTTP_ACCEPT="image/png")
    assert response["Content-Type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(response.content)))
    assert image.shape == (16, 16)
    # Lung window: -1350..150 HU. -1200 is dark grey, -945 lighter; neither is clipped.
    assert 0 < image[0, 0] < image[-1, -1] < 255
    wide = client.get(
        path_of(series, "instances", sop, "rendered"),
        {"window": "-1000,100", "accept": "image/jpeg"},
    )
    assert wide["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(wide.content)).format == "JPEG"


def test_thumbnails_fit_the_viewport(api_client_for, reader_a, series):
    client = api_client_for(reader_a)
    response = client.get(
        path_of(series, "thumbnail"), {"viewport": "8,8"}, HTTP_ACCEPT="image/png"
    )
    assert Image.open(io.BytesIO(response.content)).size == (8, 8)
    frame = client.get(
        path_of(series, "instances", sops(series)[0], "frames", "1", "rendered"),
        HTTP_ACCEPT="image/png",
    )
    assert Image.open(io.BytesIO(frame.content)).size == (16, 16)


def test_rendered_in_an_unsupported_format_is_406(api_client_for, reader_a, series):
    response = api_client_for(reader_a).get(
        path_of(series, "instances", sops(series)[0], "rendered"), HTTP_ACCEPT="image/gif"
    )
    assert response.status_code == 406


@pytest.mark.parametrize("suffix", ["metadata", "instances/1.2.3/frames/1", "instances/1.2.3", ""])
def test_unknown_uids_are_404(api_client_for, reader_a, series, suffix):
    url = f"/dicomweb/studies/{series.study.study_instance_uid}/series/9.9.9/{suffix}".rstrip("/")
    assert api_client_for(reader_a).get(url).status_code == 404
