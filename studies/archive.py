"""Read uploads safely: plain files, folders and .zip archives, one uniform stream of inputs.

Why this exists: sites upload whole exams as zip files, and a zip is attacker-controlled structure.
Nothing here extracts to disk; members are streamed to the caller. Even so, a zip can name files
``../../etc/passwd``, hold symlinks, claim tiny sizes and inflate to terabytes, or point several
entries at the same compressed bytes. So an archive is checked completely *before* its first member
is handed out (names, types, encryption, compression method, declared sizes and ratios, local
headers against the central directory, overlapping entries), and then every member is streamed
through a counter that stops it the moment it produces more than it declared, breaks the ratio
limit, or pushes the archive past its total budget. Only stored and deflate members are accepted:
Python's zipfile bounds deflate output per read, but not bzip2 or LZMA, whose single reads can
inflate without limit before any counter sees the bytes.

Nested archives are not expanded (a zip in a zip is the classic recursive bomb, and scanners never
produce one); they are reported as skipped members so the upload log says what was left out.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, BinaryIO, Final, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TOTAL_UNCOMPRESSED_BYTES",
    "DEFAULT_RATIO_CHECK_MIN_BYTES",
    "ArchiveError",
    "ArchiveMember",
    "InputFile",
    "RejectedInput",
    "UnsafeArchiveError",
    "expand_inputs",
    "iter_zip_members",
]

DEFAULT_MAX_MEMBERS: Final = 20_000
DEFAULT_MAX_TOTAL_UNCOMPRESSED_BYTES: Final = 8 * 1024**3
DEFAULT_MAX_RATIO: Final = 200.0
DEFAULT_RATIO_CHECK_MIN_BYTES: Final = 1024**2
"""Below this many uncompressed bytes a high ratio is harmless (a blank 20 kB frame compresses
~1000:1), so ratios are only judged for members, and archives, at least this large."""

_ZIP_MAGIC: Final = b"PK\x03\x04"
_NESTED_ARCHIVE_SUFFIXES: Final = (".zip", ".7z", ".rar", ".tar", ".tgz", ".gz", ".bz2", ".xz")
_ACCEPTED_METHODS: Final = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_LOCAL_HEADER: Final = struct.Struct("<4sHHHHHIIIHH")
_EOCD: Final = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR: Final = struct.Struct("<4sIQI")
_ZIP64_EOCD: Final = struct.Struct("<4sQHHIIQQQQ")
_ZIP64_SIZE: Final = 0xFFFFFFFF
_FLAG_ENCRYPTED: Final = 0x1
_FLAG_DATA_DESCRIPTOR: Final = 0x8
_UNIX: Final = 3
_CHUNK: Final = 1024**2

PathOrFile = str | os.PathLike[str] | BinaryIO
_T = TypeVar("_T")


class ArchiveError(Exception):
    """The upload cannot be read as an archive (not a zip, truncated, corrupt)."""


class UnsafeArchiveError(ArchiveError):
    """The archive is refused; the message says what is wrong and names the member."""


@dataclass(frozen=True)
class ArchiveMember:
    """One file inside a zip. Read it (``open``/``read``) before advancing the iterator.

    ``skip_reason`` is set for members that are reported but not readable (nested archives).
    """

    name: str
    size_bytes: int
    skip_reason: str | None = None
    _opener: Callable[[], BinaryIO] | None = field(default=None, repr=False, compare=False)

    def open(self) -> BinaryIO:
        """A seekable binary stream of the member; raises ``UnsafeArchiveError`` mid-read if the
        member turns out to inflate beyond what it declared or beyond the archive's limits."""
        if self._opener is None:
            raise ArchiveError(f"{self.name}: not readable ({self.skip_reason})")
        return self._opener()

    def read(self) -> bytes:
        """The whole member in memory: fine for one DICOM file, not for a multi-GB one."""
        with self.open() as stream:
            return stream.read()


@dataclass(frozen=True)
class InputFile:
    """One file to ingest, from disk or from inside a zip. ``display_name`` is for logs and UI."""

    display_name: str
    size_bytes: int
    _opener: Callable[[], BinaryIO] = field(repr=False, compare=False)

    def open(self) -> BinaryIO:
        """A seekable binary stream; for zip members, valid only until the iteration advances."""
        return self._opener()


