"""Clinical characteristics import (Table 1): validate every row, then store all rows or none.

CSV columns (header required, order free; ``patient_id`` plus at least one other)::

    patient_id,ssc_subtype,mrss,anticentromere,anti_scl70,other_autoantibodies

``patient_id`` is the stored (pseudonymous) PatientID or the original hospital PatientID of a
de-identified patient, as for PFTs. ``ssc_subtype`` is ``diffuse`` or ``limited`` (``dcSSc`` /
``lcSSc`` accepted); ``mrss`` the modified Rodnan skin score (an integer 0-51); the antibody
columns are positive / negative (``yes``/``no``, ``true``/``false``, ``1``/``0``, ``+``/``-``).
An empty cell means "not recorded" and leaves the stored value unchanged; ``unknown`` clears it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from core.exceptions import ApplicationError
from studies.models import Patient
from studies.services.pft import resolve_row_patient

ANTIBODY_FIELDS = ("anticentromere", "anti_scl70", "other_autoantibodies")
FIELDS = ("ssc_subtype", "mrss", *ANTIBODY_FIELDS)
SUBTYPES = {
    "diffuse": "diffuse",
    "dcssc": "diffuse",
    "limited": "limited",
    "lcssc": "limited",
}
POSITIVE = {"yes", "y", "true", "1", "+", "positive", "pos"}
NEGATIVE = {"no", "n", "false", "0", "-", "negative", "neg"}
CLEAR = "unknown"
MRSS_MAX = 51
_UNSET = object()


class ClinicalImportError(ApplicationError):
    pass


@dataclass
class ClinicalImportReport:
    updated: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"updated": self.updated, "errors": self.errors}


def _parse(column: str, raw: str, problems: list[str]) -> Any:
    text = raw.strip()
    if not text:
        return _UNSET
    lowered = text.lower()
    if lowered == CLEAR:
        return "" if column == "ssc_subtype" else None
    if column == "ssc_subtype":
        if lowered not in SUBTYPES:
            problems.append(f"ssc_subtype: {text!r} is not diffuse or limited")
        return SUBTYPES.get(lowered, _UNSET)
    if column == "mrss":
        try:
            score = int(text)
        except ValueError:
            problems.append(f"mrss: {text!r} is not a whole number")
            return _UNSET
        if not 0 <= score <= MRSS_MAX:
            problems.append(f"mrss: {score} outside 0-{MRSS_MAX}")
        return score
    if lowered in POSITIVE:
        return True
    if lowered in NEGATIVE:
        return False
    problems.append(f"{column}: {text!r} is not positive/negative (yes/no, 1/0)")
    return _UNSET


def parse_clinical_csv(
    text: str, *, allowed_project_ids: set[Any] | None = None
) -> list[tuple[Patient, dict[str, Any]]]:
    """Every row validated; raises ClinicalImportError listing all bad rows (nothing stored)."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "patient_id" not in columns:
        raise ClinicalImportError(
            "missing column patient_id; the header must include patient_id and any of "
            + ", ".join(FIELDS)
        )
    unknown = [c for c in columns if c != "patient_id" and c not in FIELDS]
    if unknown:
        raise ClinicalImportError(
            f"unknown column(s) {', '.join(unknown)}; expected any of {', '.join(FIELDS)}"
        )
    if not any(c in FIELDS for c in columns):
        raise ClinicalImportError(f"no clinical column; add any of {', '.join(FIELDS)}")
    rows: list[tuple[Patient, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    seen: dict[Any, int] = {}
    for line_number, raw in enumerate(reader, start=2):
        record = {(k or "").strip(): ("" if v is None else str(v)) for k, v in raw.items()}
        problems: list[str] = []
        raw_id = record.get("patient_id", "").strip()
        patient, _ = resolve_row_patient(raw_id, allowed_project_ids, problems)
        if patient is not None:
            if patient.pk in seen:
                problems.append(f"duplicate of line {seen[patient.pk]} (same patient)")
            else:
                seen[patient.pk] = line_number
        values = {c: _parse(c, record.get(c, ""), problems) for c in FIELDS if c in columns}
        if problems:
            errors.append({"line": line_number, "patient_id": raw_id, "errors": problems})
            continue
        assert patient is not None
        rows.append((patient, {k: v for k, v in values.items() if v is not _UNSET}))
    if errors:
        raise ClinicalImportError(
            f"{len(errors)} row(s) are invalid; nothing was imported", extra={"errors": errors}
        )
    if not rows:
        raise ClinicalImportError("the file has a header but no rows")
    return rows


def import_clinical_csv(
    text: str, *, allowed_project_ids: set[Any] | None = None
) -> ClinicalImportReport:
    """Import every row or none (see the module docstring)."""
    rows = parse_clinical_csv(text, allowed_project_ids=allowed_project_ids)
    report = ClinicalImportReport()
    with transaction.atomic():
        for patient, values in rows:
            if values:
                Patient.objects.filter(pk=patient.pk).update(**values)
            report.updated += 1
    return report
