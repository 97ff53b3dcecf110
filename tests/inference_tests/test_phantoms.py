"""Synthetic SSc-ILD chest CT phantoms: ground truth, images, deformations, PFTs, DICOM, CLI."""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.stats import spearmanr

from inference.phantoms import make_longitudinal_pair, make_phantom, write_cohort
from inference.phantoms.anatomy import Tissue
from inference.phantoms.cohort import write_volume
from inference.phantoms.deformation import (
    ShrinkBlob,
    VelocityField,
    finite_difference_log_jacobian,
    integrate,
)
from inference.phantoms.dicom_writer import (
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    uid_from,
    write_ct_series,
)
from inference.phantoms.disease import threshold_for_extent
from inference.phantoms.generator import Phantom, PhantomPair
from inference.phantoms.pft import (
    CSV_HEADER,
    PFT_NAMES,
    PFT_QUANTILES,
    SPEARMAN_WITH_EXTENT,
    PftResult,
    draw_latent,
    functional_worsening,
    percent_predicted,
    predicted_values,
    sample_cohort_extents,
)
from inference.volume import Volume

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = (40, 64, 64)
MICRO = (16, 32, 32)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(seed=7, shape_kji=TINY, extent_pct=15.0)


@pytest.fixture(scope="module")
def worse_pair() -> PhantomPair:
    return make_longitudinal_pair(seed=11, shape_kji=TINY, extent_pct=15.0, progression="worse")


def arr(volume: Volume) -> npt.NDArray[Any]:
    """The voxels of a volume, typed for arithmetic."""
    return cast("npt.NDArray[Any]", volume.array)


