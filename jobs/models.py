"""A row per background job; Celery only carries its primary key."""

from __future__ import annotations

from django.db import models

from core.models import BaseModel
from studies.models import Series

ACTIVE_STATUSES = ("pending", "queued", "running")


class Job(BaseModel):
    class Status(models.TextChoices):
        PENDING = "pending"
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    class Kind(models.TextChoices):
        VOLUME_CHECK = "volume_check", "Build and check the CT volume"
        SEGMENTATION = "segmentation", "Segment the lungs and ILD"
        REGISTRATION = "registration", "Register the follow-up CT onto the baseline CT"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    # The series the job is about; for a registration, the follow-up (the moving image), as in
    # annotation's longitudinal ReadingCase (series = follow-up, baseline_series = baseline).
    series = models.ForeignKey(Series, on_delete=models.PROTECT, related_name="jobs", null=True)
    # Registration only: the baseline (fixed) series; outputs lie on its grid.
    baseline_series = models.ForeignKey(
        Series, on_delete=models.PROTECT, related_name="baseline_jobs", null=True, blank=True
    )
    params = models.JSONField(default=dict, blank=True)
    # The key under which outputs are stored; a rerun overwrites them, never duplicates.
    output_key = models.CharField(max_length=200, blank=True)
    progress = models.FloatField(default=0.0)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # Segmentation engine / registration backend: set when requested (it selects the outputs'
    # key and the "one active job" slot); engine_version once the engine has run.
    engine = models.CharField(max_length=64, blank=True)
    engine_version = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            # One waiting or running job per kind, series and engine ...
            models.UniqueConstraint(
                fields=["kind", "series", "engine"],
                condition=models.Q(status__in=ACTIVE_STATUSES, baseline_series__isnull=True),
                name="one_active_job_per_kind_and_series",
            ),
            # ... and per kind, (baseline, follow-up) pair and backend.
            models.UniqueConstraint(
                fields=["kind", "series", "baseline_series", "engine"],
                condition=models.Q(status__in=ACTIVE_STATUSES, baseline_series__isnull=False),
                name="one_active_job_per_kind_and_pair",
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(kind="registration", baseline_series__isnull=False)
                    & ~models.Q(baseline_series=models.F("series"))
                )
                | (~models.Q(kind="registration") & models.Q(baseline_series__isnull=True)),
                name="registration_has_a_distinct_baseline",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.status} {self.pk}"