@dataclass(frozen=True)
class RejectedInput:
    """An input (or part of one) that was not ingested, and why, e.g. for
    ``f"rejected: {item.display_name}: {item.reason}"``."""

    display_name: str
    reason: str


def iter_zip_members(
    path_or_file: PathOrFile,
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_total_uncompressed_bytes: int = DEFAULT_MAX_TOTAL_UNCOMPRESSED_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    ratio_check_min_bytes: int = DEFAULT_RATIO_CHECK_MIN_BYTES,
) -> Iterator[ArchiveMember]:
    """Yield the files of a zip, sorted by name, after checking the whole archive is safe.

    Directories and hidden entries (``.name``, ``__MACOSX/``) are skipped silently; nested
    archives are yielded with ``skip_reason`` set. Raises ``UnsafeArchiveError`` (before the first
    member) for absolute or ``..`` names, symlinks, encryption, methods other than stored/deflate,
    too many members, declared totals or ratios over the limits, local headers that disagree with
    the central directory, and overlapping members; and ``ArchiveError`` when the file is not a
    readable zip. While members are read, a member that inflates beyond its declared size or the
    limits raises ``UnsafeArchiveError`` from its stream, and the iteration then stops with the
    same error: a lying archive is not trusted for its remaining members.
    """
    limits = _Limits(max_members, max_total_uncompressed_bytes, max_ratio, ratio_check_min_bytes)
    return _iter_members(path_or_file, limits)


def _iter_members(path_or_file: PathOrFile, limits: _Limits) -> Iterator[ArchiveMember]:
    """The generator behind ``iter_zip_members`` (limits are validated before it starts)."""
    with _open_archive(path_or_file, limits) as (handle, archive):
        infos = archive.infolist()
        _check_declared(handle, infos, limits)
        guard = _Guard(limits)
        for info in sorted(infos, key=lambda i: i.filename):
            if info.is_dir() or _is_hidden(info.filename):
                continue
            guard.raise_if_poisoned()
            reason = _nested_archive_reason(archive, info)
            if reason is not None:
                yield ArchiveMember(info.filename, info.file_size, skip_reason=reason)
                continue
            token = guard.next_token()
            yield ArchiveMember(
                info.filename,
                info.file_size,
                _opener=_member_opener(archive, info, guard, token),
            )
        guard.raise_if_poisoned()


def expand_inputs(
    paths: Iterable[str | os.PathLike[str]],
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_total_uncompressed_bytes: int = DEFAULT_MAX_TOTAL_UNCOMPRESSED_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    ratio_check_min_bytes: int = DEFAULT_RATIO_CHECK_MIN_BYTES,
) -> Iterator[InputFile | RejectedInput]:
    """Turn files, folders and zips into one stream of ``InputFile`` / ``RejectedInput`` items.

    Folders are walked recursively in sorted order, skipping hidden files and folders and
    reporting (not following) symbolic links inside them; a path given directly is followed.
    Files named ``*.zip`` or starting with the zip signature are expanded with
    ``iter_zip_members`` under the given per-archive limits. A bad input (missing, unreadable,
    unsafe zip) becomes a ``RejectedInput`` and the other inputs carry on. The caller should also
    catch ``ArchiveError`` while reading a zip member's stream (the lie is only visible then); the
    rest of that archive then arrives as one ``RejectedInput``. Typical loop::

        for item in expand_inputs(paths):
            if isinstance(item, RejectedInput):
                log(f"rejected: {item.display_name}: {item.reason}")
                continue
            try:
                with item.open() as stream:
                    ingest(stream)
            except ArchiveError as exc:
                log(f"rejected: {item.display_name}: {exc}")
    """
    limits = _Limits(max_members, max_total_uncompressed_bytes, max_ratio, ratio_check_min_bytes)
    for raw in paths:
        path = Path(raw)
        display = path.name or str(path)
        if not path.exists():
            yield RejectedInput(display, "not found")
        elif path.is_dir():
            yield from _expand_folder(path, display, limits)
        else:
            yield from _expand_file(path, display, limits)


# --- Internals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    max_members: int
    max_total_bytes: int
    max_ratio: float
    ratio_min_bytes: int

    def __post_init__(self) -> None:
        if self.max_members < 1 or self.max_total_bytes < 1 or self.max_ratio <= 1:
            raise ValueError(f"archive limits must be positive (and max_ratio > 1): {self}")

    def ratio_exceeded(self, uncompressed: int, compressed: int) -> bool:
        return uncompressed >= self.ratio_min_bytes and uncompressed > self.max_ratio * max(
            compressed, 1
        )


