from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from studies.management.commands._csv_import import import_failed, read_csv_text
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
        text = read_csv_text(options["file"])
        try:
            report = import_clinical_csv(text)
        except ClinicalImportError as exc:
            raise import_failed(exc) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.to_dict()))
        else:
            self.stdout.write(f"updated {report.updated} patient(s)")
