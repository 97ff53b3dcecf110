"""Write a synthetic SSc-ILD cohort: DICOM series, NIfTI ground truth, PFTs and a manifest.

Layout under ``out_dir``::

    cohort.json                         manifest (seed, version, patients, time points, pairs)
    pft.csv                             one row per CT date (the app's importer header)
    clinical.csv                        SSc subtype, mRSS, autoantibodies (Table 1 characteristics)
    P001/baseline/dicom/0001.dcm …      CT Image Storage series
    P001/baseline/labels.nii.gz         0 background, 1 lung without ILD, 2 ILD
    P001/baseline/lungs_lr.nii.gz       0 background, 1 right lung, 2 left lung
    P001/baseline/ct.nii.gz             the same CT as NIfTI (optional)
    P001/followup/…                     idem for the follow-up
    P001/pair/displacement.nii.gz       u [k, j, i, 3] (vector NIfTI, LPS mm as read by ITK)
    P001/pair/log_jacobian.nii.gz       log det(I + ∇u), baseline grid
    P001/pair/shrink_region.nii.gz      lung within one sigma of a shrinkage centre

Everything is deterministic given ``seed``; all paths in the manifest are relative to it.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from inference.phantoms.dicom_writer import (
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    uid_from,
    write_ct_series,
)
from inference.phantoms.generator import (
    DEFAULT_SHAPE_KJI,
    PHANTOM_VERSION,
    Phantom,
    PhantomPair,
    baseline_pft,
    make_longitudinal_pair,
    make_phantom,
)
from inference.phantoms.pft import CSV_HEADER, PftResult, sample_cohort_extents
from inference.volume import Volume

COHORT_TAGS = ("worse", "stable", "improved")
COHORT_TAG_PROBABILITIES = (0.40, 0.48, 0.12)
_EPOCH = dt.date(2011, 1, 3)


def patient_seed(cohort_seed: int, index: int) -> int:
    """The generator seed of patient ``index`` (1-based) of a cohort."""
    state = np.random.SeedSequence([int(cohort_seed), int(index), 7919]).generate_state(
        1, dtype=np.uint32
    )
    return int(state[0])


CLINICAL_HEADER = ("patient_id", "ssc_subtype", "mrss", "anticentromere", "anti_scl70",
                   "other_autoantibodies")  # fmt: skip


def sample_clinical(cohort_seed: int, index: int, extent_pct: float) -> dict[str, Any]:
    """Table 1 characteristics of patient ``index``: its own random stream (other draws unchanged).

    Diffuse cutaneous SSc is likelier with extensive disease; anti-Scl-70 goes with the diffuse
    form and anticentromere with the limited one, roughly as in SSc cohorts.
    """
    rng = np.random.default_rng([int(cohort_seed), int(index), 313])
    diffuse = bool(rng.random() < (0.65 if extent_pct > 20.0 else 0.40))
    mrss = int(np.clip(np.rint(rng.normal(16.0, 8.0) if diffuse else rng.normal(5.0, 3.0)), 0, 51))
    scl70 = bool(rng.random() < (0.70 if diffuse else 0.40))
    aca = bool(rng.random() < (0.03 if diffuse else 0.25))
    other = bool(rng.random() < 0.25)
    return {
        "ssc_subtype": "diffuse" if diffuse else "limited",
        "mrss": mrss,
        "anticentromere": aca,
        "anti_scl70": scl70,
        "other_autoantibodies": other,
    }


def write_volume(volume: Volume, path: Path) -> Path:
    """Write a scalar ``Volume`` as (compressed) NIfTI through SimpleITK (LPS handled by ITK)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume.to_sitk(), str(path), useCompression=True)
    return path


