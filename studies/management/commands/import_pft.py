from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from studies.management.commands._csv_import import import_failed, read_csv_text
from studies.services.pft import PftImportError, import_pft_csv


class Command(BaseCommand):
    help = "Import pulmonary function tests from a CSV file: every row, or none if any is invalid."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        text = read_csv_text(options["file"])
        try:
            report = import_pft_csv(text)
        except PftImportError as exc:
            raise import_failed(exc) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.to_dict()))
        else:
            self.stdout.write(f"created {report.created}, updated {report.updated}")
