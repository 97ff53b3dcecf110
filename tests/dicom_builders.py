"""Small, valid CT instances built in memory for ingest and API tests."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def ct_slice(
    *,
    patient_id: str = "HOSP-001",
    patient_name: str = "DOE^JANE",
    study_uid: str,
    series_uid: str,
    index: int,
    sop_uid: str | None = None,
    frame_uid: str = "1.2.826.0.1.3680043.8.498.1",
    study_date: str = "20240115",
    size: int = 16,
    spacing_mm: float = 2.0,
    fill: int = 0,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid or generate_uid(entropy_srcs=[study_uid, series_uid, str(index)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC123"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "WHO^DR"
    ds.InstitutionName = "Hospital"
    ds.Modality = "CT"
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [-16.0, -16.0, -spacing_mm * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [2.0, 2.0]
    ds.SliceThickness = spacing_mm
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    pixels = (np.arange(size * size, dtype=np.int16).reshape(size, size) + fill + index).astype(
        np.int16
    )
    ds.PixelData = pixels.tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ct_series_bytes(n: int = 3, **kwargs) -> list[bytes]:
    study_uid = kwargs.pop("study_uid", generate_uid())
    series_uid = kwargs.pop("series_uid", generate_uid())
    return [
        to_bytes(ct_slice(study_uid=study_uid, series_uid=series_uid, index=i, **kwargs))
        for i in range(n)
    ]
