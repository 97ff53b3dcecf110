"""Read and write volumes: DICOM series through :mod:`inference.dicom`, the rest through ITK.

ITK keeps geometry in LPS whatever the file format (it converts NIfTI's RAS on the way in and
out), so every :class:`~inference.volume.Volume` here is in LPS millimetres.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom.misc

from inference.dicom.series import read_dicom_series
from inference.volume import Volume

PathLike = str | os.PathLike[str]

#: File endings ITK reads for us (checked in this order, so ``.nii.gz`` wins over ``.gz``).
ITK_READ_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: File endings :func:`write_image` writes.
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


class ImageIOError(ValueError):
    """A file cannot be read or written as a volume: unknown format, or unreadable content."""


def _suffix(path: Path, suffixes: Sequence[str]) -> str | None:
    name = path.name.lower()
    return next((suffix for suffix in suffixes if name.endswith(suffix)), None)


def read_image(
    path_or_paths: PathLike | Sequence[PathLike], *, series_instance_uid: str | None = None
) -> Volume:
    """Read a volume from a DICOM folder, DICOM file(s), or a NIfTI/NRRD/MetaImage file.

    A folder or a list of paths is read as one DICOM series (see
    :func:`inference.dicom.read_dicom_series`, which ``series_instance_uid`` is passed to); a file
    ending in ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` is read by
    SimpleITK; any other file is read as DICOM if it is DICOM. The array is indexed
    ``[k, j, i]``; spacing, origin and direction are in ``(i, j, k)`` order, LPS millimetres.
    DICOM voxels are HU after rescale; other formats keep their stored type.

    Raises:
        FileNotFoundError: if a path does not exist.
        ImageIOError: for an unknown file type, or a file ITK cannot read.
        inference.dicom.DicomSeriesError: if DICOM input cannot form one regular volume.
        inference.volume.GeometryError: if the image is not a 3D scalar image.
    """
    if not isinstance(path_or_paths, str | os.PathLike):
        return read_dicom_series(path_or_paths, series_instance_uid=series_instance_uid)
    path = Path(path_or_paths)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        return read_dicom_series(path, series_instance_uid=series_instance_uid)
    if _suffix(path, ITK_READ_SUFFIXES) is not None:
        return _read_with_itk(path)
    if pydicom.misc.is_dicom(path):
        return read_dicom_series([path], series_instance_uid=series_instance_uid)
    raise ImageIOError(
        f"{path}: unknown image type; expected a DICOM folder or file, or a file ending in "
        + ", ".join(ITK_READ_SUFFIXES)
    )


def _read_with_itk(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise ImageIOError(f"{path} could not be read as an image: {reason}") from error
    return Volume.from_sitk(image)


def write_image(volume: Volume, path: PathLike) -> Path:
    """Write ``volume`` to ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha`` (compressed where possible).

    Geometry is written in the file format's own convention by ITK (NIfTI: RAS in the qform and
    sform) and reads back as the same LPS geometry. Boolean arrays are written as ``uint8`` and
    ``float16`` as ``float32`` (ITK has neither type). Parent folders are created. Returns the
    path written.

    Raises:
        ImageIOError: for an unsupported file ending, or if ITK fails to write.
    """
    import SimpleITK as sitk

    target = Path(path)
    if _suffix(target, WRITE_SUFFIXES) is None:
        raise ImageIOError(
            f"{target}: cannot write this file type; use one of " + ", ".join(WRITE_SUFFIXES)
        )
    array = volume.array
    if array.dtype == np.bool_:
        volume = volume.with_array(array.astype(np.uint8))
    elif array.dtype == np.float16:
        volume = volume.with_array(array.astype(np.float32))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        sitk.WriteImage(volume.to_sitk(), str(target), useCompression=True)
    except RuntimeError as error:
        raise ImageIOError(f"{target} could not be written: {error}") from error
    return target
