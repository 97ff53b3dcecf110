"""Classical lung and ILD segmentation of chest CT: thresholds, connectivity and morphology.

The default engine: no weights, CPU only, deterministic. It builds a lung mask that keeps dense
subpleural fibrosis (the part of the lung a bare threshold misses), then marks ILD inside it from
attenuation and texture, as one class (Chassagnon et al. 2020 outline ground glass, reticulation,
traction bronchiectasis and honeycombing together).

Lungs (:func:`lung_mask`), on a working grid of about ``working_spacing_mm`` (block means of the
CT; the native grid when it is already that coarse):

1. Body: tissue above -500 HU, opened slice-wise to detach the table, sheets and cables, largest
   3D component, holes filled slice-wise. Air outside it (room air, table foam) is never lung.
2. Air inside the body below -400 HU; the largest 3D component deep in the body, and any other of
   at least a tenth of its size that reaches its upper half, are lung (plus connected airways).
   Pure gas (below -950 HU after smoothing) in the lower lung zone is stomach or bowel gas joined
   through partial volume, and is cut off.
3. Airways: the trachea is the top-most round, midline air tube; it is followed slice by slice
   (trachea, carina, main bronchi) until a branch opens into the lung, where its cross-section
   explodes: that is the leak guard. The followed tree is removed; intrapulmonary bronchi stay.
4. Left/right: two components on either side of the midline; if the lungs touch at the anterior
   or posterior junction the mask is eroded until it splits in two and the labels are grown back
   inside the mask. The right lung (label 1) has the smaller LPS ``x`` (``+x`` is the patient's
   left).
5. Dense disease back into each lung: holes up to ``hole_max_area_mm2`` filled slice-wise;
   geodesic growth (``recovery_band_mm``) through voxels lighter than ``recovery_max_hu`` after
   light smoothing (ground glass, reticulation; fat, muscle and bone are denser), keeping thin
   rims only beside diseased lung; and where small air cysts crowd (honeycombing) a rolling ball
   closes the dense walls between them.
6. Back to the input grid: upsampled, and the boundary re-thresholded at full resolution.

ILD (:func:`ild_mask`), inside the lung, after light smoothing:

* ground glass: from ``ild_ggo_offset_hu`` above this patient's normal lung (the lower quartile of
  the lung's HU, clipped to ``[ild_low_hu, ild_low_hu_max]``) up to ``ild_high_hu``;
* reticulation: thin dense lines (denser than ``ild_high_hu`` and gone after an in-plane opening
  of ``ild_thin_mm``);
* honeycombing: small air cysts crowding with their dense walls; and dense tissue that fills most
  of its neighbourhood next to other disease (consolidation, fibrotic matrix).

Vessels are dense and thick, so they and their partial-volume halo are left out of the vote. A
voxel is ILD where abnormal voxels make at least ``ild_fraction`` of the informative voxels of
its ``ild_window_mm`` neighbourhood; the result is closed slice-wise and specks are dropped.

Every public function takes and returns ``Volume`` (array ``[k, j, i]``, LPS millimetres, any
axis-aligned orientation; oblique directions are handled by their nearest patient axes).
Internally arrays are put in a canonical order ``[z, y, x]`` with ``z`` increasing to the
patient's head, ``y`` to the back and ``x`` to the patient's left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.segmentation.engines import ILD, SegmentationResult
from inference.volume import GeometryError, Volume

VERSION = "0.1.0"
ENGINE_NAME = "classical"
RIGHT = 1
LEFT = 2

_Scalar = TypeVar("_Scalar", bound=np.generic)
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class ClassicalParameters:
    """Every number the classical engine uses (HU, millimetres, millilitres, fractions).

    The defaults are tuned on the synthetic SSc phantoms (``inference.phantoms``) and checked on
    real thoracic CT (POPI, NSCLC-Radiomics "lung1").
    """

    working_spacing_mm: float = 2.0
    """Target voxel size of the working grid used for the lung topology (components, airways)."""
    body_threshold_hu: float = -500.0
    body_opening_mm: float = 4.0
    air_threshold_hu: float = -400.0
    min_depth_mm: float = 8.0
    """A lung component must mostly lie at least this deep inside the body."""
    min_lung_ml: float = 5.0
    second_lung_fraction: float = 0.1
    """Another component is kept as lung when it has at least this fraction of the largest's size."""
    trachea_area_mm2: tuple[float, float] = (40.0, 900.0)
    trachea_max_offset_mm: float = 35.0
    split_max_erosion_mm: float = 30.0
    gas_max_hu: float = -950.0
    """Stomach/bowel gas joined to a lung base is purer than this (lung is not)..."""
    gas_min_ml: float = 3.0
    """...and at least this large."""
    recovery_band_mm: float = 15.0
    recovery_max_hu: float = -150.0
    recovery_smoothing_mm: float = 1.0
    rim_window_mm: float = 7.0
    rim_diseased_hu: float = -500.0
    """Lung whose mean around is denser than this is diseased: the thin rim grown along its
    pleura is kept (elsewhere it is partial volume and dropped)."""
    hole_max_area_mm2: float = 400.0
    """Holes of an axial lung slice up to this area are filled (vessels, nodules, dense islands)."""
    cyst_max_ml: float = 2.0
    """Air components up to this size that are not lung may be cysts (the growth may enter them)."""
    cyst_max_area_mm2: float = 80.0
    """An air blob of an axial slice up to this area is a cyst (honeycombing) candidate."""
    honeycomb_window_mm: float = 10.0
    honeycomb_min_fraction: float = 0.1
    """Honeycombing where cysts fill at least this fraction of a ``honeycomb_window_mm`` box."""
    honeycomb_radius_mm: float = 8.0
    honeycomb_max_hu: float = 150.0
    ild_spacing_mm: float = 1.5
    """Grids finer than this are analysed for ILD at about this spacing."""
    ild_smoothing_mm: float = 0.7
    ild_ggo_offset_hu: float = 150.0
    """Ground glass starts this far above the lower quartile of the lung's HU..."""
    ild_low_hu: float = -750.0
    """...but never below this..."""
    ild_low_hu_max: float = -550.0
    """...nor above this."""
    ild_high_hu: float = -250.0
    """Denser than this is "dense": vessels, reticular lines, honeycomb walls, consolidation."""
    ild_halo_mm: float = 1.5
    ild_thin_mm: float = 1.5
    ild_window_mm: float = 7.0
    ild_fraction: float = 0.5
    """ILD where at least this fraction of the informative voxels around are abnormal."""
    ild_consolidation_fraction: float = 0.5
    """Dense voxels are disease where they fill at least this fraction of the lung around..."""
    ild_consolidation_other: float = 0.3
    """...and at least this fraction of the rest is ground glass, lines or cysts."""
    ild_closing_mm: float = 2.0
    ild_min_component_ml: float = 0.2


