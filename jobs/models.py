"""A row per background job; Celery only carries its primary key."""

from __future__ import annotations

from django.db import models

from core.models import BaseModel
from studies.models import Series


class Job(BaseModel):
    class Status(models.TextChoices):
        PENDING = "pending"
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    class Kind(models.TextChoices):
        VOLUME_CHECK = "volume_check", "Build and check the CT volume"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    series = models.ForeignKey(Series, on_delete=models.PROTECT, related_name="jobs", null=True)
    params = models.JSONField(default=dict, blank=True)
    # The key under which outputs are stored; a rerun overwrites them, never duplicates.
    output_key = models.CharField(max_length=200, blank=True)
    progress = models.FloatField(default=0.0)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    engine = models.CharField(max_length=64, blank=True)
    engine_version = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "series"],
                condition=models.Q(status__in=["pending", "queued", "running"]),
                name="one_active_job_per_kind_and_series",
            )
        ]