def _warp_followup_to_baseline(pair: PhantomPair, followup_labels: np.ndarray) -> np.ndarray:
    """Sample follow-up labels at x + u(x) for every baseline voxel x (nearest neighbour)."""
    grid = pair.baseline.labels
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape_kji), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).astype(np.float64)
    target = grid.lps_to_index(grid.index_to_lps(ijk) + pair.displacement_lps_mm)
    coords = [target[..., 2], target[..., 1], target[..., 0]]
    return ndi.map_coordinates(followup_labels, coords, order=0, mode="constant", cval=0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_the_same_phantom() -> None:
    first = make_phantom(seed=3, shape_kji=MICRO, extent_pct=10.0)
    second = make_phantom(seed=3, shape_kji=MICRO, extent_pct=10.0)
    other = make_phantom(seed=4, shape_kji=MICRO, extent_pct=10.0)
    assert np.array_equal(arr(first.ct), arr(second.ct))
    assert np.array_equal(arr(first.labels), arr(second.labels))
    assert first.ct.same_grid(second.ct)
    assert not np.array_equal(arr(first.ct), arr(other.ct))


def test_pair_baseline_is_the_single_phantom_of_the_same_arguments(worse_pair: PhantomPair) -> None:
    single = make_phantom(seed=11, shape_kji=TINY, extent_pct=15.0)
    assert np.array_equal(arr(worse_pair.baseline.ct), arr(single.ct))
    assert np.array_equal(arr(worse_pair.baseline.labels), arr(single.labels))


def test_uids_are_deterministic_and_distinct() -> None:
    assert uid_from(1, "P001", "baseline") == uid_from(1, "P001", "baseline")
    assert uid_from(1, "P001", "baseline") != uid_from(2, "P001", "baseline")
    assert len(uid_from("x")) <= 64


# --- labels and extent ------------------------------------------------------------------------


def test_labels_are_consistent(phantom: Phantom) -> None:
    labels, lr = arr(phantom.labels), arr(phantom.lungs_lr)
    assert labels.dtype == np.uint8 and lr.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    assert set(np.unique(lr)) == {0, 1, 2}
    # ILD ⊂ lung, and the two lung maps describe the same lung
    assert np.array_equal(labels > 0, lr > 0)
    assert np.all(arr(phantom.tissue)[labels > 0] == Tissue.LUNG)
    # right lung on the patient's right (LPS x < 0), left lung on the left
    x = phantom.ct.index_to_lps(np.stack(np.nonzero(lr.T), axis=-1))[:, 0]  # (i, j, k) order
    side = lr.T[lr.T > 0]
    assert x[side == 1].max() < 0 < x[side == 2].min()
    assert phantom.ct.same_grid(phantom.labels) and phantom.ct.same_grid(phantom.lungs_lr)


@pytest.mark.parametrize("extent", [0.0, 2.0, 12.7, 35.0])
def test_realised_extent_matches_the_request(extent: float) -> None:
    result = make_phantom(seed=5, shape_kji=MICRO, extent_pct=extent)
    labels = arr(result.labels)
    realised = 100.0 * (labels == 2).sum() / (labels > 0).sum()
    assert realised == pytest.approx(result.extent_pct)
    assert abs(realised - extent) < 1.0
    assert result.lung_ml == pytest.approx((labels > 0).sum() * result.labels.voxel_volume_ml)


def test_ild_is_subpleural_posterior_and_basal() -> None:
    result = make_phantom(seed=2, shape_kji=(48, 64, 64), extent_pct=10.0)
    labels = arr(result.labels)
    lung = labels > 0
    ild = labels == 2
    k, j, _ = np.nonzero(lung)
    k_mid, j_mid = np.median(k), np.median(j)
    lower, posterior = np.zeros_like(lung), np.zeros_like(lung)
    lower[: int(k_mid)] = True  # k grows towards the head
    posterior[:, int(j_mid) :, :] = True  # j grows towards the back
    share = lambda region: ild[region & lung].mean()  # noqa: E731
    assert share(lower) > 2 * share(~lower)
    assert share(posterior) > 2 * share(~posterior)
    # subpleural: the ILD touches the lung surface more than healthy lung does
    surface = lung & ~ndi.binary_erosion(lung)
    assert ild[surface].mean() > ild[lung].mean()


# --- image realism ----------------------------------------------------------------------------


def test_hu_ranges_per_tissue(phantom: Phantom) -> None:
    ct = arr(phantom.ct).astype(np.float32)
    tissue, labels = arr(phantom.tissue), arr(phantom.labels)
    assert arr(phantom.ct).dtype == np.int16
    core = ndi.binary_erosion(labels == 1, iterations=1)
    assert -900 < np.median(ct[core]) < -760
    assert -760 < np.median(ct[labels == 2]) < -300
    assert -140 < np.median(ct[tissue == Tissue.FAT]) < -60
    assert 15 < np.median(ct[tissue == Tissue.MUSCLE]) < 80
    assert 40 < np.median(ct[tissue == Tissue.LIVER]) < 80
    assert np.percentile(ct[tissue == Tissue.CORTEX], 90) > 500
    air = ndi.binary_erosion(tissue == Tissue.AIR, iterations=2)
    assert np.median(ct[air]) < -950
    # correlated noise of a realistic level in a homogeneous organ
    liver = ndi.binary_erosion(tissue == Tissue.LIVER, iterations=2)
    assert 10 < ct[liver].std() < 45
    assert ct.min() >= -1024 and ct.max() <= 3071


def test_lungs_have_a_realistic_volume(phantom: Phantom) -> None:
    assert 2500 < phantom.lung_ml < 7500
    assert phantom.ild_ml == pytest.approx(phantom.lung_ml * phantom.extent_pct / 100.0)


# --- DICOM ------------------------------------------------------------------------------------


def test_dicom_series_rereads_with_tags_and_geometry(tmp_path: Path, phantom: Phantom) -> None:
    patient = PatientInfo("P003", "PHANTOM^P003", birth_date=dt.date(1961, 5, 4), sex="F")
    study_uid = uid_from("test", "study")
    study = StudyInfo(study_uid, dt.date(2019, 3, 2), dt.time(10, 30), "PH0000001", "B00001")
    series = SeriesInfo(
        uid_from(study_uid, 1),
        uid_from(study_uid, "for"),
        2,
        "CHEST LUNG",
        120.0,
        "B70f",
        150.0,
        "test",
    )
    paths = write_ct_series(
        phantom.ct, tmp_path / "dicom", patient=patient, study=study, series=series
    )
    write_volume(phantom.labels, tmp_path / "labels.nii.gz")
    assert len(paths) == phantom.ct.shape_kji[0]

    datasets = [pydicom.dcmread(p) for p in paths]
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert first.Modality == "CT" and first.Manufacturer == "ILD Review phantom"
    assert str(first.PatientName) == "PHANTOM^P003" and first.PatientID == "P003"
    assert (
        first.PatientBirthDate == "19610504"
        and first.PatientSex == "F"
        and first.PatientAge == "057Y"
    )
    assert first.StudyInstanceUID == study_uid and first.StudyDate == "20190302"
    assert first.PhotometricInterpretation == "MONOCHROME2"
    assert (first.BitsAllocated, first.BitsStored, first.HighBit, first.PixelRepresentation) == (
        16,
        12,
        11,
        0,
    )
    assert float(first.RescaleIntercept) == -1024 and float(first.RescaleSlope) == 1
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert first.ConvolutionKernel == "B70f" and float(first.KVP) == 120
    for name in (
        "SpecificCharacterSet",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyID",
        "StudyTime",
        "SeriesDescription",
        "WindowCenter",
        "WindowWidth",
        "SliceThickness",
    ):
        assert name in first
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, len(datasets) + 1))

    # pixels and geometry agree with the NIfTI labels
    labels = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    sx, sy, _ = labels.GetSpacing()
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([sy, sx], abs=1e-4)
    for k in (0, len(datasets) - 1):
        ds = datasets[k]
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert np.array_equal(hu, arr(phantom.ct)[k])
        expected = labels.TransformIndexToPhysicalPoint((0, 0, k))
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(expected, abs=1e-3)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dicom")))
    image = reader.Execute()
    assert image.GetSize() == labels.GetSize()
    assert np.allclose(image.GetOrigin(), labels.GetOrigin(), atol=1e-3)
    assert np.allclose(image.GetSpacing(), labels.GetSpacing(), atol=1e-3)


