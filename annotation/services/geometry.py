"""Contour geometry: schema validation, LPS mm → pixel mapping and even-odd rasterization.

Pixel coordinates follow DICOM: ``ImagePositionPatient`` is the centre of the first pixel,
``ImageOrientationPatient[:3]`` points along a row (increasing column index ``i``),
``[3:]`` down a column (increasing row index ``j``); ``PixelSpacing`` is ``[row spacing, column
spacing]`` in mm. A pixel is inside when its centre is inside (even-odd over every ring); the
frontend's ``rasterize.ts`` implements the same rule so both sides agree pixel for pixel.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from jsonschema import Draft202012Validator

from core.exceptions import ApplicationError

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
CURRENT_SCHEMA_VERSION = 1
# Points may sit this far from the referenced slice's plane (float noise, viewers that snap).
PLANE_TOLERANCE_MM = 1.0

BoolMask = npt.NDArray[np.bool_]


@cache
def validator(schema_version: int) -> Draft202012Validator:
    path = SCHEMA_DIR / f"contour-geometry-v{schema_version}.json"
    if not path.exists():
        raise ApplicationError(f"unknown contour geometry schema_version {schema_version}")
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate_geometry(geometry: Any) -> int:
    """Check ``geometry`` against its schema; return its schema version."""
    if not isinstance(geometry, dict):
        raise ApplicationError("geometry must be an object", extra={"field": "geometry"})
    version = geometry.get("schema_version")
    if not isinstance(version, int):
        raise ApplicationError("geometry.schema_version must be an integer")
    errors = sorted(validator(version).iter_errors(geometry), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(root)"
        raise ApplicationError(
            f"geometry does not match schema v{version} at {where}: {first.message}",
            extra={"errors": [e.message for e in errors[:10]]},
        )
    for ring in rings_of(geometry):
        for point in ring:
            if not all(math.isfinite(float(v)) for v in point):
                raise ApplicationError("geometry points must be finite numbers")
    return version


def rings_of(geometry: dict[str, Any]) -> list[list[list[float]]]:
    return list(geometry.get("polygons", [])) + list(geometry.get("holes", []))


@dataclass(frozen=True)
class SliceGrid:
    """The pixel grid of one image plane, in patient LPS mm."""

    rows: int
    columns: int
    position_lps_mm: tuple[float, float, float]
    row_direction: tuple[float, float, float]  # along a row: increasing column index
    column_direction: tuple[float, float, float]  # down a column: increasing row index
    pixel_spacing_mm: tuple[float, float]  # (between rows, between columns)

    @classmethod
    def from_instance(cls, instance: Any) -> SliceGrid:
        ipp, iop, spacing = (
            instance.image_position_patient,
            instance.image_orientation_patient,
            instance.pixel_spacing,
        )
        if not (ipp and iop and spacing):
            raise ApplicationError(
                f"instance {instance.sop_instance_uid} has no plane geometry "
                "(ImagePositionPatient, ImageOrientationPatient, PixelSpacing)"
            )
        return cls(
            rows=int(instance.rows),
            columns=int(instance.columns),
            position_lps_mm=(float(ipp[0]), float(ipp[1]), float(ipp[2])),
            row_direction=(float(iop[0]), float(iop[1]), float(iop[2])),
            column_direction=(float(iop[3]), float(iop[4]), float(iop[5])),
            pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
        )

    @property
    def normal(self) -> npt.NDArray[np.float64]:
        return np.cross(np.asarray(self.row_direction), np.asarray(self.column_direction))

    @property
    def pixel_area_mm2(self) -> float:
        return self.pixel_spacing_mm[0] * self.pixel_spacing_mm[1]

    def to_pixels(self, points_lps_mm: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``(n, 3)`` LPS mm → ``(n, 2)`` continuous ``(column, row)``; raises if off-plane."""
        delta = np.asarray(points_lps_mm, dtype=np.float64).reshape(-1, 3) - np.asarray(
            self.position_lps_mm
        )
        off_plane = np.abs(delta @ self.normal)
        if off_plane.size and float(off_plane.max()) > PLANE_TOLERANCE_MM:
            raise ApplicationError(
                f"contour points lie up to {float(off_plane.max()):.2f} mm off the plane of the "
                f"referenced slice (tolerance {PLANE_TOLERANCE_MM} mm): wrong SOP instance?"
            )
        column = delta @ np.asarray(self.row_direction) / self.pixel_spacing_mm[1]
        row = delta @ np.asarray(self.column_direction) / self.pixel_spacing_mm[0]
        return np.stack([column, row], axis=1)


def rasterize_even_odd(
    rings_px: list[npt.NDArray[np.float64]], rows: int, columns: int
) -> BoolMask:
    """Fill closed rings of ``(column, row)`` pixel coordinates with the even-odd rule.

    A pixel ``[row, column]`` is set when its centre ``(column, row)`` is inside. Scanline with a
    half-open rule on edges (``y0 <= y < y1``) so shared vertices are counted once.
    """
    crossing_rows: list[npt.NDArray[np.int64]] = []
    crossing_xs: list[npt.NDArray[np.float64]] = []
    for ring in rings_px:
        if len(ring) < 3:
            continue
        x0, y0 = ring[:, 0], ring[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        low, high = np.minimum(y0, y1), np.maximum(y0, y1)
        first = np.ceil(low).astype(np.int64)
        stop = np.ceil(high).astype(np.int64)
        counts = np.maximum(stop - first, 0)
        total = int(counts.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(len(ring)), counts)
        offsets = np.repeat(np.cumsum(counts) - counts, counts)
        row = first[edge] + (np.arange(total) - offsets)
        t = (row - y0[edge]) / (y1[edge] - y0[edge])
        crossing_rows.append(row)
        crossing_xs.append(x0[edge] + t * (x1[edge] - x0[edge]))
    mask = np.zeros((rows, columns), dtype=bool)
    if not crossing_rows:
        return mask
    all_rows = np.concatenate(crossing_rows)
    all_xs = np.concatenate(crossing_xs)
    order = np.lexsort((all_xs, all_rows))
    all_rows, all_xs = all_rows[order], all_xs[order]
    # Every scanline crosses closed rings an even number of times: consecutive pairs are spans.
    span_rows, span_start, span_stop = all_rows[0::2], all_xs[0::2], all_xs[1::2]
    inside = (span_rows >= 0) & (span_rows < rows)
    span_rows, span_start, span_stop = span_rows[inside], span_start[inside], span_stop[inside]
    start_col = np.clip(np.ceil(span_start), 0, columns).astype(np.int64)
    stop_col = np.clip(np.ceil(span_stop), 0, columns).astype(np.int64)
    diff = np.zeros((rows, columns + 1), dtype=np.int32)
    np.add.at(diff, (span_rows, start_col), 1)
    np.add.at(diff, (span_rows, stop_col), -1)
    return np.cumsum(diff[:, :columns], axis=1) > 0


def rasterize_geometry(geometry: dict[str, Any], grid: SliceGrid) -> BoolMask:
    rings = [grid.to_pixels(ring) for ring in rings_of(geometry)]
    return rasterize_even_odd(rings, grid.rows, grid.columns)


def pack_mask(mask: BoolMask) -> bytes:
    return zlib.compress(np.packbits(mask.astype(bool), axis=None).tobytes(), 6)


def unpack_mask(data: bytes, rows: int, columns: int) -> BoolMask:
    bits = np.frombuffer(zlib.decompress(bytes(data)), dtype=np.uint8)
    return np.unpackbits(bits, count=rows * columns).reshape(rows, columns).astype(bool)
