"""Known smooth deformations between a baseline and a follow-up CT.

The map is ``φ = R ∘ Bth``: a breathing flow ``Bth`` followed by a regional-shrinkage flow ``R``,
each the time-1 flow of an analytic stationary velocity field (LPS mm), so ``φ`` is a
diffeomorphism (no folding) with inverse ``Bth⁻¹ ∘ R⁻¹`` (the flows of the negated fields).

* breathing depth ``Bth``: ``v = (γ x m(z), γ (y - y_c) m(z), β g(z))`` — a craniocaudal scaling
  of the lungs about the apex (the diaphragm and the abdomen below move rigidly) with a
  proportional in-plane scaling; ``g`` is a smoothed ``clip(z - z_apex, z_base - z_apex, 0)`` and
  ``m = g'``. It integrates exactly per slice: ``z`` follows a 1D ODE and ``x``, ``y`` scale by
  ``exp(γ ∫ m)``.
* regional shrinkage ``R`` where fibrosis progresses: ``v = ∇Φ`` with anisotropic Gaussian
  potentials ``Φ`` centred in the posterior-basal subpleural lung. ``div v = ΔΦ`` is negative at
  the centre (shrinkage) and slightly positive around it (compensating expansion), as in the
  Jacobian maps of Chassagnon et al. 2021. Integrated with RK4 within 4 σ of each centre (the
  field is below 1e-3 mm beyond).

Convention: baseline point ``x`` corresponds to follow-up point ``φ(x) = x + u(x)``. The
log-Jacobian ``log det(I + ∇u)`` is integrated exactly along each trajectory (Liouville:
``d/dt log J = div v``) and adds over the composition. Fields are computed on a coarse lattice
and upsampled with Catmull-Rom cubics. Arrays are ``[k, j, i]`` (``[..., 3]``: x, y, z LPS mm).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage as ndi

from inference.phantoms._grid import F32, F64, CoarseGrid, Grid, coarse_to_points


@dataclass(frozen=True)
class ShrinkBlob:
    """Gaussian potential ``Φ = c·exp(-½ Σ (d_a/σ_a)²)``; ``c > 0`` contracts towards the centre.

    The centre is given in the baseline frame (the regional flow acts after breathing, around
    the breathing-moved centre).
    """

    center_lps_mm: tuple[float, float, float]
    sigma_mm: tuple[float, float, float]
    potential_mm2: float

    @classmethod
    def with_center_log_jacobian(
        cls,
        center: tuple[float, float, float],
        sigma: tuple[float, float, float],
        log_jacobian: float,
    ) -> ShrinkBlob:
        """The blob whose divergence at its centre is ``log_jacobian`` (≈ the log-Jacobian there)."""
        inv = sum(1.0 / s**2 for s in sigma)
        return cls(center, sigma, -log_jacobian / inv)


@dataclass(frozen=True)
class VelocityField:
    """Parameters of the breathing and regional flows (LPS mm)."""

    breathing: float  # β: log craniocaudal scale of the lungs (>0: deeper inspiration at follow-up)
    lateral: float  # γ: log in-plane scale of the thorax
    apex_z_mm: float
    base_z_mm: float
    center_y_mm: float
    softness_mm: float
    blobs: tuple[ShrinkBlob, ...]

    # ---- breathing: exact per-slice integration ------------------------------------------------
    def _g_m(self, z: F64) -> tuple[F64, F64]:
        s = self.softness_mm
        ua = (self.apex_z_mm - z) / s
        ub = (self.base_z_mm - z) / s
        g = s * (np.logaddexp(0.0, ub) - np.logaddexp(0.0, ua))
        m = 1.0 / (1.0 + np.exp(-ua)) - 1.0 / (1.0 + np.exp(-ub))
        return g, m

    def breathing_flow(self, z0: F64, *, inverse: bool = False, steps: int = 16) -> tuple[F64, F64]:
        """For start heights ``z0``: end height and ``M = ∫ m(z(t)) dt`` over unit time."""
        sign = -1.0 if inverse else 1.0
        h = 1.0 / steps
        z = np.array(z0, dtype=np.float64)
        total = np.zeros_like(z)
        beta = sign * self.breathing
        for _ in range(steps):
            g1, m1 = self._g_m(z)
            g2, m2 = self._g_m(z + 0.5 * h * beta * g1)
            g3, m3 = self._g_m(z + 0.5 * h * beta * g2)
            g4, m4 = self._g_m(z + h * beta * g3)
            z = z + h / 6.0 * beta * (g1 + 2 * g2 + 2 * g3 + g4)
            total += h / 6.0 * (m1 + 2 * m2 + 2 * m3 + m4)
        return z, total

    def breathe(self, p: F64, *, inverse: bool = False) -> tuple[F64, F64]:
        """Apply the breathing flow (or its inverse) to ``(N, 3)`` points; also its log-Jacobian."""
        sign = -1.0 if inverse else 1.0
        heights, where = np.unique(p[:, 2], return_inverse=True)
        z_end, integral = self.breathing_flow(heights, inverse=inverse)
        z1, total = z_end[where], integral[where]
        scale = np.exp(sign * self.lateral * total)
        out = np.empty_like(p)
        out[:, 0] = p[:, 0] * scale
        out[:, 1] = self.center_y_mm + (p[:, 1] - self.center_y_mm) * scale
        out[:, 2] = z1
        return out, sign * (2.0 * self.lateral + self.breathing) * total

    # ---- regional shrinkage ----------------------------------------------------------------------
    @cached_property
    def _moved(self) -> list[F64]:
        if not self.blobs:
            return []
        centers = np.array([b.center_lps_mm for b in self.blobs], dtype=np.float64)
        moved, _ = self.breathe(centers)
        return list(moved)

    def moved_centers(self) -> list[F64]:
        """Blob centres after breathing (where the regional flow is centred)."""
        return self._moved

    def regional(self, p: F64) -> tuple[F64, F64]:
        """Regional velocity ``(N, 3)`` and its divergence ``(N,)`` at ``p``."""
        v = np.zeros_like(p)
        div = np.zeros(p.shape[0])
        for blob, c in zip(self.blobs, self.moved_centers(), strict=True):
            dx, dy, dz = p[:, 0] - c[0], p[:, 1] - c[1], p[:, 2] - c[2]
            ax, ay, az = (1.0 / s**2 for s in blob.sigma_mm)
            qx, qy, qz = dx * dx * ax, dy * dy * ay, dz * dz * az
            phi = blob.potential_mm2 * np.exp(-0.5 * (qx + qy + qz))
            v[:, 0] -= phi * dx * ax
            v[:, 1] -= phi * dy * ay
            v[:, 2] -= phi * dz * az
            div += phi * ((qx - 1.0) * ax + (qy - 1.0) * ay + (qz - 1.0) * az)
        return v, div

    def _near_blobs(self, p: F64, reach: float = 4.0) -> np.ndarray:
        near = np.zeros(p.shape[0], dtype=bool)
        for blob, c in zip(self.blobs, self.moved_centers(), strict=True):
            box = np.ones(p.shape[0], dtype=bool)
            for axis in range(3):
                box &= np.abs(p[:, axis] - c[axis]) < reach * blob.sigma_mm[axis] + 10.0
            near |= box
        return near

    def regional_flow(self, p: F64, *, inverse: bool = False, steps: int = 4) -> tuple[F64, F64]:
        """RK4 flow of the regional field (or its negative) for unit time; also its log-Jacobian."""
        out = np.array(p, dtype=np.float64)
        lj = np.zeros(p.shape[0])
        near = self._near_blobs(out)
        if not near.any():
            return out, lj
        q = out[near]
        acc = np.zeros(q.shape[0])
        sign = -1.0 if inverse else 1.0
        h = 1.0 / steps
        for _ in range(steps):
            v1, d1 = self.regional(q)
            v2, d2 = self.regional(q + 0.5 * h * sign * v1)
            v3, d3 = self.regional(q + 0.5 * h * sign * v2)
            v4, d4 = self.regional(q + h * sign * v3)
            q = q + sign * h / 6.0 * (v1 + 2 * v2 + 2 * v3 + v4)
            acc += sign * h / 6.0 * (d1 + 2 * d2 + 2 * d3 + d4)
        out[near] = q
        lj[near] = acc
        return out, lj

    def blob_weight(self, p: F64) -> F64:
        """``max_b exp(-½ r_b²)`` with ``r_b`` measured after breathing (1 at a centre)."""
        moved, _ = self.breathe(p)
        out = np.zeros(p.shape[0])
        for blob, c in zip(self.blobs, self.moved_centers(), strict=True):
            d = (moved - c) / np.asarray(blob.sigma_mm)
            out = np.maximum(out, np.exp(-0.5 * (d * d).sum(axis=1)))
        return out


def integrate(field: VelocityField, points: F64, *, inverse: bool = False) -> tuple[F64, F64]:
    """Map ``(N, 3)`` points by ``φ = R ∘ Bth`` (or ``φ⁻¹ = Bth⁻¹ ∘ R⁻¹``).

    Returns the mapped points and the log-Jacobian of the map at the starting points.
    """
    if inverse:
        q, lj_r = field.regional_flow(points, inverse=True)
        out, lj_b = field.breathe(q, inverse=True)
        return out, lj_r + lj_b
    q, lj_b = field.breathe(points)
    out, lj_r = field.regional_flow(q)
    return out, lj_b + lj_r


@dataclass
class Deformation:
    """Forward and inverse maps of ``field`` sampled on a lattice that covers ``grid``."""

    field: VelocityField
    grid: Grid
    lattice: CoarseGrid
    forward_disp: F32  # [kc, jc, ic, 3]
    inverse_disp: F32  # [kc, jc, ic, 3]
    log_jac: F32  # [kc, jc, ic]

    @classmethod
    def compute(cls, field: VelocityField, grid: Grid, step_mm: float = 4.0) -> Deformation:
        lattice = CoarseGrid.covering(grid, step_mm, pad_nodes=3)
        nodes = lattice.points_lps_mm().reshape(-1, 3)
        fwd, lj = integrate(field, nodes)
        inv, _ = integrate(field, nodes, inverse=True)
        shape = lattice.shape_kji
        return cls(
            field,
            grid,
            lattice,
            (fwd - nodes).reshape(*shape, 3).astype(np.float32),
            (inv - nodes).reshape(*shape, 3).astype(np.float32),
            lj.reshape(shape).astype(np.float32),
        )

    def _on(self, coarse: F32, k0: int = 0, k1: int | None = None, *, cubic: bool = True) -> F32:
        g = self.grid
        return coarse_to_points(coarse, self.lattice, g.x_mm, g.y_mm, g.z_mm[k0:k1], cubic=cubic)

    def displacement_lps_mm(self) -> F32:
        """``u`` on the baseline grid, ``[k, j, i, 3]`` float32, LPS mm: ``x ↦ x + u(x)``."""
        return self._on(self.forward_disp)

    def log_jacobian(self) -> F32:
        """``log det(I + ∇u)`` on the baseline grid, ``[k, j, i]`` float32."""
        return self._on(self.log_jac)

    def _slabs(self, slab: int) -> Iterator[tuple[int, int]]:
        nk = self.grid.shape_kji[0]
        for k0 in range(0, nk, slab):
            yield k0, min(nk, k0 + slab)

    def warp_to_followup(
        self, arrays: list[tuple[np.ndarray, int, float]], slab: int = 16
    ) -> list[np.ndarray]:
        """Resample baseline arrays onto the follow-up frame: ``F(y) = B(φ⁻¹(y))``.

        ``arrays`` holds ``(array [k, j, i], spline order 0 or 1, fill value outside)``; the
        follow-up shares the baseline grid. Works slab by slab to bound memory; the inverse
        displacement is interpolated linearly (its error, ~0.05 mm, is far below a voxel).
        """
        g = self.grid
        outs = [np.empty_like(a) for a, _, _ in arrays]
        spacing = np.asarray(g.spacing_mm, dtype=np.float32)
        origin = np.asarray(g.origin_lps_mm, dtype=np.float32)
        for k0, k1 in self._slabs(slab):
            disp = self._on(self.inverse_disp, k0, k1, cubic=False)
            zz = g.z_mm[k0:k1].astype(np.float32)[:, None, None]
            yy = g.y_mm.astype(np.float32)[None, :, None]
            xx = g.x_mm.astype(np.float32)[None, None, :]
            coords = np.empty((3, k1 - k0, *g.shape_kji[1:]), dtype=np.float32)
            coords[0] = (zz + disp[..., 2] - origin[2]) / spacing[2]
            coords[1] = (yy + disp[..., 1] - origin[1]) / spacing[1]
            coords[2] = (xx + disp[..., 0] - origin[0]) / spacing[0]
            for out, (array, order, fill) in zip(outs, arrays, strict=True):
                out[k0:k1] = ndi.map_coordinates(
                    array, coords, order=order, mode="constant", cval=fill, prefilter=False
                )
        return outs


def finite_difference_log_jacobian(
    displacement_lps_mm: F32, spacing_mm: tuple[float, float, float]
) -> F32:
    """``log det(I + ∇u)`` by central differences of ``u`` ``[k, j, i, 3]`` (NaN where det ≤ 0)."""
    sx, sy, sz = spacing_mm
    jac = np.empty((*displacement_lps_mm.shape[:3], 3, 3), dtype=np.float64)
    for c in range(3):
        dz, dy, dx = np.gradient(displacement_lps_mm[..., c].astype(np.float64), sz, sy, sx)
        jac[..., c, 0] = dx
        jac[..., c, 1] = dy
        jac[..., c, 2] = dz
    jac += np.eye(3)
    det = np.linalg.det(jac)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(det > 0, np.log(np.where(det > 0, det, 1.0)), np.nan).astype(np.float32)
