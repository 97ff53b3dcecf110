"""Tasks take keyword-only primary keys, claim their row, call a service, return."""

from __future__ import annotations

from core.tasks import TransientError, task
from jobs import services
from jobs.volume_check import check_series_volume


@task(queue="cpu", soft_time_limit=1800)
def run_volume_check(*, job_pk: str) -> None:
    job = services.claim(job_pk)
    if job is None:
        return
    try:
        result = check_series_volume(job)
    except TransientError:
        services.requeue_for_retry(job)
        raise
    except Exception as exc:
        services.fail(job, message=f"{type(exc).__name__}: {exc}")
        raise
    services.succeed(job, result=result, engine="inference.dicom", engine_version="1")
