"""SSc-like interstitial lung disease (NSIP pattern): where it is, how much, what it looks like.

Where: a smooth *propensity* field inside the lungs, high next to the costal and diaphragmatic
pleura, posteriorly and at the bases, modulated by patchy noise (optionally with the immediate
subpleural sparing typical of NSIP). How much: the ILD label is the set of lung voxels whose
propensity exceeds the threshold that yields the requested share of the lung volume, so the
realised extent matches the request to a voxel. What it looks like: ground-glass haze
(−700..−400 HU), fine reticulation (zero-crossings of band-passed noise: a network of thin
curved lines), and in severe disease subpleural honeycombing (Voronoi cysts with walls).
Arrays are ``[k, j, i]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from inference.phantoms._grid import F32, F64, Grid, separable_filter

B = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class DiseasePattern:
    """Per-patient disease parameters (weights are dimensionless)."""

    subpleural_weight: float
    subpleural_length_mm: float
    posterior_weight: float
    basal_weight: float
    patchy_weight: float
    sparing: float
    ggo_hu: float
    reticulation: float
    honeycomb_from_pct: float
    cyst_mm: float


def sample_pattern(rng: np.random.Generator) -> DiseasePattern:
    """Draw an NSIP-like distribution: subpleural, posterior and basal predominant."""
    return DiseasePattern(
        subpleural_weight=float(rng.uniform(0.9, 1.3)),
        subpleural_length_mm=float(rng.uniform(9.0, 18.0)),
        posterior_weight=float(rng.uniform(0.6, 1.0)),
        basal_weight=float(rng.uniform(0.8, 1.2)),
        patchy_weight=float(rng.uniform(0.12, 0.22)),
        sparing=float(rng.uniform(0.25, 0.5)) if rng.random() < 0.35 else 0.0,
        ggo_hu=float(rng.uniform(160.0, 230.0)),
        reticulation=float(rng.uniform(0.6, 1.1)),
        honeycomb_from_pct=float(rng.uniform(14.0, 28.0)),
        cyst_mm=float(rng.uniform(4.5, 7.0)),
    )


def propensity(
    pattern: DiseasePattern,
    lung: B,
    subpleural_mm: F32,
    posterior_frac: F32,
    basal_frac: F32,
    patchy: F32,
) -> F32:
    """ILD propensity inside ``lung`` (``-10`` outside); larger means earlier involvement."""
    d = np.maximum(subpleural_mm, 0.0)
    p = pattern.subpleural_weight * np.exp(-d / pattern.subpleural_length_mm)
    p += pattern.posterior_weight * posterior_frac**2
    p += pattern.basal_weight * np.clip(basal_frac, 0.0, 1.0) ** 2
    p += pattern.patchy_weight * patchy
    if pattern.sparing > 0:
        p -= pattern.sparing * np.exp(-d / 2.0)
    return np.where(lung, p, np.float32(-10.0)).astype(np.float32)


def threshold_for_extent(values: F32, extent_pct: float, weights: F32 | None = None) -> float:
    """Threshold ``t`` such that ``values >= t`` covers ``extent_pct`` % of the (weighted) voxels.

    ``values`` are the propensities of lung voxels only (1D). Unweighted: exact to one voxel.
    Weighted (e.g. by the Jacobian, for a share of the *deformed* volume): histogram with
    16384 bins, linear inside the bin.
    """
    n = values.size
    if n == 0 or extent_pct <= 0:
        return float("inf")
    if extent_pct >= 100:
        return float(values.min())
    if weights is None:
        count = round(extent_pct / 100.0 * n)
        if count == 0:
            return float("inf")
        return float(np.partition(values, n - count)[n - count])
    hist, edges = np.histogram(values, bins=16384, weights=weights)
    from_top = np.cumsum(hist[::-1])[::-1]  # weight at or above each bin's lower edge
    target = extent_pct / 100.0 * float(hist.sum())
    b = int(np.searchsorted(-from_top, -target, side="right")) - 1
    b = int(np.clip(b, 0, hist.size - 1))
    above = from_top[b + 1] if b + 1 < hist.size else 0.0
    inside = hist[b]
    share = 0.0 if inside <= 0 else float(np.clip((target - above) / inside, 0.0, 1.0))
    return float(edges[b + 1] - share * (edges[b + 1] - edges[b]))


@dataclass
class DiseaseFields:
    """Random fields shared by every time point of a patient (so the disease keeps its look)."""

    box: tuple[slice, slice, slice]  # lung bounding box on the grid
    reticular: F32  # band-passed noise / its std, on the box
    patch: F32  # smooth noise in [0, 1], on the box
    cyst_seeds_lps_mm: F64  # candidate honeycomb cyst centres
    cyst_radius_mm: F64  # their lumen radii (3-10 mm cysts)


def disease_fields(
    rng: np.random.Generator, grid: Grid, lung: B, subpleural_mm: F32, pattern: DiseasePattern
) -> DiseaseFields:
    """Draw the reticulation network, ground-glass patchiness and cyst seeds for one patient."""
    k, j, i = (
        np.nonzero(lung.any(axis=(1, 2)))[0],
        np.nonzero(lung.any(axis=(0, 2)))[0],
        np.nonzero(lung.any(axis=(0, 1)))[0],
    )
    if k.size == 0:
        box = (slice(0, 0), slice(0, 0), slice(0, 0))
    else:
        box = (
            slice(int(k[0]), int(k[-1]) + 1),
            slice(int(j[0]), int(j[-1]) + 1),
            slice(int(i[0]), int(i[-1]) + 1),
        )
    shape = tuple(s.stop - s.start for s in box)
    sx, sy, sz = grid.spacing_mm
    white = rng.standard_normal(shape, dtype=np.float32)
    # band-pass noise whose zero crossings draw the network: the finer scale is kept at
    # about a voxel so the lines stay lines (not speckle) on coarse grids
    f_mm = max(1.3, 1.0 * min(sx, sy))
    c_mm = 2.8 * f_mm
    fine = separable_filter(white, (max(f_mm, 0.5 * sz) / sz, f_mm / sy, f_mm / sx))
    coarse = separable_filter(fine, (c_mm / sz, c_mm / sy, c_mm / sx))
    band = fine - coarse
    band /= max(float(band.std()), 1e-6)
    patch_white = rng.standard_normal(shape, dtype=np.float32)
    patch = separable_filter(patch_white, (3.5 / sz, 3.5 / sy, 3.5 / sx))
    patch = (0.5 + 0.5 * np.tanh(patch / max(float(patch.std()), 1e-6))).astype(np.float32)
    # cyst seeds: a Poisson process in the subpleural band, one per cyst volume
    band_mask = lung & (subpleural_mm < 16.0)
    stride = max(1, round(2.0 / min(grid.spacing_mm)))
    flat = np.flatnonzero(band_mask[::stride, ::stride, ::stride])
    band_mm3 = flat.size * (stride**3) * sx * sy * sz
    count = int(min(flat.size, band_mm3 / pattern.cyst_mm**3))
    if count > 0:
        pick = rng.choice(flat, size=count, replace=False)
        kk, jj, ii = np.unravel_index(pick, band_mask[::stride, ::stride, ::stride].shape)
        ijk = np.stack([ii, jj, kk], axis=-1).astype(np.float64) * stride
        ijk += rng.uniform(-0.5, 0.5, ijk.shape) * stride
        seeds = np.asarray(grid.origin_lps_mm) + ijk * np.asarray(grid.spacing_mm)
    else:
        seeds = np.zeros((0, 3))
    radii = rng.uniform(1.5, 5.0, seeds.shape[0]) * (pattern.cyst_mm / 5.75)
    return DiseaseFields(box, band, patch, seeds, radii)


def paint_ild(
    hu: F32,
    ild: B,
    propensity_map: F32,
    threshold: float,
    span: float,
    subpleural_mm: F32,
    posterior_frac: F32,
    grid: Grid,
    fields: DiseaseFields,
    pattern: DiseasePattern,
    extent_pct: float,
) -> B:
    """Add ground glass, reticulation and (severe disease) honeycombing to ``hu`` in place.

    Severity ``s = clip((propensity - threshold) / span, 0, 1)`` grows with the propensity above
    the threshold; ``posterior_frac`` may be ``[k, j, 1]``. Returns the honeycomb mask (cyst
    lumens and walls), a subset of ``ild``.
    """
    honeycomb = np.zeros(ild.shape, dtype=bool)
    if not ild.any():
        return honeycomb
    box = fields.box
    sub_ild = ild[box]
    sub_s = np.clip((propensity_map[box] - threshold) / span, 0.0, 1.0)
    s = sub_s[sub_ild]
    h = hu[box]
    patch = fields.patch[sub_ild]
    # ground glass fades in over the first few percent of severity (soft, not cut-out, margins)
    fade = 0.45 + 0.55 * np.clip(s / 0.06, 0.0, 1.0)
    ggo = (pattern.ggo_hu * fade + 230.0 * s) * (0.7 + 0.6 * patch)
    width = 0.08 + 0.16 * s
    lines = np.exp(-((fields.reticular[sub_ild] / width) ** 2))
    ret = lines * (320.0 + 300.0 * s) * pattern.reticulation * (0.5 + 0.5 * np.sqrt(s))
    values = h[sub_ild] + ggo + ret
    h[sub_ild] = np.minimum(values, 60.0)

    level = float(np.clip((extent_pct - pattern.honeycomb_from_pct) / 20.0, 0.0, 1.0))
    if level <= 0 or fields.cyst_seeds_lps_mm.shape[0] < 2:
        return honeycomb
    sub_d = subpleural_mm[box]
    posterior = np.broadcast_to(posterior_frac, ild.shape)[box] > 0.55 - 0.15 * level
    region = sub_ild & posterior & (sub_d < 3.0 + 9.0 * level) & (sub_s > 0.72 - 0.4 * level)
    if not region.any():
        return honeycomb
    kk, jj, ii = np.nonzero(region)
    off = np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64)
    pts = np.asarray(grid.origin_lps_mm) + (np.stack([ii, jj, kk], axis=-1) + off) * np.asarray(
        grid.spacing_mm
    )
    tree = cKDTree(fields.cyst_seeds_lps_mm)
    dist, nearest = tree.query(pts, k=2)
    # round cysts around the seeds; crowded neighbours share a wall (the bisector)
    radius = fields.cyst_radius_mm[nearest[:, 0]]
    half_gap = 0.5 * (dist[:, 1] - dist[:, 0])
    wall_mm = 0.8 + 0.3 * min(grid.spacing_mm)
    lumen = (dist[:, 0] < radius) & (half_gap > 0.5 * wall_mm)
    walls = ~lumen & (dist[:, 0] < radius + wall_mm)
    vals = h[kk, jj, ii]
    vals = np.where(lumen, -960.0, np.where(walls, np.maximum(vals, 20.0), vals))
    h[kk, jj, ii] = vals.astype(np.float32)
    honeycomb[box] = region
    return honeycomb
