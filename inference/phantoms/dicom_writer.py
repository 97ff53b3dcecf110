"""Write a ``Volume`` of HU as a DICOM series of CT Image Storage instances.

One file per slice ``k`` (``InstanceNumber = k + 1``), Explicit VR Little Endian, uint16 pixels
storing ``HU + 1024`` (``RescaleIntercept = -1024``, ``RescaleSlope = 1``, 12 bits stored).
Geometry comes from the volume: ``ImageOrientationPatient`` from the direction's first two
columns, ``ImagePositionPatient`` from the centre of voxel ``(0, 0, k)`` in LPS mm, and
``PixelSpacing = [row spacing (y), column spacing (x)]``. UIDs are derived deterministically
from caller-given entropy with ``pydicom.uid.generate_uid``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from inference.volume import Volume

MANUFACTURER = "ILD Review phantom"
HU_OFFSET = 1024


def uid_from(*parts: object) -> UID:
    """A DICOM UID that depends only on ``parts`` (deterministic, under pydicom's root)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


@dataclass(frozen=True)
class PatientInfo:
    patient_id: str
    patient_name: str  # DICOM PN, e.g. "PHANTOM^P003"
    birth_date: dt.date
    sex: str  # "F" | "M" | "O"


@dataclass(frozen=True)
class StudyInfo:
    study_instance_uid: str
    study_date: dt.date
    study_time: dt.time
    accession_number: str
    study_id: str
    description: str = "CT CHEST WITHOUT CONTRAST"
    referring_physician: str = "PHANTOM^REFERRER"


@dataclass(frozen=True)
class SeriesInfo:
    series_instance_uid: str
    frame_of_reference_uid: str
    series_number: int
    description: str
    kvp: float
    kernel: str
    tube_current_ma: float
    software_version: str


def _da(value: dt.date) -> str:
    return value.strftime("%Y%m%d")


def _tm(value: dt.time) -> str:
    return value.strftime("%H%M%S")


def _ds(value: float) -> str:
    """Decimal string within the 16-character DS limit, as precise as fits."""
    for digits in range(12, 5, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6g}"


def _age(birth: dt.date, on: dt.date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{max(0, min(years, 999)):03d}Y"


def write_ct_series(
    ct: Volume,
    out_dir: Path,
    *,
    patient: PatientInfo,
    study: StudyInfo,
    series: SeriesInfo,
) -> list[Path]:
    """Write ``ct`` (``[k, j, i]`` HU, any integer or float dtype) as ``out_dir/0001.dcm`` ….

    Returns the written paths in slice order.

    Raises:
        ValueError: if the direction is not orthonormal with a slice normal along its 3rd column
            (checked by ``Volume``), or values fall outside [-1024, 3071] HU after rounding.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = np.rint(ct.array.astype(np.float32)) + HU_OFFSET
    if stored.size and (stored.min() < 0 or stored.max() > 4095):
        raise ValueError(
            f"CT values must lie in [-1024, 3071] HU for 12-bit storage, got "
            f"[{stored.min() - HU_OFFSET:.0f}, {stored.max() - HU_OFFSET:.0f}]"
        )
    pixels = stored.astype(np.uint16)
    nk, nj, ni = ct.shape_kji
    sx, sy, sz = ct.spacing_mm
    row_dir = ct.direction[:, 0]
    col_dir = ct.direction[:, 1]
    normal = ct.direction[:, 2]
    iop = [_ds(float(v)) for v in (*row_dir, *col_dir)]
    when = dt.datetime.combine(study.study_date, study.study_time)
    acquisition = (when + dt.timedelta(minutes=2)).time()
    paths = []
    for k in range(nk):
        sop_uid = uid_from(series.series_instance_uid, "instance", k)
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "ILDREVIEW_PH1"
        ds = Dataset()
        ds.file_meta = meta
        # SOP common
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate = _da(study.study_date)
        ds.InstanceCreationTime = _tm(acquisition)
        # study / series dates
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _da(study.study_date)
        ds.StudyTime = _tm(study.study_time)
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(acquisition)
        ds.AccessionNumber = study.accession_number
        ds.Modality = "CT"
        ds.Manufacturer = MANUFACTURER
        ds.InstitutionName = "ILD Review synthetic data"
        ds.ReferringPhysicianName = study.referring_physician
        ds.StudyDescription = study.description
        ds.SeriesDescription = series.description
        ds.ManufacturerModelName = "inference.phantoms"
        # patient
        ds.PatientName = patient.patient_name
        ds.PatientID = patient.patient_id
        ds.PatientBirthDate = _da(patient.birth_date)
        ds.PatientSex = patient.sex
        ds.PatientAge = _age(patient.birth_date, study.study_date)
        ds.PatientIdentityRemoved = "NO"
        # acquisition
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = _ds(sz)
        ds.KVP = _ds(series.kvp)
        ds.SoftwareVersions = series.software_version
        ds.ReconstructionDiameter = _ds(max(ni * sx, nj * sy))
        ds.XRayTubeCurrent = round(series.tube_current_ma)
        ds.ConvolutionKernel = series.kernel
        ds.PatientPosition = "HFS"
        # relationship
        ds.StudyInstanceUID = study.study_instance_uid
        ds.SeriesInstanceUID = series.series_instance_uid
        ds.StudyID = study.study_id
        ds.SeriesNumber = series.series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        # plane
        position = ct.index_to_lps((0.0, 0.0, float(k)))
        ds.ImagePositionPatient = [_ds(float(v)) for v in position]
        ds.ImageOrientationPatient = iop
        ds.FrameOfReferenceUID = series.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(position @ normal))
        # pixels
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = nj
        ds.Columns = ni
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = ["-600", "40"]
        ds.WindowWidth = ["1500", "400"]
        ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
        ds.RescaleIntercept = str(-HU_OFFSET)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        path = out_dir / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
