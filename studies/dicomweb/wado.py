"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data.

Frames are the hot path (a viewer asks for every slice, several at a time): for native
transfer syntaxes the frame is read with one ``pread`` at the offset recorded at ingest, with
no DICOM parse; for encapsulated syntaxes the frame's fragments are located from the basic
offset table (or a fragment scan) and sent compressed, labelled with their transfer syntax,
whenever the client's Accept allows it. Decoding happens only when a client insists on
uncompressed frames.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from django.db.models import QuerySet
from pydicom.encaps import get_frame
from pydicom.uid import ExplicitVRLittleEndian

from core.exceptions import ApplicationError
from studies.dicomweb import selectors
from studies.dicomweb.dicomjson import instance_json_text, join_instances
from studies.dicomweb.multipart import MediaRange, encode_parts, new_boundary, part_header
from studies.dicomweb.selectors import Scope
from studies.models import Instance
from studies.services import storage

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = str(ExplicitVRLittleEndian)
BIG_ENDIAN = "1.2.840.10008.1.2.2"
NATIVE_LE = {IMPLICIT_LE, EXPLICIT_LE}
OCTET = "application/octet-stream"
DICOM = "application/dicom"
# The media type a compressed frame has on its own (PS3.18 Table 8.7.3-5).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
FRAME_FIELDS = (
    "pk",
    "file",
    "transfer_syntax_uid",
    "pixel_data_offset",
    "pixel_data_length",
    "rows",
    "columns",
    "number_of_frames",
)


def not_found(what: str) -> ApplicationError:
    return ApplicationError(f"{what} not found", status_code=404)


def not_acceptable(message: str) -> ApplicationError:
    return ApplicationError(message, status_code=406)


# ---- frames ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRef:
    pk: object
    file: str
    transfer_syntax_uid: str
    pixel_data_offset: int | None
    pixel_data_length: int | None
    rows: int
    columns: int
    number_of_frames: int

    @property
    def path(self) -> Path:
        return storage.absolute(self.file)

    def native_frame_size(self) -> int | None:
        """Bytes per frame from the recorded Pixel Data length, or None when frames are not
        whole bytes (1-bit) and must go through a decoder. A single odd-length frame carries
        one pad byte (PS3.5 8.1.1), which is dropped."""
        if self.pixel_data_length is None or self.pixel_data_offset is None:
            return None
        pixels = self.rows * self.columns
        size = self.pixel_data_length // max(self.number_of_frames, 1)
        if pixels > 1 and size % pixels == 1:
            size -= 1
        if size < pixels or size % pixels:
            return None
        return size


@dataclass(frozen=True)
class FramePlan:
    """How frames go out: as stored (maybe compressed) or decoded to explicit VR LE."""

    transfer_syntax: str
    part_type: str
    decode: bool
    multipart: bool = True


def frame_ref(scope: Scope, study_uid: str, series_uid: str, sop_uid: str) -> FrameRef:
    row = selectors.instance_row(scope, study_uid, series_uid, sop_uid, FRAME_FIELDS)
    if row is None:
        raise not_found(f"instance {sop_uid}")
    return FrameRef(*row)


def parse_frame_numbers(text: str, number_of_frames: int) -> list[int]:
    try:
        numbers = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ApplicationError(f"frame list {text!r} must be comma-separated numbers") from None
    if not numbers:
        raise ApplicationError("no frame numbers given")
    bad = [n for n in numbers if n < 1 or n > number_of_frames]
    if bad:
        raise not_found(f"frame {bad[0]} (the instance has {number_of_frames})")
    return numbers


def plan_frames(accept: list[MediaRange], stored: str) -> FramePlan:
    """Pick the representation the client accepts, preferring the stored one (no transcoding).

    ``transfer-syntax=*`` or the stored UID gets the stored bytes; no transfer syntax (or
    explicit VR little endian) with application/octet-stream gets uncompressed frames, which
    for native little-endian files are the stored bytes too.
    """
    media = FRAME_MEDIA_TYPES.get(stored)
    native = stored in NATIVE_LE
    for choice in accept:
        multipart = choice.is_multipart or choice.media_type in ("*/*", "*")
        part = ALIASES.get(choice.part_type, choice.part_type)
        wanted = choice.transfer_syntax
        octet_ok = choice.matches(OCTET)
        anything = part in ("*", "*/*")
        if native:
            if octet_ok and wanted in (None, "*", stored, EXPLICIT_LE, IMPLICIT_LE):
                if wanted == "*" or (wanted is None and anything):
                    label = stored
                else:
                    label = wanted or EXPLICIT_LE
                return FramePlan(label, OCTET, False, multipart)
            continue
        if media is not None:
            stored_ok = wanted in ("*", stored) or (wanted is None and (anything or part == media))
            if stored_ok and (octet_ok or type_is(part, media)):
                part_type = media if type_is(part, media) and not anything else OCTET
                return FramePlan(stored, part_type, False, multipart)
        if octet_ok and wanted in (None, "*", EXPLICIT_LE):
            return FramePlan(EXPLICIT_LE, OCTET, True, multipart)
    raise not_acceptable(
        f"frames are stored as {stored}; accept multipart/related; "
        f'type="application/octet-stream" with transfer-syntax=* or {stored}'
        + ("" if native else f" or {EXPLICIT_LE}")
    )


