from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.services.clinical import ClinicalImportError, import_clinical_csv


class Command(BaseCommand):
    help = (
        "Import clinical characteristics (SSc subtype, mRSS, autoantibodies) from a CSV file: "
        "every row, or none if any is invalid."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {path}: {exc}") from None
        try:
            report = import_clinical_csv(text)
        except ClinicalImportError as exc:
            lines = [exc.message]
            for error in exc.extra.get("errors", []):
                lines.append(
                    f"  line {error['line']} ({error['patient_id']}): " + "; ".join(error["errors"])
                )
            raise CommandError("\n".join(lines)) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.to_dict()))
        else:
            self.stdout.write(f"updated {report.updated} patient(s)")