@contextmanager
def _open_archive(
    path_or_file: PathOrFile, limits: _Limits
) -> Iterator[tuple[BinaryIO, zipfile.ZipFile]]:
    """Open a path or a binary file as (handle, ZipFile), turning zipfile's errors into ours.

    The entry count is checked from the end record first: zipfile builds a ZipInfo for every
    central-directory entry when it opens, so millions of tiny entries would cost gigabytes of
    memory before any other check could run.
    """
    with ExitStack() as stack:
        if isinstance(path_or_file, str | os.PathLike):
            handle: BinaryIO = stack.enter_context(open(path_or_file, "rb"))
        else:
            handle = path_or_file
        count = _declared_entry_count(handle)
        if count is not None and count > limits.max_members:
            raise UnsafeArchiveError(_too_many(count, limits))
        try:
            archive = stack.enter_context(zipfile.ZipFile(handle))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
            raise ArchiveError(f"not a readable zip archive: {exc}") from exc
        yield handle, archive


def _too_many(count: int, limits: _Limits) -> str:
    return f"archive has {count} entries, more than the limit of {limits.max_members}"


def _declared_entry_count(handle: BinaryIO) -> int | None:
    """Entries the end-of-central-directory record declares (zip64 aware); None if not found.

    None is not an error here: zipfile then gives the precise complaint.
    """
    size = handle.seek(0, io.SEEK_END)
    tail_length = min(size, _EOCD.size + 0xFFFF)  # the record, then a comment of up to 64 KiB
    handle.seek(size - tail_length)
    tail = handle.read(tail_length)
    position = tail.rfind(b"PK\x05\x06")
    if position < 0 or position + _EOCD.size > len(tail):
        return None
    count: int = _EOCD.unpack_from(tail, position)[4]
    if count != 0xFFFF:
        return count
    locator_at = position - _ZIP64_LOCATOR.size
    if locator_at < 0:
        return None
    signature, _, zip64_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
    if signature != b"PK\x06\x07" or zip64_offset + _ZIP64_EOCD.size > size:
        return None
    handle.seek(zip64_offset)
    record = handle.read(_ZIP64_EOCD.size)
    if len(record) != _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
        return None
    zip64_count: int = _ZIP64_EOCD.unpack(record)[7]
    return zip64_count


def _check_declared(handle: BinaryIO, infos: list[zipfile.ZipInfo], limits: _Limits) -> None:
    """Everything that can be refused from the directory alone, before any byte is inflated."""
    if len(infos) > limits.max_members:
        raise UnsafeArchiveError(_too_many(len(infos), limits))
    total = 0
    for info in infos:
        name = info.filename
        problem = _unsafe_name(name)
        if problem is not None:
            raise UnsafeArchiveError(f"member {name!r}: {problem}")
        if info.create_system == _UNIX and stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"member {name!r} is a symbolic link")
        if info.flag_bits & _FLAG_ENCRYPTED:
            raise UnsafeArchiveError(f"member {name!r} is encrypted")
        if info.is_dir():
            continue
        if info.compress_type not in _ACCEPTED_METHODS:
            raise UnsafeArchiveError(
                f"member {name!r} uses compression method {info.compress_type}; only stored and "
                "deflate are accepted"
            )
        if limits.ratio_exceeded(info.file_size, info.compress_size):
            raise UnsafeArchiveError(
                f"member {name!r} declares a compression ratio of "
                f"{info.file_size / max(info.compress_size, 1):.0f}:1, over the limit of "
                f"{limits.max_ratio:.0f}:1 (zip bomb?)"
            )
        total += info.file_size
    if total > limits.max_total_bytes:
        raise UnsafeArchiveError(
            f"archive declares {total} bytes uncompressed, over the limit of "
            f"{limits.max_total_bytes}"
        )
    archive_size = handle.seek(0, io.SEEK_END)
    if limits.ratio_exceeded(total, archive_size):
        raise UnsafeArchiveError(
            f"archive inflates {total / max(archive_size, 1):.0f}:1 overall, over the limit of "
            f"{limits.max_ratio:.0f}:1 (zip bomb?)"
        )
    _check_local_headers(handle, infos, archive_size)


