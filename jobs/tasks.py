"""Tasks take keyword-only primary keys, claim their row, call a service, return.

Segmentation and registration are declared on the ``cpu`` queue; ``jobs.services`` sends them
to ``gpu`` instead when ``ILD_GPU_QUEUE_ENABLED`` (an explicit queue wins over the router).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from celery.signals import worker_ready

from core.tasks import TransientError, task
from jobs import services
from jobs.failures import is_transient, readable_failure
from jobs.models import Job
from jobs.volume_check import check_series_volume

logger = logging.getLogger(__name__)

Work = Callable[[Job, Callable[[float], None]], dict[str, Any]]


@task(queue="cpu", soft_time_limit=services.TIME_LIMIT_S[Job.Kind.VOLUME_CHECK])
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


@task(queue="cpu", soft_time_limit=services.TIME_LIMIT_S[Job.Kind.SEGMENTATION])
def run_segmentation(*, job_pk: str) -> None:
    from jobs.segmentation import segment_series

    _execute(job_pk, segment_series, engine_key="engine")


@task(queue="cpu", soft_time_limit=services.TIME_LIMIT_S[Job.Kind.REGISTRATION])
def run_registration(*, job_pk: str) -> None:
    from jobs.registration import register_pair

    _execute(job_pk, register_pair, engine_key="backend")


def _execute(job_pk: str, work: Work, *, engine_key: str) -> None:
    """Claim, work with progress, then SUCCEEDED; or FAILED with a readable message and re-raise;
    or back to QUEUED and retry for a transient error while retries remain."""
    job = services.claim(job_pk)
    if job is None:
        return  # a redelivered message, or another worker has it
    try:
        result = work(job, lambda fraction: services.set_progress(job, fraction))
    except Exception as exc:
        if is_transient(exc) and _retries_left():
            logger.warning("job %s: transient failure, will retry: %s", job_pk, exc)
            services.requeue_for_retry(job)
            if isinstance(exc, TransientError):
                raise
            raise TransientError(str(exc)) from exc
        logger.exception("job %s (%s) failed", job_pk, job.kind)
        limit = services.TIME_LIMIT_S.get(Job.Kind(job.kind))
        services.fail(job, message=readable_failure(job.kind, exc, time_limit_s=limit))
        raise
    services.succeed(
        job,
        result=result,
        engine=str(result[engine_key])[:64],
        engine_version=str(result["version"])[:64],
    )


def _retries_left() -> bool:
    from celery import current_task

    if current_task is None or current_task.request.called_directly:
        return False
    return int(current_task.request.retries or 0) < int(current_task.max_retries or 0)


@worker_ready.connect
def build_the_default_worsening_model(**_: object) -> subprocess.Popen[bytes] | None:
    """Start building the default worsening classifier as a worker comes up, so that a fresh
    deployment's first registration does not wait the minute or two it takes.

    The build runs in its own process (torch threads in the worker's parent would not survive
    the pool's later forks); the worker takes jobs meanwhile, and a registration that needs the
    model waits on the build's file lock, then loads it. Nothing is started when the classifier
    is off or another model is configured, or when the default model is already there.
    """
    from inference.worsening import default_cache_dir
    from jobs.registration import worsening_choice

    if worsening_choice() != "default":
        return None
    if (default_cache_dir() / "metadata.json").is_file():
        return None
    logger.info("building the default worsening classifier in %s", default_cache_dir())
    return subprocess.Popen(
        [sys.executable, "-c", "from inference.worsening import default_model; default_model()"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
