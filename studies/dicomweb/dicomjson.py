"""DICOM JSON (PS3.18 Annex F) for one instance, made once at ingest and served many times.

The text is stored on the ``Instance`` row with every BulkDataURI written against
``BASE_TOKEN``; serving series metadata is then a string join and one ``str.replace`` with the
request's base URL, instead of parsing a file per instance per request (the slow part of other
servers' metadata).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import struct
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.multival import MultiValue

from studies.raw_elements import (
    CANONICAL_UI_RE,
    UNDEFINED_LENGTH,
    dictionary_vr,
    plain_charset,
    raw_is_canonical,
)

logger = logging.getLogger(__name__)

# Replaced by the absolute DICOMweb root of the request (which differs between /dicomweb/ and
# /dicomweb/projects/<slug>/). JSON-safe, and no DICOM value contains it.
BASE_TOKEN = "{{dicomweb-base}}"
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN", "OB or OW", "US or OW"}
# Binary values longer than this are sent by reference (BulkDataURI), like Orthanc and dcm4chee.
BULK_DATA_THRESHOLD = 1024


def bulkdata_uri(study_uid: str, series_uid: str, sop_uid: str, tag: int) -> str:
    return f"{BASE_TOKEN}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulkdata/{tag:08X}"


def _is_bulk(element: DataElement) -> bool:
    if element.tag in PIXEL_DATA_TAGS:
        return True
    if element.VR not in BINARY_VRS:
        return False
    value = element.value
    return (
        value is not None
        and not isinstance(value, (int, float))
        and len(value) > BULK_DATA_THRESHOLD
    )


def _bulk_vr(element: DataElement, dataset: Dataset) -> str:
    if element.VR in ("OB or OW", "US or OW"):
        # Implicit VR files leave Pixel Data's VR open: OW for > 8 bits, else OB (PS3.5 A.1).
        bits = int(dataset.get("BitsAllocated", 16) or 16)
        return "OW" if bits > 8 and not element.is_undefined_length else "OB"
    return str(element.VR)


def instance_dict(dataset: Dataset) -> dict[str, Any]:
    """The dataset as a DICOM JSON object; Pixel Data and large binaries as BulkDataURI.

    Elements pydicom cannot encode (broken private tags are common in real CT) are left out
    rather than failing the whole instance: metadata serves viewers, and they never need them.
    """
    study_uid = str(dataset.get("StudyInstanceUID", ""))
    series_uid = str(dataset.get("SeriesInstanceUID", ""))
    sop_uid = str(dataset.get("SOPInstanceUID", ""))
    slim = Dataset()
    bulk: dict[str, dict[str, Any]] = {}
    fast: dict[str, dict[str, Any]] = {}
    elements = dataset._dict
    plain_text = plain_charset(dataset)
    from_raw = (
        config.settings.reading_validation_mode != config.RAISE and not config.datetime_conversion
    )
    for tag in list(dataset.keys()):
        if tag.group in (0x0002,) or tag.element == 0x0000:
            continue  # file meta and group lengths are not part of the JSON model
        number = int(tag)
        attribute = _fast_attribute(elements[tag], number, plain_text, from_raw)
        if attribute is not None:
            fast[f"{number:08X}"] = attribute
            continue
        try:
            element = dataset[tag]
        except Exception as exc:  # a malformed element must not lose the instance's metadata
            logger.debug("skipping unreadable element %s: %s", tag, exc)
            continue
        if _is_bulk(element):
            bulk[f"{int(tag):08X}"] = {
                "vr": _bulk_vr(element, dataset),
                "BulkDataURI": bulkdata_uri(study_uid, series_uid, sop_uid, int(tag)),
            }
        else:
            slim.add(element)
    try:
        slim = correct_ambiguous_vr(slim, True)
    except Exception as exc:
        logger.debug("ambiguous VRs left as they are: %s", exc)
    result: dict[str, Any] = {}
    for tag in list(slim.keys()):
        try:
            result[f"{int(tag):08X}"] = _attribute(slim[tag], from_raw)
        except Exception as exc:
            logger.debug("skipping element %s that has no JSON form: %s", tag, exc)
    result.update(bulk)
    result.update(fast)
    return dict(sorted(result.items()))


# ---- attributes straight from the bytes read -------------------------------------------------
# What ``DataElement.to_json_dict`` gives for a converted element, made from a RawDataElement
# whose bytes are canonical (``raw_is_canonical``) without converting it; None where unsure
# (the caller then converts as before).

_STRING_VRS = frozenset({"AE", "AS", "CS", "SH", "LO", "UC", "TM"})
_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
_BINARY_SIZES = {"H": 2, "h": 2, "L": 4, "l": 4, "f": 4, "d": 8}
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV"})
_IS_RE = re.compile(r"[+-]?[0-9]+")
_DS_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Pixel data, and the elements ``correct_ambiguous_vr`` reads to settle other elements' VRs:
# always by the general path.
_NOT_FAST = frozenset(
    {*PIXEL_DATA_TAGS, 0x00280103, 0x00280100, 0x54000110, 0x00283002, 0x00283006}
)


def _attribute(element: DataElement, from_raw: bool) -> dict[str, Any]:
    """``element.to_json_dict(None, BULK_DATA_THRESHOLD)``, sequence items (``Dataset.to_json_dict``:
    every element, in the item's order, any error raised) by the fast paths where they apply."""
    if element.VR != "SQ":
        return element.to_json_dict(None, BULK_DATA_THRESHOLD)
    return {"vr": "SQ", "Value": [_item(item, from_raw) for item in element.value]}


def _fast_attribute(
    element: Any, number: int, plain_text: bool, from_raw: bool
) -> dict[str, Any] | None:
    """The attribute built without pydicom's ``to_json_dict`` where that is safe, else None."""
    if number in _NOT_FAST:
        return None
    if isinstance(element, RawDataElement):
        return _raw_attribute(element, number, plain_text) if from_raw else None
    return _element_attribute(element)


def _item(item: Dataset, from_raw: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    elements = item._dict
    plain_text = plain_charset(item)
    for tag in list(item.keys()):
        number = int(tag)
        attribute = _fast_attribute(elements[tag], number, plain_text, from_raw)
        out[f"{number:08X}"] = _attribute(item[tag], from_raw) if attribute is None else attribute
    return out


_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "TM", "SH", "LO", "LT", "ST", "UT", "UC", "UI", "UR"}
)
_INT_VRS = frozenset({"US", "SS", "UL", "SL", "IS", "SV", "UV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})


def _element_attribute(element: DataElement) -> dict[str, Any] | None:
    """``element.to_json_dict`` for the common plain values; None for anything else."""
    vr = element.VR
    value = element.value
    if vr in _TEXT_VRS:
        if isinstance(value, str):
            return {"vr": vr, "Value": [value]} if value else {"vr": vr}
        if value is None:
            return {"vr": vr}
        if isinstance(value, MultiValue) and all(isinstance(v, str) for v in value):
            return {"vr": vr, "Value": list(value)} if len(value) else {"vr": vr}
        return None
    if vr in _INT_VRS:
        number: type[int] | type[float] = int
    elif vr in _FLOAT_VRS:
        number = float
    else:
        return None
    if value is None or value == "":
        return {"vr": vr}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"vr": vr, "Value": [number(value)]}
    if isinstance(value, MultiValue) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        return {"vr": vr, "Value": [number(v) for v in value]} if len(value) else {"vr": vr}
    return None


def _raw_attribute(raw: RawDataElement, tag: int, plain_text: bool) -> dict[str, Any] | None:
    if raw.length == UNDEFINED_LENGTH:
        return None
    vr = raw.VR
    if vr is None:
        if tag >> 16 & 1:  # private
            return None
        vr = dictionary_vr(tag)
    if not vr or vr == "SQ" or vr == "UN" or " " in vr:  # sequences, unknown, ambiguous
        return None
    value = raw.value
    if not raw.length and not value:
        return {"vr": vr}
    if not isinstance(value, bytes):
        return None
    if vr == "UI":
        text = value.rstrip(b"\0 ")
        if not text or CANONICAL_UI_RE.fullmatch(text) is None:
            return None
        return {"vr": vr, "Value": text.decode("ascii").split("\\")}
    number_format = _BINARY_FORMATS.get(vr)
    if number_format is not None:
        count, rest = divmod(len(value), _BINARY_SIZES[number_format])
        if rest:
            return None
        return {"vr": vr, "Value": list(struct.unpack(f"<{count}{number_format}", value))}
    if vr in _BYTES_VRS:
        if len(value) % 2:
            return None
        if len(value) > BULK_DATA_THRESHOLD:
            return None  # BulkDataURI: left to the general path
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("utf-8")}
    if vr not in _STRING_VRS and vr not in ("DS", "IS"):
        return None
    if not raw_is_canonical(raw, vr, plain_text):
        return None
    items = value.rstrip(b" ").decode("ascii").split("\\")
    if vr == "DS":
        if not all(_DS_RE.fullmatch(item) for item in items):
            return None
        return {"vr": vr, "Value": [float(item) for item in items]}
    if vr == "IS":
        if not all(_IS_RE.fullmatch(item) for item in items):
            return None
        return {"vr": vr, "Value": [int(item) for item in items]}
    return {"vr": vr, "Value": items}


def instance_json_text(dataset: Dataset) -> str:
    """``instance_dict`` as compact JSON text, ready to store on the Instance row."""
    return json.dumps(instance_dict(dataset), separators=(",", ":"), ensure_ascii=False)


def join_instances(texts: list[str], base_url: str) -> bytes:
    """A JSON array of stored instance texts with their BulkDataURIs made absolute."""
    return ("[" + ",".join(texts) + "]").replace(BASE_TOKEN, base_url).encode()


def with_base(text: str, base_url: str) -> str:
    return text.replace(BASE_TOKEN, base_url)


# ---- building QIDO / STOW response attributes --------------------------------------------


def attr(vr: str, *values: Any) -> dict[str, Any]:
    """One DICOM JSON attribute; empty values give the attribute with no Value (PS3.18 F.2.5)."""
    kept = [v for v in values if v not in (None, "")]
    if not kept:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in kept]}
    return {"vr": vr, "Value": kept}
