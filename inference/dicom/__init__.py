"""DICOM input: from a folder of CT slices to a :class:`~inference.volume.Volume` in HU."""

from __future__ import annotations

from inference.dicom.series import (
    DicomSeriesError,
    SeriesGeometry,
    SliceGap,
    read_dicom_series,
    read_headers,
    summarize_geometry,
    volume_from_datasets,
)

__all__ = [
    "DicomSeriesError",
    "SeriesGeometry",
    "SliceGap",
    "read_dicom_series",
    "read_headers",
    "summarize_geometry",
    "volume_from_datasets",
]