# --------------------------------------------------------------------------------------------
# Orientation: any axis-aligned Volume <-> canonical [z (S+), y (P+), x (L+)]


@dataclass(frozen=True)
class _Canonical:
    """How to permute and flip a ``[k, j, i]`` array to ``[z, y, x]`` with z/y/x increasing S/P/L."""

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    spacing_zyx: tuple[float, float, float]

    @classmethod
    def of(cls, volume: Volume) -> _Canonical:
        # Array axis a (0 = k, 1 = j, 2 = i) moves along direction column 2 - a.
        columns = [volume.direction[:, 2 - a] for a in range(3)]
        lps_axis = [int(np.argmax(np.abs(c))) for c in columns]
        if sorted(lps_axis) != [0, 1, 2]:
            raise GeometryError(
                f"cannot map the image axes to patient axes; direction={volume.direction.tolist()}"
            )
        # Canonical axis c (0 = z, 1 = y, 2 = x) is LPS component 2 - c.
        p0, p1, p2 = (lps_axis.index(2 - c) for c in range(3))
        perm = (p0, p1, p2)
        flips = (
            bool(columns[p0][2] < 0),
            bool(columns[p1][1] < 0),
            bool(columns[p2][0] < 0),
        )
        spacing_kji = volume.spacing_mm[::-1]
        spacing = (float(spacing_kji[p0]), float(spacing_kji[p1]), float(spacing_kji[p2]))
        return cls(perm, flips, spacing)

    def forward(self, array: npt.NDArray[_Scalar]) -> npt.NDArray[_Scalar]:
        out = np.transpose(array, self.perm)
        flip_axes = tuple(c for c in range(3) if self.flips[c])
        return np.ascontiguousarray(np.flip(out, flip_axes) if flip_axes else out)

    def backward(self, array: npt.NDArray[_Scalar]) -> npt.NDArray[_Scalar]:
        flip_axes = tuple(c for c in range(3) if self.flips[c])
        out = np.flip(array, flip_axes) if flip_axes else array
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.perm)))


# --------------------------------------------------------------------------------------------
# Small array helpers (canonical arrays)


def _closing_edt(
    mask: BoolArray, radius_mm: float, spacing_zyx: tuple[float, float, float]
) -> BoolArray:
    """Binary closing with a ball of ``radius_mm`` (exact, through two distance transforms)."""
    box = _bbox(mask)
    if box is None:
        return mask
    margins = [int(np.ceil(radius_mm / s)) + 1 for s in spacing_zyx]
    padded = np.pad(mask[box], [(m, m) for m in margins])
    dilated = ndimage.distance_transform_edt(~padded, sampling=spacing_zyx) <= radius_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=spacing_zyx) > radius_mm
    out = mask.copy()
    inner = tuple(slice(m, -m) for m in margins)
    out[box] |= closed[inner]
    return out


_CROSS_2D = ndimage.generate_binary_structure(2, 1)[np.newaxis]
_CROSS_3D = ndimage.generate_binary_structure(3, 1)
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)
"""Connectivity within an axial slice only (``ndimage.label`` wants a 3x3x3 structure)."""


def _fill_holes_slicewise(mask: BoolArray, max_area_px: float | None = None) -> BoolArray:
    """Fill holes in every axial slice; only holes up to ``max_area_px`` pixels if given."""
    filled = np.asarray(ndimage.binary_fill_holes(mask, structure=_CROSS_2D), dtype=bool)
    if max_area_px is None:
        return filled
    holes = filled & ~mask
    blobs, n = ndimage.label(holes, structure=_IN_PLANE)
    if n == 0:
        return filled
    small = np.bincount(blobs.ravel()) <= max_area_px
    small[0] = False
    return np.asarray(mask | small[blobs])


def _bbox(mask: BoolArray, margin: int = 0) -> tuple[slice, ...] | None:
    if not mask.any():
        return None
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        out.append(
            slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis]))
        )
    return tuple(out)


def _factors(spacing_zyx: tuple[float, float, float], target_mm: float) -> tuple[int, int, int]:
    fz, fy, fx = (max(1, round(target_mm / s)) for s in spacing_zyx)
    return (fz, fy, fx)


