"""Branching pulmonary vessel and airway trees, and their rendering with partial volume.

Trees are grown by recursive bisection of random target points spread through each lung
(a cheap space-filling construction): every node splits its targets along their principal
axis and sends a branch half-way towards each half's centroid. Radii follow Murray's law
(``r ∝ n_leaves^(1/3)``, slightly steeper so the hilum is not over-sized). Points are LPS mm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from inference.phantoms._grid import F32, F64, Grid

I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class TreeSegments:
    """Straight segments of a tree: ``start``/``end`` ``(S, 3)`` LPS mm, ``radius_mm`` ``(S,)``.

    ``parent`` is the index of the parent segment (-1 for the root), ``leaves`` the number of
    terminal points the segment supplies.
    """

    start: F64
    end: F64
    radius_mm: F64
    parent: I64
    leaves: I64

    def __len__(self) -> int:
        return int(self.radius_mm.size)


def grow_tree(
    root_lps_mm: F64,
    targets_lps_mm: F64,
    rng: np.random.Generator,
    *,
    leaf_radius_mm: float,
    exponent: float = 1.0 / 2.7,
) -> TreeSegments:
    """Grow a tree from ``root`` that ends at every row of ``targets`` ``(N, 3)``."""
    starts: list[F64] = []
    ends: list[F64] = []
    parents: list[int] = []
    leaves: list[int] = []
    if len(targets_lps_mm) == 0:
        empty = np.zeros((0, 3))
        none = np.zeros(0, dtype=np.int64)
        return TreeSegments(empty, empty, np.zeros(0), none, none)
    # stack of (node position, target indices, index of the segment that ends at the node)
    stack: list[tuple[F64, I64, int]] = [
        (np.asarray(root_lps_mm, dtype=np.float64), np.arange(len(targets_lps_mm)), -1)
    ]
    while stack:
        node, idx, parent = stack.pop()
        pts = targets_lps_mm[idx]
        if idx.size == 1:
            starts.append(node)
            ends.append(pts[0])
            parents.append(parent)
            leaves.append(1)
            continue
        centred = pts - pts.mean(axis=0)
        _, vecs = np.linalg.eigh(centred.T @ centred)
        proj = centred @ vecs[:, -1]
        order = np.argsort(proj)
        cut = int(np.clip(round(idx.size * rng.uniform(0.38, 0.62)), 1, idx.size - 1))
        for half in (idx[order[:cut]], idx[order[cut:]]):
            if half.size == 1:
                starts.append(node)
                ends.append(targets_lps_mm[half[0]])
                parents.append(parent)
                leaves.append(1)
                continue
            centroid = targets_lps_mm[half].mean(axis=0)
            child = node + rng.uniform(0.42, 0.6) * (centroid - node)
            starts.append(node)
            ends.append(child)
            parents.append(parent)
            leaves.append(int(half.size))
            stack.append((child, half, len(starts) - 1))
    leaves_arr = np.asarray(leaves, dtype=np.int64)
    return TreeSegments(
        start=np.asarray(starts),
        end=np.asarray(ends),
        radius_mm=leaf_radius_mm * leaves_arr.astype(np.float64) ** exponent,
        parent=np.asarray(parents, dtype=np.int64),
        leaves=leaves_arr,
    )


def bronchial_tree(arteries: TreeSegments, root_lps_mm: F64, *, min_leaves: int) -> TreeSegments:
    """Airways alongside the arteries (bronchovascular bundles), down to ``min_leaves``.

    Each node is shifted sideways by about the sum of both radii, with a direction fixed per
    node so consecutive segments stay joined. Lumen radius ≈ 0.8 × the artery's.
    """
    keep = arteries.leaves >= min_leaves
    hilum = np.asarray(root_lps_mm, dtype=np.float64)

    def offset(points: F64, radius: F64) -> F64:
        rel = points - hilum
        side = np.cross(rel, np.array([0.0, 0.0, 1.0]))
        side += 1e-3 * np.array([1.0, 0.0, 0.0])
        side /= np.linalg.norm(side, axis=-1, keepdims=True)
        return points + side * (1.9 * radius + 0.8)[:, None]

    radius = arteries.radius_mm[keep]
    parent_radius = np.where(
        arteries.parent[keep] >= 0, arteries.radius_mm[np.maximum(arteries.parent[keep], 0)], radius
    )
    start = offset(arteries.start[keep], parent_radius)
    start[arteries.parent[keep] < 0] = hilum
    end = offset(arteries.end[keep], radius)
    return TreeSegments(start, end, 0.8 * radius, arteries.parent[keep], arteries.leaves[keep])


def sample_targets(mask: B, grid: Grid, count: int, rng: np.random.Generator) -> F64:
    """``count`` random LPS mm points uniformly inside ``mask`` (``[k, j, i]`` on ``grid``)."""
    stride = max(1, round(3.0 / min(grid.spacing_mm)))
    sub = mask[::stride, ::stride, ::stride]
    flat = np.flatnonzero(sub)
    if flat.size == 0:
        return np.zeros((0, 3))
    pick = rng.choice(flat, size=min(count, flat.size), replace=False)
    k, j, i = np.unravel_index(pick, sub.shape)
    ijk = np.stack([i, j, k], axis=-1).astype(np.float64) * stride
    ijk += rng.uniform(-0.5, 0.5, ijk.shape) * stride
    return np.asarray(grid.origin_lps_mm) + ijk * np.asarray(grid.spacing_mm)


@dataclass(frozen=True)
class TubePoints:
    """Dense samples along tubes: positions ``(P, 3)`` LPS mm and radii ``(P,)`` mm."""

    points_lps_mm: F64
    radius_mm: F64


def sample_tubes(segments: TreeSegments, step_mm: float) -> TubePoints:
    """Points every ``≤ step_mm`` (and ``≤ radius / 2``) along each segment, ends included."""
    if len(segments) == 0:
        return TubePoints(np.zeros((0, 3)), np.zeros(0))
    vec = segments.end - segments.start
    length = np.linalg.norm(vec, axis=1)
    step = np.minimum(step_mm, np.maximum(0.5 * segments.radius_mm, 0.5 * step_mm))
    counts = np.maximum(2, np.ceil(length / step).astype(np.int64) + 1)
    seg = np.repeat(np.arange(len(segments)), counts)
    first = np.cumsum(counts) - counts
    frac = (np.arange(seg.size) - first[seg]) / (counts[seg] - 1)
    points = segments.start[seg] + vec[seg] * frac[:, None]
    return TubePoints(points, segments.radius_mm[seg])


def splat_tubes(
    hu: F32,
    allowed: B,
    grid: Grid,
    tubes: TubePoints,
    *,
    value_hu: float,
    brighten: bool,
    radius_scale: Callable[[I64, F64], F64] | None = None,
    chunk: int = 4_000_000,
) -> None:
    """Blend tubes of attenuation ``value_hu`` into ``hu`` in place, with partial volume.

    Each voxel within reach of a sample point gets ``hu·(1-f) + value·f`` with ``f`` the
    fraction covered (a one-voxel linear ramp at the edge, scaled by area for sub-voxel
    tubes). Overlaps keep the strongest effect (``max`` when ``brighten``, else ``min``).
    Only voxels where ``allowed`` is true change. ``radius_scale`` maps flat voxel indices of the
    sample points and their radii to new radii (e.g. traction bronchiectasis).
    """
    if tubes.radius_mm.size == 0:
        return
    nk, nj, ni = grid.shape_kji
    spacing = np.asarray(grid.spacing_mm)
    ramp = float(min(spacing[0], spacing[1]))
    ijk = grid.index_of(tubes.points_lps_mm)
    centre = np.rint(ijk).astype(np.int64)
    radius = tubes.radius_mm.copy()
    r_eff = np.maximum(radius, 0.5 * ramp)
    half = np.ceil((r_eff + 0.5 * ramp + 2.0)[:, None] / spacing[None, :]).astype(np.int64)
    # points whose stencil (with room for dilation) leaves the grid are outside the body anyway
    shape_ijk = np.array([ni, nj, nk])
    inside = np.all((centre - half >= 0) & (centre + half < shape_ijk), axis=1)
    ijk, centre, radius = ijk[inside], centre[inside], radius[inside]
    flat_centre = (centre[:, 2] * nj + centre[:, 1]) * ni + centre[:, 0]
    if radius_scale is not None and radius.size:
        radius = radius_scale(flat_centre, radius)
    r_eff = np.maximum(radius, 0.5 * ramp)
    amp = np.minimum(1.0, (radius / r_eff) ** 2).astype(np.float32)
    half = np.ceil((r_eff + 0.5 * ramp)[:, None] / spacing[None, :]).astype(np.int64)
    frac_pos = (ijk - centre).astype(np.float32)
    keys = half[:, 0] * 10_000 + half[:, 1] * 100 + half[:, 2]
    flat_hu = hu.reshape(-1)
    flat_allowed = allowed.reshape(-1)
    value = np.float32(value_hu)
    inv_ramp = np.float32(1.0 / ramp)
    sx, sy, sz = (np.float32(v) for v in spacing)
    for key in np.unique(keys):
        sel = np.flatnonzero(keys == key)
        hi, hj, hk = half[sel[0]]
        oi, oj, ok = np.meshgrid(
            np.arange(-hi, hi + 1), np.arange(-hj, hj + 1), np.arange(-hk, hk + 1), indexing="ij"
        )
        ri, rj, rk = oi.ravel(), oj.ravel(), ok.ravel()
        off_flat = (rk * nj + rj) * ni + ri
        fi, fj, fk = (o.astype(np.float32)[None, :] for o in (ri, rj, rk))
        per_chunk = max(1, chunk // off_flat.size)
        for c0 in range(0, sel.size, per_chunk):
            s = sel[c0 : c0 + per_chunk]
            dx = (fi - frac_pos[s, 0:1]) * sx
            dy = (fj - frac_pos[s, 1:2]) * sy
            dz = (fk - frac_pos[s, 2:3]) * sz
            dist = np.sqrt(dx * dx + dy * dy + dz * dz)
            frac = np.clip((r_eff[s, None].astype(np.float32) - dist) * inv_ramp + 0.5, 0.0, 1.0)
            frac *= amp[s, None]
            hit = frac > 0.02
            flat = (flat_centre[s, None] + off_flat[None, :])[hit]
            frac_f = frac[hit]
            keep = flat_allowed[flat]
            flat, frac_f = flat[keep], frac_f[keep]
            if flat.size == 0:
                continue
            new = flat_hu[flat] * (1 - frac_f) + value * frac_f
            if brighten:
                np.maximum.at(flat_hu, flat, new)
            else:
                np.minimum.at(flat_hu, flat, new)