def type_is(pattern: str, media_type: str) -> bool:
    return pattern == media_type


def damaged(ref: FrameRef) -> ApplicationError:
    """The answer for an instance whose stored file is gone or shorter than recorded at ingest."""
    return ApplicationError(
        f"the stored file of this instance ({ref.file}) is missing or shorter than its "
        "recorded Pixel Data; store the instance again (STOW-RS or upload) to restore it",
        status_code=500,
    )


def read_frames(ref: FrameRef, numbers: list[int], plan: FramePlan) -> list[bytes]:
    """The frames' bytes as ``plan`` sends them.

    Raises:
        ApplicationError: the stored file is missing or short (500, :func:`damaged`).
    """
    try:
        return _read_frames(ref, numbers, plan)
    except FileNotFoundError:
        raise damaged(ref) from None


def _read_frames(ref: FrameRef, numbers: list[int], plan: FramePlan) -> list[bytes]:
    if not plan.decode and ref.transfer_syntax_uid in NATIVE_LE:
        size = ref.native_frame_size()
        if size is not None:
            assert ref.pixel_data_offset is not None
            fd = os.open(ref.path, os.O_RDONLY)
            try:
                frames = [
                    os.pread(fd, size, ref.pixel_data_offset + (n - 1) * size) for n in numbers
                ]
            finally:
                os.close(fd)
            if any(len(frame) != size for frame in frames):
                raise damaged(ref)
            return frames
    encapsulated = ref.transfer_syntax_uid in FRAME_MEDIA_TYPES
    if not plan.decode and encapsulated and ref.pixel_data_offset is not None:
        with ref.path.open("rb") as handle:
            frames = []
            for n in numbers:
                handle.seek(ref.pixel_data_offset)
                frames.append(get_frame(handle, n - 1, number_of_frames=ref.number_of_frames))
            return frames
    return [decode_frame(ref.path, n - 1) for n in numbers]


def decode_frame(path: Path, index: int) -> bytes:
    """One frame decoded to little-endian native pixels (the slow path)."""
    from pydicom.pixels import pixel_array

    array = pixel_array(str(path), index=index, raw=True)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).tobytes()


def frames_body(ref: FrameRef, numbers: list[int], plan: FramePlan) -> tuple[str, bytes]:
    """(Content-Type, body): one part per frame, each labelled with its transfer syntax."""
    frames = read_frames(ref, numbers, plan)
    part_type = f"{plan.part_type}; transfer-syntax={plan.transfer_syntax}"
    if not plan.multipart and len(frames) == 1:
        return part_type, frames[0]
    boundary = new_boundary()
    content_type = (
        f'multipart/related; type="{plan.part_type}"; '
        f"transfer-syntax={plan.transfer_syntax}; boundary={boundary}"
    )
    header = part_header(part_type)
    return content_type, encode_parts(boundary, [(header, frame) for frame in frames])


# ---- metadata ----------------------------------------------------------------------------


def _backfill(rows: list[tuple[Any, str, str]]) -> list[str]:
    """Stored JSON per row; rows ingested before it existed get it computed and saved once."""
    texts = []
    for pk, text, relpath in rows:
        if not text:
            dataset = pydicom.dcmread(storage.absolute(relpath), force=True)
            text = instance_json_text(dataset)
            Instance.objects.filter(pk=pk).update(dicom_json=text)
        texts.append(text)
    return texts


