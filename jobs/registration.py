"""The registration job's work: follow-up CT onto baseline CT, log-Jacobian back on the baseline.

The longitudinal pipeline itself (isotropic resampling, classical lung masks, affine + deformable
registration, Jacobian summary) is ``inference.register.run_volumes``, given the two series'
volumes in memory; it writes its files to the job's output folder and hands back the field, the
log-Jacobian and the lung mask it computed. This module adds what the viewer and the reports need
on the *baseline DICOM grid*.

Outputs under ``Job.output_key``
(``jobs/registration/<baseline SeriesInstanceUID>/<follow-up SeriesInstanceUID>/<backend>/``):

* from ``inference.register`` on the isotropic registration grid: ``displacement.nii.gz``
  (``[k, j, i, 3]`` LPS mm; baseline point ``x`` ↔ follow-up point ``x + u(x)``),
  ``log_jacobian.nii.gz``, ``warped_followup.nii.gz``, ``lung_mask.nii.gz`` (1 right, 2 left),
  ``summary.json``;
* ``log_jacobian_baseline.npz`` — for the viewer, on the baseline series' own grid:
  ``log_jacobian`` float16 ``[k, j, i]`` (``log det(I + ∇u)``, negative = shrinkage from
  baseline to follow-up; linear resampling of the isotropic map; 0 outside the registered
  field of view), ``lung`` uint8 ``[k, j, i]`` (the registration's lung mask, 1 right / 2 left,
  nearest-neighbour), ``sop_instance_uids`` (baseline image of each ``k``),
  ``followup_slice_index`` int32 ``[k]`` and ``followup_sop_instance_uids`` (see below),
  ``spacing_mm``/``origin_lps_mm`` (``(i, j, k)``, LPS mm), ``direction`` (3x3).

Slice correspondence: for baseline slice ``k``, the mean of ``x + u(x)`` over the lung voxels of
that slice (the slice centre when it has no lung) is mapped into the follow-up volume; its
rounded, clipped ``k`` index is the follow-up slice shown beside baseline slice ``k``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from inference.volume import Volume
from jobs.models import Job
from jobs.outputs import jsonable, staged_outputs
from jobs.series_volume import SeriesVolume, read_series_volume

LOG_JACOBIAN_NPZ = "log_jacobian_baseline.npz"
TEMPLATE_MAP_NPZ = "log_jacobian_template.npz"
# The paper resamples to 1 mm, but the torch backend's finest level is 3 mm: a 1 mm output grid
# only interpolates, at several times the memory and time (a demo-size pair: 41 M voxels and a
# 490 MB field). Pass params={"spacing_mm": 1.0} to follow the paper exactly.
DEFAULT_SPACING_MM = 2.0
DEFAULT_EPSILON = 1e-3
# Lung points per baseline slice used for the slice correspondence (a deterministic stride).
CORRESPONDENCE_POINTS = 4000
REGIONS = ("superior", "inferior", "anterior", "posterior")

if TYPE_CHECKING:
    from inference.worsening.classifier import WorseningModel, WorseningPrediction

Progress = Callable[[float], None]


def register_pair(job: Job, progress: Progress) -> dict[str, Any]:
    """Register ``job.series`` (follow-up) onto ``job.baseline_series`` and store the outputs.

    Returns the result dict: ``backend``, ``version``, ``params`` (backend parameters actually
    used, plus ``spacing_mm`` and ``epsilon``), ``mean_log_jacobian`` (over the baseline lung),
    ``regional`` (mean log-Jacobian of the superior/inferior/anterior/posterior halves),
    ``regional_all`` (every region of ``inference.registration.lung_regions``),
    ``folding_fraction``, ``clipped_fraction``, ``mean_determinant``, ``timings_s``, the output
    paths (relative to STORAGE_ROOT) ``log_jacobian`` (baseline grid npz), ``log_jacobian_iso``,
    ``displacement``, ``warped_followup``, ``lung_mask``, ``summary``, the grids
    (``baseline_shape_kji``, ``registration_grid``), and the slice correspondence
    ``followup_slice_for_baseline_slice`` (a follow-up ``k`` per baseline ``k``) with
    ``followup_sop_for_baseline_slice``.

    Raises:
        inference.dicom.DicomSeriesError, jobs.series_volume.SliceMappingError: unusable series.
        ValueError, GeometryError, RegistrationError: from the pipeline (e.g. no lung found).
    """
    from inference.register import run_volumes

    assert job.series is not None and job.baseline_series is not None
    backend = str(job.params.get("backend", "torch"))
    spacing_mm = float(job.params.get("spacing_mm", DEFAULT_SPACING_MM))
    epsilon = float(job.params.get("epsilon", DEFAULT_EPSILON))
    backend_params = dict(job.params.get("backend_params") or {})
    timings: dict[str, float] = {}
    start = time.perf_counter()

    progress(0.02)
    baseline = read_series_volume(job.baseline_series)
    followup = read_series_volume(job.series)
    timings["read"] = time.perf_counter() - start
    progress(0.1)

    with staged_outputs(job) as out:
        progress(0.15)
        t = time.perf_counter()
        pipeline = run_volumes(
            baseline.volume,
            followup.volume,
            out.staging,
            backend=backend,
            spacing_mm=spacing_mm,
            epsilon=epsilon,
            params=backend_params,
            inputs={
                "fixed": f"series {job.baseline_series.series_instance_uid}",
                "moving": f"series {job.series.series_instance_uid}",
            },
        )
        summary = pipeline.summary
        timings["pipeline"] = time.perf_counter() - t
        progress(0.8)

        t = time.perf_counter()
        logjac_iso, lung_iso = pipeline.log_jacobian, pipeline.lung_mask
        logjac, lung = on_baseline_grid(logjac_iso, lung_iso, baseline.volume)
        timings["to_baseline_grid"] = time.perf_counter() - t
        progress(0.88)

        t = time.perf_counter()
        followup_k = followup_slice_for_baseline_slice(
            pipeline.displacement, pipeline.grid, baseline.volume, lung, followup.volume
        )
        timings["correspondence"] = time.perf_counter() - t
        progress(0.95)

        t = time.perf_counter()
        followup_uids = [followup.sop_instance_uids[k] for k in followup_k]
        _save_viewer_npz(
            out.path(LOG_JACOBIAN_NPZ), baseline, logjac, lung, followup_k, followup_uids
        )
        with out.path("summary.json").open("w") as handle:
            json.dump(summary, handle, indent=2, sort_keys=True)
        timings["write"] = time.perf_counter() - t
        progress(0.96)

        t = time.perf_counter()
        worsening, prediction = classify_worsening(baseline.volume, lung_iso, logjac_iso)
        if prediction is not None:
            save_template_map(out.path(TEMPLATE_MAP_NPZ), prediction)
            worsening["template_map"] = out.relpath(TEMPLATE_MAP_NPZ)
        timings["worsening"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start

    regional_all = summary.get("regional_mean_log_jacobian") or {}
    params = {
        **(summary.get("parameters") or {}),
        "spacing_mm": spacing_mm,
        "epsilon": epsilon,
        "fixed_mask": summary["inputs"]["fixed_mask"],
        "moving_mask": summary["inputs"]["moving_mask"],
    }
    return jsonable(
        {
            "backend": summary["backend"],
            "version": summary["version"],
            "params": params,
            "mean_log_jacobian": summary["mean_log_jacobian"],
            "regional": {name: regional_all.get(name) for name in REGIONS},
            "regional_all": regional_all,
            "folding_fraction": summary["folding_fraction"],
            "clipped_fraction": summary["clipped_fraction"],
            "mean_determinant": summary.get("mean_determinant"),
            "vector_frame": summary.get("vector_frame", "LPS"),
            "timings_s": {
                **{name: round(seconds, 3) for name, seconds in timings.items()},
                "pipeline_stages": summary.get("timings_s", {}),
            },
            "log_jacobian": out.relpath(LOG_JACOBIAN_NPZ),
            "log_jacobian_iso": out.relpath("log_jacobian.nii.gz"),
            "displacement": out.relpath("displacement.nii.gz"),
            "warped_followup": out.relpath("warped_followup.nii.gz"),
            "lung_mask": out.relpath("lung_mask.nii.gz"),
            "summary": out.relpath("summary.json"),
            "baseline_shape_kji": list(baseline.volume.shape_kji),
            "registration_grid": summary.get("grid"),
            "followup_slice_for_baseline_slice": followup_k,
            "followup_sop_for_baseline_slice": followup_uids,
            "worsening": worsening,
        }
    )


def worsening_choice() -> str:
    """``settings.WORSENING_CLASSIFIER``: ``"off"``, ``"default"`` or a model folder."""
    from django.conf import settings

    return str(settings.WORSENING_CLASSIFIER or "off").strip()


def worsening_model(choice: str) -> WorseningModel:
    """The classifier named by ``choice`` (``"default"`` or a model folder), loaded once per
    worker process and again only when its ``metadata.json`` is replaced. The default model is
    built (and cached on disk) on first use.

    Raises:
        WorseningModelError: the folder holds no usable model.
    """
    from inference.worsening import default_cache_dir, default_model, load_model

    folder = default_cache_dir() if choice == "default" else Path(choice)
    metadata = folder / "metadata.json"
    if choice == "default" and not metadata.is_file():
        return default_model(folder)
    if not metadata.is_file():
        return load_model(folder)  # raises, saying what is missing
    return _loaded_model(str(folder), metadata.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _loaded_model(folder: str, metadata_mtime_ns: int) -> WorseningModel:
    from inference.worsening import load_model

    return load_model(Path(folder))


def save_template_map(path: Path, prediction: WorseningPrediction) -> None:
    """The log-Jacobian map on the template grid, for group maps (Figure 5): ``log_jacobian``
    float32 ``[k, j, i]``, the template ``lung`` uint8, ``spacing_mm`` / ``origin_lps_mm``
    (``(i, j, k)``), ``direction`` (3x3) and ``template_digest``."""
    assert prediction.template_map is not None and prediction.template_lung is not None
    grid = prediction.template_lung
    np.savez_compressed(
        path,
        log_jacobian=np.asarray(prediction.template_map.array, dtype=np.float32),
        lung=np.asarray(grid.array, dtype=np.uint8),
        spacing_mm=np.asarray(grid.spacing_mm, dtype=np.float64),
        origin_lps_mm=np.asarray(grid.origin_lps_mm, dtype=np.float64),
        direction=np.asarray(grid.direction, dtype=np.float64),
        template_digest=np.asarray(prediction.template_digest),
    )


def classify_worsening(
    baseline_ct: Volume, lung: Volume, log_jacobian: Volume
) -> tuple[dict[str, Any], WorseningPrediction | None]:
    """The worsening classifier's output for one registered pair (``settings.WORSENING_CLASSIFIER``).

    Returns ``{"model_version", "template_digest", "functional": {"probability", "threshold",
    "predicted"}, "morphologic": {...}, "template_mean_log_jacobian", "template_lung_dice",
    "seconds"}``; ``{"status": "off"}`` when disabled; ``{"error": reason}`` when the model cannot
    be loaded or the pair cannot be mapped to its template. The registration itself stands either
    way, so a classifier problem never fails the job. The prediction (with the template-space
    map) comes second, ``None`` unless the classifier ran.
    """
    from inference.registration import RegistrationError
    from inference.worsening import WorseningModelError, predict_worsening

    choice = worsening_choice()
    if choice == "off":
        return {"status": "off"}, None
    try:
        model = worsening_model(choice)
        prediction = predict_worsening(baseline_ct, lung, log_jacobian, model)
    except (WorseningModelError, RegistrationError, ValueError, OSError) as error:
        return {"error": f"worsening classifier: {error}"}, None
    summary = {
        "model_version": prediction.model_version,
        "template_digest": prediction.template_digest,
        "functional": {
            "probability": round(prediction.functional_probability, 4),
            "threshold": round(prediction.functional_threshold, 4),
            "predicted": prediction.functional_worsening,
        },
        "morphologic": {
            "probability": round(prediction.morphologic_probability, 4),
            "threshold": round(prediction.morphologic_threshold, 4),
            "predicted": prediction.morphologic_worsening,
        },
        "template_mean_log_jacobian": round(prediction.mean_log_jacobian_template, 5),
        "template_lung_dice": round(prediction.template_lung_dice, 4),
        "seconds": prediction.seconds,
    }
    return summary, prediction


def on_baseline_grid(
    logjac_iso: Volume, lung_iso: Volume, baseline: Volume
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """The isotropic log-Jacobian (linear) and lung mask (nearest) on the baseline's own grid."""
    from inference.registration.resample import resample_to_grid

    logjac = resample_to_grid(
        logjac_iso.with_array(logjac_iso.array.astype(np.float32)),
        baseline,
        interpolation="linear",
        default_value=0.0,
    )
    lung = resample_to_grid(
        lung_iso.with_array(lung_iso.array.astype(np.uint8)),
        baseline,
        interpolation="nearest",
        default_value=0,
    )
    return logjac.array.astype(np.float32), lung.array.astype(np.uint8)


