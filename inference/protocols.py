"""Slice protocols for reading studies: which axial slices a reader contours.

Chassagnon et al. (Radiology: AI 2020) had readers annotate "20 CT slices equally spaced from the
lung apices to the right diaphragmatic dome". :func:`equally_spaced_slices` does that from a lung
mask (0 background, 1 right lung, 2 left lung; e.g.
``inference.segmentation.classical.lung_mask``):

* apex: the most cranial slice where the lungs cover at least ``min_area_mm2``;
* right diaphragmatic dome: the top of the right lung's floor. For every column (fixed ``i, j``)
  of the right lung's footprint, the floor is its most caudal lung voxel; columns near the edge
  of the footprint (costophrenic recesses, mediastinum, heart) are dropped, and the dome is a
  high percentile of the remaining floors;
* N target heights equally spaced from apex to dome (both included), each snapped to the nearest
  slice; duplicates are dropped when the range holds fewer than N slices.

Heights are LPS ``z`` in mm (``+z`` towards the head). Run it on files with
``python -m inference.protocols SERIES_DIR [--slices N]``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.volume import GeometryError, Volume

RIGHT_LUNG = 1
LEFT_LUNG = 2


class ProtocolError(ValueError):
    """The lung mask does not allow the protocol (no lung, apex below dome, ...)."""


@dataclass(frozen=True)
class LungRange:
    """Apex and right diaphragmatic dome heights, LPS ``z`` mm (``apex_z_mm > dome_z_mm``)."""

    apex_z_mm: float
    dome_z_mm: float
    method: str = "floor-percentile-v1"


@dataclass(frozen=True)
class ProtocolSelection:
    """Chosen slice indices into ``slice_z_mm`` (apex first) and the heights they were aimed at."""

    indices: tuple[int, ...]
    target_z_mm: tuple[float, ...]
    lung_range: LungRange

    def to_dict(self) -> dict[str, object]:
        return {
            "indices": list(self.indices),
            "target_z_mm": list(self.target_z_mm),
            "lung_range": asdict(self.lung_range),
        }


def _slice_heights(volume: Volume) -> npt.NDArray[np.float64]:
    """LPS ``z`` (mm) of each slice ``k`` of an axial volume; raises if slices are not axial."""
    normal = volume.direction[:, 2]
    if abs(float(normal[2])) < 0.9:
        raise GeometryError(
            f"slice protocol needs axial slices; the slice normal is {normal.round(3).tolist()}"
        )
    k = np.arange(volume.shape_kji[0], dtype=np.float64)
    index = np.stack([np.zeros_like(k), np.zeros_like(k), k], axis=1)
    return volume.index_to_lps(index)[:, 2]


def lung_range(
    lungs: Volume,
    *,
    min_area_mm2: float = 50.0,
    edge_fraction: float = 0.4,
    dome_percentile: float = 95.0,
) -> LungRange:
    """Find the lung apex and the right diaphragmatic dome in a lung mask.

    Args:
        lungs: label volume ``[k, j, i]`` (0 background, 1 right lung, 2 left lung), LPS, axial.
            A mask with a single label (any non-zero) is treated as both lungs and its lower
            surface as the right one.
        min_area_mm2: the smallest lung cross-section that counts (ignores specks at the apex).
        edge_fraction: footprint columns closer to the footprint's edge than this fraction of its
            largest inner distance are ignored for the dome.
        dome_percentile: percentile of the floor heights of the remaining columns taken as the dome.

    Returns:
        A :class:`LungRange` in LPS ``z`` mm.

    Raises:
        ProtocolError: no lung, or a dome at or above the apex.
        GeometryError: the volume's slices are not axial.
    """
    labels = np.asarray(lungs.array)
    heights = _slice_heights(lungs)
    pixel_area = lungs.spacing_mm[0] * lungs.spacing_mm[1]
    any_lung = labels != 0
    area = any_lung.sum(axis=(1, 2)) * pixel_area
    present = np.flatnonzero(area >= min_area_mm2)
    if present.size == 0:
        raise ProtocolError("the lung mask holds no lung")
    apex_z = float(heights[present].max())

    right = labels == RIGHT_LUNG
    if not right.any():
        right = any_lung
    footprint = right.any(axis=0)
    inner = ndimage.distance_transform_edt(footprint)
    central = inner >= edge_fraction * float(inner.max())
    # The floor of a column is its most caudal lung voxel.
    z_grid = np.broadcast_to(heights[:, None, None], right.shape)
    floor = np.where(right, z_grid, np.inf).min(axis=0)
    floors = floor[central & np.isfinite(floor)]
    if floors.size == 0:
        raise ProtocolError("the right lung has no floor to take the dome from")
    dome_z = float(np.percentile(floors, dome_percentile))
    if dome_z >= apex_z:
        raise ProtocolError(f"dome ({dome_z:.1f} mm) is not below the apex ({apex_z:.1f} mm)")
    return LungRange(apex_z_mm=apex_z, dome_z_mm=dome_z)


def equally_spaced_targets(apex_z_mm: float, dome_z_mm: float, n: int) -> list[float]:
    """``n`` heights from apex to dome, both included (``n >= 2``)."""
    if n < 2:
        raise ProtocolError(f"the protocol needs at least 2 slices, got {n}")
    return [float(z) for z in np.linspace(apex_z_mm, dome_z_mm, n)]


def nearest_slices(slice_z_mm: Sequence[float], targets_z_mm: Sequence[float]) -> list[int]:
    """Index of the slice nearest to each target, in target order, without repeats."""
    heights = np.asarray(slice_z_mm, dtype=np.float64)
    if heights.size == 0:
        raise ProtocolError("no slices to choose from")
    chosen: list[int] = []
    for target in targets_z_mm:
        index = int(np.argmin(np.abs(heights - target)))
        if index not in chosen:
            chosen.append(index)
    return chosen


def equally_spaced_slices(
    lungs: Volume, slice_z_mm: Sequence[float], n: int = 20
) -> ProtocolSelection:
    """Pick ``n`` slices equally spaced from the lung apex to the right diaphragmatic dome.

    Args:
        lungs: label volume ``[k, j, i]`` (see :func:`lung_range`).
        slice_z_mm: LPS ``z`` (mm) of the slices to choose from, e.g. each instance's
            ``ImagePositionPatient[2]``; need not be on the mask's grid or sorted.
        n: how many slices (20 in Chassagnon 2020).

    Returns:
        Indices into ``slice_z_mm``, apex first; fewer than ``n`` when the range holds fewer
        slices.

    Raises:
        ProtocolError, GeometryError: as :func:`lung_range`.
    """
    found = lung_range(lungs)
    targets = equally_spaced_targets(found.apex_z_mm, found.dome_z_mm, n)
    return ProtocolSelection(
        indices=tuple(nearest_slices(slice_z_mm, targets)),
        target_z_mm=tuple(targets),
        lung_range=found,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series", help="folder (or file) of one DICOM CT series")
    parser.add_argument("--slices", type=int, default=20)
    args = parser.parse_args(argv)

    from inference.dicom.series import read_dicom_series
    from inference.segmentation.classical import lung_mask

    ct = read_dicom_series(args.series)
    heights = _slice_heights(ct)
    selection = equally_spaced_slices(lung_mask(ct), heights.tolist(), args.slices)
    print(json.dumps(selection.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