# --- longitudinal pairs -----------------------------------------------------------------------


def test_displacement_maps_baseline_labels_onto_followup(worse_pair: PhantomPair) -> None:
    assert worse_pair.displacement_lps_mm.shape == (*TINY, 3)
    assert worse_pair.followup.ct.same_grid(worse_pair.baseline.ct)
    warped = _warp_followup_to_baseline(worse_pair, arr(worse_pair.followup.labels))
    assert _dice(arr(worse_pair.baseline.labels) > 0, warped > 0) > 0.95
    warped_lr = _warp_followup_to_baseline(worse_pair, arr(worse_pair.followup.lungs_lr))
    for side in (1, 2):
        assert _dice(arr(worse_pair.baseline.lungs_lr) == side, warped_lr == side) > 0.95
    # the follow-up really moved: without the displacement the overlap is worse
    same_place = arr(worse_pair.followup.labels) > 0
    assert _dice(arr(worse_pair.baseline.labels) > 0, same_place) < _dice(
        arr(worse_pair.baseline.labels) > 0, warped > 0
    )


def test_log_jacobian_shows_shrinkage_without_folding(worse_pair: PhantomPair) -> None:
    log_jac = arr(worse_pair.log_jacobian)
    shrink = arr(worse_pair.shrink_region) > 0
    lung = arr(worse_pair.baseline.labels) > 0
    assert shrink.any() and np.all(lung[shrink])
    assert -0.35 < log_jac[shrink].mean() < -0.08
    assert worse_pair.mean_log_jacobian_shrink < worse_pair.mean_log_jacobian_lung
    finite = finite_difference_log_jacobian(
        worse_pair.displacement_lps_mm, worse_pair.baseline.ct.spacing_mm
    )
    assert not np.isnan(finite).any()  # det(I + ∇u) > 0 everywhere: no folding
    assert np.abs(finite - log_jac)[lung].mean() < 0.01


@pytest.mark.parametrize(
    ("progression", "call"),
    [("worse", "worse"), ("stable", "stable"), ("improved", "improved"), (5.0, "worse")],
)
def test_morphologic_truth_follows_the_scenario(progression: str | float, call: str) -> None:
    pair = make_longitudinal_pair(
        seed=21, shape_kji=MICRO, extent_pct=18.0, progression=progression
    )
    assert pair.morphologic_call == call
    change = pair.followup.extent_pct - pair.baseline.extent_pct
    assert pair.extent_change_pct == pytest.approx(change)
    assert abs(pair.followup.extent_pct - pair.followup.requested_extent_pct) < 1.0
    if call == "stable":
        assert abs(change) < 1.0
    expected = (
        pair.pft_baseline.fvc_pct_predicted - pair.pft_followup.fvc_pct_predicted >= 10
    ) or (pair.pft_baseline.dlco_pct_predicted - pair.pft_followup.dlco_pct_predicted >= 15)
    assert pair.functional_worsening == expected


