"""The per-file stage of ingest: read, validate, de-identify, encode and describe one file.

No database and no disk: from a file's bytes alone, everything :mod:`studies.services.ingest`
needs to store it and index it (the instance row, its patient / study / series rows, the file as
stored). Nothing here imports Django models, so the stage runs as well in helper processes:
:class:`Preparer` prepares a stream of files on this process and on ``processes`` helpers at
once, in order, while the caller writes the files and rows of those already prepared.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import itertools
import logging
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import Future
from copy import copy
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal, cast

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import (
    correct_ambiguous_vr,
    write_data_element,
    write_file_meta_info,
    writers,
)
from pydicom.tag import BaseTag
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import CUSTOMIZABLE_CHARSET_VR, EXPLICIT_VR_LENGTH_32

from core.memory import keep_freed_memory
from studies.deidentify import DeidentificationError, DeidentificationKey, Deidentifier
from studies.dicomweb.dicomjson import instance_json_text
from studies.raw_elements import UNDEFINED_LENGTH
from studies.services import storage

logger = logging.getLogger(__name__)

Status = Literal["stored", "duplicate", "rejected"]
# A file to ingest: a name for the report, and its bytes.
Item = tuple[str, bytes]

CT_IMAGE_STORAGE = str(CTImageStorage)
# Without these a slice cannot be placed in a series or in space.
REQUIRED_ATTRIBUTES = (
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
    ("Rows", "(0028,0010)"),
    ("Columns", "(0028,0011)"),
    ("BitsAllocated", "(0028,0100)"),
    ("PixelRepresentation", "(0028,0103)"),
    ("ImagePositionPatient", "(0020,0032)"),
    ("ImageOrientationPatient", "(0020,0037)"),
    ("PixelSpacing", "(0028,0030)"),
)
PIXEL_DATA_TAG = 0x7FE00010
NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class Refusal(StrEnum):
    """Why a file was refused, in the classes a DICOM peer is told (STOW-RS failure reasons)."""

    UNREADABLE = "unreadable"  # not DICOM, or not parseable
    SOP_CLASS = "sop-class"  # a SOP class this store does not take
    INVALID = "invalid"  # missing or inconsistent attributes for its SOP class
    CONFLICT = "conflict"  # a different file is stored under its SOP Instance UID
    PROCESSING = "processing"  # anything else: another patient's study, de-identification


class RejectedFile(Exception):
    """The file cannot be stored; the message says what is wrong with it."""

    def __init__(self, message: str, refusal: Refusal = Refusal.PROCESSING) -> None:
        super().__init__(message)
        self.refusal = refusal


@dataclass(frozen=True)
class SentUids:
    """The UIDs a file arrived with, before de-identification replaced them (STOW-RS answers
    with them); empty where the file has none, or cannot be read."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""

    @classmethod
    def of(cls, dataset: Dataset) -> SentUids:
        """From a read file; the SOP UIDs from its file meta where the dataset leaves them
        empty."""
        meta = getattr(dataset, "file_meta", None)
        return cls(
            str(dataset.get("SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "")),
            str(
                dataset.get("SOPInstanceUID", "") or getattr(meta, "MediaStorageSOPInstanceUID", "")
            ),
            str(dataset.get("StudyInstanceUID", "")),
        )


def read_sent_uids(data: bytes) -> SentUids:
    """The UIDs of a file that cannot be read in full, from a forced header-only read; empty
    where even that fails."""
    try:
        header = pydicom.dcmread(
            io.BytesIO(data),
            stop_before_pixels=True,
            force=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
        )
        return SentUids.of(header)
    except Exception:  # the reason the file is refused is given by the full read
        return SentUids()


@dataclass
class FileOutcome:
    name: str
    status: Status
    reason: str = ""
    sop_instance_uid: str = ""
    series_instance_uid: str = ""
    sent: SentUids = SentUids()
    study_instance_uid: str = ""
    refusal: Refusal | None = None  # set when rejected

    def __post_init__(self) -> None:
        if self.status == "rejected" and self.refusal is None:
            self.refusal = Refusal.PROCESSING

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "refusal": str(self.refusal or ""),
            "sop_instance_uid": self.sop_instance_uid,
            "series_instance_uid": self.series_instance_uid,
        }


@dataclass(frozen=True)
class Hierarchy:
    """The patient, study and series a file belongs to, as their index rows hold them (the
    values of a row created for this file)."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]


@dataclass
class Prepared:
    """One validated (and de-identified) file: the bytes to store and everything its index
    rows need."""

    name: str
    data: bytes  # empty once on their way to a temporary file (``write_soon``)
    key: DeidentificationKey | None
    sent: SentUids
    hierarchy: Hierarchy
    relpath: str
    fields: dict[str, Any]
    digest: str = ""
    # SHA-256 of ``data`` and the durable temporary file, made on an I/O thread (or done).
    digest_soon: Future[str] | None = None
    write_soon: Future[Path] | None = None

    @property
    def sop_uid(self) -> str:
        return str(self.fields["sop_instance_uid"])

    @property
    def series_uid(self) -> str:
        return self.hierarchy.series_instance_uid

    def outcome(
        self, status: Status, reason: str = "", refusal: Refusal | None = None
    ) -> FileOutcome:
        return FileOutcome(
            self.name,
            status,
            reason,
            self.sop_uid,
            self.series_uid,
            self.sent,
            self.hierarchy.study_instance_uid,
            refusal,
        )

    def discard_write(self) -> None:
        """Remove the temporary file written for this file, if any: it will not be stored."""
        if self.write_soon is not None:
            storage.discard_temps([self.write_soon])
            self.write_soon = None

    def resolve_digest(self) -> str:
        if self.digest_soon is not None:
            self.digest = self.digest_soon.result()
            self.digest_soon = None
        self.fields["sha256"] = self.digest
        return self.digest


def prepare(name: str, data: bytes, deidentifier: Deidentifier | None) -> Prepared | FileOutcome:
    """Validate, de-identify and describe one file; the digest is left to the caller."""
    try:
        dataset = read_dicom(data)
    except RejectedFile as exc:  # not readable in full: the UIDs a header-only read finds
        return FileOutcome(
            name, "rejected", str(exc), sent=read_sent_uids(data), refusal=exc.refusal
        )
    sent = SentUids.of(dataset)
    try:
        dataset = parse_ct_instance(data, dataset)
        key: DeidentificationKey | None = None
        if deidentifier is not None:
            result = deidentifier.apply(dataset, in_place=True)
            dataset, key = result.dataset, result.key
            data = encode(dataset)
        return _describe(name, dataset, data, key, sent)
    except RejectedFile as exc:
        return FileOutcome(name, "rejected", str(exc), sent=sent, refusal=exc.refusal)
    except DeidentificationError as exc:
        return FileOutcome(name, "rejected", f"cannot de-identify: {exc}", sent=sent)


def _describe(
    name: str, dataset: Dataset, data: bytes, key: DeidentificationKey | None, sent: SentUids
) -> Prepared:
    hierarchy = describe_hierarchy(dataset)
    sop_uid = str(dataset.SOPInstanceUID)
    relpath = storage.instance_relpath(
        hierarchy.study_instance_uid, hierarchy.series_instance_uid, sop_uid
    )
    fields = {
        "sop_instance_uid": sop_uid,
        "sop_class_uid": str(dataset.SOPClassUID),
        "transfer_syntax_uid": str(dataset.file_meta.TransferSyntaxUID),
        "instance_number": _int(dataset.get("InstanceNumber")),
        "rows": int(dataset.Rows),
        "columns": int(dataset.Columns),
        "number_of_frames": _int(dataset.get("NumberOfFrames")) or 1,
        "image_position_patient": _floats(dataset.get("ImagePositionPatient")),
        "image_orientation_patient": _floats(dataset.get("ImageOrientationPatient")),
        "pixel_spacing": _floats(dataset.get("PixelSpacing")),
        "file": relpath,
        "size_bytes": len(data),
        "sha256": "",  # resolve_digest()
        "dicom_json": instance_json_text(dataset),
        **pixel_data_location(dataset, data),
    }
    return Prepared(name, data, key, sent, hierarchy, relpath, fields)


def describe_hierarchy(dataset: Dataset) -> Hierarchy:
    return Hierarchy(
        patient_id=patient_id_of(dataset),
        study_instance_uid=str(dataset.StudyInstanceUID),
        series_instance_uid=str(dataset.SeriesInstanceUID),
        patient={
            "patient_name": _text(dataset, "PatientName"),
            "sex": _text(dataset, "PatientSex", 1),
            "birth_date": parse_da(dataset.get("PatientBirthDate")),
        },
        study={
            "study_date": parse_da(dataset.get("StudyDate")),
            "study_time": _text(dataset, "StudyTime", 16),
            "accession_number": _text(dataset, "AccessionNumber", 64),
            "study_id": _text(dataset, "StudyID", 16),
            "description": _text(dataset, "StudyDescription"),
            "referring_physician_name": _text(dataset, "ReferringPhysicianName"),
        },
        series={
            "modality": _text(dataset, "Modality", 16),
            "series_number": _int(dataset.get("SeriesNumber")),
            "description": _text(dataset, "SeriesDescription"),
            "frame_of_reference_uid": _text(dataset, "FrameOfReferenceUID", 64),
            "body_part_examined": _text(dataset, "BodyPartExamined", 64),
            "convolution_kernel": _text(dataset, "ConvolutionKernel", 64),
        },
    )


def read_dicom(data: bytes) -> Dataset:
    """Read one PS3.10 file; raise RejectedFile with a reason when it cannot be read."""
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise RejectedFile(
            "not a DICOM file: no 'DICM' preamble (DICOM PS3.10 file expected)",
            Refusal.UNREADABLE,
        ) from None
    except Exception as exc:
        raise RejectedFile(f"malformed DICOM: {exc}", Refusal.UNREADABLE) from None


def parse_ct_instance(data: bytes, dataset: Dataset | None = None) -> Dataset:
    """Read and validate one file; raise RejectedFile with a reason that says what to fix.

    ``dataset``: ``read_dicom(data)`` when the caller has read it already.
    """
    if dataset is None:
        dataset = read_dicom(data)

    meta = getattr(dataset, "file_meta", Dataset())
    # Some exporters leave the dataset's SOP UIDs empty but fill the file meta header.
    if not dataset.get("SOPClassUID") and meta.get("MediaStorageSOPClassUID"):
        dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    if not dataset.get("SOPInstanceUID") and meta.get("MediaStorageSOPInstanceUID"):
        dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class != CT_IMAGE_STORAGE:
        described = pydicom.uid.UID(sop_class).name if sop_class else "missing"
        raise RejectedFile(
            f"SOP class {sop_class or '(none)'} ({described}) is not CT Image Storage "
            f"({CT_IMAGE_STORAGE}); only axial CT images are accepted",
            Refusal.SOP_CLASS,
        )
    if not dataset.get("SOPInstanceUID"):
        raise RejectedFile("missing SOPInstanceUID (0008,0018)", Refusal.INVALID)
    missing = [f"{kw} {tag}" for kw, tag in REQUIRED_ATTRIBUTES if dataset.get(kw) in (None, "")]
    if missing:
        raise RejectedFile(
            "missing required attributes: "
            + ", ".join(missing)
            + "; re-export the series with full headers",
            Refusal.INVALID,
        )
    if "PixelData" not in dataset:
        raise RejectedFile("no Pixel Data (7FE0,0010)", Refusal.INVALID)
    if not dataset.get("Modality"):
        dataset.Modality = "CT"  # implied by the SOP class
    elif dataset.Modality != "CT":
        raise RejectedFile(
            f"Modality is {dataset.Modality!r} but the SOP class is CT Image Storage",
            Refusal.INVALID,
        )
    syntax = str(meta.get("TransferSyntaxUID", ""))
    if syntax in NATIVE_SYNTAXES:
        expected = (
            int(dataset.Rows)
            * int(dataset.Columns)
            * int(dataset.get("NumberOfFrames", 1) or 1)
            * int(dataset.get("SamplesPerPixel", 1))
            * (int(dataset.BitsAllocated) // 8)
        )
        actual = len(dataset.PixelData)
        if actual < expected:
            raise RejectedFile(
                f"truncated Pixel Data: {actual} bytes, {expected} expected", Refusal.INVALID
            )
    return dataset


def encode(dataset: Dataset) -> bytes:
    """``dataset`` as a PS3.10 file, byte for byte what ``dataset.save_as(...,
    enforce_file_format=True)`` writes; native little-endian files (all CT ingest sees) by
    ``_encode_native``, at a third of the cost, anything else by pydicom."""
    try:
        encoded = _encode_native(dataset)
    except Exception:  # pydicom has the last word, and the error message
        encoded = None
    if encoded is not None:
        return encoded
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---- encoding without pydicom's per-element overhead -------------------------------------
# ``dcmwrite`` spends most of its time per element (a buffer, the character sets resolved, the
# VM counted, for each of ~100 elements) rather than on the bytes. ``_encode_native`` follows
# ``dcmwrite`` / ``write_dataset`` / ``write_data_element`` step by step for little-endian
# transfer syntaxes, writes the common values (ASCII strings, numbers read from the file,
# single binary numbers, byte values) itself and hands every other element to pydicom's own
# ``write_data_element``. tests/studies_tests/test_native_encoding.py checks it against ``save_as``.

_LONG_LENGTH_VRS = frozenset(EXPLICIT_VR_LENGTH_32)
_CHARSET_VRS = frozenset(CUSTOMIZABLE_CHARSET_VR)
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR"})
_NUMBER_STRING_VRS = frozenset({"DS", "IS"})
_BINARY_NUMBER_FORMATS = {
    "US": "<H",
    "SS": "<h",
    "UL": "<L",
    "SL": "<l",
    "FL": "<f",
    "FD": "<d",
    "SV": "<q",
    "UV": "<Q",
}
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_ITEM_UNDEFINED_LENGTH = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
_ITEM_TAG = b"\xfe\xff\x00\xe0"
# (0002,0000) UL, explicit VR little endian, value length 4: the group length's first 8 bytes.
_GROUP_LENGTH_HEAD = b"\x02\x00\x00\x00UL\x04\x00"


def _encode_native(dataset: Dataset) -> bytes | None:
    """``dcmwrite(..., enforce_file_format=True)`` for Implicit / Explicit VR Little Endian;
    None for anything else."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None or pydicom.config._use_future:
        return None
    syntax = meta.get("TransferSyntaxUID")
    if syntax == ExplicitVRLittleEndian:
        implicit = False
    elif syntax == ImplicitVRLittleEndian:
        implicit = True
    else:
        return None
    if any(tag >> 16 in (0, 2) for tag in dataset._dict):
        return None  # pydicom refuses these
    preamble = getattr(dataset, "preamble", None)
    if preamble and len(preamble) != 128:
        return None
    file_meta = _copy_meta(meta)
    meta_class = file_meta.get("MediaStorageSOPClassUID", None)
    ds_class = dataset.get("SOPClassUID", None)
    if meta_class is None or (ds_class and ds_class != meta_class):
        file_meta.MediaStorageSOPClassUID = ds_class
    meta_instance = file_meta.get("MediaStorageSOPInstanceUID", None)
    ds_instance = dataset.get("SOPInstanceUID", None)
    if meta_instance is None or (ds_instance and ds_instance != meta_instance):
        file_meta.MediaStorageSOPInstanceUID = ds_instance
    validate_file_meta(file_meta, enforce_standard=True)
    if "PixelData" in dataset:
        dataset["PixelData"].is_undefined_length = False  # native syntaxes are not compressed
    parts = [preamble or b"\x00" * 128, b"DICM", _encode_file_meta(file_meta)]
    _encode_dataset(parts, dataset, default_encoding, implicit)
    return b"".join(parts)


def _encode_file_meta(file_meta: Any) -> bytes:
    """``write_file_meta_info(..., enforce_standard=True)`` (``file_meta`` validated already):
    the group written by ``_encode_dataset``, then its group length filled in."""
    if "FileMetaInformationGroupLength" not in file_meta:
        file_meta.FileMetaInformationGroupLength = 0
    parts: list[bytes] = []
    _encode_dataset(parts, file_meta, default_encoding, False)
    body = b"".join(parts)
    file_meta.FileMetaInformationGroupLength = len(body) - 12
    if body[:8] != _GROUP_LENGTH_HEAD:
        head = DicomBytesIO()  # not the usual UL element first: as pydicom does it
        head.is_little_endian, head.is_implicit_VR = True, False
        write_file_meta_info(head, file_meta, enforce_standard=True)
        return head.getvalue()
    return _GROUP_LENGTH_HEAD + struct.pack("<L", len(body) - 12) + body[12:]


def _copy_meta(meta: Dataset) -> Any:
    """A copy of ``meta`` that writing may change (as ``deepcopy``, without copying values:
    every element is copied, and a changed element gets a new value, never a changed one)."""
    file_meta = copy(meta)
    file_meta._dict = {tag: copy(element) for tag, element in meta._dict.items()}
    return file_meta


def _encode_dataset(
    out: list[bytes], dataset: Dataset, parent_encoding: str | list[str], implicit: bool
) -> None:
    """``write_dataset``: the elements of ``dataset`` in tag order, appended to ``out``."""
    get_item: Any = dataset.get_item
    elements: MutableMapping[BaseTag, Any] | None = dataset._dict
    if (
        dataset.original_encoding != (implicit, True)
        or dataset.original_character_set != dataset._character_set
    ):
        dataset = correct_ambiguous_vr(dataset, True)
        get_item = dataset.__getitem__
        elements = None
    dataset_encoding = dataset.get("SpecificCharacterSet", parent_encoding)
    encodings = convert_encodings(dataset_encoding or [default_encoding])
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    for tag in sorted(dataset.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written
        if elements is None:
            element = get_item(tag)
        else:
            # ``get_item`` without its cost; it converts elements read without a value (deferred
            # or empty), which an empty one needs only when its VR may change (UN, or unknown).
            element = elements[tag]
            if (
                element.is_raw
                and element.value is None
                and (element.length or (not implicit and element.VR in (None, "UN")))
            ):
                element = get_item(tag)
        if not _encode_element(out, buffer, tag, element, encodings, implicit):
            pydicom_out = DicomBytesIO()
            pydicom_out.is_little_endian, pydicom_out.is_implicit_VR = True, implicit
            write_data_element(pydicom_out, element, dataset_encoding)
            out.append(pydicom_out.getvalue())


def _encode_element(
    out: list[bytes],
    buffer: DicomBytesIO,
    tag: BaseTag,
    element: Any,
    encodings: list[str],
    implicit: bool,
) -> bool:
    """Append one element as ``write_data_element`` writes it; False (nothing appended) for
    the cases left to pydicom."""
    vr = element.VR
    if element.is_raw:
        value = element.value
        if value is None and element.length == 0:
            value = b""  # read empty: as pydicom writes it once converted (same VR)
        if not isinstance(value, bytes) or element.length == UNDEFINED_LENGTH:
            return False
        if not implicit and (vr is None or len(vr) != 2):
            return False
        undefined = False
    else:
        if vr not in writers or element.is_buffered or (not implicit and len(vr) != 2):
            return False
        undefined = element.is_undefined_length
        if undefined and tag == PIXEL_DATA_TAG:
            return False
        raw = element.value
        if element.is_empty:
            value = b""
        elif vr == "SQ":
            value = b"".join([_encode_item(item, encodings, implicit) for item in raw])
        elif vr in _ASCII_VRS and isinstance(raw, str):
            if len(raw) % 2:
                raw += "\0" if vr == "UI" else " "
            value = raw.encode(default_encoding)
        elif vr in _NUMBER_STRING_VRS and hasattr(raw, "original_string"):
            text = raw.original_string
            if len(text) % 2:
                text += " "
            value = text.encode(default_encoding)
        elif vr in _BINARY_NUMBER_FORMATS and type(raw) in (int, float):
            value = struct.pack(_BINARY_NUMBER_FORMATS[vr], raw)
        elif vr in _BYTES_VRS and isinstance(raw, bytes):
            value = raw + b"\x00" if len(raw) % 2 else raw
        else:
            write: Any
            write, param = writers[vr]
            buffer.seek(0)
            buffer.parent.truncate()  # type: ignore[union-attr]
            if vr in _CHARSET_VRS:
                write(buffer, element, encodings=encodings)
            elif param is not None:
                write(buffer, element, param)
            else:
                write(buffer, element)
            value = buffer.getvalue()
    length = len(value)
    if implicit:
        head = struct.pack(
            "<HHL", tag >> 16, tag & 0xFFFF, UNDEFINED_LENGTH if undefined else length
        )
    elif vr in _LONG_LENGTH_VRS:
        head = struct.pack(
            "<HH2sHL",
            tag >> 16,
            tag & 0xFFFF,
            vr.encode(),
            0,
            UNDEFINED_LENGTH if undefined else length,
        )
    elif undefined or length > 0xFFFF:
        return False  # pydicom warns and writes it as UN
    else:
        head = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)
    out.append(head)
    out.append(value)
    if undefined:
        out.append(_SEQUENCE_DELIMITER)
    return True


def _encode_item(item: Dataset, encodings: list[str], implicit: bool) -> bytes:
    """``write_sequence_item``."""
    parts: list[bytes] = []
    _encode_dataset(parts, item, encodings, implicit)
    body = b"".join(parts)
    if getattr(item, "is_undefined_length_sequence_item", False):
        return _ITEM_UNDEFINED_LENGTH + body + _ITEM_DELIMITER
    return _ITEM_TAG + struct.pack("<L", len(body)) + body


def pixel_data_location(dataset: Dataset, data: bytes) -> dict[str, int | None]:
    """Byte offset and length of the Pixel Data value in ``data``, the encoded ``dataset``.

    Pixel Data is nearly always the last element, so its value is the tail of the file: check the
    length field in front of it and fall back to a parse when something follows it.
    """
    element = dataset.get(PIXEL_DATA_TAG)
    if element is None:
        return {"pixel_data_offset": None, "pixel_data_length": None}
    # Encapsulated (compressed) data has an undefined length: the offset is where its item
    # sequence starts, and frames are found from there.
    length = None if element.is_undefined_length else len(element.value)
    if length is not None:
        offset = len(data) - length
        if offset >= 4 and int.from_bytes(data[offset - 4 : offset], "little") == length:
            return {"pixel_data_offset": offset, "pixel_data_length": length}
    parsed = pydicom.dcmread(io.BytesIO(data))
    located = getattr(parsed[PIXEL_DATA_TAG], "file_tell", None)
    return {"pixel_data_offset": located, "pixel_data_length": length}


def _text(dataset: Dataset, keyword: str, limit: int = 200) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value)[:limit]


