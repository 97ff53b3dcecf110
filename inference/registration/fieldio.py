"""Read and write displacement fields as 3-component vector images (NIfTI, MHA, NRRD).

The vector components are written **as LPS millimetres**, exactly as held in memory. ITK (and so
SimpleITK, ANTs, elastix) writes and reads vector components untouched, while NIfTI's header
stores the *geometry* in RAS; readers other than ITK must therefore not flip the components.
Every output that carries a field records ``"vector_frame": "LPS"`` beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from inference.registration.fields import check_displacement
from inference.volume import GeometryError, Volume

VECTOR_FRAME = "LPS"


def write_displacement(
    displacement: npt.NDArray[np.floating], grid: Volume, path: str | Path
) -> Path:
    """Write a ``[k, j, i, 3]`` LPS mm field on ``grid`` as a float32 vector image.

    Returns:
        The path written (parent folders are created).

    Raises:
        GeometryError: if the field does not lie on ``grid``.
    """
    check_displacement(displacement, grid)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(
        np.ascontiguousarray(displacement, dtype=np.float32), isVector=True
    )
    image.SetSpacing(grid.spacing_mm)
    image.SetOrigin(grid.origin_lps_mm)
    image.SetDirection(tuple(float(v) for v in grid.direction.flatten()))
    sitk.WriteImage(image, str(target), useCompression=True)
    return target


def read_displacement(path: str | Path) -> tuple[npt.NDArray[np.float32], Volume]:
    """Read a field written by :func:`write_displacement` (or by transformix ``-def``).

    Returns:
        ``(displacement [k, j, i, 3] float32 LPS mm, grid)`` where ``grid`` is a uint8 Volume
        carrying the geometry.

    Raises:
        GeometryError: if the file is not a 3D image with 3 components per voxel.
    """
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
        raise GeometryError(
            f"{path}: expected a 3D image with 3 components, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components"
        )
    displacement = sitk.GetArrayFromImage(image).astype(np.float32)
    grid = Volume(
        np.zeros(displacement.shape[:3], dtype=np.uint8),
        tuple(image.GetSpacing()),  # type: ignore[arg-type]
        tuple(image.GetOrigin()),  # type: ignore[arg-type]
        np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
    )
    return displacement, grid