def test_flow_inverse_and_jacobian_are_exact() -> None:
    field = VelocityField(
        breathing=0.05,
        lateral=0.015,
        apex_z_mm=0.0,
        base_z_mm=-250.0,
        center_y_mm=0.0,
        softness_mm=12.0,
        blobs=(
            ShrinkBlob.with_center_log_jacobian((-60.0, 60.0, -200.0), (25.0, 16.0, 30.0), -0.2),
        ),
    )
    rng = np.random.default_rng(0)
    points = rng.uniform([-120, -80, -300], [120, 100, 20], size=(500, 3))
    mapped, log_jac = integrate(field, points)
    back, _ = integrate(field, mapped, inverse=True)
    assert np.abs(back - points).max() < 0.02
    # log-Jacobian against central differences of the map
    h = 0.05
    jac = np.empty((points.shape[0], 3, 3))
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = h
        plus, _ = integrate(field, points + step)
        minus, _ = integrate(field, points - step)
        jac[:, :, axis] = (plus - minus) / (2 * h)
    assert np.allclose(np.log(np.linalg.det(jac)), log_jac, atol=2e-3)
    # at the shrinkage centre: breathing (β + 2γ inside the lungs) plus the centre's -0.2
    _, at_centre = integrate(field, np.array([[-60.0, 60.0, -200.0]]))
    assert at_centre[0] == pytest.approx(0.05 + 2 * 0.015 - 0.2, abs=0.005)


# --- extent threshold -------------------------------------------------------------------------


def test_threshold_gives_the_exact_share() -> None:
    values = np.random.default_rng(1).normal(size=100_000).astype(np.float32)
    t = threshold_for_extent(values, 12.7)
    assert (values >= t).mean() * 100 == pytest.approx(12.7, abs=0.002)
    weights = np.where(values > 0, 2.0, 1.0).astype(np.float32)
    tw = threshold_for_extent(values, 30.0, weights)
    assert weights[values >= tw].sum() / weights.sum() * 100 == pytest.approx(30.0, abs=0.05)
    assert threshold_for_extent(values, 0.0) == float("inf")


# --- pulmonary function -----------------------------------------------------------------------


def test_pft_model_reproduces_the_cohort_statistics() -> None:
    rng = np.random.default_rng(2020)
    extents = sample_cohort_extents(rng, 4000)
    assert np.median(extents) == pytest.approx(12.7, abs=0.5)
    assert np.percentile(extents, [25, 75]) == pytest.approx([4.0, 24.7], abs=0.6)
    values = {name: [] for name in PFT_NAMES}  # type: dict[str, list[float]]
    for extent in extents:
        pct = percent_predicted(float(extent), draw_latent(rng))
        for name in PFT_NAMES:
            values[name].append(pct[name])
    for name in PFT_NAMES:
        rho = spearmanr(extents, values[name]).statistic
        assert rho == pytest.approx(SPEARMAN_WITH_EXTENT[name], abs=0.05), name
        assert np.median(values[name]) == pytest.approx(PFT_QUANTILES[name][3], abs=3.0), name


def test_functional_worsening_follows_ats_ers_thresholds() -> None:
    predicted = predicted_values("F", 53.0, 162.0)
    base = PftResult.from_percent({"fvc": 80.0, "tlc": 90.0, "dlco": 50.0, "kco": 65.0}, predicted)
    fvc_drop = PftResult.from_percent(
        {"fvc": 70.0, "tlc": 90.0, "dlco": 50.0, "kco": 65.0}, predicted
    )
    dlco_drop = PftResult.from_percent(
        {"fvc": 80.0, "tlc": 90.0, "dlco": 35.0, "kco": 65.0}, predicted
    )
    small = PftResult.from_percent({"fvc": 70.1, "tlc": 90.0, "dlco": 35.1, "kco": 65.0}, predicted)
    assert functional_worsening(base, fvc_drop) and functional_worsening(base, dlco_drop)
    assert not functional_worsening(base, small)
    assert base.fvc_l == pytest.approx(0.80 * predicted.fvc_l, abs=0.01)


