"""The registration job on a tiny "worse" phantom pair: shrinkage found, outputs on the baseline
grid, slice correspondence, run-it-twice, reruns, progress, failures, validation."""

from __future__ import annotations

import numpy as np
import pytest

from core.exceptions import ApplicationError
from jobs import services
from jobs.models import Job
from jobs.tasks import run_registration
from studies.services import storage
from tests.jobs_tests.conftest import FAST_REGISTRATION

pytestmark = pytest.mark.django_db


def register(baseline, followup, capture, **kwargs):
    kwargs.setdefault("params", FAST_REGISTRATION)
    with capture(execute=True):
        job = services.request_registration(baseline, followup, **kwargs)
    job.refresh_from_db()
    return job


@pytest.fixture
def registered(baseline_series, followup_series, django_capture_on_commit_callbacks):
    return register(baseline_series, followup_series, django_capture_on_commit_callbacks)


def test_it_finds_the_shrinkage_of_a_worse_pair(registered, phantom_files):
    assert registered.status == Job.Status.SUCCEEDED, registered.error
    result = registered.result
    assert phantom_files.true_mean_log_jacobian < -0.05  # the scenario, not the engine
    assert result["mean_log_jacobian"] < 0
    assert result["mean_log_jacobian"] == pytest.approx(
        phantom_files.true_mean_log_jacobian, abs=0.1
    )
    assert set(result["regional"]) == {"superior", "inferior", "anterior", "posterior"}
    assert all(isinstance(v, float) for v in result["regional"].values())
    assert 0 <= result["folding_fraction"] < 0.01
    assert 0 <= result["clipped_fraction"] < 0.01


def test_it_records_backend_version_and_parameters(registered):
    result = registered.result
    assert registered.engine == result["backend"] == "torch"
    assert registered.engine_version and registered.engine_version in result["version"]
    assert result["params"]["spacing_mm"] == 12.0
    assert result["params"]["levels_mm"] == [12.0]  # the backend's merged parameters
    assert result["params"]["fixed_mask"] == "inference.segmentation.classical.lung_mask"
    assert result["registration_grid"]["shape_kji"] == [27, 30, 30]
    assert {"read", "pipeline", "to_baseline_grid", "correspondence", "total"} <= set(
        result["timings_s"]
    )


def test_the_log_jacobian_lies_on_the_baseline_grid(registered, baseline_series):
    result = registered.result
    assert result["log_jacobian"].startswith(registered.output_key + "/")
    with np.load(storage.absolute(result["log_jacobian"])) as data:
        logjac = data["log_jacobian"].astype(np.float32)
        lung = data["lung"]
        uids = [str(u) for u in data["sop_instance_uids"]]
    assert logjac.shape == lung.shape == (24, 64, 64)
    assert uids == list(
        baseline_series.instances.order_by("instance_number").values_list(
            "sop_instance_uid", flat=True
        )
    )
    inside = lung > 0
    assert inside.sum() > 1000
    # the baseline-grid map carries the same shrinkage as the isotropic summary
    assert logjac[inside].mean() == pytest.approx(result["mean_log_jacobian"], abs=0.05)
    for key in ("displacement", "log_jacobian_iso", "warped_followup", "summary"):
        assert storage.absolute(result[key]).is_file()


def test_each_baseline_slice_has_a_matching_followup_slice(registered, followup_series):
    result = registered.result
    followup_k = result["followup_slice_for_baseline_slice"]
    assert len(followup_k) == 24
    assert all(0 <= k < 24 for k in followup_k)
    # both CTs share a grid and the lungs barely move: the match is near the same index
    assert all(abs(k2 - k) <= 3 for k, k2 in enumerate(followup_k))
    assert np.all(np.diff(followup_k) >= 0)
    uids = list(
        followup_series.instances.order_by("instance_number").values_list(
            "sop_instance_uid", flat=True
        )
    )
    assert result["followup_sop_for_baseline_slice"] == [uids[k] for k in followup_k]