def _block_mean(array: npt.NDArray[np.generic], factors: tuple[int, int, int]) -> FloatArray:
    """Mean over ``factors``-sized blocks (the volume is edge-padded to a multiple)."""
    if factors == (1, 1, 1):
        return array.astype(np.float32)
    pads = [(0, (-n) % f) for n, f in zip(array.shape, factors, strict=True)]
    padded = np.pad(array, pads, mode="edge") if any(p[1] for p in pads) else array
    nz, ny, nx = padded.shape
    fz, fy, fx = factors
    blocks = padded.reshape(nz // fz, fz, ny // fy, fy, nx // fx, fx)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def _upsample(
    array: npt.NDArray[np.generic], factors: tuple[int, int, int], shape: tuple[int, ...]
) -> npt.NDArray[np.generic]:
    """Nearest-neighbour inverse of :func:`_block_mean`, cropped to ``shape``."""
    if factors == (1, 1, 1):
        return array
    out = array
    for axis, f in enumerate(factors):
        if f > 1:
            out = np.repeat(out, f, axis=axis)
    return out[: shape[0], : shape[1], : shape[2]]


def _largest_component(mask: BoolArray) -> BoolArray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(labels == int(np.argmax(sizes)))


def _remove_small(
    mask: BoolArray, min_voxels: int, structure: BoolArray | None = None
) -> BoolArray:
    if min_voxels <= 1:
        return mask
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return np.asarray(keep[labels])


# --------------------------------------------------------------------------------------------
# Lung mask


@dataclass
class _LungWork:
    """Working-grid intermediate results, kept for diagnostics and the ILD step."""

    factors: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    body: BoolArray
    airway: BoolArray
    labels: LabelArray
    air_labels: LabelArray
    notes: dict[str, object] = field(default_factory=dict)


def _body_mask(
    hu: FloatArray, spacing: tuple[float, float, float], p: ClassicalParameters
) -> BoolArray:
    tissue = hu > p.body_threshold_hu
    radius = max(1, round(p.body_opening_mm / min(spacing[1], spacing[2])))
    square = (1, 2 * radius + 1, 2 * radius + 1)
    # Opening (slice-wise, square: separable and fast) detaches the table, sheets and cables;
    # filling the opened body (not the raw tissue) keeps the air that cables or folds enclose
    # against the skin outside the body.
    core = ndimage.maximum_filter(ndimage.minimum_filter(tissue, size=square), size=square)
    body = _fill_holes_slicewise(_largest_component(core))
    return np.asarray(body | (ndimage.maximum_filter(body, size=square) & tissue))


def _inner_body(body: BoolArray, spacing: tuple[float, float, float], depth_mm: float) -> BoolArray:
    iterations = max(1, round(depth_mm / min(spacing[1], spacing[2])))
    return np.asarray(
        ndimage.binary_erosion(body, structure=_CROSS_2D, iterations=iterations, border_value=0)
    )


def _select_lung_air(
    air: BoolArray, inner: BoolArray, voxel_ml: float, p: ClassicalParameters
) -> tuple[BoolArray, BoolArray, BoolArray]:
    """Split the air inside the body into lung (+ connected airways), cyst-sized pockets, and
    the rest (stomach, bowel, oesophagus, trachea when it is not joined to the lungs)."""
    labels, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air), np.zeros_like(air), np.zeros_like(air)
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    deep = np.bincount(labels[inner], minlength=n + 1).astype(np.float64)
    sizes[0] = deep[0] = 0
    size_ml = sizes * voxel_ml
    valid = (size_ml >= p.min_lung_ml) & (deep >= 0.5 * sizes)
    valid[0] = False
    keep = np.zeros(n + 1, dtype=bool)
    if valid.any():
        largest_id = int(np.argmax(np.where(valid, size_ml, -1.0)))
        keep = valid & (size_ml >= p.second_lung_fraction * size_ml[largest_id])
        # A second lung reaches the upper half of the first one; stomach and bowel gas do not.
        objects = ndimage.find_objects(labels)
        z_top = np.array([-1] + [o[0].stop - 1 if o is not None else -1 for o in objects])
        largest_z = objects[largest_id - 1][0]  # type: ignore[index]
        keep &= z_top >= 0.5 * (largest_z.start + largest_z.stop - 1)
    cyst = (size_ml <= p.cyst_max_ml) & ~keep
    foreign = (size_ml > p.cyst_max_ml) & ~keep
    cyst[0] = foreign[0] = False
    return np.asarray(keep[labels]), np.asarray(cyst[labels]), np.asarray(foreign[labels])


def _remove_abdominal_gas(
    lung_air: BoolArray, hu: FloatArray, voxel_ml: float, p: ClassicalParameters
) -> tuple[BoolArray, float]:
    """Cut off stomach or bowel gas joined to a lung base through partial volume.

    Gas is purer than lung: after light smoothing it stays below ``gas_max_hu`` where aerated lung,
    which holds vessels and tissue, does not. A connected pure-gas region of at least
    ``gas_min_ml`` lying wholly in the lower 40 % of the lungs is removed with its partial-volume
    rim (one voxel, and a second where still below -900 HU). Returns the mask and the removed
    volume in voxels.
    """
    z = np.flatnonzero(lung_air.any(axis=(1, 2)))
    if z.size == 0:
        return lung_air, 0.0
    low = z[0] + 0.4 * (z[-1] - z[0])
    pure = lung_air & (ndimage.uniform_filter(hu, size=3) < p.gas_max_hu)
    labels, n = ndimage.label(pure)
    if n == 0:
        return lung_air, 0.0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    gas = [
        i + 1
        for i, obj in enumerate(ndimage.find_objects(labels))
        if obj is not None and obj[0].stop - 1 < low and sizes[i + 1] * voxel_ml >= p.gas_min_ml
    ]
    if not gas:
        return lung_air, 0.0
    core = np.isin(labels, gas)
    remove = ndimage.binary_dilation(core, structure=_CROSS_3D) & lung_air
    remove |= ndimage.binary_dilation(remove, structure=_CROSS_3D) & lung_air & (hu < -900.0)
    return lung_air & ~remove, float(remove.sum())


