"""A 3D image whose geometry travels with its voxels.

Axes convention (the same as SimpleITK's ``GetArrayFromImage``):

* ``array`` is indexed ``[k, j, i]`` — slice, row, column.
* ``spacing_mm``, ``origin_lps_mm`` and the columns of ``direction`` are in ``(i, j, k)`` order.
* Physical points are in DICOM patient coordinates, LPS, millimetres:
  ``point_lps_mm = origin_lps_mm + direction @ (index_ijk * spacing_mm)``.

This module is the one place that converts between LPS and RAS (NIfTI's convention), and between
``Volume`` and ``SimpleITK.Image``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class GeometryError(ValueError):
    """The geometry of an image cannot be used as it is (and is not silently repaired)."""


@dataclass(frozen=True, eq=False)
class Volume:
    """Voxels ``[k, j, i]`` with spacing, origin and direction in LPS millimetres.

    Raises:
        GeometryError: if the array is not 3D, a spacing is not positive, or the direction
            is not an orthonormal 3x3 matrix.
    """

    array: npt.NDArray[Any]
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: npt.NDArray[np.float64] = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise GeometryError(f"Volume array must be 3D [k, j, i], got shape {self.array.shape}")
        spacing = tuple(float(s) for s in self.spacing_mm)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise GeometryError(f"spacing_mm must be three positive values, got {self.spacing_mm}")
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise GeometryError(f"direction must be orthonormal, got {direction.tolist()}")
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_lps_mm", tuple(float(o) for o in self.origin_lps_mm))
        object.__setattr__(self, "direction", direction)

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return (int(k), int(j), int(i))

    @property
    def voxel_volume_ml(self) -> float:
        sx, sy, sz = self.spacing_mm
        return sx * sy * sz / 1000.0

    @property
    def affine_lps(self) -> npt.NDArray[np.float64]:
        """4x4 matrix mapping homogeneous ``(i, j, k, 1)`` to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag(self.spacing_mm)
        affine[:3, 3] = self.origin_lps_mm
        return affine

    @property
    def affine_ras(self) -> npt.NDArray[np.float64]:
        """4x4 matrix mapping ``(i, j, k, 1)`` to RAS millimetres (the NIfTI convention)."""
        flip = np.eye(4)
        flip[:3, :3] = LPS_TO_RAS
        return flip @ self.affine_lps

    def index_to_lps(self, index_ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(..., 3)`` continuous indices ``(i, j, k)`` to ``(..., 3)`` LPS mm points."""
        index = np.asarray(index_ijk, dtype=np.float64)
        return index @ (self.direction @ np.diag(self.spacing_mm)).T + np.asarray(
            self.origin_lps_mm
        )

    def lps_to_index(self, points_lps_mm: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(..., 3)`` LPS mm points to continuous indices ``(i, j, k)``."""
        points = np.asarray(points_lps_mm, dtype=np.float64) - np.asarray(self.origin_lps_mm)
        inverse = np.linalg.inv(self.direction @ np.diag(self.spacing_mm))
        return points @ inverse.T

    def with_array(self, array: npt.NDArray[Any]) -> Volume:
        """The same geometry around other voxels (e.g. a mask computed from this volume)."""
        if array.shape != self.array.shape:
            raise GeometryError(f"shape {array.shape} differs from the volume's {self.array.shape}")
        return Volume(array, self.spacing_mm, self.origin_lps_mm, self.direction)

    def crop(self, box_kji: tuple[slice, slice, slice]) -> Volume:
        """A contiguous copy of the voxels ``array[box_kji]`` (unit-step slices), their geometry
        unchanged in space.

        Raises:
            GeometryError: if the box is empty or leaves the array.
        """
        bounds = [
            (b.start or 0, n if b.stop is None else b.stop, b.step)
            for b, n in zip(box_kji, self.shape_kji, strict=True)
        ]
        if any(
            step not in (None, 1) or not 0 <= a < b <= n
            for (a, b, step), n in zip(bounds, self.shape_kji, strict=True)
        ):
            raise GeometryError(f"crop {box_kji} does not lie inside shape {self.shape_kji}")
        (k0, _, _), (j0, _, _), (i0, _, _) = bounds
        origin = self.index_to_lps([i0, j0, k0])
        return Volume(
            np.ascontiguousarray(self.array[box_kji]),
            self.spacing_mm,
            (float(origin[0]), float(origin[1]), float(origin[2])),
            self.direction,
        )

    def same_grid(self, other: Volume, *, atol_mm: float = 1e-3) -> bool:
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=atol_mm)
            and np.allclose(self.origin_lps_mm, other.origin_lps_mm, atol=atol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def to_sitk(self) -> sitk.Image:
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_lps_mm)
        image.SetDirection(tuple(float(v) for v in self.direction.flatten()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """From a SimpleITK image (ITK stores geometry in LPS whatever the file format)."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise GeometryError(f"expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise GeometryError("expected a scalar image, got a vector image")
        return cls(
            sitk.GetArrayFromImage(image),
            tuple(image.GetSpacing()),  # type: ignore[arg-type]
            tuple(image.GetOrigin()),  # type: ignore[arg-type]
            np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        )
