"""Build a stored series into a volume with ``inference`` and record what came out."""

from __future__ import annotations

from typing import Any

import numpy as np

from jobs.models import Job
from studies.services import storage


def check_series_volume(job: Job) -> dict[str, Any]:
    from inference.dicom.series import read_dicom_series

    assert job.series is not None
    paths = [storage.absolute(rel) for rel in job.series.instances.values_list("file", flat=True)]
    volume = read_dicom_series(paths)
    array = volume.array
    return {
        "shape_kji": list(volume.shape_kji),
        "spacing_mm": list(volume.spacing_mm),
        "origin_lps_mm": list(volume.origin_lps_mm),
        "hu_min": float(np.min(array)),
        "hu_max": float(np.max(array)),
        "hu_median": float(np.median(array.astype(np.float32))),
    }
