"""Adapter to segmentation engines' output: label maps from SUCCEEDED segmentation jobs.

Segmentation jobs (``Job.kind == "segmentation"``, one per series and engine) store a label map
on the series grid: 0 background, 1 lung without ILD, 2 ILD. Lung = labels > 0 (ILD is inside the
lung), ILD = labels == 2. The result names the file, relative to ``STORAGE_ROOT`` (or absolute):

* ``result["label_map_npz"]`` (what ``annotation.services.model_output`` reads): an ``.npz`` with
  ``labels`` ``uint8 [k, j, i]`` and ``sop_instance_uids`` (one per ``k``);
* or ``result["label_map"]`` / ``result["label_map_path"]``: the same ``.npz``, or a NIfTI / NRRD /
  MHA volume whose slices are matched to the series' instances by their ImagePositionPatient.

``result["extent_pct"]`` (ILD volume / lung volume × 100 over the whole CT) is used when present;
otherwise it is computed once from the label map and cached in :class:`reports.models.JobExtent`.

Everything here returns ``None`` when no such job (or no readable file) exists: the reports then
fall back to the readers' contours and say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from django.db.models import F, Q

from jobs.models import Job
from reports.models import JobExtent
from studies.models import Instance, Series
from studies.services import storage

logger = logging.getLogger(__name__)

SEGMENTATION_KIND = "segmentation"
LUNG_LABEL, ILD_LABEL = 1, 2
PATH_KEYS = ("label_map_npz", "label_map", "label_map_path")
# A label-map slice matches an instance when its index lies this close to an integer (fraction
# of a slice) and the first pixel maps to (0, 0) within this many pixels.
SLICE_TOLERANCE = 0.1

BoolMask = npt.NDArray[np.bool_]
EngineMasks = dict[str, tuple[BoolMask, BoolMask]]


def engine_name(job: Job) -> str:
    return job.engine or str((job.params or {}).get("engine", "")) or "engine"


def segmentation_jobs(series_ids: list[Any]) -> dict[Any, dict[str, Job]]:
    """The latest SUCCEEDED segmentation job per series and engine: ``{series_id: {engine: job}}``."""
    latest: dict[Any, dict[str, Job]] = {}
    jobs = Job.objects.filter(
        series_id__in=series_ids, kind=SEGMENTATION_KIND, status=Job.Status.SUCCEEDED
    ).order_by(F("finished").asc(nulls_first=True), "created")
    for job in jobs:
        latest.setdefault(job.series_id, {})[engine_name(job)] = job  # later ones win
    return latest


def latest_segmentation_job(series: Series, engine: str) -> Job | None:
    return (
        Job.objects.filter(series=series, kind=SEGMENTATION_KIND, status=Job.Status.SUCCEEDED)
        .filter(Q(engine=engine) | Q(engine="", params__engine=engine))
        .order_by(F("finished").desc(nulls_last=True), "-created")
        .first()
    )


def label_map_path(job: Job) -> Path | None:
    result = job.result or {}
    for key in PATH_KEYS:
        value = result.get(key)
        if isinstance(value, str) and value:
            path = Path(value)
            return path if path.is_absolute() else storage.absolute(value)
    return None


@dataclass(frozen=True)
class LabelMap:
    """Label slices keyed by SOP Instance UID (``[j, i]`` each, the instance's pixel grid)."""

    slices: dict[str, npt.NDArray[np.uint8]]
    job_id: Any


def _instances(series: Series) -> list[Instance]:
    return list(series.instances.all())


def _from_npz(path: Path, wanted: set[str] | None) -> dict[str, npt.NDArray[np.uint8]]:
    with np.load(path) as data:
        if "sop_instance_uids" not in data.files:
            raise ValueError(f"{path.name} has no sop_instance_uids array")
        uids = [str(u) for u in data["sop_instance_uids"]]
        labels = data["labels"]
        return {
            uid: np.asarray(labels[k], dtype=np.uint8)
            for k, uid in enumerate(uids)
            if wanted is None or uid in wanted
        }


def _from_volume(
    path: Path, series: Series, wanted: set[str] | None
) -> dict[str, npt.NDArray[np.uint8]]:
    from inference.imageio import read_image

    volume = read_image(path)
    labels = np.asarray(volume.array)
    out: dict[str, npt.NDArray[np.uint8]] = {}
    for instance in _instances(series):
        if wanted is not None and instance.sop_instance_uid not in wanted:
            continue
        if not instance.image_position_patient:
            continue
        i, j, k = volume.lps_to_index(np.asarray(instance.image_position_patient, dtype=float))
        k_round = round(float(k))
        if (
            abs(float(k) - k_round) > SLICE_TOLERANCE
            or abs(float(i)) > SLICE_TOLERANCE
            or abs(float(j)) > SLICE_TOLERANCE
            or not 0 <= k_round < labels.shape[0]
        ):
            continue
        out[instance.sop_instance_uid] = np.asarray(labels[k_round], dtype=np.uint8)
    return out


def load_label_map(job: Job, series: Series, sop_uids: set[str] | None = None) -> LabelMap | None:
    """The job's label slices for ``sop_uids`` (all when ``None``); ``None`` when unreadable."""
    path = label_map_path(job)
    if path is None or not path.exists():
        return None
    try:
        if path.suffix == ".npz":
            slices = _from_npz(path, sop_uids)
        else:
            slices = _from_volume(path, series, sop_uids)
    except (OSError, ValueError, KeyError) as error:
        logger.warning("label map of job %s unreadable: %s", job.pk, error)
        return None
    return LabelMap(slices=slices, job_id=job.pk)


def split_labels(labels: npt.NDArray[np.uint8]) -> tuple[BoolMask, BoolMask]:
    """``(lung, ild)`` masks of one label slice: lung includes the ILD inside it."""
    return np.asarray(labels > 0), np.asarray(labels == ILD_LABEL)


def engine_masks_for(series: Series, engine: str) -> EngineMasks | None:
    """Per SOP Instance UID, the engine's ``(lung_mask, ild_mask)`` on that slice's grid.

    ``None`` when the series has no SUCCEEDED segmentation job of ``engine`` or its label map
    cannot be read.
    """
    job = latest_segmentation_job(series, engine)
    if job is None:
        return None
    label_map = load_label_map(job, series)
    if label_map is None:
        return None
    return {uid: split_labels(labels) for uid, labels in label_map.slices.items()}


def job_extent_pct(job: Job) -> float | None:
    """ILD extent (% of lung volume) of a segmentation job, from its result or its label map."""
    value = (job.result or {}).get("extent_pct")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    cached = JobExtent.objects.filter(job=job).first()
    if cached is not None:
        return cached.extent_pct
    if job.series is None:
        return None
    label_map = load_label_map(job, job.series)
    if label_map is None or not label_map.slices:
        return None
    ild = sum(int(np.count_nonzero(s == ILD_LABEL)) for s in label_map.slices.values())
    lung = sum(int(np.count_nonzero(s > 0)) for s in label_map.slices.values())
    if lung == 0:
        return None
    extent = 100.0 * ild / lung
    JobExtent.objects.update_or_create(
        job=job, defaults={"extent_pct": extent, "ild_voxels": ild, "lung_voxels": lung}
    )
    return extent
