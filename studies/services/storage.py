"""Where stored files live: paths derived from UIDs under ``settings.STORAGE_ROOT``."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from django.conf import settings


def storage_root() -> Path:
    return Path(settings.STORAGE_ROOT)


def instance_relpath(study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"dicom/{study_uid}/{series_uid}/{sop_uid}.dcm"


def absolute(relpath: str) -> Path:
    return storage_root() / relpath


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_temp_beside(relpath: str, data: bytes) -> Path:
    """Write ``data`` to a temporary file in the final folder; the caller makes it durable
    (``make_durable``) and renames it."""
    final = absolute(relpath)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".incoming-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return Path(tmp_name)


def make_durable(paths: list[Path]) -> None:
    """Flush written files to disk before they are renamed into place and indexed.

    One ``sync`` for a batch costs about what one ``fsync`` costs for a single file.
    """
    if len(paths) == 1:
        fd = os.open(paths[0], os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    elif paths:
        os.sync()
