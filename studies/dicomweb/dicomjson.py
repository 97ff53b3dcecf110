"""DICOM JSON (PS3.18 Annex F) for one instance, made once at ingest and served many times.

The text is stored on the ``Instance`` row with every BulkDataURI written against
``BASE_TOKEN``; serving series metadata is then a string join and one ``str.replace`` with the
request's base URL, instead of parsing a file per instance per request (the slow part of other
servers' metadata).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr

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
    for tag in list(dataset.keys()):
        if tag.group in (0x0002,) or tag.element == 0x0000:
            continue  # file meta and group lengths are not part of the JSON model
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
            result[f"{int(tag):08X}"] = slim[tag].to_json_dict(None, BULK_DATA_THRESHOLD)
        except Exception as exc:
            logger.debug("skipping element %s that has no JSON form: %s", tag, exc)
    result.update(bulk)
    return dict(sorted(result.items()))


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