def _find_trachea_seed(
    air: BoolArray,
    lung_air: BoolArray,
    body: BoolArray,
    spacing: tuple[float, float, float],
    p: ClassicalParameters,
) -> tuple[int, BoolArray] | None:
    """The top-most round midline air tube (slice index, 2D mask of its cross-section).

    Searched from the top of the air inside the body down to the upper part of the lungs: a blob
    of ``trachea_area_mm2``, within ``trachea_max_offset_mm`` of the body's midline, roundish, and
    continued by a blob of similar area in the next slices below (a tube, not a pocket).
    """
    z_with_lung = np.flatnonzero(lung_air.any(axis=(1, 2)))
    z_with_air = np.flatnonzero(air.any(axis=(1, 2)))
    if z_with_lung.size == 0:
        return None
    lung_top, lung_bottom = int(z_with_lung[-1]), int(z_with_lung[0])
    lowest = max(lung_top - int(0.6 * (lung_top - lung_bottom)), 0)
    pixel_mm2 = spacing[1] * spacing[2]
    lo_area, hi_area = p.trachea_area_mm2
    tube_slices = max(2, round(10.0 / spacing[0]))
    for k in range(int(z_with_air[-1]), lowest - 1, -1):
        body_x = np.flatnonzero(body[k].any(axis=0))
        if body_x.size == 0:
            continue
        centre_x = 0.5 * (body_x[0] + body_x[-1])
        blobs, _ = ndimage.label(air[k])
        best: tuple[float, int] | None = None
        for index, obj in enumerate(ndimage.find_objects(blobs), start=1):
            if obj is None:
                continue
            blob = blobs[obj] == index
            area = float(blob.sum()) * pixel_mm2
            if not lo_area <= area <= hi_area:
                continue
            cx = float(np.nonzero(blob)[1].mean()) + obj[1].start
            if abs(cx - centre_x) * spacing[2] > p.trachea_max_offset_mm:
                continue
            height = (obj[0].stop - obj[0].start) * spacing[1]
            width = (obj[1].stop - obj[1].start) * spacing[2]
            if max(height, width) > 2.5 * max(min(height, width), 1e-6):
                continue
            if area / (height * width) < 0.45:
                continue
            if not _is_tube(air, k, blobs == index, tube_slices):
                continue
            if best is None or area > best[0]:
                best = (area, index)
        if best is not None:
            return k, np.asarray(blobs == best[1])
    return None


def _is_tube(air: BoolArray, k: int, blob: BoolArray, slices: int) -> bool:
    """Whether ``blob`` (slice ``k``) continues downwards for ``slices`` slices at a similar area."""
    area = float(blob.sum())
    previous = blob
    for step in range(1, slices + 1):
        if k - step < 0:
            return False
        blobs, _ = ndimage.label(air[k - step])
        ids = np.unique(blobs[previous & (blobs > 0)])
        ids = ids[ids > 0]
        if ids.size == 0:
            return False
        current = np.isin(blobs, ids)
        if not 0.5 * area <= float(current.sum()) <= 2.0 * area:
            return False
        previous = current
    return True


def _track_airway(
    air: BoolArray, seed_k: int, seed: BoolArray, min_ref_px: float, max_area_px: float
) -> BoolArray:
    """Follow the airway tube slice by slice from the seed, up and down.

    A blob of the next slice that overlaps the tube continues it while its area stays below
    2.5 times the largest tube cross-section seen so far (at least ``min_ref_px``) and below
    ``max_area_px``: where a bronchus opens into the lung the area explodes and that branch stops.
    This gives the trachea and main bronchi down to the hila, whatever the noise.
    """
    out = np.zeros(air.shape, dtype=bool)
    out[seed_k] = seed
    for step in (-1, 1):
        previous = seed
        reference = max(float(seed.sum()), min_ref_px)
        k = seed_k + step
        while 0 <= k < air.shape[0] and previous.any():
            reach = ndimage.binary_dilation(previous, iterations=1)
            blobs, _ = ndimage.label(air[k])
            ids = np.unique(blobs[reach & (blobs > 0)])
            current = np.zeros_like(previous)
            for index in ids[ids > 0]:
                blob = blobs == index
                area = float(blob.sum())
                if area <= max_area_px and area <= 2.5 * reference:
                    current |= blob
            out[k] = current
            reference = max(reference, float(current.sum()))
            previous = current
            k += step
    return out