def _check_local_headers(handle: BinaryIO, infos: list[zipfile.ZipInfo], archive_size: int) -> None:
    """Local headers must agree with the central directory, fit in the file and not overlap.

    zipfile trusts the central directory alone; a patched directory (small sizes over big data) or
    entries sharing compressed bytes (the overlapping-file bomb) are caught here instead.
    """
    spans = []
    for info in infos:
        name = info.filename
        handle.seek(info.header_offset)
        raw = handle.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size:
            raise UnsafeArchiveError(f"member {name!r}: local header lies outside the archive")
        signature, _, flags, method, _, _, _, csize, usize, name_len, extra_len = (
            _LOCAL_HEADER.unpack(raw)
        )
        if signature != _ZIP_MAGIC:
            raise UnsafeArchiveError(f"member {name!r}: no local header where the directory says")
        if method != info.compress_type:
            raise UnsafeArchiveError(
                f"member {name!r}: local header and central directory disagree about its "
                "compression method"
            )
        sizes_in_local = not flags & _FLAG_DATA_DESCRIPTOR and _ZIP64_SIZE not in (csize, usize)
        if sizes_in_local and (csize, usize) != (info.compress_size, info.file_size):
            raise UnsafeArchiveError(
                f"member {name!r}: local header says {usize} bytes ({csize} compressed), the "
                f"central directory says {info.file_size} ({info.compress_size} compressed)"
            )
        start = info.header_offset
        end = start + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
        if end > archive_size:
            raise UnsafeArchiveError(
                f"member {name!r} claims more compressed data than the archive holds"
            )
        spans.append((start, end, name))
    spans.sort()
    for (_, end, name), (next_start, _, next_name) in itertools.pairwise(spans):
        if next_start < end:
            raise UnsafeArchiveError(
                f"members {name!r} and {next_name!r} overlap (a zip-bomb construction)"
            )


def _unsafe_name(name: str) -> str | None:
    """Why a member name could escape an extraction folder, or None when it is a plain relative path."""
    posix = name.replace("\\", "/")
    if "\x00" in posix:
        return "name contains a NUL character"
    if posix.startswith("/"):
        return "absolute path"
    if re.match(r"[A-Za-z]:", posix):
        return "absolute path with a drive letter"
    if ".." in posix.split("/"):
        return "path traversal ('..')"
    return None


