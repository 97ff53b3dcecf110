from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.services import storage


class Command(BaseCommand):
    help = (
        "Remove the temporary files of uploads whose process was killed before they were stored "
        "(files under STORAGE_ROOT/dicom named .incoming-*.part, untouched for --older-than "
        "minutes). Stored instances are never touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=float,
            default=storage.ABANDONED_AFTER_S / 60,
            metavar="MINUTES",
            help="only files last written this long ago (default 60: no upload takes that long)",
        )
        parser.add_argument("--dry-run", action="store_true", help="list them, remove nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        minutes = float(options["older_than"])
        if minutes < 0:
            raise CommandError("--older-than must be zero or more minutes")
        if options["dry_run"]:
            found = storage.abandoned_temps(minutes * 60)
            for path in found:
                self.stdout.write(str(path))
            self.stdout.write(f"would remove {len(found)} abandoned upload file(s)")
            return
        removed = storage.remove_abandoned_temps(minutes * 60)
        self.stdout.write(f"removed {removed} abandoned upload file(s)")
