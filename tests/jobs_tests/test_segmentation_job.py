"""The segmentation job: outputs and provenance, run-it-twice, reruns, progress, failures, queues."""

from __future__ import annotations

import time

import numpy as np
import pytest
from django.conf import settings
from django.db import OperationalError

from jobs import services
from jobs.models import Job
from jobs.tasks import run_segmentation
from studies.models import Instance
from studies.services import storage

pytestmark = pytest.mark.django_db


def segment(series, django_capture_on_commit_callbacks, **kwargs):
    with django_capture_on_commit_callbacks(execute=True):
        job = services.request_segmentation(series, **kwargs)
    job.refresh_from_db()
    return job


def files_under(key: str) -> list[str]:
    root = storage.absolute(key).parent
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_it_segments_the_series_and_records_engine_and_version(
    baseline_series, phantom_files, django_capture_on_commit_callbacks
):
    job = segment(baseline_series, django_capture_on_commit_callbacks)

    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.engine == "classical" and job.engine_version
    result = job.result
    assert result["engine"] == "classical" and result["version"] == job.engine_version
    assert result["parameters"]["device"] == "cpu"
    assert result["lung_ml"] > 0 and 0 < result["extent_pct"] < 40
    # the classical engine on a coarse phantom: within a few points of the truth
    assert abs(result["extent_pct"] - 12.7) < 8
    assert {"read", "segment/total", "write_dicom_seg", "total"} <= set(result["timings_s"])
    assert job.output_key == f"jobs/segmentation/{baseline_series.series_instance_uid}/classical"
    for key in ("label_map_npz", "label_map_nifti", "dicom_seg"):
        assert result[key].startswith(job.output_key + "/")
        assert storage.absolute(result[key]).is_file()


def test_the_label_map_follows_the_model_overlay_contract(
    baseline_series, django_capture_on_commit_callbacks
):
    from annotation.services.model_output import model_mask

    job = segment(baseline_series, django_capture_on_commit_callbacks)

    with np.load(storage.absolute(job.result["label_map_npz"])) as data:
        labels = data["labels"]
        uids = [str(u) for u in data["sop_instance_uids"]]
    assert labels.dtype == np.uint8 and labels.shape == (24, 64, 64)
    assert set(np.unique(labels)) <= {0, 1, 2}
    # slice k is the image at the k-th position along the normal (InstanceNumber order here)
    expected = list(
        Instance.objects.filter(series=baseline_series)
        .order_by("instance_number")
        .values_list("sop_instance_uid", flat=True)
    )
    assert uids == expected
    k = int(np.argmax((labels == 2).sum(axis=(1, 2))))
    ild = model_mask(baseline_series, uids[k], "ild")
    assert ild is not None and np.array_equal(ild, labels[k] == 2)
    per_slice = {row["index_k"]: row for row in job.result["per_slice"]}
    assert per_slice[k]["sop_instance_uid"] == uids[k]
    assert per_slice[k]["ild_ml"] > 0


def test_running_the_task_twice_does_not_run_it_again(
    baseline_series, django_capture_on_commit_callbacks
):
    job = segment(baseline_series, django_capture_on_commit_callbacks)
    finished, result = job.finished, job.result

    run_segmentation(job_pk=str(job.pk))  # a redelivered message

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.finished == finished and job.result == result
    assert job.attempts == 1


def test_requesting_again_reuses_the_finished_job(
    baseline_series, django_capture_on_commit_callbacks
):
    first = segment(baseline_series, django_capture_on_commit_callbacks)
    second = segment(baseline_series, django_capture_on_commit_callbacks)

    assert second.pk == first.pk
    assert Job.objects.filter(kind=Job.Kind.SEGMENTATION).count() == 1


def test_requesting_twice_while_queued_returns_the_same_job(baseline_series):
    first = services.request_segmentation(baseline_series)
    second = services.request_segmentation(baseline_series)

    assert first.pk == second.pk
    assert first.status == Job.Status.QUEUED


def test_a_forced_rerun_overwrites_the_same_outputs(
    baseline_series, django_capture_on_commit_callbacks
):
    first = segment(baseline_series, django_capture_on_commit_callbacks)
    files_before = files_under(first.output_key)
    npz = storage.absolute(first.result["label_map_npz"])
    mtime = npz.stat().st_mtime_ns
    time.sleep(0.01)  # let the rewrite show in the mtime (not a timing assertion)

    second = segment(baseline_series, django_capture_on_commit_callbacks, force=True)

    assert second.pk != first.pk and second.status == Job.Status.SUCCEEDED
    assert second.output_key == first.output_key
    assert second.result["label_map_npz"] == first.result["label_map_npz"]
    assert files_under(second.output_key) == files_before  # same names, nothing added
    assert npz.stat().st_mtime_ns > mtime
    assert second.result["extent_pct"] == first.result["extent_pct"]