def parse_da(value: Any) -> date | None:
    """A DA value (YYYYMMDD) as a date; None when empty or not a date."""
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _floats(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    return [float(v) for v in value]


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def patient_id_of(dataset: Dataset) -> str:
    patient_id = _text(dataset, "PatientID", 64).strip()
    if patient_id:
        return patient_id
    # Anonymised exports often carry no PatientID: one anonymous patient per study.
    return "ANON-" + storage.sha256_hex(str(dataset.StudyInstanceUID).encode())[:12].upper()


# ---- helper processes ----------------------------------------------------------------------
# Parsing, de-identifying and encoding are Python (the GIL): one process prepares one file at a
# time. A helper process per spare core prepares others meanwhile. Each file reaches a helper
# through a file on tmpfs (about 0.15 ms to write a 0.5 MB slice) in a folder only this user
# can open (before de-identification it holds patient data); the socket carries only names and
# descriptions, so a send never blocks and no thread of the caller's process (each of which
# would wait for the GIL behind the caller's own Python) moves the bytes. The helper writes
# what it prepared straight to a temporary file beside its place in the store and goes on to
# its next file; the caller's I/O threads flush that file to disk (fsync) meanwhile, as they
# write and flush the files the caller prepares itself. The bytes come back only for a file
# already in its place (a resend, most likely), which the caller may not need to write at all.

_SCRATCH_ROOT = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
_scratch: tuple[int, Path] | None = None  # (pid, folder) of this process
_names = itertools.count()
_scratch_lock = threading.Lock()


def _scratch_folder() -> Path:
    """This process's scratch folder (mode 0700), made on first use, removed at exit."""
    global _scratch
    with _scratch_lock:
        if _scratch is None or _scratch[0] != os.getpid():
            folder = Path(tempfile.mkdtemp(prefix="ild-prepare-", dir=_SCRATCH_ROOT))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            _scratch = (os.getpid(), folder)
        return _scratch[1]


@dataclass(eq=False)
class _Slot:
    """One file on its way through a helper: its bytes wait in ``path`` until the helper claims
    them (renames the file), or the caller takes the file back (removes it) to prepare it
    itself."""

    item: Item
    result: Prepared | FileOutcome | None = None
    path: str = ""

    def files(self) -> tuple[str, str]:
        return self.path, self.path + ".claimed"


class _Helper:
    """A helper process and the socket to it, used by one ingest call at a time.

    Answers come back in the order the files were sent; ``waiting`` holds those not answered
    yet. A helper that fails (killed, out of memory, a broken pipe) is ``broken``: its waiting
    files are prepared by the caller, and it is not used again.
    """

    def __init__(self) -> None:
        # A fresh interpreter that imports this module only: not a fork of a process that runs
        # threads, and not multiprocessing's "spawn", which runs the caller's main script again.
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _HELPER_MAIN, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env={**os.environ, "PYTHONPATH": _import_path()},
                stdin=subprocess.DEVNULL,
            )
        self.conn = Connection(ours.detach())
        self.waiting: deque[_Slot] = deque()
        self.broken = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, slot: _Slot, pickled_deidentifier: bytes | None, write_to: str) -> bool:
        """Hand a file over, to be written prepared under the store ``write_to``; False
        (nothing sent) if it cannot be."""
        slot.path = str(_scratch_folder() / str(next(_names)))
        try:
            with open(slot.path, "xb") as handle:
                handle.write(slot.item[1])
            self.conn.send((slot.path, slot.item[0], pickled_deidentifier, write_to))
        except OSError:  # scratch space full, or the helper gone
            _remove(*slot.files())
            self.broken = not self.alive()
            return False
        self.waiting.append(slot)
        return True

    def take_back(self, fallback: Callable[[Item], Prepared | FileOutcome]) -> bool:
        """Prepare, with ``fallback``, the last file sent if the helper has not started it
        (the helper then answers that it found it gone); False if there is none such."""
        for slot in reversed(self.waiting):
            if slot.result is None:
                try:
                    os.unlink(slot.path)
                except FileNotFoundError:  # claimed: the helper is on it
                    return False
                slot.result = fallback(slot.item)
                return True
        return False

    def receive(self, fallback: Callable[[Item], Prepared | FileOutcome], block: bool) -> None:
        """Take the next answer (waiting for it if ``block``); on a failure, every waiting file
        not taken back is prepared by ``fallback``."""
        slot = self.waiting[0]
        try:
            if not block and not self.conn.poll():
                return
            kind, answer, temp = self.conn.recv()
            if temp:  # the prepared bytes are in this file, on disk
                answer.write_soon = storage.flush_soon(Path(temp))
        except (OSError, EOFError) as exc:
            logger.warning(
                "ingest helper %s failed (%r, exit code %s): its %d file(s) are prepared by the caller",
                self.process.pid,
                exc,
                self.process.poll(),
                len(self.waiting),
            )
            self.broken = True
            for lost in self.waiting:
                _remove(*lost.files())
                if lost.result is None:
                    lost.result = fallback(lost.item)
            self.waiting.clear()
            return
        self.waiting.popleft()
        _remove(*slot.files())
        if kind == "gone":  # taken back: prepared by the caller already
            return
        # An unexpected error there is raised here, where its traceback is whole.
        slot.result = answer if kind != "error" else fallback(slot.item)

    def drain(self) -> None:
        """Wait for the answers nobody will read, and remove their scratch files (what a helper
        wrote in the store goes with the call's unyielded results, ``Preparer._with_helpers``)."""
        while self.waiting and not self.broken:
            self.receive(lambda item: FileOutcome(item[0], "rejected"), block=True)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.conn.close()
        try:
            self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_HELPER_MAIN = "import sys; from studies.services.prepare import serve; serve(int(sys.argv[1]))"