def metadata(
    scope: Scope, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> bytes:
    """The DICOM JSON array of a study, series or instance."""
    queryset: QuerySet[Instance]
    if sop_uid is not None:
        assert series_uid is not None
        queryset = selectors.instance_in(scope, study_uid, series_uid, sop_uid)
    else:
        queryset = selectors.instances_under(scope, study_uid, series_uid)
    rows = list(queryset.values_list("pk", "dicom_json", "file"))
    if not rows:
        raise not_found(_what(study_uid, series_uid, sop_uid))
    return join_instances(_backfill(rows), scope.base_url)


def _what(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
    if sop_uid:
        return f"instance {sop_uid}"
    if series_uid:
        return f"series {series_uid}"
    return f"study {study_uid}"


# ---- retrieve instances ------------------------------------------------------------------


@dataclass(frozen=True)
class InstancePlan:
    transfer_syntax: str | None  # None: as stored


def plan_instances(accept: list[MediaRange]) -> InstancePlan:
    """``transfer-syntax=*`` → as stored; none or explicit VR LE → explicit VR LE (PS3.18
    8.7.3.5.2 default); anything else is honoured only where it is the stored syntax."""
    for choice in accept:
        if not (choice.is_multipart or choice.media_type in ("*/*", "*", DICOM)):
            continue
        if not choice.matches(DICOM):
            continue
        wanted = choice.transfer_syntax
        if wanted == "*":
            return InstancePlan(None)
        return InstancePlan(wanted or EXPLICIT_LE)
    raise not_acceptable('instances are sent as multipart/related; type="application/dicom"')


def instance_rows(
    scope: Scope, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[tuple[str, str]]:
    queryset: QuerySet[Instance]
    if sop_uid is not None:
        assert series_uid is not None
        queryset = selectors.instance_in(scope, study_uid, series_uid, sop_uid)
    else:
        queryset = selectors.instances_under(scope, study_uid, series_uid)
    rows = list(queryset.values_list("file", "transfer_syntax_uid"))
    if not rows:
        raise not_found(_what(study_uid, series_uid, sop_uid))
    return rows


def check_transcodable(rows: list[tuple[str, str]], plan: InstancePlan) -> None:
    if plan.transfer_syntax in (None, EXPLICIT_LE):
        return
    mismatched = {ts for _, ts in rows if ts != plan.transfer_syntax}
    if mismatched:
        raise not_acceptable(
            f"cannot transcode {', '.join(sorted(mismatched))} to {plan.transfer_syntax}; "
            f"ask for transfer-syntax=* or {EXPLICIT_LE}"
        )


def instance_bytes(relpath: str, stored: str, plan: InstancePlan) -> bytes:
    path = storage.absolute(relpath)
    if plan.transfer_syntax is None or plan.transfer_syntax == stored:
        return path.read_bytes()
    return to_explicit_le(path)


def to_explicit_le(path: Path) -> bytes:
    """Re-encode a stored file as explicit VR little endian, decompressing if needed."""
    dataset = pydicom.dcmread(path)
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        dataset.decompress()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    try:
        dataset.save_as(buffer, enforce_file_format=True)
    except Exception:
        # Broken private elements (common in real CT) cannot always be re-encoded.
        dataset.remove_private_tags()
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def iter_instances(
    rows: list[tuple[str, str]], plan: InstancePlan
) -> Iterator[tuple[bytes, bytes]]:
    for relpath, stored in rows:
        syntax = stored if plan.transfer_syntax is None else plan.transfer_syntax
        yield (
            part_header(f"{DICOM}; transfer-syntax={syntax}"),
            instance_bytes(relpath, stored, plan),
        )


# ---- bulk data ---------------------------------------------------------------------------


def bulkdata(
    scope: Scope,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    tag_text: str,
    accept: list[MediaRange],
) -> tuple[FramePlan, list[bytes]]:
    """The value of one top-level bulk element; Pixel Data as its frames."""
    try:
        tag = int(tag_text, 16)
    except ValueError:
        raise ApplicationError(f"bulk data tag {tag_text!r} must be 8 hex digits") from None
    ref = frame_ref(scope, study_uid, series_uid, sop_uid)
    if tag == 0x7FE00010:
        plan = plan_frames(accept, ref.transfer_syntax_uid)
        numbers = list(range(1, ref.number_of_frames + 1))
        return plan, read_frames(ref, numbers, plan)
    if not any(c.matches(OCTET) for c in accept):
        raise not_acceptable(
            'bulk data is sent as multipart/related; type="application/octet-stream"'
        )
    dataset = pydicom.dcmread(ref.path, stop_before_pixels=True)
    if tag not in dataset:
        raise not_found(f"bulk data {tag_text}")
    value = dataset[tag].value
    if not isinstance(value, (bytes, bytearray)):
        raise not_found(f"bulk data {tag_text} (not a binary value)")
    return FramePlan(EXPLICIT_LE, OCTET, False), [bytes(value)]
