"""Known deformations and a small synthetic chest CT, to test and benchmark registration.

The trick that avoids inverting the ground truth: choose the field ``u`` on the *baseline* grid
and build the baseline as the follow-up resampled through it,
``baseline(x) = followup(x + u(x))``. Then baseline point ``x`` corresponds to follow-up point
``x + u(x)`` exactly, which is the registration convention (fixed = baseline, moving =
follow-up). The same recipe turns a real CT (POPI) into a pair with a known answer.

Deformations (all LPS mm, on a grid's voxel centres):

* :func:`shrinkage_field` — a Gaussian-weighted contraction towards a centre; at the centre
  ``log det = 3 log(1 - strength)``. This mimics the regional lung shrinkage of worsening
  fibrosis (Chassagnon et al. 2021: posterior lung bases).
* :func:`sinusoidal_field` — a smooth, divergence-carrying background motion.
* :func:`affine_field` — a small global scaling plus translation (breath-hold differences).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.registration.fields import grid_points_lps, warp_volume
from inference.registration.jacobian import log_jacobian
from inference.volume import Volume

AIR_HU = -1000.0


def _points(grid: Volume) -> npt.NDArray[np.float64]:
    return np.asarray(grid_points_lps(grid), dtype=np.float64)


def grid_centre_lps(grid: Volume) -> npt.NDArray[np.float64]:
    """LPS mm of the grid's centre (midway between the first and last voxel centres)."""
    return grid.index_to_lps((np.array(grid.shape_kji[::-1], dtype=np.float64) - 1.0) / 2.0)


def shrinkage_field(
    grid: Volume,
    *,
    centre_lps_mm: npt.ArrayLike,
    sigma_mm: float,
    strength: float,
) -> npt.NDArray[np.float32]:
    """``u(x) = -strength * (x - c) * exp(-|x - c|^2 / (2 sigma^2))`` on ``grid``.

    Returns ``[k, j, i, 3]`` float32 LPS mm. ``strength`` in ``[0, 1)``; positive shrinks the
    neighbourhood of ``c`` from baseline to follow-up. Folding-free when ``strength < 0.5``.

    Raises:
        ValueError: if ``strength`` is not in ``[0, 0.5)`` or ``sigma_mm`` is not positive.
    """
    if not 0.0 <= strength < 0.5 or sigma_mm <= 0:
        raise ValueError("need 0 <= strength < 0.5 and sigma_mm > 0")
    offset = _points(grid) - np.asarray(centre_lps_mm, dtype=np.float64)
    weight = np.exp(-np.sum(offset**2, axis=-1, keepdims=True) / (2.0 * sigma_mm**2))
    return (-strength * offset * weight).astype(np.float32)


def sinusoidal_field(
    grid: Volume, *, amplitude_mm: float, wavelength_mm: float, phase: float = 0.0
) -> npt.NDArray[np.float32]:
    """A smooth field with each component a product of sines of the other coordinates.

    ``u_x = a sin(w y + phase) sin(w z)``, ``u_y = a sin(w z + phase) sin(w x)``,
    ``u_z = a sin(w x + phase) sin(w y)`` with ``w = 2 pi / wavelength``; ``[k, j, i, 3]`` float32
    LPS mm.
    """
    x, y, z = np.moveaxis(_points(grid), -1, 0)
    w = 2.0 * np.pi / wavelength_mm
    a = amplitude_mm
    field = np.stack(
        [
            a * np.sin(w * y + phase) * np.sin(w * z),
            a * np.sin(w * z + phase) * np.sin(w * x),
            a * np.sin(w * x + phase) * np.sin(w * y),
        ],
        axis=-1,
    )
    return field.astype(np.float32)


def affine_field(
    grid: Volume,
    *,
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    translation_mm: Sequence[float] = (0.0, 0.0, 0.0),
    centre_lps_mm: Sequence[float] | None = None,
) -> npt.NDArray[np.float32]:
    """``u(x) = diag(scale) (x - c) + c + t - x``; ``[k, j, i, 3]`` float32 LPS mm."""
    centre = grid_centre_lps(grid) if centre_lps_mm is None else np.asarray(centre_lps_mm)
    offset = _points(grid) - centre
    field = offset * (np.asarray(scale, dtype=np.float64) - 1.0) + np.asarray(translation_mm)
    return field.astype(np.float32)