def test_cohort_pft_correlates_negatively_with_extent(tmp_path: Path) -> None:
    manifest = write_cohort(
        tmp_path, patients=20, seed=2024, shape_kji=(12, 32, 32), followup=False, ct_nifti=False
    )
    data = json.loads(manifest.read_text())
    extents = {p["patient_id"]: p["timepoints"]["baseline"]["extent_pct"] for p in data["patients"]}
    with (tmp_path / "pft.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20
    x = [extents[row["patient_id"]] for row in rows]
    for column in (
        "dlco_pct_predicted",
        "tlc_pct_predicted",
        "fvc_pct_predicted",
        "kco_pct_predicted",
    ):
        assert spearmanr(x, [float(row[column]) for row in rows]).statistic < -0.2, column


# --- CLI and layout ---------------------------------------------------------------------------


def test_cli_writes_a_complete_cohort(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    cmd = [
        sys.executable,
        "-m",
        "inference.phantoms",
        "--out",
        str(out),
        "--patients",
        "2",
        "--seed",
        "9",
        "--shape-kji",
        *map(str, MICRO),
    ]
    done = subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "cohort.json").read_text())
    assert manifest["seed"] == 9 and manifest["version"] and len(manifest["patients"]) == 2
    with (out / "pft.csv").open() as handle:
        lines = handle.read().splitlines()
    assert lines[0] == CSV_HEADER
    assert len(lines) == 1 + 4
    for patient in manifest["patients"]:
        assert patient["patient_name"] == f"PHANTOM^{patient['patient_id']}"
        assert patient["cohort"] in {"worse", "stable", "improved"}
        for name in ("baseline", "followup"):
            tp = patient["timepoints"][name]
            assert len(list((out / tp["dicom_dir"]).glob("*.dcm"))) == MICRO[0] == tp["n_instances"]
            labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / tp["labels"])))
            assert 100.0 * (labels == 2).sum() / (labels > 0).sum() == pytest.approx(
                tp["extent_pct"], abs=1e-3
            )
            assert (out / tp["lungs_lr"]).exists() and (out / tp["ct_nifti"]).exists()
        pair = patient["pair"]
        displacement = sitk.ReadImage(str(out / pair["displacement"]))
        assert displacement.GetNumberOfComponentsPerPixel() == 3
        assert sitk.GetArrayFromImage(displacement).shape == (*MICRO, 3)
        assert (out / pair["log_jacobian"]).exists()
        assert pair["morphologic_call"] in {"improved", "stable", "worse"}
        assert isinstance(pair["functional_worsening"], bool)
        for key in (
            "mean_log_jacobian_lung",
            "mean_log_jacobian_shrink_region",
            "fvc_change_pct",
            "dlco_change_pct",
        ):
            assert isinstance(pair[key], float)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1, "extent_pct": 10.0},
        {"seed": 1, "extent_pct": 95.0},
        {"seed": 1, "extent_pct": 10.0, "spacing_mm": (1.0, 0.0, 1.0)},
        {"seed": 1, "extent_pct": 10.0, "shape_kji": (1, 32, 32)},
        {"seed": 1, "extent_pct": 10.0, "shape_kji": (8, 32, 32), "spacing_mm": (1.0, 1.0, 1.0)},
    ],
)
def test_invalid_arguments_fail_loudly(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_phantom(**{"shape_kji": MICRO, **kwargs})  # type: ignore[arg-type]


def test_unknown_progression_fails_loudly() -> None:
    with pytest.raises(ValueError, match="progression"):
        make_longitudinal_pair(seed=1, shape_kji=MICRO, progression="sideways")


def test_default_grid_covers_the_chest_from_apex_to_below_the_domes() -> None:
    result = make_phantom(seed=1, shape_kji=(32, 48, 48), extent_pct=5.0)
    ct: Volume = result.ct
    assert np.array_equal(ct.direction, np.eye(3))
    assert ct.index_to_lps((0, 0, 1))[2] > ct.index_to_lps((0, 0, 0))[2]  # k grows towards the head
    lung_slices = np.nonzero((arr(result.labels) > 0).any(axis=(1, 2)))[0]
    assert lung_slices.min() > 0 and lung_slices.max() < ct.shape_kji[0] - 1  # whole lungs in view
    assert (arr(result.tissue)[0] == Tissue.LIVER).any()  # upper abdomen in the lowest slice