def _split_left_right(
    lung_air: BoolArray,
    body: BoolArray,
    spacing: tuple[float, float, float],
    p: ClassicalParameters,
) -> tuple[LabelArray, str]:
    """Label the lung air 1 (right, smaller x) and 2 (left); returns (labels, how)."""
    out = np.zeros(lung_air.shape, dtype=np.uint8)
    labels, n = ndimage.label(lung_air)
    if n == 0:
        return out, "empty"
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    x_index = np.arange(lung_air.shape[2])
    body_x = np.flatnonzero(body.any(axis=(0, 1)))
    midline = 0.5 * (body_x[0] + body_x[-1]) if body_x.size else 0.5 * lung_air.shape[2]

    def mean_x(mask: BoolArray) -> float:
        counts = mask.sum(axis=(0, 1))
        return float((counts * x_index).sum() / max(counts.sum(), 1))

    seeds: list[BoolArray] | None = None
    how = "components"
    if n >= 2 and sizes[order[1]] >= p.second_lung_fraction * sizes[order[0]]:
        a, b = labels == order[0], labels == order[1]
        if (mean_x(a) - midline) * (mean_x(b) - midline) < 0:
            seeds = [a, b]
    if seeds is None:
        main = labels == order[0]
        eroded = main
        max_iter = max(1, round(p.split_max_erosion_mm / min(spacing)))
        for _ in range(max_iter):
            eroded = ndimage.binary_erosion(eroded, structure=_CROSS_3D)
            parts, m = ndimage.label(eroded)
            if m < 2:
                if m == 0:
                    break
                continue
            part_sizes = np.bincount(parts.ravel())
            part_sizes[0] = 0
            part_order = np.argsort(part_sizes)[::-1]
            if part_sizes[part_order[1]] < p.second_lung_fraction * part_sizes[part_order[0]]:
                continue
            a, b = parts == part_order[0], parts == part_order[1]
            if (mean_x(a) - midline) * (mean_x(b) - midline) < 0:
                seeds = [a, b]
                how = "erosion"
                break
    if seeds is None:
        # One lung, or two that no erosion separates: split at the midline only if both sides hold
        # a real share of the air.
        main = labels == order[0]
        right_side = x_index[np.newaxis, np.newaxis, :] < midline
        share = float((main & right_side).sum()) / max(float(main.sum()), 1.0)
        if 0.15 < share < 0.85:
            seeds = [main & right_side, main & ~right_side]
            how = "midline"
        else:
            seeds = [main]
            how = "single"
    # Seed labels by side: the right lung has the smaller x (LPS +x is the patient's left).
    if len(seeds) == 2:
        right, left = sorted(seeds, key=mean_x)
        out[right] = 1
        out[left] = 2
    else:
        out[seeds[0]] = 1 if mean_x(seeds[0]) < midline else 2
    # Grow the seed labels back inside the lung air (geodesic, one voxel per pass).
    remaining = lung_air & (out == 0)
    while remaining.any():
        grown = ndimage.grey_dilation(out, footprint=_CROSS_3D)
        add = remaining & (grown > 0)
        if not add.any():
            break
        out[add] = grown[add]
        remaining &= ~add
    if remaining.any():
        # Pieces not connected to either seed: give them the side they lie on.
        out[remaining & (x_index[np.newaxis, np.newaxis, :] < midline)] = 1
        out[remaining & (x_index[np.newaxis, np.newaxis, :] >= midline)] = 2
    return out, how


def _local_lung_mean(hu: FloatArray, lung: BoolArray, size: list[int]) -> FloatArray:
    """Mean HU of the lung voxels in a ``size`` box around every voxel (-1000 where none)."""
    weight = ndimage.uniform_filter(lung.astype(np.float32), size=size, mode="constant")
    total = ndimage.uniform_filter(
        np.where(lung, hu, 0.0).astype(np.float32), size=size, mode="constant"
    )
    return np.where(weight > 1e-3, total / np.maximum(weight, 1e-3), -1000.0).astype(np.float32)


def _honeycomb_zone(
    hu: FloatArray, allowed: BoolArray, spacing: tuple[float, float, float], p: ClassicalParameters
) -> BoolArray | None:
    """Where small air pockets (honeycomb cysts) crowd: None when there are none."""
    if p.honeycomb_radius_mm <= 0:
        return None
    air = (hu < p.air_threshold_hu) & allowed
    blobs, n = ndimage.label(air, structure=_IN_PLANE)
    if n == 0:
        return None
    max_px = p.cyst_max_area_mm2 / (spacing[1] * spacing[2])
    small = np.bincount(blobs.ravel()) <= max_px
    small[0] = False
    cysts = small[blobs]
    if not cysts.any():
        return None
    size = [max(1, round(p.honeycomb_window_mm / s)) | 1 for s in spacing]
    fraction = ndimage.uniform_filter(cysts.astype(np.float32), size=size, mode="constant")
    zone = (fraction >= p.honeycomb_min_fraction) & allowed
    return zone if zone.any() else None


def _recover_dense(
    labels: LabelArray,
    hu: FloatArray,
    body: BoolArray,
    airway: BoolArray,
    foreign_air: BoolArray,
    spacing: tuple[float, float, float],
    p: ClassicalParameters,
) -> LabelArray:
    """Put dense peripheral disease back into each lung (see the module docstring, step 5).

    1. Holes filled slice-wise.
    2. Geodesic growth (at most ``recovery_band_mm``) through voxels lighter than
       ``recovery_max_hu`` after ``recovery_smoothing_mm`` smoothing: ground glass and reticulation
       (fat, muscle and bone are denser); thin rims (partial volume along the pleura) are dropped.
    3. Honeycombing: where small air pockets (cysts: 2D blobs up to ``cyst_max_area_mm2``) fill
       at least ``honeycomb_min_fraction`` of the neighbourhood, a rolling ball of
       ``honeycomb_radius_mm`` closes the dense walls between them and the lung. Elsewhere the
       ball is not used: it would also fill normal concavities such as the cardiac notch.

    ``foreign_air`` (bowel, stomach, oesophagus) is never entered.
    """
    iterations = max(1, round(p.recovery_band_mm / min(spacing)))
    box = _bbox(labels > 0, margin=iterations + 2)
    if box is None:
        return labels
    out = labels.copy()
    out[box] = _recover_dense_box(
        labels[box], hu[box], body[box], airway[box], foreign_air[box], spacing, p
    )
    return out