def test_the_correspondence_follows_the_displacement():
    from inference.volume import Volume
    from jobs.registration import followup_slice_for_baseline_slice

    baseline = Volume(np.zeros((10, 8, 8), np.int16), (2.0, 2.0, 5.0), (0.0, 0.0, -20.0))
    followup = Volume(np.zeros((12, 8, 8), np.int16), (2.0, 2.0, 5.0), (0.0, 0.0, -30.0))
    lung = np.ones((10, 8, 8), dtype=np.uint8)
    shift = np.zeros((10, 8, 8, 3), dtype=np.float32)
    shift[..., 2] = 5.0  # baseline point x ↔ follow-up point x + 5 mm (one slice up)

    followup_k = followup_slice_for_baseline_slice(shift, baseline, baseline, lung, followup)

    # baseline k at z = -20 + 5k ↔ follow-up z = -15 + 5k = -30 + 5 (k + 3)
    assert followup_k == [min(k + 3, 11) for k in range(10)]


def test_running_the_task_twice_does_not_run_it_again(registered):
    finished = registered.finished

    run_registration(job_pk=str(registered.pk))

    registered.refresh_from_db()
    assert registered.finished == finished and registered.attempts == 1


def test_a_forced_rerun_overwrites_the_same_outputs(
    registered, baseline_series, followup_series, django_capture_on_commit_callbacks
):
    root = storage.absolute(registered.output_key)
    before = sorted(p.name for p in root.iterdir())

    again = register(
        baseline_series, followup_series, django_capture_on_commit_callbacks, force=True
    )

    assert again.pk != registered.pk and again.status == Job.Status.SUCCEEDED
    assert again.output_key == registered.output_key
    assert sorted(p.name for p in root.iterdir()) == before
    assert [p.name for p in root.parent.iterdir()] == ["torch"]  # no staging folder left
    assert again.result["mean_log_jacobian"] == pytest.approx(
        registered.result["mean_log_jacobian"], abs=1e-6
    )


def test_requesting_again_reuses_the_finished_job(
    registered, baseline_series, followup_series, django_capture_on_commit_callbacks
):
    again = register(baseline_series, followup_series, django_capture_on_commit_callbacks)
    assert again.pk == registered.pk


def test_progress_is_reported(
    baseline_series, followup_series, django_capture_on_commit_callbacks, monkeypatch
):
    seen: list[float] = []
    original = services.set_progress
    monkeypatch.setattr(services, "set_progress", lambda job, f: (original(job, f), seen.append(f)))

    job = register(baseline_series, followup_series, django_capture_on_commit_callbacks)

    assert job.status == Job.Status.SUCCEEDED
    assert len(seen) >= 5 and seen == sorted(seen) and seen[-1] < 1
    assert job.progress == 1.0


def test_a_bad_backend_parameter_fails_with_a_readable_message(
    baseline_series, followup_series, django_capture_on_commit_callbacks
):
    params = {"spacing_mm": 12.0, "backend_params": {"iterationz": [10]}}

    job = register(
        baseline_series, followup_series, django_capture_on_commit_callbacks, params=params
    )

    assert job.status == Job.Status.FAILED
    assert job.error == (
        "The registration failed: unknown torch registration parameters: ['iterationz']"
    )
    assert not storage.absolute(job.output_key).exists()


def test_the_pair_is_checked_before_queueing(baseline_series, followup_series):
    with pytest.raises(ApplicationError, match="dated before the baseline"):
        services.request_registration(followup_series, baseline_series)
    with pytest.raises(ApplicationError, match="different series"):
        services.request_registration(baseline_series, baseline_series)
    with pytest.raises(ApplicationError, match="unknown registration backend"):
        services.request_registration(baseline_series, followup_series, backend="ants")
    with pytest.raises(ApplicationError, match="unknown registration parameters"):
        services.request_registration(baseline_series, followup_series, params={"spacing": 1})
    assert not Job.objects.exists()


def test_one_active_registration_per_pair_and_backend(baseline_series, followup_series):
    first = services.request_registration(baseline_series, followup_series)
    second = services.request_registration(baseline_series, followup_series)
    other = services.request_registration(baseline_series, followup_series, backend="elastix")

    assert first.pk == second.pk and other.pk != first.pk
    assert first.series == followup_series and first.baseline_series == baseline_series


def test_run_jobs_queues_every_series_and_each_consecutive_pair(
    baseline_series, followup_series, django_capture_on_commit_callbacks, monkeypatch
):
    from io import StringIO

    from django.core.management import call_command

    from jobs import tasks

    sent = []
    for name in ("run_segmentation", "run_registration"):
        monkeypatch.setattr(getattr(tasks, name), "apply_async", lambda **kw: sent.append(kw))
    out = StringIO()

    with django_capture_on_commit_callbacks(execute=True):
        call_command("run_jobs", "--patient=JOBS-001", "--spacing-mm=4", stdout=out)

    jobs = Job.objects.order_by("kind", "created")
    assert [(j.kind, j.status) for j in jobs] == [
        ("registration", "queued"),
        ("segmentation", "queued"),
        ("segmentation", "queued"),
    ]
    registration = jobs[0]
    assert (registration.baseline_series, registration.series) == (baseline_series, followup_series)
    assert registration.params["spacing_mm"] == 4.0
    assert len(sent) == 3 and {s["queue"] for s in sent} == {"cpu"}
    assert "jobs: 3 queued" in out.getvalue()


