from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.models import Project
from studies.services.ingest import ingest_paths


class Command(BaseCommand):
    help = "Import CT DICOM files, folders and .zip archives into the study store."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", help="files, folders (recursive) or .zip archives")
        parser.add_argument(
            "--project", default="default", help="project slug (created if missing)"
        )
        parser.add_argument(
            "--no-deidentify",
            action="store_true",
            help="store the files as they are (by default the PS3.15 basic profile is applied)",
        )
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        project, _ = Project.objects.get_or_create(
            slug=options["project"], defaults={"name": options["project"].replace("-", " ").title()}
        )
        try:
            report = ingest_paths(
                options["paths"],
                project=project,
                deidentify=settings.DEIDENTIFY_BY_DEFAULT and not options["no_deidentify"],
            )
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.to_dict(), indent=2))
        else:
            for outcome in report.outcomes:
                if outcome.status == "rejected":
                    self.stdout.write(f"rejected  {outcome.name}: {outcome.reason}")
            self.stdout.write(
                f"stored {report.stored}, duplicate {report.duplicate}, rejected {report.rejected}"
                f" ({len(report.series_uids)} series)"
            )
        if report.rejected and not (report.stored or report.duplicate):
            raise SystemExit(1)
