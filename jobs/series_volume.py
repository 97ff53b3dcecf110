"""A stored series as an ``inference`` Volume, with the SOP Instance UID of every slice ``k``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.volume import Volume
from studies.models import Series
from studies.services import storage

# A slice position within this fraction of a slice spacing of a voxel plane is that plane.
SLICE_TOLERANCE = 0.1


class SliceMappingError(ValueError):
    """The volume's slices cannot be tied one-to-one to the series' stored images."""


@dataclass(frozen=True, eq=False)
class SeriesVolume:
    """``volume`` (HU, ``[k, j, i]``, LPS mm) and, per ``k``, the source image it came from."""

    volume: Volume
    sop_instance_uids: list[str]
    files: dict[str, Path]


def read_series_volume(series: Series) -> SeriesVolume:
    """Read the stored instances of ``series`` with ``inference.dicom.read_dicom_series``.

    Raises:
        inference.dicom.DicomSeriesError: the files do not form one regular volume.
        FileNotFoundError: a stored file is missing.
        SliceMappingError: the volume was resampled (uneven spacing, gantry tilt), so its slices
            are not the stored images.
    """
    from inference.dicom.series import read_dicom_series

    rows = list(
        series.instances.order_by("instance_number", "sop_instance_uid").values_list(
            "sop_instance_uid", "file", "image_position_patient", "rows", "columns"
        )
    )
    if not rows:
        raise SliceMappingError("the series has no stored images")
    files = {uid: storage.absolute(rel) for uid, rel, _, _, _ in rows}
    volume = read_dicom_series(list(files.values()))
    return SeriesVolume(volume, slice_sop_instance_uids(volume, rows), files)


def slice_sop_instance_uids(
    volume: Volume, rows: list[tuple[str, str, list[float] | None, int, int]]
) -> list[str]:
    """The SOP Instance UID of each slice ``k`` of ``volume``, from each image's position.

    ``rows``: ``(sop_instance_uid, file, image_position_patient, rows, columns)`` per stored
    image. Where identical copies share a position, the first row wins.

    Raises:
        SliceMappingError: an image off the volume's planes, a slice with no image, or images of
            another size than the volume's slices.
    """
    n_k, n_j, n_i = volume.shape_kji
    uids: list[str | None] = [None] * n_k
    for uid, _, ipp, n_rows, n_columns in rows:
        if (n_rows, n_columns) != (n_j, n_i):
            raise SliceMappingError(
                f"image {uid} is {n_rows}×{n_columns} but the volume's slices are {n_j}×{n_i}: "
                "the series was resampled in-plane (gantry tilt); re-export it without tilt"
            )
        if ipp is None:
            raise SliceMappingError(f"image {uid} has no ImagePositionPatient")
        i, j, k = volume.lps_to_index(np.asarray(ipp, dtype=np.float64))
        nearest = round(float(k))
        if (
            abs(i) > SLICE_TOLERANCE
            or abs(j) > SLICE_TOLERANCE
            or abs(k - nearest) > SLICE_TOLERANCE
            or not 0 <= nearest < n_k
        ):
            raise SliceMappingError(
                f"image {uid} does not lie on a slice of the volume built from the series (its "
                "slices are unevenly spaced, so the volume was resampled); re-export the series "
                "with a uniform slice spacing"
            )
        if uids[nearest] is None:
            uids[nearest] = uid
    empty = [k for k, uid in enumerate(uids) if uid is None]
    if empty:
        raise SliceMappingError(
            f"{len(empty)} slice(s) of the volume (first: k={empty[0]}) have no stored image: "
            "the volume was resampled from unevenly spaced slices; re-export the series with a "
            "uniform slice spacing"
        )
    return [uid for uid in uids if uid is not None]