def make_synthetic_ct(
    *,
    seed: int,
    shape_kji: tuple[int, int, int] = (48, 48, 48),
    spacing_mm: tuple[float, float, float] = (3.0, 3.0, 3.0),
    direction: npt.ArrayLike | None = None,
    vessel_scale_mm: float | None = None,
    noise_hu: float = 10.0,
) -> tuple[Volume, Volume]:
    """A small chest-like CT in HU and its lung mask (1 right lung, 2 left lung).

    Body: an elliptic cylinder along S (soft tissue 40 HU, a 300 HU spine posteriorly) in air.
    Lungs: two ellipsoids at -850 HU (right at -x, left at +x in LPS) holding a vessel-like
    texture (thresholded smoothed noise, up to +40 HU), plus Gaussian noise.

    Args:
        seed: random seed (texture and noise).
        shape_kji: voxels ``[k, j, i]``.
        spacing_mm: ``(i, j, k)`` spacing.
        direction: 3x3 direction matrix (identity by default); the anatomy is laid out in LPS,
            so it stays anatomically oriented whatever the index axes.
        vessel_scale_mm: smoothing scale of the texture; default 1.5 x the largest spacing.
        noise_hu: standard deviation of the added noise.

    Returns:
        ``(ct, lung_mask)`` Volumes on the same grid (float32 HU, uint8 labels).
    """
    rng = np.random.default_rng(seed)
    direction_m = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    extent = (np.array(shape_kji[::-1], dtype=np.float64) - 1.0) * np.asarray(spacing_mm)
    # Put the grid centre at the LPS origin whatever the direction.
    origin = -(direction_m @ (extent / 2.0))
    grid = Volume(np.zeros(shape_kji, dtype=np.uint8), spacing_mm, tuple(origin), direction_m)
    points = _points(grid)
    x, y, z = np.moveaxis(points, -1, 0)
    # Physical half-extents along L, P, S.
    half = np.abs(direction_m) @ (extent / 2.0)
    hx, hy, hz = half
    body = (x / (0.95 * hx)) ** 2 + (y / (0.85 * hy)) ** 2 <= 1.0
    ct = np.full(shape_kji, AIR_HU, dtype=np.float32)
    ct[body] = 40.0
    spine = ((x / (0.12 * hx)) ** 2 + ((y - 0.6 * hy) / (0.12 * hy)) ** 2) <= 1.0
    ct[spine & body] = 300.0

    labels = np.zeros(shape_kji, dtype=np.uint8)
    for label, sign in ((1, -1.0), (2, 1.0)):
        lung = (
            ((x - sign * 0.42 * hx) / (0.36 * hx)) ** 2
            + ((y + 0.05 * hy) / (0.62 * hy)) ** 2
            + (z / (0.8 * hz)) ** 2
        ) <= 1.0
        labels[lung & body] = label
    in_lung = labels > 0

    scale = vessel_scale_mm if vessel_scale_mm is not None else 1.5 * max(spacing_mm)
    sigma_vox = [scale / s for s in spacing_mm[::-1]]
    texture = ndimage.gaussian_filter(rng.standard_normal(shape_kji), sigma_vox)
    texture /= texture.std() + 1e-12
    vessels = np.clip((texture - 0.8) / 0.8, 0.0, 1.0)  # ~20% of voxels, soft edges
    ct[in_lung] = -850.0 + 890.0 * vessels[in_lung]
    ct += rng.normal(0.0, noise_hu, shape_kji).astype(np.float32)
    return grid.with_array(ct), grid.with_array(labels)


@dataclass(frozen=True)
class SyntheticPair:
    """A baseline/follow-up pair with a known answer.

    Attributes:
        baseline: fixed image.
        baseline_mask: lung labels on the baseline grid.
        followup: moving image.
        followup_mask: lung labels on the follow-up grid.
        displacement_lps_mm: true ``[k, j, i, 3]`` field on the baseline grid (baseline ``x``
            corresponds to follow-up ``x + u(x)``).
        log_jacobian: true log-Jacobian on the baseline grid.
        shrink_region: boolean ``[k, j, i]`` on the baseline grid: lung voxels within
            ``sigma`` of the shrinkage centre.
    """

    baseline: Volume
    baseline_mask: Volume
    followup: Volume
    followup_mask: Volume
    displacement_lps_mm: npt.NDArray[np.float32]
    log_jacobian: Volume
    shrink_region: npt.NDArray[np.bool_]


