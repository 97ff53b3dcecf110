"""Safe reading of uploads: hostile zips are refused, honest files, folders and zips stream through."""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from studies.archive import (  # the in-flight counter itself
    ArchiveError,
    InputFile,
    RejectedInput,
    UnsafeArchiveError,
    _Guard,
    _GuardedStream,
    _Limits,
    expand_inputs,
    iter_zip_members,
)

LOCAL = struct.Struct("<4sHHHHHIIIHH")
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")


def make_zip(
    path: Path,
    members: dict[str, bytes],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            archive.writestr(info, data)
    return path


def patch_member(
    path: Path,
    name: str,
    *,
    central: bool = True,
    local: bool = True,
    **fields: int,
) -> None:
    """Rewrite header fields (flags, crc, csize, usize, offset) of one member, as an attacker would."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        header_offset = archive.getinfo(name).header_offset
    local_index = {"flags": 2, "crc": 6, "csize": 7, "usize": 8}
    central_index = {"flags": 3, "crc": 7, "csize": 8, "usize": 9, "offset": 16}
    if local:
        values = list(LOCAL.unpack_from(data, header_offset))
        for key, value in fields.items():
            if key in local_index:
                values[local_index[key]] = value
        LOCAL.pack_into(data, header_offset, *values)
    if central:
        position = data.find(b"PK\x01\x02")
        while position != -1:
            values = list(CENTRAL.unpack_from(data, position))
            name_len, extra_len, comment_len = values[10], values[11], values[12]
            entry_name = bytes(data[position + CENTRAL.size : position + CENTRAL.size + name_len])
            if entry_name.decode() == name:
                for key, value in fields.items():
                    values[central_index[key]] = value
                CENTRAL.pack_into(data, position, *values)
            position = data.find(
                b"PK\x01\x02", position + CENTRAL.size + name_len + extra_len + comment_len
            )
    path.write_bytes(bytes(data))


def names(items: list[InputFile | RejectedInput]) -> list[str]:
    return [item.display_name for item in items if isinstance(item, InputFile)]


def rejected(items: list[InputFile | RejectedInput]) -> dict[str, str]:
    return {item.display_name: item.reason for item in items if isinstance(item, RejectedInput)}


def tiny_dicom() -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "P1"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x00" * 8
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# --- iter_zip_members: honest archives ------------------------------------------------------------


def test_members_are_yielded_sorted_with_their_content(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"b/2.dcm": b"two", "a/1.dcm": b"one", "c.dcm": b""})

    members = [(m.name, m.read(), m.size_bytes) for m in iter_zip_members(path)]

    assert members == [("a/1.dcm", b"one", 3), ("b/2.dcm", b"two", 3), ("c.dcm", b"", 0)]


def test_directories_and_hidden_entries_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.mkdir("series")
        archive.writestr("series/IM1", b"1")
        archive.writestr("series/.DS_Store", b"x")
        archive.writestr("__MACOSX/series/._IM1", b"x")

    assert [m.name for m in iter_zip_members(path)] == ["series/IM1"]


def test_a_file_object_is_accepted(tmp_path: Path) -> None:
    data = make_zip(tmp_path / "a.zip", {"x": b"payload"}).read_bytes()

    assert [m.read() for m in iter_zip_members(io.BytesIO(data))] == [b"payload"]


def test_pydicom_reads_a_member_stream_directly(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"IM1": tiny_dicom()})

    for member in iter_zip_members(path):
        with member.open() as stream:
            assert pydicom.dcmread(stream).PatientID == "P1"


def test_nested_archives_are_reported_not_expanded(tmp_path: Path) -> None:
    inner = make_zip(tmp_path / "inner.zip", {"x": b"x"}).read_bytes()
    path = make_zip(tmp_path / "a.zip", {"inner.zip": inner, "renamed.bin": inner, "ok": b"1"})

    members = {m.name: m.skip_reason for m in iter_zip_members(path)}

    assert members == {
        "inner.zip": "nested archive not expanded",
        "ok": None,
        "renamed.bin": "nested archive not expanded",
    }


def test_a_member_cannot_be_read_after_the_iteration_moved_on(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"1": b"1", "2": b"2"})
    members = iter_zip_members(path)
    first = next(members)
    next(members)

    with pytest.raises(ArchiveError, match="moved on"):
        first.read()


# --- iter_zip_members: hostile archives -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil.dcm", "traversal"),
        ("series/../../evil.dcm", "traversal"),
        ("..\\evil.dcm", "traversal"),
        ("/etc/cron.d/evil", "absolute path"),
        ("C:\\Windows\\evil.dll", "drive letter"),
    ],
)
def test_escaping_names_are_refused(tmp_path: Path, name: str, message: str) -> None:
    path = make_zip(tmp_path / "a.zip", {"ok.dcm": b"1", name: b"x"})

    with pytest.raises(UnsafeArchiveError, match=message):
        next(iter_zip_members(path))


def test_symlinks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        link = zipfile.ZipInfo("link")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")

    with pytest.raises(UnsafeArchiveError, match="'link' is a symbolic link"):
        list(iter_zip_members(path))


def test_encrypted_members_are_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"secret.dcm": b"x" * 100})
    patch_member(path, "secret.dcm", flags=0x1)

    with pytest.raises(UnsafeArchiveError, match="encrypted"):
        list(iter_zip_members(path))


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {str(i): b"x" for i in range(4)})

    with pytest.raises(UnsafeArchiveError, match="4 entries, more than the limit of 3"):
        list(iter_zip_members(path, max_members=3))


def test_entry_count_is_checked_before_zipfile_parses_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_zip(tmp_path / "a.zip", {str(i): b"x" for i in range(4)})

    def must_not_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the central directory was parsed before the count was checked")

    monkeypatch.setattr(zipfile, "ZipFile", must_not_parse)
    with pytest.raises(UnsafeArchiveError, match="4 entries"):
        next(iter_zip_members(path, max_members=3))


def test_zip64_entry_counts_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(4):
            archive.writestr(str(i), b"x")
    data = bytearray(path.read_bytes())
    # Rewrite as zip64-style: count 0xFFFF in the classic record, real count in a zip64 record.
    eocd_at = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<II", data, eocd_at + 12)
    zip64_eocd = struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 4, 4, cd_size, cd_offset
    )
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd_at, 1)
    classic = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, cd_size, cd_offset, 0)
    path.write_bytes(bytes(data[:eocd_at]) + zip64_eocd + locator + classic)

    assert [m.name for m in iter_zip_members(path)] == ["0", "1", "2", "3"]
    with pytest.raises(UnsafeArchiveError, match="4 entries"):
        next(iter_zip_members(path, max_members=3))


def test_declared_total_over_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"1": os.urandom(600), "2": os.urandom(600)})

    with pytest.raises(UnsafeArchiveError, match="declares 1200 bytes uncompressed"):
        next(iter_zip_members(path, max_total_uncompressed_bytes=1000))


def test_a_compression_bomb_is_refused_by_its_ratio(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "bomb.zip", {"bomb.dcm": bytes(16 * 1024**2)})
    assert path.stat().st_size < 64 * 1024  # modest on disk, 16 MiB inflated

    with pytest.raises(UnsafeArchiveError, match=r"compression ratio of .*zip bomb"):
        next(iter_zip_members(path))


def test_many_small_highly_compressible_members_are_refused_overall(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "bomb.zip", {str(i): bytes(512 * 1024) for i in range(8)})

    with pytest.raises(UnsafeArchiveError, match="overall"):
        next(iter_zip_members(path))


def test_a_size_lie_in_the_central_directory_is_caught_up_front(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"ok": b"1", "liar.dcm": os.urandom(4096)})
    patch_member(path, "liar.dcm", local=False, usize=100)

    with pytest.raises(UnsafeArchiveError, match="local header says 4096 bytes"):
        next(iter_zip_members(path))


def test_a_member_lying_in_both_headers_is_stopped_while_inflating(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"a-liar.dcm": bytes(300_000), "b-next.dcm": b"2"})
    patch_member(path, "a-liar.dcm", usize=100_000)
    members = iter_zip_members(path)
    liar = next(members)
    assert liar.size_bytes == 100_000

    with pytest.raises(UnsafeArchiveError, match="declared size or CRC"):
        liar.read()
    with pytest.raises(UnsafeArchiveError, match="archive abandoned"):
        next(members)


def test_the_in_flight_counter_stops_a_stream_that_outgrows_its_declaration() -> None:
    # zipfile itself truncates at the declared size today; this guards against that changing.
    info = zipfile.ZipInfo("liar")
    info.file_size, info.compress_size = 10, 10
    guard = _Guard(_Limits(10, 10**9, 200.0, 1024**2))
    stream = io.BufferedReader(
        _GuardedStream(io.BytesIO(b"x" * 50), info, guard, guard.next_token())
    )

    with pytest.raises(UnsafeArchiveError, match="inflates past its declared size of 10"):
        stream.read()
    assert guard.poisoned is not None


def test_overlapping_members_are_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"a": b"same" * 100, "b": b"same" * 100})
    with zipfile.ZipFile(path) as archive:
        offset_of_a = archive.getinfo("a").header_offset
    patch_member(path, "b", local=False, offset=offset_of_a)

    with pytest.raises(UnsafeArchiveError, match="overlap"):
        next(iter_zip_members(path))


def test_compression_methods_without_bounded_inflation_are_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"x": b"x" * 100}, compression=zipfile.ZIP_BZIP2)

    with pytest.raises(UnsafeArchiveError, match="method 12; only stored and deflate"):
        next(iter_zip_members(path))


def test_a_file_that_is_not_a_zip_is_an_archive_error(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    path.write_bytes(b"not a zip at all")

    with pytest.raises(ArchiveError, match="not a readable zip"):
        next(iter_zip_members(path))


# --- expand_inputs ---------------------------------------------------------------------------------


def test_mixed_inputs_stream_through_and_bad_ones_are_reported(tmp_path: Path) -> None:
    folder = tmp_path / "exam"
    (folder / "series2").mkdir(parents=True)
    (folder / "series1" / "deep").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_bytes(b"x")
    (folder / "series2" / "IM1").write_bytes(b"s2")
    (folder / "series1" / "IM2").write_bytes(b"s1-2")
    (folder / "series1" / "IM1").write_bytes(b"s1-1")
    (folder / "series1" / "deep" / "IM9").write_bytes(b"deep")
    (folder / "series1" / ".hidden").write_bytes(b"x")
    single = tmp_path / "single.dcm"
    single.write_bytes(b"single")
    good_zip = make_zip(tmp_path / "upload.zip", {"s/IM1": b"z1", "s/IM2": b"z2"})
    bad_zip = tmp_path / "broken.zip"
    bad_zip.write_bytes(b"PK\x03\x04 truncated")
    evil_zip = make_zip(tmp_path / "evil.zip", {"../../etc/passwd": b"x"})

    items, contents = [], []
    for item in expand_inputs([folder, bad_zip, single, evil_zip, tmp_path / "missing", good_zip]):
        items.append(item)
        if isinstance(item, InputFile):
            with item.open() as stream:  # zip members are read in turn, during the iteration
                contents.append(stream.read())

    assert names(items) == [
        "exam/series1/IM1",
        "exam/series1/IM2",
        "exam/series1/deep/IM9",
        "exam/series2/IM1",
        "single.dcm",
        "upload.zip/s/IM1",
        "upload.zip/s/IM2",
    ]
    reasons = rejected(items)
    assert set(reasons) == {"broken.zip", "evil.zip", "missing"}
    assert "not a readable zip" in reasons["broken.zip"]
    assert "traversal" in reasons["evil.zip"]
    assert reasons["missing"] == "not found"
    assert contents == [b"s1-1", b"s1-2", b"deep", b"s2", b"single", b"z1", b"z2"]


def test_a_zip_without_the_suffix_is_recognised_by_its_signature(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "upload.bin", {"IM1": b"1"})

    assert names(list(expand_inputs([path]))) == ["upload.bin/IM1"]


def test_symlinks_inside_folders_are_reported_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    folder = tmp_path / "exam"
    folder.mkdir()
    (folder / "IM1").write_bytes(b"1")
    (folder / "link").symlink_to(outside)

    items = list(expand_inputs([folder]))

    assert names(items) == ["exam/IM1"]
    assert rejected(items) == {"exam/link": "symbolic link not followed"}


def test_a_lie_found_mid_archive_rejects_the_rest_and_later_inputs_carry_on(
    tmp_path: Path,
) -> None:
    liar_zip = make_zip(tmp_path / "a.zip", {"1-liar": bytes(300_000), "2-next": b"2"})
    patch_member(liar_zip, "1-liar", usize=100_000)
    later = tmp_path / "later.dcm"
    later.write_bytes(b"later")
    log = []

    for item in expand_inputs([liar_zip, later]):
        if isinstance(item, RejectedInput):
            log.append(f"rejected: {item.display_name}")
            continue
        try:
            with item.open() as stream:
                log.append(f"read: {item.display_name}: {stream.read()!r}")
        except ArchiveError:
            log.append(f"rejected: {item.display_name}")

    assert log == ["rejected: a.zip/1-liar", "rejected: a.zip", "read: later.dcm: b'later'"]


def test_nested_zip_inside_an_upload_is_reported(tmp_path: Path) -> None:
    inner = make_zip(tmp_path / "inner.zip", {"x": b"x"}).read_bytes()
    path = make_zip(tmp_path / "outer.zip", {"inner.zip": inner})

    assert rejected(list(expand_inputs([path]))) == {
        "outer.zip/inner.zip": "nested archive not expanded"
    }


def test_bad_limits_fail_fast() -> None:
    with pytest.raises(ValueError, match="limits"):
        iter_zip_members(io.BytesIO(b""), max_ratio=0)


def test_stored_members_are_checked_too(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"x": b"abc" * 10}, compression=zipfile.ZIP_STORED)
    patch_member(path, "x", usize=5, csize=5, crc=zlib.crc32(b"abcab"))

    # Sizes and CRC agree with each other: zipfile hands out the declared 5 bytes and no more.
    assert [m.read() for m in iter_zip_members(path)] == [b"abcab"]