def test_the_classifier_is_recorded_as_off_when_disabled(registered):
    assert registered.result["worsening"] == {"status": "off"}


def test_an_unusable_classifier_model_is_reported_without_failing_the_registration(
    baseline_series, followup_series, django_capture_on_commit_callbacks, settings, tmp_path
):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "metadata.json").write_text("{not json")
    settings.WORSENING_CLASSIFIER = str(broken)
    job = register(baseline_series, followup_series, django_capture_on_commit_callbacks)
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["mean_log_jacobian"] < 0
    assert job.result["worsening"]["error"].startswith("worsening classifier:")


@pytest.fixture
def tiny_worsening_model(tmp_path):
    """A worsening model whose template is built from this pair, trained for two epochs on
    separable random maps: enough to exercise the job's classifier step, not to be accurate."""
    import torch

    from inference.phantoms import make_longitudinal_pair
    from inference.worsening import (
        TemplateCase,
        TemplateSettings,
        TrainingConfig,
        build_template,
        load_model,
        save_model,
    )
    from inference.worsening.classifier import build_model, stratified_split, train_target
    from tests.jobs_tests.conftest import PAIR_SEED, SHAPE_KJI

    torch.manual_seed(0)
    baseline = make_longitudinal_pair(seed=PAIR_SEED, shape_kji=SHAPE_KJI, progression="worse")
    params = {"affine_levels_mm": [24.0], "affine_iterations": [20], "levels_mm": [24.0],
              "iterations": [10], "threads": 1, "seed": 0}  # fmt: skip
    settings = TemplateSettings(spacing_mm=12.0, margin_mm=12.0, iterations=0, params=params)
    template = build_template(
        [
            TemplateCase("B", baseline.baseline.ct, baseline.baseline.lungs_lr),
            TemplateCase("F", baseline.followup.ct, baseline.followup.lungs_lr),
        ],
        settings,
    ).template
    rng = np.random.default_rng(0)
    y = [bool(n % 2) for n in range(12)]
    x = rng.normal(0, 0.02, size=(12, *template.shape_kji)).astype(np.float32)
    x[np.asarray(y)] -= 0.1
    train, val = stratified_split(y, val_fraction=0.25, seed=0)
    config = TrainingConfig(epochs=2)
    trained = {t: train_target(t, x, y, train, val, config) for t in ("functional", "morphologic")}
    model = build_model(template, trained, config, training={"dataset_digest": "sha256:test"})
    folder = save_model(model, tmp_path / "worsening")
    return folder, load_model(folder)


def test_the_classifier_adds_probabilities_and_a_template_space_map(
    baseline_series, followup_series, django_capture_on_commit_callbacks, settings,
    tiny_worsening_model,
):  # fmt: skip
    folder, model = tiny_worsening_model
    settings.WORSENING_CLASSIFIER = str(folder)
    job = register(baseline_series, followup_series, django_capture_on_commit_callbacks)
    assert job.status == Job.Status.SUCCEEDED, job.error
    worsening = job.result["worsening"]
    assert "error" not in worsening, worsening
    assert worsening["model_version"] == model.version
    assert worsening["template_digest"] == model.template.digest
    for target in ("functional", "morphologic"):
        call = worsening[target]
        assert 0.0 <= call["probability"] <= 1.0
        assert call["predicted"] == (call["probability"] >= call["threshold"])
    with np.load(storage.absolute(worsening["template_map"])) as data:
        assert data["log_jacobian"].shape == model.template.shape_kji
        np.testing.assert_array_equal(data["lung"], model.template.lung.array)
        assert str(data["template_digest"]) == model.template.digest
        inside = data["lung"] > 0
        mapped_mean = float(data["log_jacobian"][inside].mean())
    # the shrinkage survives the trip to the template
    assert mapped_mean < 0
    assert mapped_mean == pytest.approx(worsening["template_mean_log_jacobian"], abs=1e-4)
