"""Create, claim and finish jobs. Tasks call these; views call ``request_*``."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from jobs.models import Job
from studies.models import Series

logger = logging.getLogger(__name__)


def request_volume_check(series: Series) -> Job:
    """Queue a volume check unless one is already waiting or running for this series."""
    from jobs.tasks import run_volume_check

    with transaction.atomic():
        active = Job.objects.filter(
            kind=Job.Kind.VOLUME_CHECK,
            series=series,
            status__in=[Job.Status.PENDING, Job.Status.QUEUED, Job.Status.RUNNING],
        ).first()
        if active is not None:
            return active
        job = Job.objects.create(
            kind=Job.Kind.VOLUME_CHECK,
            series=series,
            status=Job.Status.QUEUED,
            output_key=f"jobs/volume_check/{series.series_instance_uid}",
        )
        transaction.on_commit(lambda: run_volume_check.delay(job_pk=str(job.pk)))
    return job


def claim(job_pk: str) -> Job | None:
    """Move QUEUED → RUNNING; None when another worker got it first or it is already done."""
    claimed = Job.objects.filter(pk=job_pk, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, started=timezone.now(), progress=0.0
    )
    if claimed != 1:
        return None
    job = Job.objects.get(pk=job_pk)
    Job.objects.filter(pk=job_pk).update(attempts=job.attempts + 1)
    return job


def succeed(
    job: Job, *, result: dict[str, Any], engine: str = "", engine_version: str = ""
) -> None:
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.SUCCEEDED,
        result=result,
        progress=1.0,
        engine=engine,
        engine_version=engine_version,
        error="",
        finished=timezone.now(),
    )


def fail(job: Job, *, message: str) -> None:
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.FAILED, error=message, finished=timezone.now()
    )


def requeue_for_retry(job: Job) -> None:
    Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(status=Job.Status.QUEUED)


def set_progress(job: Job, fraction: float) -> None:
    Job.objects.filter(pk=job.pk).update(progress=max(0.0, min(1.0, fraction)))