def _recover_dense_box(
    labels: LabelArray,
    hu: FloatArray,
    body: BoolArray,
    airway: BoolArray,
    foreign_air: BoolArray,
    spacing: tuple[float, float, float],
    p: ClassicalParameters,
) -> LabelArray:
    out = labels.copy()
    smooth = ndimage.gaussian_filter(hu, [p.recovery_smoothing_mm / s for s in spacing])
    candidates = body & ~airway & ~foreign_air & (smooth < p.recovery_max_hu)
    del smooth
    iterations = max(1, round(p.recovery_band_mm / min(spacing)))
    # Vessels, nodules and dense islands are filled; the diaphragm dome, which a basal slice
    # can show surrounded by lung, is too large to be.
    max_hole = p.hole_max_area_mm2 / (spacing[1] * spacing[2])
    window = [max(1, round(p.rim_window_mm / s)) | 1 for s in spacing]
    zone = _honeycomb_zone(hu, body & ~airway & ~foreign_air, spacing, p)
    for side in (RIGHT, LEFT):
        other = (out > 0) & (out != side)
        lung = _fill_holes_slicewise(out == side, max_hole)
        if not lung.any():
            continue
        grown = ndimage.binary_dilation(
            lung, structure=_CROSS_3D, iterations=iterations, mask=candidates & ~other
        )
        # Thin rims along the pleura are partial volume where the lung next to them is normal
        # (dropped), and the edge of the disease where it is diseased (kept).
        added = grown & ~lung
        thick = ndimage.binary_opening(added, structure=_CROSS_2D)
        diseased = _local_lung_mean(hu, lung, window) > p.rim_diseased_hu
        lung = _fill_holes_slicewise(lung | thick | (added & diseased), max_hole)
        lung &= ~other & ~airway
        if zone is not None:
            box = _bbox(zone & ndimage.binary_dilation(lung, iterations=2), margin=2)
            if box is not None:
                closed = _closing_edt(lung[box], p.honeycomb_radius_mm, spacing)
                walls = closed & zone[box] & ~other[box] & (hu[box] < p.honeycomb_max_hu)
                lung[box] |= walls
                lung = _fill_holes_slicewise(lung, max_hole) & ~other & ~airway
        out[lung] = side
    return out


def _lung_labels_canonical(
    hu_full: npt.NDArray[np.int16],
    spacing_full: tuple[float, float, float],
    p: ClassicalParameters,
    timings: dict[str, float],
) -> tuple[LabelArray, _LungWork]:
    """Right/left lung labels (1 right, 2 left) on the canonical full-resolution grid."""
    with _timed(timings, "lungs/downsample"):
        factors = _factors(spacing_full, p.working_spacing_mm)
        hu = _block_mean(hu_full, factors)
        spacing = (
            spacing_full[0] * factors[0],
            spacing_full[1] * factors[1],
            spacing_full[2] * factors[2],
        )
        voxel_ml = float(np.prod(spacing)) / 1000.0
    with _timed(timings, "lungs/body"):
        body = _body_mask(hu, spacing, p)
        air = (hu < p.air_threshold_hu) & body
        inner = _inner_body(body, spacing, p.min_depth_mm)
        lung_air, _, foreign_air = _select_lung_air(air, inner, voxel_ml, p)
        without_gas, gas_voxels = _remove_abdominal_gas(lung_air, hu, voxel_ml, p)
        foreign_air |= lung_air & ~without_gas
        lung_air = without_gas
    notes: dict[str, object] = {"abdominal_gas_ml": gas_voxels * voxel_ml}
    with _timed(timings, "lungs/airway"):
        airway = np.zeros_like(lung_air)
        seed = _find_trachea_seed(air, lung_air, body, spacing, p)
        if seed is not None:
            pixel_mm2 = spacing[1] * spacing[2]
            airway = _track_airway(
                air,
                seed[0],
                seed[1],
                min_ref_px=200.0 / pixel_mm2,
                max_area_px=1.5 * p.trachea_area_mm2[1] / pixel_mm2,
            )
            notes["trachea_seed_k"] = seed[0]
        notes["airway_ml"] = float(airway.sum()) * voxel_ml
        airway_zone = ndimage.binary_dilation(airway, structure=_CROSS_3D)
        lung_air &= ~airway_zone
        lung_air = _remove_small(lung_air, max(2, int(0.5 / voxel_ml)))
    with _timed(timings, "lungs/split"):
        labels, how = _split_left_right(lung_air, body, spacing, p)
        notes["split"] = how
    with _timed(timings, "lungs/recover"):
        air_labels = labels.copy()
        labels = _recover_dense(
            labels,
            hu,
            body,
            airway_zone,
            foreign_air,
            spacing,
            p,
        )
    work = _LungWork(factors, spacing, body, airway_zone, labels, air_labels, notes)
    with _timed(timings, "lungs/refine"):
        full = _refine_full_resolution(hu_full, work, p)
    return full, work


def _refine_full_resolution(
    hu_full: npt.NDArray[np.int16], work: _LungWork, p: ClassicalParameters
) -> LabelArray:
    """Upsample the working labels and re-threshold their boundary at full resolution."""
    shape = hu_full.shape
    if work.factors == (1, 1, 1):
        return work.labels
    labels = work.labels
    lung = labels > 0
    band_w = ndimage.binary_dilation(lung, structure=_CROSS_3D) & ~ndimage.binary_erosion(
        lung, structure=_CROSS_3D
    )
    dense_w = lung & ~(work.air_labels > 0)
    nearest_w = np.where(lung, labels, ndimage.grey_dilation(labels, footprint=_CROSS_3D))
    box = _bbox(band_w)
    out = np.asarray(_upsample(labels, work.factors, shape), dtype=np.uint8).copy()
    if box is None:
        return out
    full_box = tuple(
        slice(b.start * f, min(b.stop * f, n))
        for b, f, n in zip(box, work.factors, shape, strict=True)
    )
    crop = tuple(slice(0, s.stop - s.start) for s in full_box)
    band = np.asarray(_upsample(band_w[box], work.factors, shape)[crop], dtype=bool)
    dense = np.asarray(_upsample(dense_w[box], work.factors, shape)[crop], dtype=bool)
    airway = np.asarray(_upsample(work.airway[box], work.factors, shape)[crop], dtype=bool)
    nearest = _upsample(nearest_w[box], work.factors, shape)[crop]
    hu = hu_full[full_box]
    is_lung = ((hu < p.air_threshold_hu) | dense) & ~airway
    region = out[full_box]
    region[band] = np.where(is_lung[band], nearest[band], 0)
    out[full_box] = region
    return out


