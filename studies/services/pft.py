"""Pulmonary function test import: validate every row, then store all rows or none.

CSV columns (header required, order free)::

    patient_id,date,fvc_pct_predicted,tlc_pct_predicted,dlco_pct_predicted,kco_pct_predicted,
    fvc_l,tlc_l,dlco_mmol_min_kpa,kco_mmol_min_kpa_l

``patient_id`` is the stored (pseudonymous) PatientID, or the original hospital PatientID of a
de-identified patient: then the date is shifted by that patient's de-identification shift, so PFTs
and CTs stay on one consistent time line. DLCO and KCO are percentages of predicted corrected for
haemoglobin. At least one of the four percentages is required per row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.db import transaction

from core.exceptions import ApplicationError
from studies.models import Patient, PatientIdentity, PftResult

PERCENT_FIELDS = (
    "fvc_pct_predicted",
    "tlc_pct_predicted",
    "dlco_pct_predicted",
    "kco_pct_predicted",
)
ABSOLUTE_FIELDS = ("fvc_l", "tlc_l", "dlco_mmol_min_kpa", "kco_mmol_min_kpa_l")
REQUIRED_COLUMNS = ("patient_id", "date")
# Plausible physiological ranges; a value outside is a unit or typing error, not a patient.
RANGES: dict[str, tuple[float, float]] = {
    "fvc_pct_predicted": (10.0, 200.0),
    "tlc_pct_predicted": (10.0, 200.0),
    "dlco_pct_predicted": (5.0, 200.0),
    "kco_pct_predicted": (5.0, 250.0),
    "fvc_l": (0.2, 10.0),
    "tlc_l": (0.5, 15.0),
    "dlco_mmol_min_kpa": (0.3, 25.0),
    "kco_mmol_min_kpa_l": (0.1, 5.0),
}
EARLIEST = date(1950, 1, 1)


@dataclass
class PftRow:
    patient: Patient
    date: date
    values: dict[str, float | None]


@dataclass
class PftImportReport:
    created: int = 0
    updated: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "errors": self.errors}


class PftImportError(ApplicationError):
    pass


def _parse_float(raw: str, column: str, problems: list[str]) -> float | None:
    text = raw.strip()
    if not text:
        return None
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        problems.append(f"{column}: {raw!r} is not a number")
        return None
    low, high = RANGES[column]
    if not low <= value <= high:
        problems.append(f"{column}: {value:g} outside the plausible range {low:g}–{high:g}")
    return value


def _resolve_patient(raw_id: str) -> tuple[Patient | None, int]:
    patient = Patient.objects.filter(patient_id=raw_id).first()
    if patient is not None:
        return patient, 0
    identity = (
        PatientIdentity.objects.select_related("patient").filter(original_patient_id=raw_id).first()
    )
    if identity is not None:
        return identity.patient, identity.date_shift_days
    return None, 0


def resolve_row_patient(
    raw_id: str, allowed_project_ids: set[Any] | None, problems: list[str]
) -> tuple[Patient | None, int]:
    """A CSV row's patient (by pseudonym or original ID) and its date shift; a problem is added
    when the ID is empty, unknown, or in a project outside ``allowed_project_ids``."""
    if not raw_id:
        problems.append("patient_id is empty")
        return None, 0
    patient, shift = _resolve_patient(raw_id)
    if patient is None or (
        allowed_project_ids is not None and patient.project_id not in allowed_project_ids
    ):
        problems.append(f"unknown patient {raw_id!r}")
        return None, 0
    return patient, shift


def parse_pft_csv(
    text: str, *, allowed_project_ids: set[Any] | None = None
) -> tuple[list[PftRow], list[dict[str, Any]]]:
    """Validate every CSV row; return the rows and ``{"line", "patient_id", "errors"}`` per bad one."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    return parse_pft_records(
        reader, columns=columns, first_line=2, allowed_project_ids=allowed_project_ids
    )


def parse_pft_records(
    records: Iterable[dict[str, Any]],
    *,
    columns: list[str],
    first_line: int = 1,
    allowed_project_ids: set[Any] | None = None,
) -> tuple[list[PftRow], list[dict[str, Any]]]:
    """Validate records (CSV rows or API objects); ``first_line`` numbers them in errors."""
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise PftImportError(
            f"missing column(s) {', '.join(missing)}; the header must include patient_id,date "
            f"and any of {', '.join(PERCENT_FIELDS + ABSOLUTE_FIELDS)}"
        )
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + PERCENT_FIELDS + ABSOLUTE_FIELDS]
    if unknown:
        raise PftImportError(f"unknown column(s) {', '.join(unknown)}")

    rows: list[PftRow] = []
    errors: list[dict[str, Any]] = []
    seen: dict[tuple[Any, date], int] = {}
    today = date.today()
    for line_number, raw in enumerate(records, start=first_line):
        record = {(k or "").strip(): ("" if v is None else str(v)) for k, v in raw.items()}
        problems: list[str] = []
        raw_id = record.get("patient_id", "").strip()
        patient, shift = resolve_row_patient(raw_id, allowed_project_ids, problems)
        when: date | None = None
        try:
            when = date.fromisoformat(record.get("date", "").strip())
        except ValueError:
            problems.append(f"date: {record.get('date')!r} is not YYYY-MM-DD")
        if when is not None and not EARLIEST <= when <= today:
            problems.append(f"date: {when.isoformat()} is outside {EARLIEST.isoformat()}–today")
        values = {
            column: _parse_float(record.get(column, ""), column, problems)
            for column in PERCENT_FIELDS + ABSOLUTE_FIELDS
        }
        if all(values[c] is None for c in PERCENT_FIELDS):
            problems.append("at least one of " + ", ".join(PERCENT_FIELDS) + " is required")
        if patient is not None and when is not None:
            stored_date = when + timedelta(days=shift)
            key = (patient.pk, stored_date)
            if key in seen:
                problems.append(f"duplicate of line {seen[key]} (same patient and date)")
            else:
                seen[key] = line_number
        if problems:
            errors.append({"line": line_number, "patient_id": raw_id, "errors": problems})
            continue
        assert patient is not None and when is not None
        rows.append(PftRow(patient=patient, date=when + timedelta(days=shift), values=values))
    if not rows and not errors:
        raise PftImportError("the file has a header but no rows")
    return rows, errors


def import_pft_csv(text: str, *, allowed_project_ids: set[Any] | None = None) -> PftImportReport:
    """Import every row or none: any bad row raises PftImportError listing all bad rows."""
    return store_pft_rows(*parse_pft_csv(text, allowed_project_ids=allowed_project_ids))


def import_pft_records(
    records: list[dict[str, Any]], *, allowed_project_ids: set[Any] | None = None
) -> PftImportReport:
    columns = sorted({str(key) for record in records for key in record})
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise PftImportError(f"missing field(s) {', '.join(missing)}")
    return store_pft_rows(
        *parse_pft_records(records, columns=columns, allowed_project_ids=allowed_project_ids)
    )


def store_pft_rows(rows: list[PftRow], errors: list[dict[str, Any]]) -> PftImportReport:
    if errors:
        raise PftImportError(
            f"{len(errors)} row(s) are invalid; nothing was imported", extra={"errors": errors}
        )
    report = PftImportReport()
    with transaction.atomic():
        for row in rows:
            _, created = PftResult.objects.update_or_create(
                patient=row.patient, date=row.date, defaults=row.values
            )
            if created:
                report.created += 1
            else:
                report.updated += 1
    return report
