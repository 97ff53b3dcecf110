"""DICOM series -> Volume: ordering, rescale, codecs, and every geometry problem we detect."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from inference.dicom import (
    DicomSeriesError,
    SliceGap,
    read_dicom_series,
    read_headers,
    summarize_geometry,
    volume_from_datasets,
)
from inference.volume import GeometryError
from tests.inference_tests.dicom_factory import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    make_ct_series,
    make_ct_slice,
    random_hu,
    write_series,
)

ROWS, COLUMNS = 16, 20  # not square, so that a swap of i and j shows
SPACING = (0.7, 0.8, 2.0)  # (i, j, k) mm
ORIGIN = (-100.0, -120.0, 30.0)


def _oblique() -> tuple[tuple[float, ...], tuple[float, ...]]:
    a, b = np.radians(20.0), np.radians(35.0)
    row = (np.cos(a), np.sin(a), 0.0)
    col = (-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), np.sin(b))
    return tuple(float(v) for v in row), tuple(float(v) for v in col)


ORIENTATIONS = {
    "axial": AXIAL,
    "axial-normal-to-feet": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "coronal": CORONAL,
    "sagittal": SAGITTAL,
    "oblique": _oblique(),
}


def _series(n: int = 6, seed: int = 0, **kwargs: object) -> tuple[np.ndarray, list[Dataset]]:
    hu = random_hu((n, ROWS, COLUMNS), seed)
    return hu, make_ct_series(hu, spacing_mm=SPACING, origin_lps_mm=ORIGIN, **kwargs)  # type: ignore[arg-type]


def _move(ds: Dataset, position: np.ndarray) -> None:
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]


# ---------------------------------------------------------------------------------- ordering


@pytest.mark.parametrize("orientation", ORIENTATIONS.values(), ids=ORIENTATIONS.keys())
def test_it_orders_slices_along_the_normal_not_by_instance_number_or_file_name(
    tmp_path: Path, orientation: tuple[tuple[float, ...], tuple[float, ...]]
) -> None:
    hu, datasets = _series(row_cosine=orientation[0], col_cosine=orientation[1])
    positions = [np.asarray(ds.ImagePositionPatient, dtype=float) for ds in datasets]
    shuffle = np.random.default_rng(1).permutation(len(datasets)).tolist()
    shuffled = [datasets[k] for k in shuffle]
    for decoy, ds in enumerate(shuffled):
        ds.InstanceNumber = decoy + 1  # InstanceNumber follows the shuffle, not the anatomy
    write_series(shuffled, tmp_path, names=[f"{n:02d}.dcm" for n in range(len(shuffled))])

    volume = read_dicom_series(tmp_path)

    np.testing.assert_array_equal(volume.array, hu)
    np.testing.assert_allclose(volume.spacing_mm, SPACING, atol=1e-5)
    normal = np.cross(orientation[0], orientation[1])
    np.testing.assert_allclose(volume.direction, np.column_stack([*orientation, normal]), atol=1e-5)
    for k, position in enumerate(positions):
        np.testing.assert_allclose(volume.index_to_lps([0, 0, k]), position, atol=1e-4)
    # Pixel (j=2, i=3) of slice 1 lies 3 columns along the row cosine, 2 rows along the column one.
    expected = positions[1] + 3 * SPACING[0] * np.asarray(orientation[0])
    expected += 2 * SPACING[1] * np.asarray(orientation[1])
    np.testing.assert_allclose(volume.index_to_lps([3, 2, 1]), expected, atol=1e-4)


def test_it_measures_slice_spacing_from_positions_not_slice_thickness() -> None:
    _, datasets = _series()
    for ds in datasets:
        ds.SliceThickness = "5"
        ds.SpacingBetweenSlices = "-7"

    volume = volume_from_datasets(datasets)

    assert volume.spacing_mm[2] == pytest.approx(2.0)


# ---------------------------------------------------------------------------------- rescale


@pytest.mark.parametrize(
    ("slope", "intercept", "unsigned", "dtype"),
    [
        (1.0, -1024.0, False, np.int16),
        (1.0, -1024.0, True, np.int16),
        (2.0, -1000.0, False, np.int16),
        (0.5, -1024.25, False, np.float32),
    ],
)
def test_it_applies_rescale_slope_and_intercept(
    slope: float, intercept: float, unsigned: bool, dtype: type
) -> None:
    stored = np.random.default_rng(2).integers(0, 4096, size=(3, ROWS, COLUMNS))
    hu = stored * slope + intercept
    datasets = make_ct_series(
        hu, rescale_slope=slope, rescale_intercept=intercept, unsigned=unsigned
    )

    volume = volume_from_datasets(datasets)

    assert volume.array.dtype == dtype
    np.testing.assert_array_equal(volume.array, hu.astype(dtype))


def test_it_switches_to_float32_when_integer_hu_overflow_int16() -> None:
    stored = np.full((2, ROWS, COLUMNS), 60000, dtype=np.uint16)
    datasets = make_ct_series(stored.astype(float), rescale_intercept=0.0, unsigned=True)

    volume = volume_from_datasets(datasets)

    assert volume.array.dtype == np.float32
    assert float(volume.array.max()) == 60000.0


# ---------------------------------------------------------------------------------- codecs


def _dcmcjpeg(option: str) -> Callable[[list[Dataset], Path], list[Path]]:
    def compress(datasets: list[Dataset], folder: Path) -> list[Path]:
        raw = write_series(datasets, folder / "raw")
        out = folder / "jpeg"
        out.mkdir()
        for path in raw:
            subprocess.run(["dcmcjpeg", option, str(path), str(out / path.name)], check=True)
        return sorted(out.iterdir())

    return compress


def _pydicom(uid: str) -> Callable[[list[Dataset], Path], list[Path]]:
    def compress(datasets: list[Dataset], folder: Path) -> list[Path]:
        for ds in datasets:
            ds.compress(uid)
        return write_series(datasets, folder)

    return compress


needs_dcmtk = pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="dcmtk not installed")


@pytest.mark.parametrize(
    ("compress", "transfer_syntax"),
    [
        pytest.param(_pydicom(RLELossless), RLELossless, id="rle"),
        pytest.param(_pydicom(JPEGLSLossless), JPEGLSLossless, id="jpeg-ls"),
        pytest.param(_pydicom(JPEG2000Lossless), JPEG2000Lossless, id="jpeg2000"),
        pytest.param(
            _dcmcjpeg("+e1"), "1.2.840.10008.1.2.4.70", id="jpeg-lossless-sv1", marks=needs_dcmtk
        ),
        pytest.param(
            _dcmcjpeg("+el"), "1.2.840.10008.1.2.4.57", id="jpeg-lossless-p14", marks=needs_dcmtk
        ),
    ],
)
def test_it_decodes_compressed_transfer_syntaxes_losslessly(
    tmp_path: Path,
    compress: Callable[[list[Dataset], Path], list[Path]],
    transfer_syntax: str,
) -> None:
    hu = random_hu((3, 32, 40), seed=3)  # JPEG 2000's default 6 resolutions need >= 32 pixels
    paths = compress(make_ct_series(hu), tmp_path)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == transfer_syntax

    volume = read_dicom_series(paths)

    np.testing.assert_array_equal(volume.array, hu)


# ---------------------------------------------------------------------------------- detection


def _drop_slice(datasets: list[Dataset]) -> None:
    del datasets[3]


def _jitter(datasets: list[Dataset]) -> None:
    for ds, z in zip(datasets, [0.0, 2.05, 3.97, 6.03, 8.0, 9.96], strict=True):
        _move(ds, np.add(ORIGIN, [0.0, 0.0, z]))


def _tilt(datasets: list[Dataset]) -> None:
    for k, ds in enumerate(datasets):
        z = k * SPACING[2]
        _move(ds, np.add(ORIGIN, [0.0, z * np.tan(np.radians(12.0)), z]))


def _mixed_orientation(datasets: list[Dataset]) -> None:
    datasets[-1].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


def _mixed_size(datasets: list[Dataset]) -> None:
    stored = np.zeros((ROWS + 2, COLUMNS), dtype=np.int16)
    datasets[2] = make_ct_slice(
        stored, position_lps_mm=datasets[2].ImagePositionPatient, pixel_spacing_ji_mm=(0.8, 0.7)
    )


def _mixed_pixel_spacing(datasets: list[Dataset]) -> None:
    datasets[1].PixelSpacing = [0.5, 0.5]


def _delete(keyword: str) -> Callable[[list[Dataset]], None]:
    def mutate(datasets: list[Dataset]) -> None:
        delattr(datasets[2], keyword)

    return mutate


def _identical_duplicate(datasets: list[Dataset]) -> None:
    datasets.insert(0, copy.deepcopy(datasets[4]))


def _differing_duplicate(datasets: list[Dataset]) -> None:
    twin = copy.deepcopy(datasets[4])
    twin.PixelData = np.zeros((ROWS, COLUMNS), dtype=np.int16).tobytes()
    datasets.insert(0, twin)


def _two_series(datasets: list[Dataset]) -> None:
    for ds in datasets[:2]:
        ds.SeriesInstanceUID = "1.2.3.4"


def _multi_frame(datasets: list[Dataset]) -> None:
    datasets[0].NumberOfFrames = 2


# (mutation, fields expected in the summary, fragment of the refusal or None if it builds)
DETECTIONS = {
    "missing-slice": (
        _drop_slice,
        {"gaps": (SliceGap(2, 4.0),), "uniform": False},
        "missing slices: gap of 4.00 mm after slice 2",
    ),
    "jitter": (_jitter, {"uniform": False, "gaps": ()}, None),
    "gantry-tilt": (_tilt, {"gantry_tilt_deg": pytest.approx(12.0, abs=0.01)}, None),
    "mixed-orientation": (_mixed_orientation, {"mixed_orientation": True}, "mixed orientations"),
    "mixed-rows-columns": (_mixed_size, {"mixed_dimensions": True}, "different sizes"),
    "mixed-pixel-spacing": (_mixed_pixel_spacing, {}, "different PixelSpacing"),
    "missing-ipp": (
        _delete("ImagePositionPatient"),
        {"missing_attributes": ("ImagePositionPatient",), "slice_spacing_mm": None},
        "ImagePositionPatient (0020,0032) is missing or malformed in 1 of 6 slices",
    ),
    "missing-iop": (
        _delete("ImageOrientationPatient"),
        {"missing_attributes": ("ImageOrientationPatient",)},
        "ImageOrientationPatient (0020,0037) is missing",
    ),
    "missing-pixel-spacing": (
        _delete("PixelSpacing"),
        {"missing_attributes": ("PixelSpacing",)},
        "PixelSpacing (0028,0030) is missing",
    ),
    "identical-duplicate": (_identical_duplicate, {"duplicate_positions": 1}, None),
    "differing-duplicate": (
        _differing_duplicate,
        {"duplicate_positions": 1},
        "duplicated position with different pixels",
    ),
    "two-series": (_two_series, {}, "the datasets belong to 2 series"),
    "multi-frame": (_multi_frame, {}, "multi-frame images"),
}


@pytest.mark.parametrize(("mutate", "expected", "refusal"), DETECTIONS.values(), ids=DETECTIONS)
def test_summarize_geometry_detects(
    mutate: Callable[[list[Dataset]], None], expected: dict[str, object], refusal: str | None
) -> None:
    _, datasets = _series()
    mutate(datasets)

    geometry = summarize_geometry(datasets)

    for name, value in expected.items():
        assert getattr(geometry, name) == value, name
    assert geometry.problems  # every detected case is described for a person
    json.dumps(geometry.to_dict())


@pytest.mark.parametrize(("mutate", "expected", "refusal"), DETECTIONS.values(), ids=DETECTIONS)
def test_volume_from_datasets_refuses_or_builds(
    mutate: Callable[[list[Dataset]], None], expected: dict[str, object], refusal: str | None
) -> None:
    _, datasets = _series()
    mutate(datasets)

    if refusal is None:
        volume = volume_from_datasets(datasets)
        assert volume.array.shape[1:] >= (ROWS, COLUMNS)
    else:
        with pytest.raises(DicomSeriesError, match=re.escape(refusal)):
            volume_from_datasets(datasets)


def test_an_identical_duplicate_is_dropped() -> None:
    hu, datasets = _series()
    _identical_duplicate(datasets)

    volume = volume_from_datasets(datasets)

    np.testing.assert_array_equal(volume.array, hu)


def test_a_regular_series_has_no_problems() -> None:
    _, datasets = _series()

    geometry = summarize_geometry(datasets)

    assert geometry.problems == ()
    assert geometry.buildable
    assert geometry.uniform
    assert geometry.slice_spacing_mm == pytest.approx(2.0)
    assert geometry.pixel_spacing_mm == (0.8, 0.7)  # DICOM order: (row, column) spacing
    assert geometry.gantry_tilt_deg == pytest.approx(0.0)


def test_summarize_geometry_works_on_headers_only(tmp_path: Path) -> None:
    _, datasets = _series()
    _drop_slice(datasets)
    paths = write_series(datasets, tmp_path)
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]

    summary = json.loads(json.dumps(summarize_geometry(headers).to_dict()))

    assert summary["gaps"] == [{"after_index": 2, "spacing_mm": pytest.approx(4.0)}]
    assert summary["n_slices"] == 5
    assert summary["buildable"] is False
    assert "0000.dcm" in summary["problems"][0] or "0002.dcm" in summary["problems"][0]


def test_a_refusal_names_every_problem_and_is_a_geometry_error() -> None:
    _, datasets = _series()
    _drop_slice(datasets)
    _mixed_pixel_spacing(datasets)

    with pytest.raises(GeometryError) as raised:
        volume_from_datasets(datasets)

    assert isinstance(raised.value, DicomSeriesError)
    assert len(raised.value.problems) == 2
    assert "re-export the complete series" in str(raised.value)


def test_it_refuses_datasets_without_pixel_data(tmp_path: Path) -> None:
    paths = write_series(_series()[1], tmp_path)
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]

    with pytest.raises(DicomSeriesError, match="stop_before_pixels"):
        volume_from_datasets(headers)


def test_it_refuses_an_empty_list() -> None:
    with pytest.raises(DicomSeriesError, match="no DICOM datasets"):
        summarize_geometry([])


# ---------------------------------------------------------------------------------- resampling


def _linear_hu(points_lps_mm: np.ndarray) -> np.ndarray:
    """A linear field: linear interpolation reproduces it exactly."""
    return 2.0 * points_lps_mm[..., 0] - 3.0 * points_lps_mm[..., 1] + 5.0 * points_lps_mm[..., 2]


def _series_of_field(positions: list[np.ndarray]) -> list[Dataset]:
    """Slices at ``positions`` sampling ``_linear_hu``, stored with a 0.1 HU slope."""
    j, i = np.mgrid[0:ROWS, 0:COLUMNS]
    hu = [
        _linear_hu(p + i[..., None] * [SPACING[0], 0, 0] + j[..., None] * [0, SPACING[1], 0])
        for p in positions
    ]
    return make_ct_series(
        np.asarray(hu),
        spacing_mm=SPACING,
        positions_lps_mm=[p.tolist() for p in positions],
        rescale_slope=0.1,
        rescale_intercept=0.0,
    )


def test_it_resamples_jittered_spacing_linearly_onto_a_uniform_grid() -> None:
    origin = np.asarray([-5.0, -4.0, 10.0])
    zs = [0.0, 2.05, 3.97, 6.03, 8.0, 9.96]
    datasets = _series_of_field([np.add(origin, [0, 0, z]) for z in zs])

    volume = volume_from_datasets(datasets)

    assert volume.spacing_mm[2] == pytest.approx(float(np.median(np.diff(zs))))
    assert volume.array.shape == (6, ROWS, COLUMNS)
    k, j, i = np.indices(volume.array.shape)
    expected = _linear_hu(volume.index_to_lps(np.stack([i, j, k], axis=-1)))
    np.testing.assert_allclose(
        np.asarray(volume.array, float), expected, atol=0.06
    )  # 0.05: the stored rounding


def test_it_refuses_jitter_when_asked() -> None:
    _, datasets = _series()
    _jitter(datasets)

    with pytest.raises(DicomSeriesError, match=r"non-uniform slice spacing.*on_nonuniform"):
        volume_from_datasets(datasets, on_nonuniform="refuse")


def test_it_corrects_gantry_tilt_by_shifting_each_slice_to_its_physical_place() -> None:
    origin = np.asarray([-5.0, -4.0, 10.0])
    shift_per_mm = np.tan(np.radians(15.0))
    positions = [np.add(origin, [0, k * 2.0 * shift_per_mm, k * 2.0]) for k in range(5)]
    datasets = _series_of_field(positions)

    volume = volume_from_datasets(datasets)

    assert volume.spacing_mm == pytest.approx(SPACING)
    np.testing.assert_allclose(volume.direction, np.eye(3), atol=1e-6)
    assert volume.array.shape[1] > ROWS  # enlarged to keep every shifted slice
    k, j, i = np.indices(volume.array.shape)
    points = volume.index_to_lps(np.stack([i, j, k], axis=-1))
    # Voxels covered by their slice's original pixels (others hold the fill value).
    slice_y0 = np.asarray([p[1] for p in positions])[k]
    covered = (points[..., 1] >= slice_y0 - 1e-6) & (
        points[..., 1] <= slice_y0 + (ROWS - 1) * SPACING[1] + 1e-6
    )
    assert covered.mean() > 0.5
    np.testing.assert_allclose(volume.array[covered], _linear_hu(points)[covered], atol=0.06)


def test_it_refuses_gantry_tilt_when_asked() -> None:
    _, datasets = _series()
    _tilt(datasets)

    with pytest.raises(DicomSeriesError, match=r"gantry tilt of 12\.00 degrees"):
        volume_from_datasets(datasets, on_gantry_tilt="refuse")


def test_target_spacing_resamples_a_uniform_series() -> None:
    datasets = _series_of_field([np.asarray([0.0, 0.0, 2.0 * k]) for k in range(5)])

    volume = volume_from_datasets(datasets, target_spacing_mm=0.5)

    assert volume.array.shape[0] == 17
    assert volume.spacing_mm[2] == pytest.approx(0.5)
    k, j, i = np.indices(volume.array.shape)
    expected = _linear_hu(volume.index_to_lps(np.stack([i, j, k], axis=-1)))
    np.testing.assert_allclose(np.asarray(volume.array, float), expected, atol=0.06)


def test_a_single_slice_takes_its_spacing_from_slice_thickness() -> None:
    _, datasets = _series(n=1)
    datasets[0].SliceThickness = "1.25"

    volume = volume_from_datasets(datasets)

    assert volume.array.shape == (1, ROWS, COLUMNS)
    assert volume.spacing_mm[2] == pytest.approx(1.25)


# ---------------------------------------------------------------------------------- files


def test_a_folder_with_several_series_is_refused_with_their_uids(tmp_path: Path) -> None:
    write_series(_series(series_uid="1.2.3.100")[1], tmp_path / "a")
    write_series(_series(n=3, series_uid="1.2.3.200")[1], tmp_path / "b")

    with pytest.raises(DicomSeriesError, match=r"1\.2\.3\.100 \(6 files.*1\.2\.3\.200 \(3 files"):
        read_dicom_series(tmp_path)

    assert read_dicom_series(tmp_path, series_instance_uid="1.2.3.200").array.shape[0] == 3
    with pytest.raises(DicomSeriesError, match=r"series 9\.9 not found"):
        read_dicom_series(tmp_path, series_instance_uid="9.9")


def test_a_folder_skips_files_that_are_not_dicom(tmp_path: Path) -> None:
    hu, datasets = _series()
    write_series(datasets, tmp_path)
    (tmp_path / "README.txt").write_text("not an image")

    np.testing.assert_array_equal(read_dicom_series(tmp_path).array, hu)
    assert list(read_headers(tmp_path)) == [datasets[0].SeriesInstanceUID]


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda p: p / "absent", FileNotFoundError, "does not exist"),
        (lambda p: p, DicomSeriesError, "no DICOM image files found"),
        (lambda p: [_text_file(p)], DicomSeriesError, "is not a readable DICOM file"),
    ],
    ids=["absent", "empty-folder", "named-non-dicom-file"],
)
def test_unreadable_inputs_give_clear_errors(
    tmp_path: Path, make: Callable[[Path], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        read_dicom_series(make(tmp_path))  # type: ignore[arg-type]


def _text_file(folder: Path) -> Path:
    path = folder / "notes.dcm"
    path.write_text("hello")
    return path


def test_reading_a_folder_keeps_about_one_copy_of_the_volume_in_memory(tmp_path: Path) -> None:
    hu = random_hu((40, 256, 256), seed=4)  # big slices: the headers' share stays small
    write_series(make_ct_series(hu), tmp_path)
    volume_bytes = hu.nbytes
    read_dicom_series(tmp_path)  # warm up, so that imports are not counted

    tracemalloc.start()
    try:
        volume = read_dicom_series(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    np.testing.assert_array_equal(volume.array, hu)
    assert peak < 1.5 * volume_bytes, f"peak {peak / volume_bytes:.2f} x the volume"


# ---------------------------------------------------------------------------------- real data


@pytest.mark.real_data
def test_popi_reads_as_512x512x141_at_2mm(real_data: Callable[[str], Path]) -> None:
    volume = read_dicom_series(real_data("popi-00-ct"))

    assert volume.array.shape == (141, 512, 512)
    assert volume.array.dtype == np.int16
    np.testing.assert_allclose(volume.spacing_mm, (0.977, 0.977, 2.0), atol=1e-3)
    outside_body = volume.array[:, :20, :20]
    assert -1030 <= outside_body.mean() <= -950  # air
    assert volume.array.min() >= -1100
    assert (
        0 < float(np.percentile(np.asarray(volume.array, float), 99)) < 3000
    )  # soft tissue and bone present


@pytest.mark.real_data
def test_popi_matches_simpleitk(real_data: Callable[[str], Path]) -> None:
    import SimpleITK as sitk

    folder = real_data("popi-00-ct")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reference = reader.Execute()

    volume = read_dicom_series(folder)

    np.testing.assert_array_equal(volume.array, sitk.GetArrayViewFromImage(reference))
    np.testing.assert_allclose(volume.origin_lps_mm, reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(volume.spacing_mm, reference.GetSpacing(), atol=1e-4)


@pytest.mark.real_data
def test_jpeg2000_series_reads_as_512x512x20(real_data: Callable[[str], Path]) -> None:
    folder = real_data("totalseg-j2k-dicom") / "example_ct_dicom"

    volume = read_dicom_series(folder)

    assert volume.array.shape == (20, 512, 512)
    np.testing.assert_allclose(volume.spacing_mm, (0.977, 0.977, 2.0), atol=1e-3)
    assert volume.array.min() == -1024
    assert summarize_geometry(read_headers(folder)[""]).problems == ()


@pytest.mark.real_data
def test_lungmask_minimal_header_slices_read_as_a_two_slice_volume(
    real_data: Callable[[str], Path],
) -> None:
    """No Modality and a stripped header, but IPP, IOP and PixelSpacing are there: accepted."""
    volume = read_dicom_series(real_data("lungmask-2slice"))

    assert volume.array.shape == (2, 512, 512)
    assert volume.spacing_mm == pytest.approx((0.625, 0.625, 1.0))
    assert volume.origin_lps_mm == pytest.approx((0.0, 0.0, 0.0))
    np.testing.assert_array_equal(volume.direction, np.eye(3))
    assert volume.array.min() == -2048


@pytest.mark.real_data
def test_lungmask_slices_without_positions_are_refused_by_name(
    real_data: Callable[[str], Path],
) -> None:
    folder = real_data("lungmask-2slice")
    datasets = [pydicom.dcmread(folder / name) for name in ("0.dcm", "1.dcm")]
    for ds in datasets:
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient

    with pytest.raises(DicomSeriesError) as raised:
        volume_from_datasets(datasets)

    assert "ImagePositionPatient (0020,0032) is missing or malformed in 2 of 2" in str(raised.value)
    assert "ImageOrientationPatient (0020,0037)" in str(raised.value)
    assert "0.dcm, 1.dcm" in str(raised.value)


@pytest.mark.real_data
def test_a_ct_folder_beside_its_segmentation_needs_a_series_choice(
    real_data: Callable[[str], Path],
) -> None:
    folder = real_data("dcmqi-ct3slice-seg")
    ct_uid = pydicom.dcmread(folder / "ct" / "01.dcm", stop_before_pixels=True).SeriesInstanceUID

    with pytest.raises(DicomSeriesError, match="2 series found"):
        read_dicom_series(folder)

    assert read_dicom_series(folder, series_instance_uid=ct_uid).array.shape == (3, 512, 512)