# --------------------------------------------------------------------------------------------
# ILD mask


def _ild_canonical(
    hu_full: npt.NDArray[np.int16],
    lungs: BoolArray,
    spacing: tuple[float, float, float],
    p: ClassicalParameters,
) -> BoolArray:
    """ILD voxels (inside ``lungs``) on the canonical grid; see the module docstring.

    Fine grids are analysed at about ``ild_spacing_mm`` (block means): the texture measures are
    tuned there, and a 0.7 mm grid would cost eight times as much for no better regions.
    """
    out = np.zeros(lungs.shape, dtype=bool)
    box = _bbox(lungs, margin=2)
    if box is None:
        return out
    factors = _factors(spacing, p.ild_spacing_mm)
    if factors == (1, 1, 1):
        out[box] = _ild_on_grid(hu_full[box].astype(np.float32), lungs[box], spacing, p)
        return out
    hu = _block_mean(hu_full[box], factors)
    lung = _block_mean(lungs[box], factors) >= 0.5
    coarse = (spacing[0] * factors[0], spacing[1] * factors[1], spacing[2] * factors[2])
    ild = _ild_on_grid(hu, lung, coarse, p)
    shape = lungs[box].shape
    out[box] = np.asarray(_upsample(ild, factors, shape), dtype=bool) & lungs[box]
    return out


