"""The ingest service's own encoder (``prepare.encode``) writes what pydicom's ``save_as`` writes,
byte for byte, and STOW-RS reads each part once."""

from __future__ import annotations

import copy
import io

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from studies.services import ingest, prepare
from tests.dicom_builders import ct_slice, to_bytes


def pydicom_encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def both(dataset: Dataset) -> tuple[bytes, bytes]:
    return prepare.encode(copy.deepcopy(dataset)), pydicom_encode(copy.deepcopy(dataset))


def rich_slice(**kwargs) -> Dataset:
    ds = ct_slice(study_uid="1.2.3.4", series_uid="1.2.3.4.5", index=3, **kwargs)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.WindowCenter = ["-600", "40"]
    ds.WindowWidth = 1500.0
    ds.PatientName = "Müller^Jörg"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstitutionName = "Hôpital"
    ds.ReferencedImageSequence = Sequence([Dataset(), Dataset()])
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.9"
    ds.ReferencedImageSequence[1].ReferencedSOPInstanceUID = "1.2.3.10"
    ds.ReferencedImageSequence[1].is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence.is_undefined_length = True
    ds.add_new(0x00181150, "IS", 120)  # ExposureTime, a number without original string
    ds.add_new(0x00280106, "US", [0, 5])  # multi-valued binary numbers
    ds.add_new(0x00181160, "SH", "")  # empty
    ds.add_new(0x00091010, "LO", "private")
    return ds


def test_built_slices_encode_like_pydicom():
    ds = rich_slice()
    fast, slow = both(ds)
    assert fast == slow


def test_read_back_and_deidentified_slices_encode_like_pydicom():
    data = to_bytes(rich_slice())
    read = prepare.parse_ct_instance(data)
    assert prepare.encode(read) == pydicom_encode(prepare.parse_ct_instance(data))
    from studies.deidentify import Deidentifier

    deid = Deidentifier(b"0123456789abcdef-secret")
    fast = prepare.encode(deid.apply(prepare.parse_ct_instance(data), in_place=True).dataset)
    slow = pydicom_encode(deid.apply(prepare.parse_ct_instance(data), in_place=True).dataset)
    assert fast == slow


def test_implicit_vr_encodes_like_pydicom():
    ds = rich_slice()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = pydicom_encode(copy.deepcopy(ds))
    read = pydicom.dcmread(io.BytesIO(data))
    assert read.original_encoding == (True, True)
    assert prepare.encode(read) == pydicom_encode(pydicom.dcmread(io.BytesIO(data)))
    assert both(ds)[0] == both(ds)[1]


def test_compressed_data_is_left_to_pydicom():
    ds = ct_slice(study_uid="1.2.3.4", series_uid="1.2.3.4.5", index=0)
    ds.compress(RLELossless)
    assert prepare._encode_native(copy.deepcopy(ds)) is None
    fast, slow = both(ds)
    assert fast == slow


def test_real_ct_encodes_like_pydicom(real_data):
    folder = real_data("popi-00-ct")
    deid = ingest.make_deidentifier()
    for path in sorted(folder.glob("*.dcm"))[:5]:
        data = path.read_bytes()
        assert prepare.encode(prepare.parse_ct_instance(data)) == data  # read and written back
        fast = prepare.encode(deid.apply(prepare.parse_ct_instance(data), in_place=True).dataset)
        slow = pydicom_encode(deid.apply(prepare.parse_ct_instance(data), in_place=True).dataset)
        assert fast == slow


def converted(dataset: Dataset) -> Dataset:
    """Every element (nested ones too) converted from the bytes read, as de-identification
    used to leave them before it learnt to keep unchanged elements as read."""
    for element in dataset.iterall():
        assert not element.is_raw
    return dataset


def odd_values_slice(implicit: bool = False) -> Dataset:
    """Values whose bytes are not what pydicom writes back (padding, spaces): never raw-copied."""
    ds = rich_slice()
    ds.add_new(0x00080021, "DA", "2024.01.02")
    ds.add_new(0x00080023, "DA", "20240102\\20240103")
    ds.add_new(0x00080031, "TM", " 101010")
    ds.add_new(0x00080032, "TM", "101010.5 ")
    ds.add_new(0x00200052, "UI", "1.2.3.44 ")
    ds.add_new(0x00081160, "IS", ["1", "2"])
    ds.add_new(0x00080070, "LO", " Lead")
    ds.add_new(0x00081090, "LO", "A\\B ")
    ds.add_new(0x00180015, "CS", "CHEST ")
    ds.add_new(0x00200011, "IS", " 7")
    ds.add_new(0x00181120, "DS", "1.50\\ 2")
    ds.add_new(0x00080008, "CS", ["A", "", "B"])
    ds.add_new(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2 ")
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def raw_copy_cases(data: bytes, reader) -> None:
    """What ingest stores for a file (parsed, de-identified, encoded with the elements left as
    read copied) is what pydicom writes once every element is converted."""
    deid = ingest.make_deidentifier()
    result = deid.apply(reader(data), in_place=True).dataset
    assert any(element.is_raw for element in result.elements())  # some were left as read
    fast = prepare.encode(result)
    slow = pydicom_encode(converted(deid.apply(reader(data), in_place=True).dataset))
    assert fast == slow


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("implicit", [False, True])
def test_raw_copied_elements_of_built_slices_encode_as_converted(implicit):
    for ds in (rich_slice(), odd_values_slice()):
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        raw_copy_cases(pydicom_encode(ds), read)


def test_raw_copied_elements_of_real_implicit_ct_encode_as_converted(real_data):
    folder = real_data("popi-00-ct")
    for path in sorted(folder.glob("*.dcm"))[::20]:
        data = path.read_bytes()
        assert read(data).original_encoding == (True, True)
        raw_copy_cases(data, prepare.parse_ct_instance)


def test_raw_copied_elements_of_real_explicit_files_encode_as_converted(real_data):
    paths = sorted(real_data("lungmask-2slice").glob("*.dcm"))
    paths += sorted(real_data("dcmqi-ct3slice-seg").glob("ct/*.dcm"))[:1]
    for path in paths:
        data = path.read_bytes()
        raw_copy_cases(data, read)


@pytest.mark.django_db
def test_stow_reads_each_part_once(api_client_for, coordinator, monkeypatch):
    from tests.dicom_builders import ct_series_bytes
    from tests.dicomweb_tests.test_stow import multipart, post

    reads = []
    real = pydicom.dcmread

    def counting(*args, **kwargs):
        reads.append(kwargs.get("stop_before_pixels", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    response = post(api_client_for(coordinator), "/dicomweb/studies", multipart(ct_series_bytes(3)))
    assert response.status_code == 200
    assert reads == [False, False, False]