def write_displacement(displacement_lps_mm: np.ndarray, like: Volume, path: Path) -> Path:
    """Write ``u`` ``[k, j, i, 3]`` (LPS mm) on ``like``'s grid as a float32 vector NIfTI.

    The components are stored as given (LPS); read them back with SimpleITK
    (``sitk.GetArrayFromImage`` gives ``[k, j, i, 3]``), which does not flip vector components.
    """
    image = sitk.GetImageFromArray(
        np.ascontiguousarray(displacement_lps_mm, dtype=np.float32), isVector=True
    )
    image.SetSpacing(like.spacing_mm)
    image.SetOrigin(like.origin_lps_mm)
    image.SetDirection(tuple(float(v) for v in like.direction.flatten()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def _pft_row(patient_id: str, date: dt.date, pft: PftResult) -> list[str]:
    return [
        patient_id,
        date.isoformat(),
        f"{pft.fvc_pct_predicted:.1f}",
        f"{pft.tlc_pct_predicted:.1f}",
        f"{pft.dlco_pct_predicted:.1f}",
        f"{pft.kco_pct_predicted:.1f}",
        f"{pft.fvc_l:.2f}",
        f"{pft.tlc_l:.2f}",
        f"{pft.dlco_mmol_min_kpa:.2f}",
        f"{pft.kco_mmol_min_kpa_l:.3f}",
    ]


def _write_timepoint(
    out_dir: Path,
    rel: Path,
    phantom: Phantom,
    *,
    patient: PatientInfo,
    study_date: dt.date,
    study_time: dt.time,
    cohort_seed: int,
    timepoint: str,
    series_number: int,
    ct_nifti: bool,
) -> dict[str, Any]:
    base = out_dir / rel
    study_uid = uid_from("ild-review-phantom", cohort_seed, patient.patient_id, timepoint, "study")
    series_uid = uid_from(study_uid, "series", series_number)
    frame_uid = uid_from(study_uid, "frame-of-reference")
    scanner = phantom.scanner
    digits = int(uid_from(study_uid, "accession").rsplit(".", 1)[-1][-7:])
    study = StudyInfo(
        study_instance_uid=study_uid,
        study_date=study_date,
        study_time=study_time,
        accession_number=f"PH{digits:07d}",
        study_id=f"{timepoint[:1].upper()}{digits % 100000:05d}",
    )
    thickness = phantom.ct.spacing_mm[2]
    series = SeriesInfo(
        series_instance_uid=series_uid,
        frame_of_reference_uid=frame_uid,
        series_number=series_number,
        description=f"CHEST {thickness:.2f} {scanner.kernel}",
        kvp=scanner.kvp,
        kernel=scanner.kernel,
        tube_current_ma=scanner.tube_current_ma,
        software_version=f"inference.phantoms {PHANTOM_VERSION}",
    )
    files = write_ct_series(phantom.ct, base / "dicom", patient=patient, study=study, series=series)
    entry: dict[str, Any] = {
        "study_date": study_date.isoformat(),
        "study_instance_uid": study_uid,
        "series_instance_uid": series_uid,
        "frame_of_reference_uid": frame_uid,
        "dicom_dir": (rel / "dicom").as_posix(),
        "n_instances": len(files),
        "labels": (rel / "labels.nii.gz").as_posix(),
        "lungs_lr": (rel / "lungs_lr.nii.gz").as_posix(),
        "lung_ml": round(phantom.lung_ml, 3),
        "ild_ml": round(phantom.ild_ml, 3),
        "extent_pct": round(phantom.extent_pct, 4),
        "requested_extent_pct": round(phantom.requested_extent_pct, 4),
        "honeycomb_ml": round(phantom.honeycomb_ml, 3),
        "kvp": scanner.kvp,
        "kernel": scanner.kernel,
        "noise_hu": round(scanner.noise_hu, 2),
    }
    write_volume(phantom.labels, out_dir / entry["labels"])
    write_volume(phantom.lungs_lr, out_dir / entry["lungs_lr"])
    if ct_nifti:
        entry["ct_nifti"] = (rel / "ct.nii.gz").as_posix()
        write_volume(phantom.ct, out_dir / entry["ct_nifti"])
    return entry


def write_cohort(
    out_dir: Path | str,
    *,
    patients: int,
    seed: int,
    shape_kji: tuple[int, int, int] = DEFAULT_SHAPE_KJI,
    spacing_mm: tuple[float, float, float] | None = None,
    followup: bool = True,
    ct_nifti: bool = True,
) -> Path:
    """Generate ``patients`` synthetic patients under ``out_dir``; return the manifest path.

    Baseline extents follow the reference SSc distribution (median 12.7 %, IQR 4.0-24.7 %);
    cohort tags ("worse" 40 %, "stable" 48 %, "improved" 12 %) drive the follow-ups.

    Raises:
        ValueError: if ``patients`` < 1 or the grid is invalid (see ``make_phantom``).
    """
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 424242])
    extents = sample_cohort_extents(rng, patients)
    tags = rng.choice(len(COHORT_TAGS), size=patients, p=COHORT_TAG_PROBABILITIES)
    rows: list[list[str]] = []
    clinical_rows: list[list[str]] = []
    entries: list[dict[str, Any]] = []
    grid_info: dict[str, Any] = {}
    for n in range(1, patients + 1):
        pid = f"P{n:03d}"
        pseed = patient_seed(seed, n)
        tag = COHORT_TAGS[int(tags[n - 1])]
        extent = float(round(extents[n - 1], 2))
        if tag == "improved" and extent < 4.0:
            tag = "stable"
        prng = np.random.default_rng([int(seed), n, 99])
        base_date = _EPOCH + dt.timedelta(days=int(prng.integers(0, 8 * 365)))
        interval_months = float(np.clip(np.exp(prng.normal(np.log(37.0), 0.5)), 6.0, 96.0))
        follow_date = base_date + dt.timedelta(days=round(interval_months * 30.44))
        times = [
            dt.time(int(prng.integers(8, 17)), int(prng.integers(0, 60)), int(prng.integers(0, 60)))
            for _ in range(2)
        ]
        pft_offsets = [int(prng.integers(-60, 61)) for _ in range(2)]
        pair: PhantomPair | None = None
        if followup:
            pair = make_longitudinal_pair(
                seed=pseed,
                shape_kji=shape_kji,
                spacing_mm=spacing_mm,
                extent_pct=extent,
                progression=tag,
            )
            baseline = pair.baseline
            pfts = [pair.pft_baseline, pair.pft_followup]
        else:
            baseline = make_phantom(
                seed=pseed, shape_kji=shape_kji, spacing_mm=spacing_mm, extent_pct=extent
            )
            pfts = [baseline_pft(baseline)]
        anat = baseline.anatomy
        birth = base_date - dt.timedelta(days=round(anat.age_years * 365.25))
        patient = PatientInfo(
            patient_id=pid, patient_name=f"PHANTOM^{pid}", birth_date=birth, sex=anat.sex
        )
        common = {"patient": patient, "cohort_seed": seed, "ct_nifti": ct_nifti}
        timepoints = {
            "baseline": _write_timepoint(
                out,
                Path(pid) / "baseline",
                baseline,
                study_date=base_date,
                study_time=times[0],
                timepoint="baseline",
                series_number=2,
                **common,  # type: ignore[arg-type]
            )
        }
        if not grid_info:
            grid_info = {
                "shape_kji": list(baseline.ct.shape_kji),
                "spacing_mm": [round(v, 6) for v in baseline.ct.spacing_mm],
            }
        if pair is not None:
            timepoints["followup"] = _write_timepoint(
                out,
                Path(pid) / "followup",
                pair.followup,
                study_date=follow_date,
                study_time=times[1],
                timepoint="followup",
                series_number=2,
                **common,  # type: ignore[arg-type]
            )
        for (name, tp), pft, offset in zip(timepoints.items(), pfts, pft_offsets, strict=False):
            pft_date = dt.date.fromisoformat(tp["study_date"]) + dt.timedelta(days=offset)
            tp["pft"] = {"date": pft_date.isoformat(), **pft.as_dict()}
            rows.append(_pft_row(pid, pft_date, pft))
            del name
        clinical = sample_clinical(seed, n, extent)
        clinical_rows.append(
            [pid] + [
                str(v).lower() if isinstance(v, bool) else str(v)
                for v in (clinical[c] for c in CLINICAL_HEADER[1:])
            ]
        )  # fmt: skip
        entry: dict[str, Any] = {
            "patient_id": pid,
            "patient_name": patient.patient_name,
            "sex": anat.sex,
            "birth_date": birth.isoformat(),
            "age_years": round(anat.age_years, 1),
            "height_cm": round(anat.height_cm, 1),
            "cohort": tag,
            "clinical": clinical,
            "seed": pseed,
            "timepoints": timepoints,
        }
        if pair is not None:
            rel = Path(pid) / "pair"
            paths = {
                "displacement": (rel / "displacement.nii.gz").as_posix(),
                "log_jacobian": (rel / "log_jacobian.nii.gz").as_posix(),
                "shrink_region": (rel / "shrink_region.nii.gz").as_posix(),
            }
            write_displacement(
                pair.displacement_lps_mm, pair.log_jacobian, out / paths["displacement"]
            )
            write_volume(pair.log_jacobian, out / paths["log_jacobian"])
            write_volume(pair.shrink_region, out / paths["shrink_region"])
            b, f = pair.pft_baseline, pair.pft_followup
            entry["pair"] = {
                **paths,
                "interval_months": round(interval_months, 1),
                "mean_log_jacobian_lung": round(pair.mean_log_jacobian_lung, 5),
                "mean_log_jacobian_shrink_region": round(pair.mean_log_jacobian_shrink, 5),
                "regional_log_jacobian": round(pair.regional_log_jacobian, 5),
                "breathing_log_scale": round(pair.breathing_log_scale, 5),
                "extent_change_pct": round(pair.extent_change_pct, 4),
                "morphologic_call": pair.morphologic_call,
                "functional_worsening": pair.functional_worsening,
                "fvc_change_pct": round(f.fvc_pct_predicted - b.fvc_pct_predicted, 1),
                "dlco_change_pct": round(f.dlco_pct_predicted - b.dlco_pct_predicted, 1),
                "tlc_change_pct": round(f.tlc_pct_predicted - b.tlc_pct_predicted, 1),
                "kco_change_pct": round(f.kco_pct_predicted - b.kco_pct_predicted, 1),
            }
        entries.append(entry)

    with (out / "pft.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_HEADER.split(","))
        writer.writerows(rows)
    with (out / "clinical.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CLINICAL_HEADER)
        writer.writerows(clinical_rows)
    manifest = {
        "generator": "inference.phantoms",
        "version": PHANTOM_VERSION,
        "seed": int(seed),
        "patients_count": patients,
        "followup": followup,
        **grid_info,
        "pft_csv": "pft.csv",
        "clinical_csv": "clinical.csv",
        "conventions": {
            "arrays": "[k, j, i]; spacing/origin (x, y, z) LPS mm; slice k increases towards the head",
            "labels": {"0": "background", "1": "lung without ILD", "2": "ILD"},
            "lungs_lr": {"0": "background", "1": "right lung", "2": "left lung"},
            "displacement": "u on the baseline grid, LPS mm: baseline x ↦ follow-up x + u(x)",
            "log_jacobian": "log det(I + ∇u); negative where the lung shrinks",
            "functional_worsening": "FVC % predicted drop ≥ 10 or DLCO % predicted drop ≥ 15 (ATS/ERS)",
            "morphologic_call": "worse: extent +≥1 point or regional log-Jacobian ≤ -0.06; improved: extent -≥1 point",
        },
        "patients": entries,
    }
    path = out / "cohort.json"
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path
