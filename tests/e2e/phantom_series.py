"""A 400-slice 512×512 CT series for the browser test, made from a synthetic phantom.

The phantom generator is slow at full resolution (about a minute on two cores), so a
100×256×256 phantom is made and upsampled (slices repeated ×4, in-plane linear ×2). Its exact
right/left lung labels come along, upsampled the same way, to stand in for the lung mask.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from inference.volume import Volume

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")


@dataclass(frozen=True)
class BrowserSeries:
    ct: Volume
    lungs_lr: Volume


def make_browser_series(*, seed: int = 3, slices: int = 400, size: int = 512) -> BrowserSeries:
    from inference.phantoms import make_phantom

    phantom = make_phantom(seed=seed, shape_kji=(slices // 4, size // 2, size // 2))
    ct_small = np.asarray(phantom.ct.array)
    ct = np.empty((slices, size, size), dtype=np.int16)
    for k in range(slices):
        ct[k] = np.rint(ndimage.zoom(ct_small[k // 4].astype(np.float32), 2, order=1))
    lungs = np.repeat(np.repeat(np.repeat(np.asarray(phantom.lungs_lr.array), 4, 0), 2, 1), 2, 2)
    sx, sy, sz = phantom.ct.spacing_mm
    spacing = (sx / 2, sy / 2, sz / 4)
    origin = tuple(o - s / 4 for o, s in zip(phantom.ct.origin_lps_mm, (sx, sy, sz), strict=True))
    volume = Volume(ct, spacing, origin, phantom.ct.direction)  # type: ignore[arg-type]
    return BrowserSeries(ct=volume, lungs_lr=volume.with_array(lungs.astype(np.uint8)))


def dicom_files(
    volume: Volume, *, patient_id: str, study_uid: str, series_uid: str
) -> Iterator[tuple[str, bytes]]:
    """One CT Image Storage file per slice ``k`` (explicit VR little endian)."""
    frame_uid = generate_uid()
    direction = volume.direction
    iop = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
    sx, sy, sz = volume.spacing_mm
    for k in range(volume.shape_kji[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = patient_id
        ds.PatientName = "PHANTOM^BROWSER"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate = "20240115"
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        position = volume.index_to_lps([0.0, 0.0, float(k)])
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [sy, sx]
        ds.SliceThickness = sz
        ds.Rows, ds.Columns = volume.shape_kji[1], volume.shape_kji[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.WindowCenter = -600
        ds.WindowWidth = 1500
        ds.PixelData = np.ascontiguousarray(volume.array[k], dtype="<i2").tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        yield f"slice-{k:04d}.dcm", buffer.getvalue()
