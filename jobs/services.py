"""Create, claim and finish jobs. Tasks call these; views call ``request_*``."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.exceptions import ApplicationError
from jobs.models import Job
from studies.models import Series

logger = logging.getLogger(__name__)

ACTIVE = (Job.Status.PENDING, Job.Status.QUEUED, Job.Status.RUNNING)
# Seconds a task may run (the soft limit of its task declaration in jobs.tasks).
TIME_LIMIT_S = {
    Job.Kind.VOLUME_CHECK: 1800,
    Job.Kind.SEGMENTATION: 1800,
    Job.Kind.REGISTRATION: 3600,
}
# A RUNNING job this much older than its time limit lost its worker (killed, out of memory).
STALE_MARGIN = timedelta(minutes=10)
REGISTRATION_BACKENDS = ("torch", "elastix")
REGISTRATION_PARAM_KEYS = ("spacing_mm", "epsilon", "backend_params")


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


def inference_queue() -> str:
    """Segmentation and registration go to the ``gpu`` queue when a GPU worker serves it."""
    return "gpu" if settings.ILD_GPU_QUEUE_ENABLED else "cpu"


def request_segmentation(
    series: Series, *, engine: str = "classical", force: bool = False, inline: bool = False
) -> Job:
    """Segment lungs and ILD on ``series`` with ``engine``.

    Returns the waiting or running job for the same series and engine if there is one, else
    (unless ``force``) the last successful one, else a new QUEUED job enqueued on commit; its
    outputs go to ``jobs/segmentation/<SeriesInstanceUID>/<engine>/``, which a rerun overwrites.
    ``inline`` runs the new job in this process instead (management commands, demo data).

    Raises:
        ApplicationError: not a CT series, or an unknown engine name.
    """
    from inference.segmentation.engines import available_engines

    if series.modality != "CT":
        raise ApplicationError(f"only CT series can be segmented (this one is {series.modality})")
    if engine not in available_engines():
        raise ApplicationError(
            f"unknown segmentation engine {engine!r}; known: {', '.join(available_engines())}"
        )
    # The device is the worker's business (CUDA when it has it), not part of the request.
    params = {"engine": engine}
    return _request(
        kind=Job.Kind.SEGMENTATION,
        series=series,
        baseline_series=None,
        engine=engine,
        params=params,
        output_key=f"jobs/segmentation/{series.series_instance_uid}/{engine}",
        force=force,
        inline=inline,
    )


def request_registration(
    baseline_series: Series,
    followup_series: Series,
    *,
    backend: str = "torch",
    params: dict[str, Any] | None = None,
    force: bool = False,
    inline: bool = False,
) -> Job:
    """Register ``followup_series`` onto ``baseline_series`` (same patient) with ``backend``.

    ``params`` may set ``spacing_mm`` (isotropic registration grid, default 2.0), ``epsilon``
    (Jacobian clipping floor, default 1e-3) and ``backend_params`` (the backend's own
    parameters, see ``inference.registration``). Same reuse rules as
    :func:`request_segmentation`; outputs go to
    ``jobs/registration/<baseline UID>/<follow-up UID>/<backend>/``.

    Raises:
        ApplicationError: series of different patients, the same series twice, a follow-up
            dated before its baseline, a non-CT series, an unknown backend or parameter.
    """
    from jobs.registration import DEFAULT_EPSILON, DEFAULT_SPACING_MM

    if baseline_series.pk == followup_series.pk:
        raise ApplicationError("the baseline and the follow-up must be different series")
    for series in (baseline_series, followup_series):
        if series.modality != "CT":
            raise ApplicationError(
                f"only CT series can be registered (series {series.series_instance_uid} is "
                f"{series.modality})"
            )
    if baseline_series.study.patient_id != followup_series.study.patient_id:
        raise ApplicationError("the baseline and the follow-up belong to different patients")
    before, after = baseline_series.study.study_date, followup_series.study.study_date
    if before and after and after < before:
        raise ApplicationError(
            f"the follow-up ({after}) is dated before the baseline ({before}); swap them"
        )
    if backend not in REGISTRATION_BACKENDS:
        raise ApplicationError(
            f"unknown registration backend {backend!r}; known: {', '.join(REGISTRATION_BACKENDS)}"
        )
    given = dict(params or {})
    unknown = sorted(set(given) - set(REGISTRATION_PARAM_KEYS))
    if unknown:
        raise ApplicationError(f"unknown registration parameters: {', '.join(unknown)}")
    try:
        spacing_mm = float(given.get("spacing_mm", DEFAULT_SPACING_MM))
        epsilon = float(given.get("epsilon", DEFAULT_EPSILON))
    except (TypeError, ValueError):
        raise ApplicationError("spacing_mm and epsilon must be numbers") from None
    if not 0.5 <= spacing_mm <= 16.0 or not 0.0 < epsilon < 1.0:
        raise ApplicationError("spacing_mm must lie in [0.5, 16] mm and epsilon in (0, 1)")
    backend_params = given.get("backend_params") or {}
    if not isinstance(backend_params, dict):
        raise ApplicationError("backend_params must be an object")
    return _request(
        kind=Job.Kind.REGISTRATION,
        series=followup_series,
        baseline_series=baseline_series,
        engine=backend,
        params={
            "backend": backend,
            "spacing_mm": spacing_mm,
            "epsilon": epsilon,
            "backend_params": backend_params,
        },
        output_key=(
            f"jobs/registration/{baseline_series.series_instance_uid}/"
            f"{followup_series.series_instance_uid}/{backend}"
        ),
        force=force,
        inline=inline,
    )


def _request(
    *,
    kind: str,
    series: Series,
    baseline_series: Series | None,
    engine: str,
    params: dict[str, Any],
    output_key: str,
    force: bool,
    inline: bool,
) -> Job:
    same = Job.objects.filter(
        kind=kind, series=series, baseline_series=baseline_series, engine=engine
    )
    with transaction.atomic():
        job = same.select_for_update().filter(status__in=ACTIVE).first()
        if job is not None and _abandoned(job, force=force):
            fail(job, message=_abandoned_message(job))
            job = None
        if job is None and not force:
            done = same.filter(status=Job.Status.SUCCEEDED).order_by("-finished")[:5]
            job = next((j for j in done if j.params == params), None)
        if job is None:
            try:
                with transaction.atomic():
                    job = Job.objects.create(
                        kind=kind,
                        series=series,
                        baseline_series=baseline_series,
                        engine=engine,
                        status=Job.Status.QUEUED,
                        params=params,
                        output_key=output_key,
                    )
            except IntegrityError:
                # Another request created it between our look and our insert.
                return same.get(status__in=ACTIVE)
            if not inline:
                created = job
                transaction.on_commit(lambda: _enqueue(created))
    if inline and job.status == Job.Status.QUEUED:
        # Also a job queued earlier that no worker has taken yet: the claim is atomic, so a
        # worker that gets its message later finds it taken and returns.
        run_inline(job)
        job.refresh_from_db()
    return job


def _task_for(kind: str) -> Any:
    from jobs import tasks

    return {
        Job.Kind.VOLUME_CHECK: tasks.run_volume_check,
        Job.Kind.SEGMENTATION: tasks.run_segmentation,
        Job.Kind.REGISTRATION: tasks.run_registration,
    }[Job.Kind(kind)]


def _enqueue(job: Job) -> None:
    queue = "cpu" if job.kind == Job.Kind.VOLUME_CHECK else inference_queue()
    _task_for(job.kind).apply_async(kwargs={"job_pk": str(job.pk)}, queue=queue)


def run_inline(job: Job) -> None:
    """Run a QUEUED job in this process, through the task (claim, retries, failure handling);
    the outcome is on the row, exceptions are not raised."""
    _task_for(job.kind).apply(kwargs={"job_pk": str(job.pk)}, throw=False)


def _abandoned(job: Job, *, force: bool) -> bool:
    """A RUNNING job whose worker died, or (when forcing) a QUEUED one no worker took."""
    limit = timedelta(seconds=TIME_LIMIT_S.get(Job.Kind(job.kind), 3600)) + STALE_MARGIN
    now = timezone.now()
    if job.status == Job.Status.RUNNING:
        return job.started is not None and now - job.started > limit
    return force and job.status == Job.Status.QUEUED and now - job.created > limit


def _abandoned_message(job: Job) -> str:
    if job.status == Job.Status.RUNNING:
        return (
            "The worker running this job stopped before it finished (restarted or out of "
            "memory); the job was requested again."
        )
    return "No worker picked this job up in time; the job was requested again."


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
