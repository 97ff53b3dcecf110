"""Where stored files live: paths derived from UIDs under ``settings.STORAGE_ROOT``."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from django.conf import settings

# Writing, flushing and hashing release the GIL: done on these threads, they overlap with the
# Python work on the next file (parsing, de-identification, encoding) instead of following it.
# A flush mostly waits on the disk, so there are more threads than cores: the flushes of a
# batch (the files this process wrote and those its ingest helpers wrote) overlap.
_IO_THREADS = 4
_executor: ThreadPoolExecutor | None = None
_executor_pid = 0
_executor_lock = threading.Lock()


# A file being written beside its final place until the rows that index it commit.
TEMP_PREFIX, TEMP_SUFFIX = ".incoming-", ".part"


def storage_root() -> Path:
    return Path(settings.STORAGE_ROOT)


def instance_relpath(study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"dicom/{study_uid}/{series_uid}/{sop_uid}.dcm"


def absolute(relpath: str) -> Path:
    return storage_root() / relpath


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_temp_beside(relpath: str, data: bytes) -> Path:
    """Write ``data`` to a temporary file in the final folder and flush it to disk (fsync); the
    caller renames it into place."""
    return write_temp_next_to(absolute(relpath), data)


def write_temp_next_to(final: Path, data: bytes, *, durable: bool = True) -> Path:
    """``write_temp_beside`` for an absolute final path (no settings read: ingest helper
    processes call it). ``durable=False`` leaves the flush to disk to ``flush_soon``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return Path(tmp_name)


def flush(path: Path) -> Path:
    """Flush a written temporary file to disk (fsync); on failure it is removed."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def in_place(final: Path) -> bool:
    """Whether a file is in its final place already: its instance was stored before, most
    likely, and ingest does not write a resent file ahead of the transaction that decides."""
    return final.exists()


def abandoned_temps(older_than_s: float) -> list[Path]:
    """Temporary files last written more than ``older_than_s`` seconds ago: left by a process
    killed between writing a file and renaming it into place (or removing it). A write in
    progress touches its file within milliseconds, and an ingest call renames or removes its
    files before it returns."""
    cutoff = time.time() - older_than_s
    found = []
    # os.walk lists each folder once (scandir) and matches names itself: about five times
    # faster than Path.rglob, which matches every name of the store against a pattern.
    for folder, _, names in os.walk(storage_root() / "dicom"):
        for name in names:
            if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
                continue
            path = Path(folder, name)
            try:
                if path.stat().st_mtime < cutoff:
                    found.append(path)
            except FileNotFoundError:  # renamed or removed meanwhile
                continue
    return sorted(found)


# An upload renames or removes its temporary files before it returns; none takes an hour.
ABANDONED_AFTER_S = 3600.0


def remove_abandoned_temps(older_than_s: float) -> int:
    """Remove :func:`abandoned_temps`; how many were removed."""
    found = abandoned_temps(older_than_s)
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)


def sync_folders(files: Iterable[Path]) -> None:
    """Flush to disk (fsync) the folders holding ``files`` and the two above each (a series
    folder made for this batch is an entry of its study folder, a new study folder one of the
    store's), so that renames into them survive a power cut."""
    folders = {f.parent for f in files}
    for folder in folders | {f.parent for f in folders} | {f.parent.parent for f in folders}:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _io_executor() -> ThreadPoolExecutor:
    global _executor, _executor_pid
    with _executor_lock:
        if _executor is None or _executor_pid != os.getpid():  # not inherited across fork
            _executor = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="ild-storage")
            _executor_pid = os.getpid()
        return _executor


def sha256_hex_soon(data: bytes) -> Future[str]:
    """``sha256_hex(data)``, computed on an I/O thread."""
    return _io_executor().submit(sha256_hex, data)


def write_durable_temp_soon(relpath: str, data: bytes) -> Future[Path]:
    """``write_temp_beside(relpath, data)`` on an I/O thread: the file is on disk (fsync) when
    the future is done. The caller renames it into place or, via
    ``discard_temps``, removes it."""
    return _io_executor().submit(write_temp_beside, relpath, data)


def flush_soon(path: Path) -> Future[Path]:
    """``flush(path)`` on an I/O thread: the file is on disk when the future is done."""
    return _io_executor().submit(flush, path)


def discard_temps(writes: list[Future[Path]]) -> None:
    """Wait for background writes and remove the temporary files they made (failed writes
    have removed theirs)."""
    for write in writes:
        try:
            path = write.result()
        except BaseException:  # a failed write left nothing behind
            continue
        path.unlink(missing_ok=True)
