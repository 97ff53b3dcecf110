"""read_image / write_image: every format keeps voxels and LPS geometry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from inference.dicom import DicomSeriesError
from inference.imageio import ImageIOError, read_image, write_image
from inference.volume import GeometryError, Volume
from tests.inference_tests.dicom_factory import make_ct_series, random_hu, write_series


def _rotation(seed: int = 0) -> np.ndarray:
    """A proper rotation (det +1), oblique to every axis."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _oblique_volume(dtype: type = np.int16) -> Volume:
    array: np.ndarray = np.random.default_rng(1).integers(-1024, 1000, size=(5, 7, 9)).astype(dtype)
    return Volume(array, (0.7, 0.8, 2.5), (-120.5, 33.25, 7.0), _rotation())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_then_read_preserves_voxels_and_geometry(tmp_path: Path, suffix: str) -> None:
    volume = _oblique_volume()

    written = write_image(volume, tmp_path / "deep" / f"ct{suffix}")
    read = read_image(written)

    np.testing.assert_array_equal(read.array, volume.array)
    assert read.array.dtype == np.int16
    np.testing.assert_allclose(read.spacing_mm, volume.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(read.origin_lps_mm, volume.origin_lps_mm, atol=1e-4)
    np.testing.assert_allclose(read.direction, volume.direction, atol=1e-5)


def test_nifti_stores_ras_so_other_tools_see_the_same_place(tmp_path: Path) -> None:
    volume = Volume(np.zeros((2, 3, 4), np.int16), (1.0, 1.0, 1.0), (10.0, 20.0, 30.0))

    path = write_image(volume, tmp_path / "ct.nii.gz")

    # ITK reads NIfTI's RAS qform back to LPS; the raw header holds x, y negated.
    header_origin = sitk.ReadImage(str(path)).GetOrigin()
    assert header_origin == pytest.approx((10.0, 20.0, 30.0))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert float(reader.GetMetaData("qoffset_x")) == pytest.approx(-10.0)
    assert float(reader.GetMetaData("qoffset_y")) == pytest.approx(-20.0)


def test_it_reads_metaimage_header_and_raw_pair(tmp_path: Path) -> None:
    volume = _oblique_volume(np.float32)
    sitk.WriteImage(volume.to_sitk(), str(tmp_path / "ct.mhd"))

    read = read_image(tmp_path / "ct.mhd")

    assert volume.same_grid(read)
    np.testing.assert_array_equal(read.array, volume.array)


def test_boolean_masks_are_written_as_uint8(tmp_path: Path) -> None:
    mask = np.asarray(_oblique_volume().array, dtype=float) > 0
    volume = _oblique_volume().with_array(mask)

    read = read_image(write_image(volume, tmp_path / "mask.nii.gz"))

    assert read.array.dtype == np.uint8
    np.testing.assert_array_equal(read.array, mask)


@pytest.mark.parametrize("as_list", [False, True], ids=["folder", "list"])
def test_it_reads_a_dicom_folder_or_list_of_files(tmp_path: Path, as_list: bool) -> None:
    hu = random_hu((4, 12, 10))
    paths = write_series(make_ct_series(hu), tmp_path)

    volume = read_image(paths if as_list else tmp_path)

    np.testing.assert_array_equal(volume.array, hu)


def test_it_reads_a_single_dicom_file_whatever_its_name(tmp_path: Path) -> None:
    hu = random_hu((1, 12, 10))
    (path,) = write_series(make_ct_series(hu), tmp_path, names=["IM0001"])

    assert read_image(path).array.shape == (1, 12, 10)


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("notes.txt", b"hello", ImageIOError, "unknown image type"),
        ("broken.nii.gz", b"not gzip at all", ImageIOError, "could not be read as an image"),
        ("broken.nrrd", b"NRRD0004\ntype: nonsense\n", ImageIOError, "could not be read"),
        ("empty", None, DicomSeriesError, "no DICOM image files found"),
    ],
)
def test_unreadable_inputs_give_clear_errors(
    tmp_path: Path, name: str, content: bytes | None, error: type[Exception], message: str
) -> None:
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)

    with pytest.raises(error, match=message):
        read_image(path)


def test_a_missing_path_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "absent.nii.gz")


@pytest.mark.parametrize("name", ["ct.png", "ct.dcm", "ct.mhd", "ct"])
def test_write_refuses_other_formats(tmp_path: Path, name: str) -> None:
    with pytest.raises(ImageIOError, match="cannot write this file type"):
        write_image(_oblique_volume(), tmp_path / name)


@pytest.mark.real_data
def test_pyradiomics_lung1_nrrd_reads_as_512x512x48(real_data: Callable[[str], Path]) -> None:
    volume = read_image(real_data("pyradiomics-lung1") / "lung1_image.nrrd")

    assert volume.array.shape == (48, 512, 512)
    np.testing.assert_allclose(volume.spacing_mm, (0.5703, 0.5703, 5.0), atol=1e-4)


@pytest.mark.real_data
def test_popi_survives_a_nifti_round_trip(real_data: Callable[[str], Path], tmp_path: Path) -> None:
    volume = read_image(real_data("popi-00-ct"))

    read = read_image(write_image(volume, tmp_path / "popi.nii.gz"))

    assert read.same_grid(volume, atol_mm=1e-4)
    np.testing.assert_array_equal(read.array, volume.array)


def test_a_crop_keeps_every_voxel_where_it_was_in_space() -> None:
    volume = _oblique_volume()

    part = volume.crop((slice(1, 4), slice(2, 6), slice(3, 8)))

    assert part.shape_kji == (3, 4, 5)
    np.testing.assert_array_equal(part.array, volume.array[1:4, 2:6, 3:8])
    ijk = np.array([[0, 0, 0], [4, 3, 2], [2, 1, 1]], dtype=np.float64)
    np.testing.assert_allclose(
        part.index_to_lps(ijk), volume.index_to_lps(ijk + np.array([3.0, 2.0, 1.0])), atol=1e-9
    )


@pytest.mark.parametrize(
    "box",
    [
        (slice(0, 0), slice(0, 7), slice(0, 9)),
        (slice(0, 6), slice(0, 7), slice(0, 9)),
        (slice(-1, 5), slice(0, 7), slice(0, 9)),
    ],
)
def test_an_empty_or_outside_crop_is_refused(box: tuple[slice, slice, slice]) -> None:
    with pytest.raises(GeometryError, match="does not lie inside"):
        _oblique_volume().crop(box)
