"""DICOM JSON built from the bytes read (``_raw_attribute``) and from plain converted values
(``_element_attribute``) is exactly what the general path through pydicom's ``to_json_dict``
gives; and elements that de-identification keeps as read are canonical."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
from typing import Any

import pydicom
import pytest
from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.tag import Tag

from studies.dicomweb import dicomjson
from studies.raw_elements import raw_is_canonical
from studies.services import ingest, prepare
from tests.studies_tests.test_native_encoding import odd_values_slice, pydicom_encode, rich_slice

# The odd values are odd on purpose; pydicom says so for each.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


def reference_instance_dict(dataset: Dataset) -> dict[str, Any]:
    """``instance_dict`` as it was before the fast paths: every element through pydicom."""
    study_uid = str(dataset.get("StudyInstanceUID", ""))
    series_uid = str(dataset.get("SeriesInstanceUID", ""))
    sop_uid = str(dataset.get("SOPInstanceUID", ""))
    slim = Dataset()
    bulk: dict[str, dict[str, Any]] = {}
    for tag in list(dataset.keys()):
        if tag.group in (0x0002,) or tag.element == 0x0000:
            continue
        try:
            element = dataset[tag]
        except Exception:
            continue
        if dicomjson._is_bulk(element):
            bulk[f"{int(tag):08X}"] = {
                "vr": dicomjson._bulk_vr(element, dataset),
                "BulkDataURI": dicomjson.bulkdata_uri(study_uid, series_uid, sop_uid, int(tag)),
            }
        else:
            slim.add(element)
    with contextlib.suppress(Exception):
        slim = correct_ambiguous_vr(slim, True)
    result: dict[str, Any] = {}
    for tag in list(slim.keys()):
        with contextlib.suppress(Exception):
            result[f"{int(tag):08X}"] = slim[tag].to_json_dict(None, dicomjson.BULK_DATA_THRESHOLD)
    result.update(bulk)
    return dict(sorted(result.items()))


def same_json(data: bytes, reader) -> None:
    new = dicomjson.instance_dict(reader(data))
    old = reference_instance_dict(reader(data))
    assert new == old
    assert json.dumps(new) == json.dumps(old)  # same types too (int / float / str)
    deid = ingest.make_deidentifier()
    new = dicomjson.instance_dict(deid.apply(reader(data), in_place=True).dataset)
    old = reference_instance_dict(deid.apply(reader(data), in_place=True).dataset)
    assert new == old
    assert json.dumps(new) == json.dumps(old)


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.mark.parametrize("implicit", [False, True])
def test_json_of_built_slices_is_unchanged(implicit):
    from pydicom.uid import ImplicitVRLittleEndian

    for ds in (rich_slice(), odd_values_slice()):
        ds.add_new(0x00280106, "US", [0, 5])
        ds.add_new(0x00181152, "IS", "-12")
        ds.add_new(0x00189306, "FD", 1.25)
        ds.add_new(0x00189307, "FD", [1.5, -2.0])
        ds.add_new(0x00181170, "IS", "3")
        ds.add_new(0x00420011, "OB", b"\x01\x02\x03\x04")
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        data = pydicom_encode(copy.deepcopy(ds))
        same_json(data, read)
        # built in memory (converted values, nothing raw)
        assert dicomjson.instance_dict(copy.deepcopy(ds)) == reference_instance_dict(
            copy.deepcopy(ds)
        )


def test_json_of_real_ct_is_unchanged(real_data):
    for path in sorted(real_data("popi-00-ct").glob("*.dcm"))[::10]:
        same_json(path.read_bytes(), prepare.parse_ct_instance)


def test_json_of_real_explicit_files_is_unchanged(real_data):
    for path in sorted(real_data("lungmask-2slice").glob("*.dcm")):
        same_json(path.read_bytes(), read)


def _tags_by_vr() -> dict[str, list[int]]:
    wanted = {"AE", "AS", "CS", "DS", "IS", "TM", "SH", "LO", "ST", "LT", "UT", "UC", "UI"}
    wanted |= {"US", "SS", "UL", "SL", "FD", "AT", "OB", "OW", "OF"}
    out: dict[str, list[int]] = {}
    for tag, entry in sorted(DicomDictionary.items()):
        if entry[0] in wanted and tag >> 16 > 8 and len(out.get(entry[0], [])) < 2:
            out.setdefault(entry[0], []).append(tag)
    return out


def test_elements_kept_as_read_write_back_as_read():
    """Whenever ``raw_is_canonical`` says yes, converting and writing gives the same bytes."""
    rng = random.Random(7)
    alphabet = [b" ", b"\\", b"A", b"1", b".", b"-", b"+", b"e", b"0", b"\x00", b"Z", b"\xe9"]
    kept = 0
    for vr, tags in _tags_by_vr().items():
        for _ in range(1500):
            tag = rng.choice(tags)
            implicit = rng.random() < 0.5
            if vr in ("US", "SS", "UL", "SL", "FD", "AT", "OB", "OW", "OF"):
                value = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 2, 4, 8, 16, 3])))
            else:
                value = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            raw = RawDataElement(
                Tag(tag), None if implicit else vr, len(value), value, 0, implicit, True
            )
            if not raw_is_canonical(raw, dictionary_VR(tag) if implicit else vr, True):
                continue
            ds = Dataset()
            ds.set_original_encoding(implicit, True, "iso8859")
            ds._dict[raw.tag] = raw
            buffer = DicomBytesIO()
            buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
            write_data_element(buffer, ds[raw.tag], ["iso8859"])
            long_header = not implicit and vr in ("OB", "OW", "OF", "UT", "UC")
            assert buffer.getvalue()[12 if long_header else 8 :] == value, (vr, value)
            kept += 1
    assert kept > 1000
