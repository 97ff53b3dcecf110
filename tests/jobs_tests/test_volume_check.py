"""The volume-check job: claim once, run twice safely, fail with a readable message."""

from __future__ import annotations

import os
import time

import pytest
from django.conf import settings

from jobs import services
from jobs.models import Job
from jobs.tasks import run_volume_check
from studies.models import Instance, Series
from studies.services import storage
from studies.services.ingest import ingest_datasets_bytes
from tests.dicom_builders import ct_series_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def series(project):
    files = ct_series_bytes(4, size=16)
    ingest_datasets_bytes([(str(i), d) for i, d in enumerate(files)], project=project)
    return Series.objects.get()


def test_it_builds_the_volume_and_records_it(series, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = services.request_volume_check(series)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.result["shape_kji"] == [4, 16, 16]
    assert job.result["spacing_mm"][2] == pytest.approx(2.0)
    assert job.engine == "inference.dicom"


def test_running_it_twice_does_not_run_it_again(series, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = services.request_volume_check(series)
    job.refresh_from_db()
    finished = job.finished
    run_volume_check(job_pk=str(job.pk))  # a redelivered message
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.finished == finished
    assert job.attempts == 1


def test_requesting_twice_while_queued_returns_the_same_job(series):
    first = services.request_volume_check(series)
    second = services.request_volume_check(series)
    assert first.pk == second.pk
    assert Job.objects.count() == 1


def test_a_broken_series_fails_with_a_message(series, django_capture_on_commit_callbacks):
    victim = Instance.objects.order_by("instance_number")[1]
    storage.absolute(victim.file).write_bytes(b"not dicom any more")
    with django_capture_on_commit_callbacks(execute=True):
        job = services.request_volume_check(series)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error


@pytest.mark.skipif(
    settings.CELERY_BROKER_URL.startswith("filesystem://")
    or settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"),
    reason="needs a real broker and database (CI sets CELERY_BROKER_URL and DATABASE_URL)",
)
@pytest.mark.django_db(transaction=True)
def test_it_runs_through_the_real_broker_and_a_worker(project, settings):
    from celery.contrib.testing.worker import start_worker

    from webapp.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = False
    app.conf.task_always_eager = False
    files = ct_series_bytes(3, size=16)
    ingest_datasets_bytes([(str(i), d) for i, d in enumerate(files)], project=project)
    series = Series.objects.get()
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=["cpu"]):
            job = services.request_volume_check(series)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                job.refresh_from_db()
                if job.status in (Job.Status.SUCCEEDED, Job.Status.FAILED):
                    break
                time.sleep(0.2)
    finally:
        app.conf.task_always_eager = True
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["shape_kji"] == [3, 16, 16]
    assert os.environ.get("CELERY_BROKER_URL", "").startswith(("redis://", "amqp://"))