def deform_into_baseline(
    followup: Volume,
    followup_mask: Volume,
    displacement: npt.NDArray[np.float32],
    *,
    seed: int,
    noise_hu: float = 10.0,
    shrink_centre_lps_mm: npt.ArrayLike,
    shrink_sigma_mm: float,
) -> SyntheticPair:
    """Build the baseline as ``followup(x + u(x))`` on the follow-up's grid and add noise.

    ``displacement`` lies on the follow-up grid, which becomes the baseline grid too.
    """
    rng = np.random.default_rng(seed + 1)
    baseline = warp_volume(followup, displacement, followup, "linear", default_value=AIR_HU)
    noisy = baseline.array + rng.normal(0.0, noise_hu, baseline.shape_kji).astype(np.float32)
    baseline = baseline.with_array(noisy.astype(np.float32))
    baseline_mask = warp_volume(followup_mask, displacement, followup, "nearest", default_value=0)
    logjac = log_jacobian(displacement, followup.spacing_mm, direction=followup.direction)
    distance = np.linalg.norm(
        _points(followup) - np.asarray(shrink_centre_lps_mm, dtype=np.float64), axis=-1
    )
    shrink_region = (distance <= shrink_sigma_mm) & (np.asarray(baseline_mask.array) > 0)
    return SyntheticPair(
        baseline=baseline,
        baseline_mask=baseline_mask,
        followup=followup,
        followup_mask=followup_mask,
        displacement_lps_mm=displacement,
        log_jacobian=followup.with_array(logjac),
        shrink_region=shrink_region,
    )


def posterior_basal_centre(mask: Volume, *, label: int = 1) -> npt.NDArray[np.float64]:
    """A point in the inferior-posterior part of one lung (LPS mm): where SSc-ILD shrinks.

    The centroid of the lung's voxels that are both below its S-midplane and behind its
    P-midplane.

    Raises:
        ValueError: if the label is absent.
    """
    kk, jj, ii = np.nonzero(mask.array == label)
    if kk.size == 0:
        raise ValueError(f"label {label} not in mask")
    pts = mask.index_to_lps(np.stack([ii, jj, kk], axis=-1).astype(np.float64))
    z_mid = 0.5 * (pts[:, 2].min() + pts[:, 2].max())
    y_mid = 0.5 * (pts[:, 1].min() + pts[:, 1].max())
    sel = (pts[:, 2] <= z_mid) & (pts[:, 1] > y_mid)
    chosen = pts[sel] if sel.any() else pts
    return np.asarray(chosen.mean(axis=0), dtype=np.float64)


def make_synthetic_pair(
    *,
    seed: int,
    shape_kji: tuple[int, int, int] = (48, 48, 48),
    spacing_mm: tuple[float, float, float] = (3.0, 3.0, 3.0),
    direction: npt.ArrayLike | None = None,
    shrink_strength: float = 0.07,
    shrink_sigma_mm: float | None = None,
    sinusoid_amplitude_mm: float = 2.0,
    translation_mm: Sequence[float] = (2.0, -3.0, 4.0),
    scale: Sequence[float] = (1.02, 0.98, 1.03),
    noise_hu: float = 10.0,
) -> SyntheticPair:
    """A synthetic baseline/follow-up pair: global affine + smooth motion + basal shrinkage.

    The shrinkage is centred in the inferior-posterior right lung; ``shrink_sigma_mm`` defaults
    to 18% of the smallest physical extent.
    """
    followup, followup_mask = make_synthetic_ct(
        seed=seed,
        shape_kji=shape_kji,
        spacing_mm=spacing_mm,
        direction=direction,
        noise_hu=noise_hu,
    )
    extent = (np.array(shape_kji[::-1], dtype=np.float64) - 1.0) * np.asarray(spacing_mm)
    sigma = shrink_sigma_mm if shrink_sigma_mm is not None else 0.18 * float(extent.min())
    centre = posterior_basal_centre(followup_mask)
    displacement = (
        shrinkage_field(followup, centre_lps_mm=centre, sigma_mm=sigma, strength=shrink_strength)
        + sinusoidal_field(
            followup, amplitude_mm=sinusoid_amplitude_mm, wavelength_mm=float(extent.max())
        )
        + affine_field(followup, scale=scale, translation_mm=translation_mm)
    )
    return deform_into_baseline(
        followup,
        followup_mask,
        displacement,
        seed=seed,
        noise_hu=noise_hu,
        shrink_centre_lps_mm=centre,
        shrink_sigma_mm=sigma,
    )