def _import_path() -> str:
    """PYTHONPATH for a helper: the folder ``studies`` is imported from, then the caller's."""
    root = str(Path(__file__).resolve().parents[2])
    inherited = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + inherited if inherited else "")


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def serve(fd: int) -> None:
    """A helper's life: prepare each file sent over the socket ``fd`` until told to stop (None)
    or orphaned (the socket closed)."""
    conn = Connection(fd)
    keep_freed_memory()
    warm_up()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        path, name, pickled, write_to = task
        claimed = path + ".claimed"
        try:
            os.rename(path, claimed)
        except FileNotFoundError:  # taken back by the caller
            conn.send(("gone", None, ""))
            continue
        try:
            with open(claimed, "rb") as handle:
                data = handle.read()
            os.unlink(claimed)
            item = prepare(name, data, None if pickled is None else _deidentifier(pickled))
            if isinstance(item, Prepared):
                item.digest = storage.sha256_hex(item.data)
                final = Path(write_to) / item.relpath
                if storage.in_place(final):  # a resend, most likely: the bytes go back and
                    conn.send(("prepared", item, ""))  # the caller decides
                    continue
                temp = storage.write_temp_next_to(final, item.data, durable=False)
                item.data = b""
                conn.send(("prepared", item, str(temp)))
            else:
                conn.send(("refused", item, ""))
        except Exception:  # prepared again by the caller, which raises it with its traceback
            conn.send(("error", None, ""))


