"""The engine adapter: label maps of fabricated segmentation jobs (npz and NIfTI), extents."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.models import Job
from reports.models import JobExtent
from reports.services import engines
from tests.reports_tests.conftest import write_label_map

pytestmark = pytest.mark.django_db


def labels_for(series):
    from annotation.services.setup import _ordered_instances

    out = {}
    for k, instance in enumerate(_ordered_instances(series)):
        labels = np.zeros((16, 16), np.uint8)
        labels[2:12, 2:12] = 1
        labels[4 : 4 + k, 4:8] = 2
        out[instance.sop_instance_uid] = labels
    return out


def test_no_job_means_none(series):
    assert engines.engine_masks_for(series, "atlasnet") is None


def test_failed_or_other_engine_jobs_are_ignored(series):
    write_label_map(series, labels_for(series), engine="unet")
    Job.objects.create(
        kind="segmentation", status=Job.Status.FAILED, series=series, engine="atlasnet"
    )
    assert engines.engine_masks_for(series, "atlasnet") is None
    assert engines.engine_masks_for(series, "unet") is not None


def test_npz_label_map_gives_lung_and_ild_per_sop(series):
    labels = labels_for(series)
    write_label_map(series, labels)
    masks = engines.engine_masks_for(series, "atlasnet")
    assert set(masks) == set(labels)
    for uid, (lung, ild) in masks.items():
        assert np.array_equal(lung, labels[uid] > 0)
        assert np.array_equal(ild, labels[uid] == 2)


def test_the_latest_successful_job_wins(series):
    labels = labels_for(series)
    write_label_map(series, labels, name="old")
    newer = {uid: np.zeros_like(v) for uid, v in labels.items()}
    job = write_label_map(series, newer, name="new")
    from django.utils import timezone

    Job.objects.filter(pk=job.pk).update(finished=timezone.now())
    masks = engines.engine_masks_for(series, "atlasnet")
    assert all(not lung.any() for lung, _ in masks.values())


def test_nifti_label_map_is_matched_by_position(series, settings):
    from annotation.services.setup import _ordered_instances
    from inference.imageio import write_image
    from inference.volume import Volume

    instances = _ordered_instances(series)  # head first: z = 0, -2, ..., -8
    labels = labels_for(series)
    # the volume's k runs feet to head (z = -8 first), as most NIfTI writers store it
    stack = np.stack([labels[i.sop_instance_uid] for i in reversed(instances)])
    volume = Volume(stack, spacing_mm=(2.0, 2.0, 2.0), origin_lps_mm=(-16.0, -16.0, -8.0))
    relpath = f"jobs/segmentation/{series.series_instance_uid}/labels.nii.gz"
    path = settings.STORAGE_ROOT / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(volume, path)
    Job.objects.create(
        kind="segmentation",
        status=Job.Status.SUCCEEDED,
        series=series,
        engine="atlasnet",
        result={"label_map": relpath},
    )
    masks = engines.engine_masks_for(series, "atlasnet")
    assert set(masks) == set(labels)
    for uid, (_, ild) in masks.items():
        assert np.array_equal(ild, labels[uid] == 2)


def test_extent_from_the_result_or_computed_once_from_the_label_map(series):
    job = write_label_map(series, labels_for(series), extent_pct=12.5)
    assert engines.job_extent_pct(job) == 12.5
    other = write_label_map(series, labels_for(series), engine="unet")
    labels = labels_for(series)
    ild = sum(int((v == 2).sum()) for v in labels.values())
    lung = sum(int((v > 0).sum()) for v in labels.values())
    assert engines.job_extent_pct(other) == pytest.approx(100 * ild / lung)
    assert JobExtent.objects.get(job=other).ild_voxels == ild
