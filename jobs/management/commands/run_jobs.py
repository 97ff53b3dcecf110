"""Queue segmentation of every CT series and registration of every consecutive pair.

    python manage.py run_jobs --patient ID | --all [--engine classical] [--backend torch]
        [--spacing-mm 2.0] [--force] [--inline]

Jobs already waiting, running or done with the same settings are reused (``--force`` reruns
them, overwriting their outputs). ``--inline`` runs them here, one after another, instead of
queueing them for the workers.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.exceptions import ApplicationError
from jobs import selectors, services
from jobs.models import Job
from studies.models import Patient


class Command(BaseCommand):
    help = "Segment every CT series and register every consecutive pair of the given patients."

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--patient", action="append", metavar="ID", help="PatientID (repeat)")
        which.add_argument("--all", action="store_true", help="every patient")
        parser.add_argument("--engine", default="classical")
        parser.add_argument("--backend", default="torch", choices=services.REGISTRATION_BACKENDS)
        parser.add_argument("--spacing-mm", type=float, default=None)
        parser.add_argument("--force", action="store_true", help="rerun jobs already done")
        parser.add_argument("--inline", action="store_true", help="run here, not on workers")
        parser.add_argument("--no-registration", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        patients = Patient.objects.order_by("patient_id")
        if options["patient"]:
            patients = patients.filter(patient_id__in=options["patient"])
            missing = set(options["patient"]) - set(patients.values_list("patient_id", flat=True))
            if missing:
                raise CommandError(f"unknown patient(s): {', '.join(sorted(missing))}")
        params = {"spacing_mm": options["spacing_mm"]} if options["spacing_mm"] else None
        counts: dict[str, int] = {}
        for patient in patients:
            series_list = [
                s for study in patient.studies.all() for s in study.series.filter(modality="CT")
            ]
            for series in series_list:
                self._report(
                    patient.patient_id,
                    f"segmentation {series.series_instance_uid}",
                    lambda s=series: services.request_segmentation(
                        s, engine=options["engine"], force=options["force"],
                        inline=options["inline"],
                    ),
                    counts,
                )  # fmt: skip
            if options["no_registration"]:
                continue
            for baseline, followup in selectors.consecutive_pairs(patient):
                self._report(
                    patient.patient_id,
                    f"registration {baseline.study.study_date} → {followup.study.study_date}",
                    lambda b=baseline, f=followup: services.request_registration(
                        b, f, backend=options["backend"], params=params,
                        force=options["force"], inline=options["inline"],
                    ),
                    counts,
                )  # fmt: skip
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no jobs"
        self.stdout.write(f"jobs: {summary}")

    def _report(self, patient_id: str, what: str, request: Any, counts: dict[str, int]) -> None:
        try:
            job: Job = request()
        except ApplicationError as error:
            self.stderr.write(f"{patient_id} {what}: refused: {error.message}")
            counts["refused"] = counts.get("refused", 0) + 1
            return
        counts[job.status] = counts.get(job.status, 0) + 1
        detail = ""
        if job.status == Job.Status.SUCCEEDED:
            if job.kind == Job.Kind.SEGMENTATION:
                detail = f" extent {job.result.get('extent_pct')} %"
            else:
                detail = f" mean log-Jacobian {job.result.get('mean_log_jacobian')}"
        elif job.status == Job.Status.FAILED:
            detail = f" — {job.error}"
        self.stdout.write(f"{patient_id} {what}: {job.status} (job {job.pk}){detail}")
