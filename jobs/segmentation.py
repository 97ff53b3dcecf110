"""The segmentation job's work: read the series, run an engine, store the label map and its SEG.

Outputs under ``Job.output_key`` (``jobs/segmentation/<SeriesInstanceUID>/<engine>/``):

* ``labels.npz`` — THE model-overlay contract (``annotation.services.model_output``):
  ``labels`` uint8 ``[k, j, i]`` (0 background, 1 lung without ILD, 2 ILD) and
  ``sop_instance_uids`` (one ``str`` per ``k``); plus ``spacing_mm`` / ``origin_lps_mm``
  (``(i, j, k)`` order, LPS mm), ``direction`` (3x3), ``engine`` and ``version``;
* ``labels.nii.gz`` — the same label map as NIfTI (geometry converted to RAS by ITK);
* ``seg.dcm`` — DICOM SEG referencing the source CT instances (see :mod:`jobs.seg_export`).

The result dict (``Job.result``) is described in :func:`segment_series`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jobs.models import Job
from jobs.outputs import jsonable, staged_outputs
from jobs.series_volume import read_series_volume

LABELS_NPZ = "labels.npz"
LABELS_NIFTI = "labels.nii.gz"
DICOM_SEG = "seg.dcm"

Progress = Callable[[float], None]


def segment_series(job: Job, progress: Progress) -> dict[str, Any]:
    """Segment ``job.series`` with ``job.params["engine"]`` and store the outputs.

    Returns the result dict: ``engine``, ``version``, ``parameters`` (engine parameters plus
    ``device``), ``lung_ml``, ``ild_ml``, ``extent_pct``, ``per_slice`` (slices with lung:
    ``index_k``, ``sop_instance_uid``, ``z_mm``, ``lung_ml``, ``ild_ml``), ``timings_s`` (per
    stage), ``shape_kji``, ``spacing_mm``, ``label_map_npz``, ``label_map_nifti``,
    ``dicom_seg`` (paths relative to STORAGE_ROOT; ``dicom_seg`` is ``None`` with
    ``dicom_seg_error`` when the SEG could not be built).

    Raises:
        inference.dicom.DicomSeriesError, jobs.series_volume.SliceMappingError: unusable series.
        inference.segmentation.EngineUnavailable: the engine cannot run here.
    """
    from inference.imageio import write_image
    from inference.segmentation import SegmentationPipeline
    from jobs.seg_export import SegExportError, build_dicom_seg, write_dicom_seg

    assert job.series is not None
    engine_name = str(job.params.get("engine", "classical"))
    device = str(job.params.get("device") or _worker_device())
    timings: dict[str, float] = {}

    start = time.perf_counter()
    progress(0.02)
    source = read_series_volume(job.series)
    volume = source.volume
    timings["read"] = time.perf_counter() - start
    progress(0.15)

    t = time.perf_counter()
    pipeline = SegmentationPipeline(engine_name, device=device)
    timings["load_engine"] = time.perf_counter() - t
    progress(0.2)
    result = pipeline(volume)
    for stage, seconds in result.timings_s.items():
        timings[f"segment/{stage}"] = seconds
    progress(0.75)

    labels = np.ascontiguousarray(result.label_map.array, dtype=np.uint8)
    uids = source.sop_instance_uids
    seg_error: str | None = None
    t = time.perf_counter()
    with staged_outputs(job) as out:
        np.savez_compressed(
            out.path(LABELS_NPZ),
            labels=labels,
            sop_instance_uids=np.asarray(uids, dtype=str),
            spacing_mm=np.asarray(volume.spacing_mm),
            origin_lps_mm=np.asarray(volume.origin_lps_mm),
            direction=volume.direction,
            engine=np.asarray(result.engine),
            version=np.asarray(result.version),
        )
        write_image(result.label_map, out.path(LABELS_NIFTI))
        timings["write_label_map"] = time.perf_counter() - t
        progress(0.85)
        t = time.perf_counter()
        try:
            seg = build_dicom_seg(
                labels,
                uids,
                source.files,
                engine=result.engine,
                version=result.version,
                parameters=result.parameters,
            )
            write_dicom_seg(seg, out.path(DICOM_SEG))
        except SegExportError as error:
            seg_error = str(error)
        timings["write_dicom_seg"] = time.perf_counter() - t
        progress(0.95)
    timings["total"] = time.perf_counter() - start

    index_to_uid = dict(enumerate(uids))
    return {
        "engine": result.engine,
        "version": result.version,
        "parameters": {**jsonable(result.parameters), "device": device},
        "lung_ml": round(result.lung_ml, 3),
        "ild_ml": round(result.ild_ml, 3),
        "extent_pct": round(result.extent_pct, 3),
        "per_slice": [
            {
                "index_k": s.index_k,
                "sop_instance_uid": index_to_uid[s.index_k],
                "z_mm": round(s.z_mm, 3),
                "lung_ml": round(s.lung_ml, 4),
                "ild_ml": round(s.ild_ml, 4),
            }
            for s in result.per_slice
        ],
        "timings_s": {name: round(seconds, 3) for name, seconds in timings.items()},
        "shape_kji": list(volume.shape_kji),
        "spacing_mm": [round(v, 6) for v in volume.spacing_mm],
        "label_map_npz": out.relpath(LABELS_NPZ),
        "label_map_nifti": out.relpath(LABELS_NIFTI),
        "dicom_seg": None if seg_error else out.relpath(DICOM_SEG),
        **({"dicom_seg_error": seg_error} if seg_error else {}),
    }


def _worker_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
