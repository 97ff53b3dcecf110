"""One slice of a job's stored ``.npz`` volume without decompressing the whole volume.

The viewer asks for overlays one slice at a time while the user scrolls. Job outputs keep their
volumes in compressed ``.npz`` files (small to store, slow to read: a 400 x 512 x 512 map takes
seconds to decompress). The first request for a member unpacks it once into an uncompressed
``.npy`` under ``STORAGE_ROOT/cache/npz/`` (written beside, then renamed into place), named by
the archive's path, size and modification time, so a rerun that rewrites the archive gets a
fresh copy; later requests memory-map it and read just the slice. Small members (UID lists) are
read from the archive once per version of it (only that member is decompressed) and kept in
memory.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from studies.services import storage

CACHE_FOLDER = "cache/npz"


def _identity(path: Path) -> tuple[str, int, int]:
    """The archive as written: a rerun that rewrites it gets a new identity."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _cache_path(identity: tuple[str, int, int], key: str) -> Path:
    name = "|".join(str(part) for part in (*identity, key))
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    return storage.absolute(CACHE_FOLDER) / digest[:2] / f"{digest}.npy"


@functools.lru_cache(maxsize=64)
def _mapped(cache_file: str) -> npt.NDArray[Any]:
    return np.load(cache_file, mmap_mode="r")


def npz_member(path: Path, key: str) -> npt.NDArray[Any]:
    """Array ``key`` of the archive at ``path``, memory-mapped (read-only).

    Raises:
        KeyError: the archive has no such member.
        OSError, ValueError: the archive is missing or unreadable.
    """
    cache_file = _cache_path(_identity(path), key)
    if not cache_file.exists():
        with np.load(path) as data:
            if key not in data.files:
                raise KeyError(f"{path.name} has no {key!r} array")
            array = np.ascontiguousarray(data[key])
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(dir=cache_file.parent, suffix=".npy.partial")
        try:
            with os.fdopen(handle, "wb") as out:
                np.save(out, array, allow_pickle=False)
            os.replace(scratch, cache_file)
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise
    return _mapped(str(cache_file))


def npz_small(path: Path, key: str) -> npt.NDArray[Any]:
    """A small member (e.g. ``sop_instance_uids``), read from the archive once per version of it
    and kept (read-only) for the next requests.

    Raises:
        KeyError: the archive has no such member.
    """
    return _small(_identity(path), key)


@functools.lru_cache(maxsize=256)
def _small(identity: tuple[str, int, int], key: str) -> npt.NDArray[Any]:
    with np.load(identity[0]) as data:
        if key not in data.files:
            raise KeyError(f"{Path(identity[0]).name} has no {key!r} array")
        array = np.asarray(data[key])
    array.flags.writeable = False
    return array