def test_progress_is_reported_while_it_runs(
    baseline_series, django_capture_on_commit_callbacks, monkeypatch
):
    seen: list[float] = []
    original = services.set_progress

    def record(job, fraction):
        original(job, fraction)
        seen.append(Job.objects.get(pk=job.pk).progress)

    monkeypatch.setattr(services, "set_progress", record)
    job = segment(baseline_series, django_capture_on_commit_callbacks)

    assert len(seen) >= 5
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] < 1
    assert job.progress == 1.0


def test_an_unavailable_engine_fails_with_a_readable_message(
    baseline_series, django_capture_on_commit_callbacks, monkeypatch, tmp_path
):
    monkeypatch.setenv("ILD_MODELS_DIR", str(tmp_path / "no-models"))

    job = segment(baseline_series, django_capture_on_commit_callbacks, engine="unet")

    assert job.status == Job.Status.FAILED
    assert job.error.startswith("The segmentation could not start: the segmentation engine")
    assert "Traceback" not in job.error
    assert not storage.absolute(job.output_key).exists()


def test_a_broken_series_fails_with_a_message(baseline_series, django_capture_on_commit_callbacks):
    victim = Instance.objects.filter(series=baseline_series).order_by("instance_number")[3]
    storage.absolute(victim.file).write_bytes(b"not dicom any more")

    job = segment(baseline_series, django_capture_on_commit_callbacks)

    assert job.status == Job.Status.FAILED
    assert job.error.startswith("The segmentation failed: the CT series cannot be used")


def test_an_unknown_engine_is_refused_before_queueing(baseline_series):
    from core.exceptions import ApplicationError

    with pytest.raises(ApplicationError, match="unknown segmentation engine"):
        services.request_segmentation(baseline_series, engine="magic")
    assert not Job.objects.exists()


def test_a_transient_error_is_retried(
    baseline_series, django_capture_on_commit_callbacks, monkeypatch
):
    from jobs import segmentation

    calls = {"n": 0}
    real = segmentation.segment_series

    def flaky(job, progress):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(job, progress)

    monkeypatch.setattr(segmentation, "segment_series", flaky)
    job = segment(baseline_series, django_capture_on_commit_callbacks)

    assert job.status == Job.Status.SUCCEEDED
    assert job.attempts == 2


def test_it_goes_to_the_gpu_queue_when_enabled(
    baseline_series, django_capture_on_commit_callbacks, monkeypatch, settings
):
    sent = []
    monkeypatch.setattr(run_segmentation, "apply_async", lambda **kw: sent.append(kw))

    settings.ILD_GPU_QUEUE_ENABLED = True
    with django_capture_on_commit_callbacks(execute=True):
        job = services.request_segmentation(baseline_series)
    settings.ILD_GPU_QUEUE_ENABLED = False
    with django_capture_on_commit_callbacks(execute=True):
        services.request_segmentation(baseline_series, engine="atlasnet")

    assert [s["queue"] for s in sent] == ["gpu", "cpu"]
    assert sent[0]["kwargs"] == {"job_pk": str(job.pk)}


@pytest.mark.skipif(
    settings.CELERY_BROKER_URL.startswith("filesystem://")
    or settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"),
    reason="needs a real broker and database (CI sets CELERY_BROKER_URL and DATABASE_URL)",
)
@pytest.mark.django_db(transaction=True)
def test_it_runs_through_the_real_broker_on_the_cpu_queue(baseline_series, settings):
    from celery.contrib.testing.worker import start_worker

    from webapp.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = False
    app.conf.task_always_eager = False
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=["cpu"]):
            job = services.request_segmentation(baseline_series)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                job.refresh_from_db()
                if job.status in (Job.Status.SUCCEEDED, Job.Status.FAILED):
                    break
                time.sleep(0.2)
    finally:
        app.conf.task_always_eager = True
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["label_map_npz"]


def test_run_jobs_inline_runs_them_here(baseline_series, followup_series):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("run_jobs", "--all", "--inline", "--no-registration", stdout=out)

    assert set(Job.objects.values_list("kind", "status")) == {("segmentation", "succeeded")}
    assert Job.objects.count() == 2
    assert "jobs: 2 succeeded" in out.getvalue()
