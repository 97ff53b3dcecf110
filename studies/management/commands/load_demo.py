from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from core.models import Membership, Project, Role, User
from studies.models import Patient
from studies.services.clinical import import_clinical_csv
from studies.services.ingest import ingest_paths
from studies.services.pft import import_pft_csv

DEMO_PASSWORD = "ild-demo-2026"
DEMO_USERS = (
    ("admin", Role.ADMIN),
    ("coordinator", Role.COORDINATOR),
    ("reader-a", Role.RADIOLOGIST),
    ("reader-b", Role.RADIOLOGIST),
    ("clinician", Role.CLINICIAN),
)


class Command(BaseCommand):
    help = "Generate the synthetic demo cohort (phantom CTs + PFTs), import it, create demo users."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--patients", type=int, default=10)
        parser.add_argument("--seed", type=int, default=2020)
        parser.add_argument("--shape-kji", type=int, nargs=3, default=None)
        parser.add_argument("--out", type=Path, default=None)
        parser.add_argument(
            "--with-jobs",
            action="store_true",
            help="also segment (classical) and register (torch) the demo CTs here, synchronously",
        )
        parser.add_argument(
            "--queue-jobs",
            action="store_true",
            help="queue the demo CTs' segmentation and registration jobs for the workers",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from inference.phantoms import write_cohort

        project, _ = Project.objects.get_or_create(
            slug="demo", defaults={"name": "Demo SSc cohort"}
        )
        for username, role in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username, defaults={"role": role})
            if created:
                user.set_password(DEMO_PASSWORD)
                user.is_staff = user.is_superuser = role == Role.ADMIN
                user.save()
            Membership.objects.get_or_create(user=user, project=project)

        out: Path = options["out"] or Path(settings.VAR_DIR) / "demo-cohort"
        manifest_path = out / "cohort.json"
        if not manifest_path.exists():
            self.stdout.write(f"generating {options['patients']} phantom patients in {out} ...")
            kwargs: dict[str, Any] = {"patients": options["patients"], "seed": options["seed"]}
            if options["shape_kji"]:
                kwargs["shape_kji"] = tuple(options["shape_kji"])
            manifest_path = write_cohort(out, **kwargs)
        manifest = json.loads(manifest_path.read_text())

        dicom_dirs = [
            out / timepoint["dicom_dir"]
            for entry in manifest["patients"]
            for timepoint in entry["timepoints"].values()
        ]
        report = ingest_paths(dicom_dirs, project=project, deidentify=True)
        self.stdout.write(
            f"CT instances: stored {report.stored}, already there {report.duplicate}, "
            f"rejected {report.rejected}"
        )
        originals = [entry["patient_id"] for entry in manifest["patients"]]
        Patient.objects.filter(identity__original_patient_id__in=originals).update(cohort="demo")
        pft_report = import_pft_csv((out / "pft.csv").read_text())
        self.stdout.write(f"PFTs: created {pft_report.created}, updated {pft_report.updated}")
        clinical_csv = out / manifest.get("clinical_csv", "clinical.csv")
        if clinical_csv.exists():
            clinical = import_clinical_csv(clinical_csv.read_text())
            self.stdout.write(f"clinical characteristics: {clinical.updated} patients")
        self.stdout.write(
            f"demo users {', '.join(u for u, _ in DEMO_USERS)}; password {DEMO_PASSWORD}"
        )
        if options["with_jobs"] or options["queue_jobs"]:
            from django.core.management import call_command

            demo_ids = Patient.objects.filter(project=project, cohort="demo").values_list(
                "patient_id", flat=True
            )
            if demo_ids:
                patients = [f"--patient={patient_id}" for patient_id in demo_ids]
                call_command(
                    "run_jobs", *patients, "--engine=classical", "--backend=torch",
                    *(["--inline"] if options["with_jobs"] else []),
                    stdout=self.stdout, stderr=self.stderr,
                )  # fmt: skip
