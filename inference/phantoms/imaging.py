"""The scanner model: point-spread blur (partial volume), correlated noise, quantisation.

Input and output arrays are ``[k, j, i]`` in HU. The blur is a separable Gaussian of a sharp
("lung") reconstruction kernel in-plane and of the slice sensitivity profile along z; the noise
is white Gaussian noise filtered by a small kernel (correlation length ≈ 0.5 mm, as measured on
a real lung-kernel CT) and scaled to the requested standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from inference.phantoms._grid import F32, F64, Grid, gaussian_kernel1d, separable_filter

I16 = npt.NDArray[np.int16]

HU_MIN = -1024
HU_MAX = 3071


@dataclass(frozen=True)
class ScannerModel:
    """Acquisition parameters of one scan."""

    noise_hu: float
    psf_mm: float  # in-plane Gaussian sigma
    noise_corr_mm: float
    kvp: float
    kernel: str
    tube_current_ma: float


def sample_scanner(rng: np.random.Generator) -> ScannerModel:
    """A sharp-kernel unenhanced chest CT (100 or 120 kVp), noise σ 18-28 HU."""
    kvp = 120.0 if rng.random() < 0.7 else 100.0
    return ScannerModel(
        noise_hu=float(rng.uniform(18.0, 28.0)),
        psf_mm=float(rng.uniform(0.45, 0.65)),
        noise_corr_mm=float(rng.uniform(0.45, 0.6)),
        kvp=kvp,
        kernel=str(rng.choice(["LUNG", "B70f", "I70f", "B60f"])),
        tube_current_ma=float(rng.uniform(80.0, 220.0)),
    )


def _sigmas_vox(grid: Grid, inplane_mm: float, z_mm: float) -> tuple[float, float, float]:
    sx, sy, sz = grid.spacing_mm
    return (z_mm / sz, inplane_mm / sy, inplane_mm / sx)


def acquire(
    hu_sharp: F32,
    grid: Grid,
    scanner: ScannerModel,
    rng: np.random.Generator,
    *,
    noise_scale_k: F64 | None = None,
) -> I16:
    """Blur, add correlated noise, mask outside the reconstruction circle, round to int16 HU.

    ``noise_scale_k`` (length K) multiplies the noise per slice (thicker body parts are noisier).
    """
    slice_sigma = 0.42 * grid.spacing_mm[2]
    blurred = separable_filter(hu_sharp, _sigmas_vox(grid, scanner.psf_mm, slice_sigma))
    sig = _sigmas_vox(grid, scanner.noise_corr_mm, 0.8 * scanner.noise_corr_mm)
    noise = rng.standard_normal(grid.shape_kji, dtype=np.float32)
    noise = separable_filter(noise, sig)
    gain = 1.0
    for sigma in sig:
        kernel = gaussian_kernel1d(sigma)
        gain *= float(np.sqrt((kernel**2).sum()))
    scale = np.float32(scanner.noise_hu / gain)
    if noise_scale_k is not None:
        noise *= (scale * noise_scale_k.astype(np.float32))[:, None, None]
    else:
        noise *= scale
    blurred += noise
    # reconstruction circle: scanners write the air value outside the reconstructed field
    x, y = grid.x_mm, grid.y_mm
    half_fov = 0.5 * min(x[-1] - x[0], y[-1] - y[0])
    if half_fov > 170.0:
        outside = (x[None, :] ** 2 + y[:, None] ** 2) > half_fov**2
        blurred[:, outside] = HU_MIN
    np.rint(blurred, out=blurred)
    np.clip(blurred, HU_MIN, HU_MAX, out=blurred)
    return blurred.astype(np.int16)
