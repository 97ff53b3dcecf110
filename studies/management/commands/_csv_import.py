"""What the CSV import commands share: reading the file and reporting every bad row."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from core.exceptions import ApplicationError


def read_csv_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None


def import_failed(error: ApplicationError) -> CommandError:
    """The error's message and one line per invalid row (``extra["errors"]``)."""
    lines = [error.message]
    for row in error.extra.get("errors", []):
        lines.append(f"  line {row['line']} ({row['patient_id']}): " + "; ".join(row["errors"]))
    return CommandError("\n".join(lines))
