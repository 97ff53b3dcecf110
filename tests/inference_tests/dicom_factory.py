"""Synthetic single-frame CT datasets built in memory, for tests that need DICOM input.

Geometry follows DICOM: ``ImageOrientationPatient`` is the row cosine (direction of increasing
column index ``i``) then the column cosine (increasing row index ``j``); ``PixelSpacing`` is
(row spacing, column spacing) = (j, i); positions are LPS millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))
SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))


def _ds(values: Sequence[float]) -> list[str]:
    """DS strings (at most 16 characters) that keep micrometre precision."""
    return [f"{float(v):.6f}".rstrip("0").rstrip(".") or "0" for v in values]


def make_ct_slice(
    stored: npt.NDArray[np.integer],
    *,
    position_lps_mm: Sequence[float],
    row_cosine: Sequence[float] = AXIAL[0],
    col_cosine: Sequence[float] = AXIAL[1],
    pixel_spacing_ji_mm: Sequence[float] = (0.7, 0.7),
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    study_uid: str = "1.2.826.0.1.3680043.8.498.2",
    instance_number: int = 1,
    slice_thickness_mm: float | None = 2.0,
) -> Dataset:
    """One CT Image Storage dataset (Explicit VR Little Endian) holding ``stored`` [j, i].

    ``stored`` must be int16 (PixelRepresentation 1) or uint16 (PixelRepresentation 0).
    """
    if stored.dtype not in (np.int16, np.uint16):
        raise ValueError(f"stored values must be int16 or uint16, got {stored.dtype}")
    sop_uid = generate_uid(entropy_srcs=[series_uid, str(instance_number), str(position_lps_mm)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "CT"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = study_uid + ".1"
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = _ds(position_lps_mm)
    ds.ImageOrientationPatient = _ds([*row_cosine, *col_cosine])
    ds.PixelSpacing = _ds(pixel_spacing_ji_mm)
    if slice_thickness_mm is not None:
        ds.SliceThickness = _ds([slice_thickness_mm])[0]
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.RescaleSlope = _ds([rescale_slope])[0]
    ds.RescaleIntercept = _ds([rescale_intercept])[0]
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()
    return ds


def make_ct_series(
    hu_kji: npt.NDArray[np.number],
    *,
    spacing_mm: Sequence[float] = (0.7, 0.8, 2.0),
    origin_lps_mm: Sequence[float] = (-100.0, -120.0, 30.0),
    row_cosine: Sequence[float] = AXIAL[0],
    col_cosine: Sequence[float] = AXIAL[1],
    positions_lps_mm: Sequence[Sequence[float]] | None = None,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    unsigned: bool = False,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
) -> list[Dataset]:
    """A series whose volume is ``hu_kji`` with spacing ``(i, j, k)`` along the given cosines.

    Slice ``k`` lies at ``origin + k * spacing_k * normal`` (normal = row x column cosine) unless
    ``positions_lps_mm`` gives each slice's position. Stored values are
    ``round((hu - intercept) / slope)``. Datasets come in slice order; shuffle them yourself.
    """
    normal = np.cross(row_cosine, col_cosine)
    datasets = []
    for k, hu in enumerate(hu_kji):
        if positions_lps_mm is None:
            position = np.asarray(origin_lps_mm) + k * spacing_mm[2] * normal
        else:
            position = np.asarray(positions_lps_mm[k])
        stored = np.rint((np.asarray(hu, dtype=np.float64) - rescale_intercept) / rescale_slope)
        datasets.append(
            make_ct_slice(
                stored.astype(np.uint16 if unsigned else np.int16),
                position_lps_mm=position.tolist(),
                row_cosine=row_cosine,
                col_cosine=col_cosine,
                pixel_spacing_ji_mm=(spacing_mm[1], spacing_mm[0]),
                rescale_slope=rescale_slope,
                rescale_intercept=rescale_intercept,
                series_uid=series_uid,
                instance_number=k + 1,
                slice_thickness_mm=spacing_mm[2],
            )
        )
    return datasets


def random_hu(shape_kji: tuple[int, int, int], seed: int = 0) -> npt.NDArray[np.int16]:
    """Integer HU in [-1024, 2000] with a fixed seed."""
    return np.random.default_rng(seed).integers(-1024, 2001, size=shape_kji).astype(np.int16)


def write_series(
    datasets: Sequence[Dataset], folder: Path, names: Sequence[str] | None = None
) -> list[Path]:
    """Save each dataset as a DICOM file (with preamble) in ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = folder / (names[index] if names else f"{index:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
