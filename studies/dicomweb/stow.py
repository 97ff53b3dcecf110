"""STOW-RS (PS3.18 10.5): store instances sent as multipart/related; type="application/dicom".

Every part goes through the one ingest service, so a STOW upload is validated and
de-identified exactly as an import from disk. The response lists what was stored
(ReferencedSOPSequence, with the UIDs as stored: de-identification replaces them, flagged with
WarningReason "coercion of data elements") and what was not (FailedSOPSequence with a
FailureReason code and the ingest's reason in words).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from rest_framework import status

from core.access import has_role
from core.exceptions import ApplicationError
from core.models import Role
from studies.dicomweb import selectors
from studies.dicomweb.dicomjson import attr
from studies.dicomweb.multipart import MultipartError, Read, parse_media_type, read_parts
from studies.dicomweb.selectors import Scope
from studies.services.ingest import ingest_datasets_bytes
from studies.services.prepare import FileOutcome, Item, Refusal, SentUids, read_sent_uids

# PS3.18 Table I.2-1 / PS3.4 Annex B failure reasons.
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
COERCION = 0xB000
FAILURE_CODES = {
    Refusal.UNREADABLE: CANNOT_UNDERSTAND,
    Refusal.SOP_CLASS: SOP_CLASS_NOT_SUPPORTED,
    Refusal.INVALID: DOES_NOT_MATCH_SOP_CLASS,
    Refusal.CONFLICT: DUPLICATE_SOP_INSTANCE,
    Refusal.PROCESSING: PROCESSING_FAILURE,
}
WRITE_ROLES = (Role.COORDINATOR,)


@dataclass
class StowResult:
    status_code: int
    body: dict[str, Any]
    warnings: list[str]

    def to_json(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()


def check_content_type(content_type: str) -> str:
    """The boundary, or 415 for anything but multipart/related of application/dicom parts."""
    media = parse_media_type(content_type or "")
    if media.media_type != "multipart/related":
        raise ApplicationError(
            f'STOW-RS takes multipart/related; type="application/dicom", not {content_type!r}',
            status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        )
    part_type = media.params.get("type", "application/dicom")
    if part_type != "application/dicom":
        raise ApplicationError(
            f"STOW-RS here takes application/dicom parts, not {part_type}",
            status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        )
    boundary = media.params.get("boundary", "")
    if not boundary:
        raise ApplicationError("the multipart Content-Type has no boundary")
    return boundary


@dataclass
class _Part:
    name: str
    data: bytes
    refusal: str = ""  # refused before the ingest service sees it


def with_preamble(data: bytes) -> bytes:
    """A PS3.10 file from a part that starts at its File Meta Information.

    dicomweb-client (``pydicom.dcmwrite`` without ``enforce_file_format``) and some PACS send
    datasets without the 128-byte preamble and "DICM" prefix; the ingest service, rightly for
    files on disk, insists on them.
    """
    if data[128:132] != b"DICM" and data[:2] == b"\x02\x00":
        return b"\x00" * 128 + b"DICM" + data
    return data


def store(scope: Scope, content_type: str, read: Read, study_uid: str | None = None) -> StowResult:
    """Store the parts of a body that ``read(n)`` returns as it arrives: each part is prepared
    while the next is read, and nothing is stored before the body has been read to its end and
    found well-formed."""
    if not has_role(scope.user, *WRITE_ROLES):
        raise ApplicationError(
            "your role may not store instances", status_code=status.HTTP_403_FORBIDDEN
        )
    boundary = check_content_type(content_type)
    project = selectors.project_for_store(scope)

    def study_in_url(uids: SentUids) -> str:
        if study_uid is None or not uids.study_instance_uid or uids.study_instance_uid == study_uid:
            return ""
        return (
            f"StudyInstanceUID {uids.study_instance_uid} does not match the study {study_uid} "
            "in the request URL"
        )

    sent: list[_Part] = []
    pending: list[int] = []  # the parts handed to the ingest service, by index in ``sent``

    def parts_to_store() -> Iterator[Item]:
        for number, part in enumerate(read_parts(read, boundary), start=1):
            media_type = part.content_type.split(";")[0].strip().lower()
            item = _Part(f"part {number}", with_preamble(part.content))
            sent.append(item)
            if media_type not in ("", "application/dicom"):
                item.refusal = f"part media type {media_type} is not application/dicom"
                continue
            pending.append(len(sent) - 1)
            # The bytes are the ingest service's from here on (it releases them once written).
            data, item.data = item.data, b""
            yield item.name, data

    try:
        report = ingest_datasets_bytes(
            parts_to_store(),
            project=project,
            deidentify=bool(settings.DEIDENTIFY_BY_DEFAULT),
            admit=study_in_url,
            whole=True,
        )
    except MultipartError as exc:
        raise ApplicationError(f"malformed multipart body: {exc}") from None
    if not sent:
        raise ApplicationError("the multipart body holds no parts")
    outcomes: dict[int, FileOutcome] = dict(zip(pending, report.outcomes, strict=True))
    return _response(scope, sent, outcomes)


def _response(scope: Scope, sent: list[_Part], outcomes: dict[int, FileOutcome]) -> StowResult:
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    warnings: list[str] = []
    studies: set[str] = set()
    for index, item in enumerate(sent):
        outcome = outcomes.get(index)
        uids = outcome.sent if outcome is not None else read_sent_uids(item.data)
        if outcome is not None and outcome.status != "rejected":
            study, series = outcome.study_instance_uid, outcome.series_instance_uid
            studies.add(study)
            entry = {
                "00081150": attr("UI", uids.sop_class_uid),
                "00081155": attr("UI", outcome.sop_instance_uid),
                "00081190": attr(
                    "UR",
                    f"{scope.base_url}/studies/{study}/series/{series}"
                    f"/instances/{outcome.sop_instance_uid}",
                ),
            }
            if uids.sop_instance_uid and uids.sop_instance_uid != outcome.sop_instance_uid:
                entry["00081196"] = attr("US", COERCION)
                warnings.append(
                    f"{item.name}: de-identified, stored as SOPInstanceUID {outcome.sop_instance_uid}"
                )
            referenced.append(dict(sorted(entry.items())))
            continue
        reason = item.refusal or (outcome.reason if outcome else "not processed")
        refusal = Refusal.UNREADABLE if item.refusal else outcome and outcome.refusal
        code = FAILURE_CODES[refusal or Refusal.PROCESSING]
        failed.append(
            {
                "00000902": attr("LO", f"{item.name}: {reason}"[:64]),
                "00081150": attr("UI", uids.sop_class_uid),
                "00081155": attr("UI", uids.sop_instance_uid),
                "00081197": attr("US", code),
            }
        )
        warnings.append(f"{item.name}: {reason}")
    body: dict[str, Any] = {}
    if len(studies) == 1:
        body["00081190"] = attr("UR", f"{scope.base_url}/studies/{next(iter(studies))}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed and referenced:
        code = status.HTTP_202_ACCEPTED
    elif failed:
        code = status.HTTP_409_CONFLICT
    else:
        code = status.HTTP_200_OK
    return StowResult(code, body, warnings)