@functools.lru_cache(maxsize=4)
def _deidentifier(pickled: bytes) -> Deidentifier:
    # Unpickled once per helper, not per file (it costs about 0.3 ms).
    return cast("Deidentifier", pickle.loads(pickled))  # pickled by this ingest call


class _Helpers:
    """The helpers of this process, at most ``processes`` of them: idle ones are lent to one
    ingest call at a time (a concurrent call gets those left, or none, and prepares in its own
    process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Helper] = []
        self._count = 0  # started and not closed: idle or lent
        self._pid = os.getpid()

    def borrow(self, processes: int) -> list[_Helper]:
        with self._lock:
            if self._pid != os.getpid():  # inherited across a fork: not ours to use
                self._idle, self._count, self._pid = [], 0, os.getpid()
            dead = [helper for helper in self._idle if not helper.alive()]
            self._idle = [helper for helper in self._idle if helper not in dead]
            self._count -= len(dead)
            lent, self._idle = self._idle[:processes], self._idle[processes:]
            starting = max(0, processes - self._count)
            self._count += starting
        for helper in dead:
            helper.close()
        started = 0
        try:
            for _ in range(starting):
                lent.append(_Helper())
                started += 1
        except OSError as exc:
            logger.warning("ingest prepares files in one process: no helper processes (%s)", exc)
            with self._lock:
                self._count -= starting - started
        return lent

    def start(self, processes: int) -> None:
        """Start ``processes`` helpers now rather than at the first ingest call that needs them
        (a web worker's first upload then finds them ready)."""
        self.give_back(self.borrow(processes))

    def give_back(self, helpers: list[_Helper]) -> None:
        for helper in helpers:
            if helper.broken or not helper.alive():
                helper.close()
                with self._lock:
                    self._count -= 1
                continue
            with self._lock:
                self._idle.append(helper)


_helpers = _Helpers()


def start_helpers(processes: int) -> None:
    """Start this process's ``processes`` helpers ahead of the first ingest call, and warm
    this process up as they warm themselves up."""
    _helpers.start(processes)
    warm_up()


def warm_up() -> None:
    """Prepare a small made-up CT slice, so that the first file a process prepares for real
    does not also pay for what Python and pydicom do once (imports, caches, compiled
    patterns): about 30 ms."""
    prepare("warm-up", warm_up_file(), Deidentifier(os.urandom(32)))


def warm_up_file() -> bytes:
    """A 16 x 16 CT slice with the attributes ingest asks for, and a patient to de-identify."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.FrameOfReferenceUID = generate_uid()
    dataset.Modality = "CT"
    dataset.PatientID = "WARM-UP"
    dataset.PatientName = "WARM^UP"
    dataset.PatientBirthDate = "19700101"
    dataset.StudyDate = "20200101"
    dataset.InstanceNumber = 1
    dataset.ImagePositionPatient = [0.0, 0.0, 0.0]
    dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    dataset.PixelSpacing = [1.0, 1.0]
    dataset.SliceThickness = 1.0
    dataset.Rows = dataset.Columns = 16
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 1
    dataset.RescaleIntercept, dataset.RescaleSlope = -1024, 1
    dataset.PixelData = bytes(16 * 16 * 2)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Preparer:
    """Prepares files in the order given, here and on ``processes`` helper processes.

    Each helper has up to two files at a time; while the oldest is not back, this process
    prepares the next file itself, so every core works and files still come out in order. Files
    whose helper failed are prepared here. ``processes=0``, a single file, or no ``write_to``
    prepares everything here.

    A file a helper prepared comes back without its bytes (``data`` is empty): the helper has
    written them to a temporary file beside its place under the store ``write_to``, and
    ``write_soon`` is done once this process's I/O threads have flushed it to disk; the caller
    renames it into place or removes it. When a file is
    already in its place (a resend, most likely), the helper writes nothing and its bytes come
    back.
    """

    def __init__(
        self,
        deidentifier: Deidentifier | None,
        processes: int = 0,
        *,
        write_to: Path | None = None,
    ) -> None:
        self.deidentifier = deidentifier
        self.write_to = write_to
        self.processes = max(0, processes) if write_to is not None else 0

    def here(self, name: str, data: bytes) -> Prepared | FileOutcome:
        item = prepare(name, data, self.deidentifier)
        if isinstance(item, Prepared):
            item.digest_soon = storage.sha256_hex_soon(item.data)
        return item

    def prepare_all(self, items: Iterable[Item]) -> Iterator[Prepared | FileOutcome]:
        source = iter(items)
        first = next(source, None)
        if first is None:
            return
        second = next(source, None)
        rest = itertools.chain([first] if second is None else [first, second], source)
        helpers = _helpers.borrow(self.processes) if second is not None else []
        if not helpers:
            for name, data in rest:
                yield self.here(name, data)
            return
        try:
            yield from self._with_helpers(helpers, rest)
        finally:
            _helpers.give_back(helpers)

    def _with_helpers(
        self, helpers: list[_Helper], source: Iterator[Item]
    ) -> Iterator[Prepared | FileOutcome]:
        pickled = None if self.deidentifier is None else pickle.dumps(self.deidentifier)
        assert self.write_to is not None  # no helpers without it
        write_to = str(self.write_to.absolute())
        window: deque[_Slot] = deque()  # every file not yet yielded, in the order given
        try:
            yield from self._window(helpers, source, window, pickled, write_to)
        finally:  # stopped early: files helpers wrote for results never yielded are removed
            for helper in helpers:
                helper.drain()
            for slot in window:  # every file sent and not yielded is in the window
                if isinstance(slot.result, Prepared):
                    slot.result.discard_write()

    def _window(
        self,
        helpers: list[_Helper],
        source: Iterator[Item],
        window: deque[_Slot],
        pickled: bytes | None,
        write_to: str,
    ) -> Iterator[Prepared | FileOutcome]:
        def here(item: Item) -> Prepared | FileOutcome:
            return self.here(*item)

        owner: dict[_Slot, _Helper] = {}
        exhausted = False
        while True:
            for helper in helpers:
                while not exhausted and not helper.broken and len(helper.waiting) < 2:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        break
                    slot = _Slot(item)
                    window.append(slot)
                    if not helper.send(slot, pickled, write_to):  # no scratch space or helper
                        slot.result = here(item)
                        break
                    owner[slot] = helper
            if not window:  # every helper broken (or the source done)
                item = None if exhausted else next(source, None)
                if item is None:
                    return
                window.append(_Slot(item, here(item)))
            head = window[0]
            for helper in helpers:  # take the answers already there
                while helper.waiting and not helper.broken:
                    before = len(helper.waiting)
                    helper.receive(here, block=False)
                    if len(helper.waiting) == before:
                        break
            if head.result is None and not exhausted:
                item = next(source, None)
                if item is None:
                    exhausted = True
                else:
                    window.append(_Slot(item, here(item)))
                continue
            while head.result is None:
                # Nothing left to send: rather than wait for a file a helper has not started
                # (the second it holds), prepare it here.
                if not any(helper.take_back(here) for helper in helpers if not helper.broken):
                    owner[head].receive(here, block=True)
            window.popleft()
            owner.pop(head, None)
            yield head.result
