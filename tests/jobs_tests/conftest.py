"""A tiny phantom patient for the segmentation and registration jobs.

One "worse" longitudinal pair (24 × 64 × 64 voxels of 5.6 × 5.6 × 13.3 mm), written once per
session as two DICOM series (baseline 2019, follow-up 2022) and ingested per test. Seed 3 is a
pair whose true mean log-Jacobian over the lung is clearly negative (-0.10: shrinkage).
Registration runs on a 12 mm isotropic grid (27 × 30 × 30) with few iterations.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest

PAIR_SEED = 3
SHAPE_KJI = (24, 64, 64)
FAST_REGISTRATION = {
    "spacing_mm": 12.0,
    "backend_params": {
        "levels_mm": [12.0],
        "iterations": [40],
        "affine_levels_mm": [12.0],
        "affine_iterations": [40],
        "threads": 1,
    },
}


@dataclass(frozen=True)
class PhantomFiles:
    baseline_dir: Path
    followup_dir: Path
    true_mean_log_jacobian: float
    baseline_labels: object  # inference.volume.Volume, the ground-truth label map


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory) -> PhantomFiles:
    from inference.phantoms import make_longitudinal_pair
    from inference.phantoms.dicom_writer import (
        PatientInfo,
        SeriesInfo,
        StudyInfo,
        uid_from,
        write_ct_series,
    )

    root = tmp_path_factory.mktemp("phantom-pair")
    pair = make_longitudinal_pair(seed=PAIR_SEED, shape_kji=SHAPE_KJI, progression="worse")
    patient = PatientInfo("JOBS-001", "PHANTOM^JOBS", dt.date(1960, 5, 1), "F")
    for name, phantom, date in (
        ("baseline", pair.baseline, dt.date(2019, 3, 4)),
        ("followup", pair.followup, dt.date(2022, 3, 9)),
    ):
        study = StudyInfo(
            study_instance_uid=uid_from("jobs-tests", name, "study"),
            study_date=date,
            study_time=dt.time(10, 0),
            accession_number=f"ACC-{name}",
            study_id="1",
        )
        series = SeriesInfo(
            series_instance_uid=uid_from("jobs-tests", name, "series"),
            frame_of_reference_uid=uid_from("jobs-tests", name, "for"),
            series_number=2,
            description=f"Phantom {name}",
            kvp=120.0,
            kernel="B60f",
            tube_current_ma=200.0,
            software_version="test",
        )
        write_ct_series(phantom.ct, root / name, patient=patient, study=study, series=series)
    return PhantomFiles(
        baseline_dir=root / "baseline",
        followup_dir=root / "followup",
        true_mean_log_jacobian=pair.mean_log_jacobian_lung,
        baseline_labels=pair.baseline.labels,
    )


def _ingest(project, folder: Path):
    from studies.models import Instance
    from studies.services.ingest import ingest_paths

    report = ingest_paths([folder], project=project, deidentify=False)
    assert report.stored == SHAPE_KJI[0], report.to_dict()
    sop = Instance.objects.order_by("-created").values_list("series_id", flat=True).first()
    from studies.models import Series

    return Series.objects.select_related("study__patient").get(pk=sop)


@pytest.fixture
def baseline_series(project, phantom_files):
    return _ingest(project, phantom_files.baseline_dir)


@pytest.fixture
def followup_series(project, phantom_files, baseline_series):
    return _ingest(project, phantom_files.followup_dir)