def _is_hidden(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(part.startswith(".") for part in parts) or (bool(parts) and parts[0] == "__MACOSX")


def _nested_archive_reason(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """Nested archives are reported, not opened; detected by suffix or by the zip signature."""
    if info.filename.lower().endswith(_NESTED_ARCHIVE_SUFFIXES):
        return "nested archive not expanded"
    if info.file_size >= len(_ZIP_MAGIC):
        try:
            with archive.open(info) as stream:
                head = stream.read(len(_ZIP_MAGIC))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise UnsafeArchiveError(_tampered(info, exc)) from exc
        if head == _ZIP_MAGIC:
            return "nested archive not expanded"
    return None


def _tampered(info: zipfile.ZipInfo, exc: BaseException) -> str:
    """zipfile errors on an archive that passed the checks: its headers lie about this member."""
    return (
        f"member {info.filename!r} does not match its declared size or CRC "
        f"(corrupt or tampered): {exc}"
    )


class _Guard:
    """Archive-wide accounting shared by the member streams of one iteration."""

    def __init__(self, limits: _Limits) -> None:
        self.limits = limits
        self.total_bytes = 0
        self.token = 0
        self.poisoned: str | None = None

    def next_token(self) -> int:
        self.token += 1
        return self.token

    def raise_if_poisoned(self) -> None:
        if self.poisoned is not None:
            raise UnsafeArchiveError(f"archive abandoned: {self.poisoned}")

    def fail(self, message: str) -> UnsafeArchiveError:
        if self.poisoned is None:
            self.poisoned = message
        return UnsafeArchiveError(message)

    def produced(self, info: zipfile.ZipInfo, new_bytes: int, member_bytes: int) -> None:
        """Account bytes a member has actually inflated to; raise when a limit is crossed."""
        self.total_bytes += new_bytes
        name = info.filename
        if member_bytes > info.file_size:
            raise self.fail(
                f"member {name!r} inflates past its declared size of {info.file_size} bytes"
            )
        if self.limits.ratio_exceeded(member_bytes, info.compress_size):
            raise self.fail(f"member {name!r} inflates beyond {self.limits.max_ratio:.0f}:1")
        if self.total_bytes > self.limits.max_total_bytes:
            raise self.fail(
                f"archive inflates past the limit of {self.limits.max_total_bytes} bytes"
            )


def _member_opener(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, guard: _Guard, token: int
) -> Callable[[], BinaryIO]:
    def opener() -> BinaryIO:
        if guard.token != token:
            raise ArchiveError(
                f"member {info.filename!r} opened after the iteration moved on; read members in turn"
            )
        guard.raise_if_poisoned()
        try:
            inner = archive.open(info)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise guard.fail(_tampered(info, exc)) from exc
        return io.BufferedReader(_GuardedStream(inner, info, guard, token), _CHUNK)

    return opener


class _GuardedStream(io.RawIOBase):
    """A zip member stream that reports its high-water mark to the guard as it inflates.

    The high-water mark of the position, not the bytes returned, is what counts: seeking forward
    inflates too, and seeking back and re-reading does not inflate anything new.
    """

    def __init__(self, inner: IO[bytes], info: zipfile.ZipInfo, guard: _Guard, token: int) -> None:
        super().__init__()
        self._inner = inner
        self._info = info
        self._guard = guard
        self._token = token
        self._high = 0

    @property
    def name(self) -> str:
        """The member's name: pydicom and other readers label their errors with ``fp.name``."""
        return self._info.filename

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        self._check_turn()
        view = memoryview(buffer).cast("B")
        data = self._call(lambda: self._inner.read(len(view)))
        view[: len(data)] = data
        self._account()
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_turn()
        position = self._call(lambda: self._inner.seek(offset, whence))
        self._account()
        return position

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()

    def _check_turn(self) -> None:
        if self._guard.token != self._token:
            raise ArchiveError(f"member {self._info.filename!r} read after the iteration moved on")
        self._guard.raise_if_poisoned()

    def _call(self, call: Callable[[], _T]) -> _T:
        """Run a zipfile call; its errors on a checked archive mean a lie, so they poison it."""
        try:
            return call()
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise self._guard.fail(_tampered(self._info, exc)) from exc

    def _account(self) -> None:
        position = self._inner.tell()
        if position > self._high:
            new_bytes = position - self._high
            self._high = position
            self._guard.produced(self._info, new_bytes, position)


def _expand_folder(
    folder: Path, display: str, limits: _Limits
) -> Iterator[InputFile | RejectedInput]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(root)
        for dirname in dirs:
            if (here / dirname).is_symlink():
                shown = f"{display}/{(here / dirname).relative_to(folder).as_posix()}"
                yield RejectedInput(shown, "symbolic link not followed")
        for filename in sorted(f for f in files if not f.startswith(".")):
            path = here / filename
            shown = f"{display}/{path.relative_to(folder).as_posix()}"
            if path.is_symlink():
                yield RejectedInput(shown, "symbolic link not followed")
            else:
                yield from _expand_file(path, shown, limits)


def _expand_file(path: Path, display: str, limits: _Limits) -> Iterator[InputFile | RejectedInput]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            head = stream.read(len(_ZIP_MAGIC))
    except OSError as exc:
        yield RejectedInput(display, f"cannot be read: {exc.strerror or exc}")
        return
    if path.suffix.lower() == ".zip" or head == _ZIP_MAGIC:
        yield from _expand_zip(path, display, limits)
    else:
        yield InputFile(display, size, _file_opener(path))


def _expand_zip(path: Path, display: str, limits: _Limits) -> Iterator[InputFile | RejectedInput]:
    members = _iter_members(path, limits)
    while True:
        try:
            member = next(members)
        except StopIteration:
            return
        except ArchiveError as exc:
            yield RejectedInput(display, str(exc))
            return
        except OSError as exc:
            yield RejectedInput(display, f"cannot be read: {exc.strerror or exc}")
            return
        shown = f"{display}/{member.name}"
        if member.skip_reason is not None:
            yield RejectedInput(shown, member.skip_reason)
        else:
            yield InputFile(shown, member.size_bytes, member.open)


def _file_opener(path: Path) -> Callable[[], BinaryIO]:
    def opener() -> BinaryIO:
        return open(path, "rb")

    return opener
