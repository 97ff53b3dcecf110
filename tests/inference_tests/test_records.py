"""The record checks every model, template and dataset folder goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.records import check_file, check_format, read_json_object, sha256_file


class FolderError(Exception):
    pass


def test_a_file_is_checked_against_its_recorded_digest(tmp_path: Path) -> None:
    file = tmp_path / "model.pt"
    file.write_bytes(b"weights")
    digest = sha256_file(file)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    check_file(file, digest, FolderError)  # passes
    with pytest.raises(FolderError, match="SHA-256 differs"):
        check_file(file, "sha256:" + "0" * 64, FolderError)
    with pytest.raises(FolderError, match=r"no SHA-256 for model\.pt"):
        check_file(file, None, FolderError)
    file.unlink()
    with pytest.raises(FolderError, match=r"model\.pt is missing"):
        check_file(file, digest, FolderError)


def test_a_record_must_be_a_json_object_of_a_known_format(tmp_path: Path) -> None:
    path = tmp_path / "metadata.json"
    path.write_text('{"format": "ild-model", "format_version": 1}')
    data = read_json_object(path, FolderError)
    check_format(data, str(path), expected="ild-model", version=1, error=FolderError)
    with pytest.raises(FolderError, match="format_version 1 is not supported"):
        check_format(data, str(path), expected="ild-model", version=2, error=FolderError)
    with pytest.raises(FolderError, match="'format' must be 'other'"):
        check_format(data, str(path), expected="other", version=1, error=FolderError)
    path.write_text("[1, 2]")
    with pytest.raises(FolderError, match="must be a JSON object"):
        read_json_object(path, FolderError)
    path.write_text("{not json")
    with pytest.raises(FolderError, match="cannot read model metadata"):
        read_json_object(path, FolderError, "model metadata")
    with pytest.raises(FolderError, match="cannot read"):
        read_json_object(tmp_path / "absent.json", FolderError)
