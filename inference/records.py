"""Checks shared by every folder the engines read: model folders (segmentation, worsening),
lung templates and training datasets.

Each such folder has a JSON record naming its ``format`` and ``format_version`` and the SHA-256
of its files. These helpers read and check that record and raise the caller's own error type
(``WeightsError``, ``TemplateError``, ...), with the path and field at fault in the message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """``"sha256:<hex>"`` of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def read_json_object(path: Path, error: type[Exception], what: str = "metadata") -> dict[str, Any]:
    """``path`` parsed as a JSON object.

    Raises:
        error: unreadable file, invalid JSON, or JSON other than an object.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: {what} must be a JSON object")
    return data


def check_format(
    data: dict[str, Any] | Any,
    source: str,
    *,
    expected: str,
    version: int,
    error: type[Exception],
) -> None:
    """Raise ``error`` unless the record's ``format`` and ``format_version`` are what this code
    reads."""
    if data.get("format") != expected:
        raise error(f"{source}: 'format' must be {expected!r}, got {data.get('format')!r}")
    if data.get("format_version") != version:
        raise error(
            f"{source}: format_version {data.get('format_version')!r} is not supported "
            f"(this code reads {version})"
        )


def read_record(
    path: Path,
    *,
    expected: str,
    version: int,
    error: type[Exception],
    kind: str,
    what: str = "metadata",
) -> dict[str, Any]:
    """A folder's JSON record at ``path``, read, with its format and version checked.

    Raises:
        error: no such file ("not a ``kind`` folder"), unreadable, or another format or version.
    """
    if not path.is_file():
        raise error(f"{path.parent}: no {path.name}; not a {kind} folder")
    data = read_json_object(path, error, what)
    check_format(data, str(path), expected=expected, version=version, error=error)
    return data


def check_file(file: Path, recorded: object, error: type[Exception]) -> None:
    """Raise ``error`` unless ``file`` exists with the SHA-256 the record gives (``recorded``).

    Raises:
        error: the file is missing, the record holds no digest for it, or the digests differ.
    """
    if not file.is_file():
        raise error(f"{file.parent}: file {file.name} is missing")
    if recorded is None:
        raise error(f"{file.parent}: the record has no SHA-256 for {file.name}")
    if sha256_file(file) != recorded:
        raise error(f"{file}: SHA-256 differs from metadata (corrupt or replaced file)")