def followup_slice_for_baseline_slice(
    displacement: npt.NDArray[np.float32],
    grid: Volume,
    baseline: Volume,
    lung_kji: npt.NDArray[np.uint8],
    followup: Volume,
) -> list[int]:
    """For each baseline slice ``k``, the follow-up slice index matching it (see module doc).

    Args:
        displacement: ``[k, j, i, 3]`` LPS mm field on ``grid`` (baseline ``x`` ↔ follow-up
            ``x + u(x)``).
        baseline: the baseline volume (its grid is the one ``lung_kji`` lies on).
        lung_kji: lung mask on the baseline grid.
        followup: the follow-up volume (only its geometry is used).
    """
    from inference.registration.fields import sample_displacement

    n_k, n_j, n_i = baseline.shape_kji
    points: list[npt.NDArray[np.float64]] = []
    owners: list[npt.NDArray[np.int64]] = []
    for k in range(n_k):
        jj, ii = np.nonzero(lung_kji[k])
        if jj.size == 0:
            jj, ii = np.array([(n_j - 1) / 2.0]), np.array([(n_i - 1) / 2.0])
        stride = max(1, jj.size // CORRESPONDENCE_POINTS)
        jj, ii = jj[::stride], ii[::stride]
        index = np.stack([ii, jj, np.full(ii.shape, k)], axis=-1).astype(np.float64)
        points.append(baseline.index_to_lps(index))
        owners.append(np.full(ii.shape, k, dtype=np.int64))
    all_points = np.concatenate(points)
    owner = np.concatenate(owners)
    mapped = all_points + sample_displacement(displacement, grid, all_points).astype(np.float64)
    counts = np.bincount(owner, minlength=n_k).astype(np.float64)
    mean = np.stack(
        [np.bincount(owner, weights=mapped[:, c], minlength=n_k) / counts for c in range(3)],
        axis=-1,
    )
    followup_k = followup.lps_to_index(mean)[:, 2]
    last = followup.shape_kji[0] - 1
    return [int(v) for v in np.clip(np.rint(followup_k), 0, last)]


def _save_viewer_npz(
    path: Path,
    baseline: SeriesVolume,
    logjac: npt.NDArray[np.float32],
    lung: npt.NDArray[np.uint8],
    followup_k: list[int],
    followup_uids: list[str],
) -> None:
    volume = baseline.volume
    np.savez_compressed(
        path,
        log_jacobian=logjac.astype(np.float16),
        lung=lung,
        sop_instance_uids=np.asarray(baseline.sop_instance_uids, dtype=str),
        followup_slice_index=np.asarray(followup_k, dtype=np.int32),
        followup_sop_instance_uids=np.asarray(followup_uids, dtype=str),
        spacing_mm=np.asarray(volume.spacing_mm),
        origin_lps_mm=np.asarray(volume.origin_lps_mm),
        direction=volume.direction,
    )
