"""``python manage.py export_agreement --reading-study ID --out DIR``: every table of a reading
study as CSV + XLSX, the per-slice Dice, and one DICOM SEG per read and series.

Written into DIR (created if needed)::

    README.txt
    tables.xlsx                       one sheet per table
    table2_dice_ild.csv, ...          every table, its numbers and the per-slice / per-patient data
    seg/<case>_<reader>[_repeat]_<series number>_seg.dcm

Only pseudonymous patient identifiers and readers' usernames are written.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotation.models import ReadingStudy
from core.exceptions import ApplicationError
from reports.services import agreement, dashboards, exports, seg


class Command(BaseCommand):
    help = "Export a reading study's agreement tables (CSV, XLSX), per-slice Dice and DICOM SEG."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--reading-study", required=True, help="reading study id or name")
        parser.add_argument("--out", required=True, type=Path, help="output folder")
        parser.add_argument("--cohort", action="append", default=[], help="restrict to cohorts")
        parser.add_argument("--n-resamples", type=int, default=2000, help="bootstrap replicates")
        parser.add_argument("--include-open", action="store_true", help="count unsubmitted reads")
        parser.add_argument("--no-seg", action="store_true", help="skip the DICOM SEG files")
        parser.add_argument(
            "--all-tables",
            action="store_true",
            help="also Tables 1 and 3 (and the follow-up tables of a longitudinal study)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        key = options["reading_study"]
        study = (
            ReadingStudy.objects.filter(pk=key).first()
            if _is_uuid(key)
            else ReadingStudy.objects.filter(name=key).first()
        )
        if study is None:
            raise CommandError(f"no reading study {key!r}")
        out: Path = options["out"]
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        synced = agreement.sync_study(study)
        query = dashboards.Query(
            reading_study=study,
            cohorts=tuple(options["cohort"]),
            include_open=options["include_open"],
            n_resamples=options["n_resamples"],
        )
        report = "all" if options["all_tables"] else "agreement"
        try:
            tables = dashboards.tables(None, report, query)
        except ApplicationError as error:
            raise CommandError(error.message) from error
        for table in tables:
            (out / f"{table.name}.csv").write_bytes(exports.to_csv(table))
        (out / "tables.xlsx").write_bytes(exports.to_xlsx(tables))
        n_seg = 0
        if not options["no_seg"]:
            n_seg = self._write_segs(study, out / "seg")
        lines = [
            f"Reading study: {study.name} ({study.pk})",
            agreement.EMPTY_RULE_TEXT,
            "",
            *[f"{t.name}.csv — {t.title}" for t in tables],
            "tables.xlsx — every table, one sheet each",
            f"seg/ — {n_seg} DICOM SEG file(s), one per read and series",
        ]
        (out / "README.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.stdout.write(
            f"{len(tables)} tables, {n_seg} SEG files in {out} "
            f"({synced.rows_computed} slice rows computed, "
            f"{time.perf_counter() - started:.1f} s)"
        )

    def _write_segs(self, study: ReadingStudy, folder: Path) -> int:
        from core.models import Role, User

        # a local, trusted run: act as a site admin who sees every read
        system = User(username="export_agreement", role=Role.ADMIN, is_superuser=True)
        folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for assignment in study.assignments.select_related("case", "reader", "study"):
            for series in seg.seg_series_for(system, assignment):
                try:
                    result = seg.assignment_seg(system, assignment, series)
                except ApplicationError as error:
                    self.stderr.write(f"{assignment.case.label} {assignment.reader}: {error}")
                    continue
                (folder / result.filename).write_bytes(result.data)
                count += 1
        return count


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