def _ild_on_grid(
    hu: FloatArray, lung: BoolArray, spacing: tuple[float, float, float], p: ClassicalParameters
) -> BoolArray:
    """ILD inside ``lung`` (same shape as ``hu``, spacing ``[z, y, x]`` mm)."""
    if not lung.any():
        return np.zeros(lung.shape, dtype=bool)
    smooth = ndimage.gaussian_filter(hu, [p.ild_smoothing_mm / s for s in spacing], mode="nearest")
    # Ground glass is relative to this patient's aerated lung (scanner, dose and inspiration
    # shift the whole lung): the lower quartile of the lung is taken as normal.
    lung_values = smooth[lung]
    step = max(1, lung_values.size // 2_000_000)
    reference = float(np.percentile(lung_values[::step], 25))
    low_hu = float(np.clip(reference + p.ild_ggo_offset_hu, p.ild_low_hu, p.ild_low_hu_max))
    del lung_values

    dense = lung & (smooth >= p.ild_high_hu)
    # Partial volume around dense structures and along the pleura is neither normal nor ground
    # glass: it is left out of the ground-glass fraction.
    halo_iterations = max(1, min(3, round(p.ild_halo_mm / min(spacing[1], spacing[2]))))
    halo = ndimage.binary_dilation(dense, structure=_CROSS_2D, iterations=halo_iterations) & ~dense
    interior = ndimage.binary_erosion(lung, structure=_CROSS_2D, iterations=halo_iterations)
    background = interior & ~dense & ~halo
    ground_glass = background & (smooth >= low_hu)
    smooth_air = smooth
    del smooth

    # Thin dense structures (reticular lines, honeycomb walls) vanish under an in-plane opening;
    # vessels of the size that matters (and consolidation) do not.
    radius = max(1, round(p.ild_thin_mm / min(spacing[1], spacing[2])))
    thick = ndimage.binary_dilation(
        ndimage.binary_erosion(dense, structure=_CROSS_2D, iterations=radius),
        structure=_CROSS_2D,
        iterations=radius,
    )
    thin = dense & interior & ~thick
    del thick, halo

    size = [max(1, round(p.ild_window_mm / s)) | 1 for s in spacing]

    def local_mean(mask: BoolArray) -> FloatArray:
        return ndimage.uniform_filter(mask.astype(np.float32), size=size, mode="constant")

    # Honeycombing: crowded small air pockets (cysts) with dense walls, whatever their thickness.
    cysts = background & (smooth_air < p.air_threshold_hu)
    blobs, n = ndimage.label(cysts, structure=_IN_PLANE)
    if n:
        small = np.bincount(blobs.ravel()) <= p.cyst_max_area_mm2 / (spacing[1] * spacing[2])
        small[0] = False
        cysts = small[blobs]
    del blobs
    hc_size = [max(1, round(p.honeycomb_window_mm / s)) | 1 for s in spacing]
    crowded = (
        ndimage.uniform_filter(cysts.astype(np.float32), size=hc_size, mode="constant")
        >= p.honeycomb_min_fraction
    )
    walls = dense & crowded
    if p.ild_consolidation_fraction < 1.0:
        # Dense tissue filling most of the lung around (consolidation, fibrotic matrix) is
        # disease; vessels, even large ones, leave most of their neighbourhood aerated.
        # It must also touch other disease (ground glass, lines, cysts), which a vessel does not.
        def hc_mean(mask: BoolArray) -> FloatArray:
            return ndimage.uniform_filter(mask.astype(np.float32), size=hc_size, mode="constant")

        dense_f, lung_hc = hc_mean(dense), hc_mean(lung)
        other_f = hc_mean(ground_glass | thin | cysts)
        walls |= (
            dense
            & (dense_f >= p.ild_consolidation_fraction * lung_hc)
            & (other_f >= p.ild_consolidation_other * np.maximum(lung_hc - dense_f, 1e-3))
        )
        del dense_f, lung_hc, other_f

    # Among the voxels that say something about the parenchyma (not thick dense structures, not
    # their partial-volume halo), the abnormal ones: ground glass, thin dense lines, cysts.
    lung_f = local_mean(lung)
    informative_f = local_mean(background | thin | walls)
    abnormal_f = local_mean(ground_glass | thin | cysts | walls)
    ild = (abnormal_f >= p.ild_fraction * informative_f) & (informative_f >= 0.15 * lung_f)
    ild &= lung
    del lung_f, informative_f, abnormal_f
    # Close the cysts and vessels inside a diseased region, then drop specks.
    closing = max(1, round(p.ild_closing_mm / min(spacing[1], spacing[2])))
    ild = ndimage.binary_closing(ild, structure=_CROSS_2D, iterations=closing) & lung
    voxel_ml = float(np.prod(spacing)) / 1000.0
    ild = _remove_small(ild, max(1, round(p.ild_min_component_ml / voxel_ml)))
    return ild


# --------------------------------------------------------------------------------------------
# Public API


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _hu_int16(ct: Volume) -> npt.NDArray[np.int16]:
    array = ct.array
    if array.dtype == np.int16:
        return np.asarray(array)
    return np.asarray(np.clip(np.rint(array.astype(np.float32)), -1024, 3071), dtype=np.int16)


def _lungs_lr_and_ild(
    ct: Volume, p: ClassicalParameters, timings: dict[str, float], *, with_ild: bool
) -> tuple[LabelArray, BoolArray | None, _Canonical, dict[str, object]]:
    canon = _Canonical.of(ct)
    hu = canon.forward(_hu_int16(ct))
    lr, work = _lung_labels_canonical(hu, canon.spacing_zyx, p, timings)
    ild = None
    if with_ild:
        with _timed(timings, "ild"):
            ild = _ild_canonical(hu, lr > 0, canon.spacing_zyx, p)
    return lr, ild, canon, work.notes


def lung_mask(ct: Volume, *, parameters: ClassicalParameters | None = None) -> Volume:
    """Right and left lungs of a chest CT, dense subpleural disease included, airways excluded.

    Args:
        ct: CT in Hounsfield units, array ``[k, j, i]``, LPS geometry; any axis-aligned orientation
            (oblique directions are handled by their nearest patient axes).
        parameters: thresholds and sizes (defaults: :class:`ClassicalParameters`).

    Returns:
        ``uint8`` volume on the CT's grid: 0 background, 1 right lung (smaller LPS ``x``),
        2 left lung. Trachea and main bronchi are 0.

    Raises:
        GeometryError: if the image axes cannot be matched to patient axes.
    """
    p = parameters or ClassicalParameters()
    lr, _, canon, _ = _lungs_lr_and_ild(ct, p, {}, with_ild=False)
    return ct.with_array(canon.backward(lr).astype(np.uint8))


def ild_mask(ct: Volume, lungs: Volume, *, parameters: ClassicalParameters | None = None) -> Volume:
    """ILD (ground glass, reticulation, honeycombing) inside a lung mask.

    Args:
        ct: CT in Hounsfield units, array ``[k, j, i]``, LPS geometry.
        lungs: lung mask on the same grid (any non-zero value is lung, e.g. from :func:`lung_mask`).
        parameters: thresholds and sizes (defaults: :class:`ClassicalParameters`).

    Returns:
        ``uint8`` volume on the CT's grid, 1 for ILD (always inside ``lungs``), else 0.

    Raises:
        GeometryError: if ``lungs`` is not on the CT's grid, or the axes cannot be matched to
            patient axes.
    """
    if not lungs.same_grid(ct):
        raise GeometryError("the lung mask is not on the CT's grid")
    p = parameters or ClassicalParameters()
    canon = _Canonical.of(ct)
    hu = canon.forward(_hu_int16(ct))
    lung = canon.forward(np.asarray(lungs.array != 0, dtype=bool))
    ild = _ild_canonical(hu, lung, canon.spacing_zyx, p)
    return ct.with_array(canon.backward(ild).astype(np.uint8))


def segment(ct: Volume, *, parameters: ClassicalParameters | None = None) -> SegmentationResult:
    """Lung and ILD label map of a chest CT on the CT's own grid.

    Args:
        ct: CT in Hounsfield units, array ``[k, j, i]``, LPS geometry.
        parameters: thresholds and sizes (defaults: :class:`ClassicalParameters`).

    Returns:
        A :class:`SegmentationResult`: label map ``uint8`` (0 background, 1 lung without ILD,
        2 ILD), ``lungs_lr`` (1 right, 2 left), volumes, extent, per-slice values, timings.

    Raises:
        GeometryError: if the image axes cannot be matched to patient axes.
    """
    p = parameters or ClassicalParameters()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    lr, ild, canon, notes = _lungs_lr_and_ild(ct, p, timings, with_ild=True)
    assert ild is not None
    labels = (lr > 0).astype(np.uint8)
    labels[ild] = ILD
    timings["total"] = time.perf_counter() - start
    parameters_record: dict[str, object] = dict(asdict(p))
    parameters_record["notes"] = notes
    return SegmentationResult.from_label_map(
        ct.with_array(canon.backward(labels)),
        engine=ENGINE_NAME,
        version=VERSION,
        timings_s=timings,
        lungs_lr=ct.with_array(canon.backward(lr)),
        parameters=parameters_record,
    )


class ClassicalEngine:
    """The classical engine behind the registry name ``"classical"`` (CPU, no weights)."""

    name = ENGINE_NAME
    version = VERSION

    def __init__(self, parameters: ClassicalParameters | None = None) -> None:
        self.parameters = parameters or ClassicalParameters()

    @classmethod
    def create(cls, *, weights: Path | None = None, device: str = "cpu") -> ClassicalEngine:
        """Registry factory. ``weights`` is ignored (nothing to load); it always runs on the CPU."""
        del weights, device
        return cls()

    def predict(self, ct: Volume) -> SegmentationResult:
        """See :func:`segment`."""
        return segment(ct, parameters=self.parameters)
