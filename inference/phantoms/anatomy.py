"""Analytic chest anatomy: patient parameters, organ geometry and the tissue map.

Frames: LPS millimetres (x towards the patient's left, y towards the back, z towards the head).
The anatomy is described with a depth ``t = apex_z_mm - z`` (mm below the lung apex) so that
profiles read top-down like a radiologist scrolls. Arrays are ``[k, j, i]``.

The renderer paints integer tissue classes (``Tissue``) slab by slab, then tubes (great
vessels, trachea, bronchi, oesophagus, clavicles) by bounding box. The lungs are what is left
of the "lung candidate" region once every mediastinal structure and its fat margin is carved
out, so the lung labels are exact by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from inference.phantoms._grid import F32, F64, Grid, SmoothField, smoothstep

U8 = npt.NDArray[np.uint8]


class Tissue(IntEnum):
    """Tissue classes of the tissue map (``uint8``)."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    CORTEX = 4
    MARROW = 5
    CARTILAGE = 6
    LUNG = 7
    BLOOD = 8
    LIVER = 9
    SPLEEN = 10
    STOMACH = 11
    GAS = 12
    KIDNEY = 13
    DISC = 14
    CORD = 15
    TABLE_SHELL = 16
    TABLE_FOAM = 17
    GLAND = 18
    BOWEL = 19
    AIRWAY_WALL = 20
    ESOPHAGUS = 21


#: Mean attenuation (HU) of each tissue class before texture, blur and noise.
TISSUE_HU = np.zeros(32, dtype=np.float32)
for _tissue, _hu in {
    Tissue.AIR: -1000.0,
    Tissue.SKIN: 30.0,
    Tissue.FAT: -100.0,
    Tissue.MUSCLE: 45.0,
    Tissue.CORTEX: 850.0,
    Tissue.MARROW: 230.0,
    Tissue.CARTILAGE: 110.0,
    Tissue.LUNG: -850.0,
    Tissue.BLOOD: 40.0,
    Tissue.LIVER: 58.0,
    Tissue.SPLEEN: 46.0,
    Tissue.STOMACH: 12.0,
    Tissue.GAS: -1000.0,
    Tissue.KIDNEY: 32.0,
    Tissue.DISC: 85.0,
    Tissue.CORD: 22.0,
    Tissue.TABLE_SHELL: 220.0,
    Tissue.TABLE_FOAM: -900.0,
    Tissue.GLAND: 25.0,
    Tissue.BOWEL: 35.0,
    Tissue.AIRWAY_WALL: 50.0,
    Tissue.ESOPHAGUS: 40.0,
}.items():
    TISSUE_HU[_tissue] = _hu


@dataclass(frozen=True)
class PatientAnatomy:
    """Per-patient shape parameters (mm unless stated). Drawn by ``sample_anatomy``."""

    sex: str
    age_years: float
    height_cm: float
    lung_height_mm: float
    dome_right_depth_mm: float
    dome_left_depth_mm: float
    cavity_half_width_mm: float
    cavity_anterior_mm: float
    cavity_posterior_mm: float
    fat_mm: float
    muscle_mm: float
    breast_mm: float
    heart_scale: float
    rib_pitch_mm: float
    apex_z_mm: float
    center_y_mm: float
    stomach_gas_mm: float
    apex_offset_mm: tuple[float, float] = field(default=(0.0, 0.0))

    @property
    def carina_depth_mm(self) -> float:
        return 0.40 * self.lung_height_mm


def sample_anatomy(rng: np.random.Generator) -> PatientAnatomy:
    """Draw a plausible adult (83 % women, as in the SSc cohorts) and fit it in a 358 mm FOV."""
    sex = "F" if rng.random() < 0.83 else "M"
    age = float(np.clip(rng.normal(53.0, 12.0), 22.0, 82.0))
    height = float(np.clip(rng.normal(162.0 if sex == "F" else 175.0, 6.5), 145.0, 195.0))
    scale = height / 168.0
    lung_height = float(np.clip(245.0 * scale * rng.normal(1.0, 0.035), 215.0, 262.0))
    dome_right = lung_height - float(rng.uniform(42.0, 62.0))
    dome_left = min(dome_right + float(rng.uniform(10.0, 24.0)), lung_height - 28.0)
    half_width = float(np.clip(124.0 * scale**0.8 * rng.normal(1.0, 0.04), 106.0, 138.0))
    anterior = float(np.clip(86.0 * rng.normal(1.0, 0.06), 70.0, 100.0))
    posterior = float(np.clip(98.0 * rng.normal(1.0, 0.05), 84.0, 110.0))
    muscle = float(np.clip(rng.normal(12.0 if sex == "F" else 16.0, 2.0), 7.0, 22.0))
    fat = float(np.exp(rng.normal(np.log(17.0 if sex == "F" else 12.0), 0.35)))
    # keep the body (half width a + ribs 16 + muscle + 1.3 fat + skin) inside a 358 mm FOV
    fat = float(np.clip(fat, 4.0, (174.0 - half_width - 18.0 - muscle) / 1.3))
    breast = float(rng.uniform(12.0, 40.0)) if sex == "F" else 0.0
    return PatientAnatomy(
        sex=sex,
        age_years=age,
        height_cm=height,
        lung_height_mm=lung_height,
        dome_right_depth_mm=dome_right,
        dome_left_depth_mm=dome_left,
        cavity_half_width_mm=half_width,
        cavity_anterior_mm=anterior,
        cavity_posterior_mm=posterior,
        fat_mm=fat,
        muscle_mm=muscle,
        breast_mm=breast,
        heart_scale=float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15)) * scale**0.5,
        rib_pitch_mm=22.5 * scale,
        apex_z_mm=float(rng.uniform(-140.0, -40.0)),
        center_y_mm=float(-18.0 + rng.normal(0.0, 4.0)),
        stomach_gas_mm=float(rng.uniform(4.0, 28.0)),
        apex_offset_mm=(float(rng.normal(0.0, 4.0)), float(rng.normal(0.0, 4.0))),
    )


# --------------------------------------------------------------------------------------------
# Depth profiles (vectorised over t, mm below the apex)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profiles:
    """Per-depth cross-section sizes of the thorax, broadcastable ``[k, 1, 1]`` arrays."""

    a: F64  # inner rib cage half width
    b_ant: F64  # centre to inner anterior wall
    b_post: F64  # centre to inner posterior wall (paravertebral gutters)
    body_a: F64
    body_front: F64
    body_back: F64
    fat_a: F64
    fat_front: F64
    fat_back: F64
    spine_y: F64  # vertebral body centre
    mid_x: F64  # mediastinal midline


def profiles(anat: PatientAnatomy, t: F64) -> Profiles:
    """Cross-section sizes at depths ``t`` (mm below the apex, any shape)."""
    length = anat.lung_height_mm
    u = np.clip(t, 0.0, None) / length
    a = anat.cavity_half_width_mm * (0.60 + 0.40 * smoothstep(u / 0.74))
    b_ant = anat.cavity_anterior_mm * (0.48 + 0.52 * smoothstep(u / 0.72))
    b_post = anat.cavity_posterior_mm * (0.78 + 0.22 * smoothstep(u / 0.5))
    shoulder = 20.0 * (1.0 - smoothstep((t + 5.0) / 75.0))
    wall = 16.0 + anat.muscle_mm
    body_a = a + wall + 1.3 * anat.fat_mm + 2.0 + shoulder
    body_front = b_ant + 10.0 + 0.5 * anat.muscle_mm + 0.8 * anat.fat_mm + 2.0
    body_back = b_post + 36.0 + 0.6 * anat.fat_mm + 2.0
    return Profiles(
        a=a,
        b_ant=b_ant,
        b_post=b_post,
        body_a=body_a,
        body_front=body_front,
        body_back=body_back,
        fat_a=body_a - 2.0 - 1.3 * anat.fat_mm,
        fat_front=body_front - 2.0 - 0.8 * anat.fat_mm,
        fat_back=body_back - 2.0 - 0.6 * anat.fat_mm,
        spine_y=anat.center_y_mm + b_post - 36.0,
        mid_x=4.0 * smoothstep(u),
    )


def dome_depth(anat: PatientAnatomy, x: F64 | F32, y: F64 | F32) -> F64:
    """Depth (mm below the apex) of the diaphragm surface under ``(x, y)``; the lungs lie above."""
    a = anat.cavity_half_width_mm
    yc = anat.center_y_mm
    y_peak = yc - 0.15 * anat.cavity_anterior_mm
    length = anat.lung_height_mm
    post = np.clip(y - y_peak, 0.0, None) / (
        anat.cavity_posterior_mm + 0.15 * anat.cavity_anterior_mm
    )
    ant = np.clip(y_peak - y, 0.0, None) / anat.cavity_anterior_mm

    def side(peak_depth: float, x_peak: float) -> F64:
        lateral = ((x - x_peak) / (0.55 * a)) ** 2
        return np.asarray(
            peak_depth + 36.0 * lateral + (length - peak_depth) * post**2 + 28.0 * ant**2
        )

    right = side(anat.dome_right_depth_mm, -0.45 * a)
    left = side(anat.dome_left_depth_mm, 0.45 * a)
    w = 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64) / 12.0))
    # the central tendon under the heart is about as high as the right dome
    central = (
        anat.dome_right_depth_mm
        + 6.0
        + 0.012 * np.asarray(x, dtype=np.float64) ** 2
        + (length - anat.dome_right_depth_mm) * post**2
    )
    return np.asarray(np.minimum((1.0 - w) * right + w * left, central))


# --------------------------------------------------------------------------------------------
# Tubes: great vessels, airways, oesophagus, clavicles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tube:
    """A polyline tube in LPS mm with per-node radii (mm)."""

    name: str
    points_lps_mm: F64  # (n, 3)
    radii_mm: F64  # (n,)
    tissue: int
    paint_over: tuple[int, ...]
    margin_mm: float = 3.0  # fat kept between the tube and the lung
    wall_mm: float = 0.0
    wall_tissue: int = int(Tissue.AIRWAY_WALL)
    lumen_only_inside: bool = False


def _p(anat: PatientAnatomy, x: float, y: float, t: float) -> tuple[float, float, float]:
    return (x, y, anat.apex_z_mm - t)


def mediastinal_tubes(anat: PatientAnatomy) -> list[Tube]:
    """Great vessels, trachea and main bronchi, oesophagus, IVC, pulmonary veins, clavicles."""
    s = anat.heart_scale
    yc = anat.center_y_mm
    tc = anat.carina_depth_mm
    prof = profiles(anat, np.array([0.0, tc, anat.dome_left_depth_mm]))
    spine_top, spine_car, spine_dome = (float(v) for v in prof.spine_y)
    tr_y = spine_car - 42.0
    tdr, tdl = anat.dome_right_depth_mm, anat.dome_left_depth_mm
    length = anat.lung_height_mm
    soft = (int(Tissue.LUNG), int(Tissue.FAT), int(Tissue.BLOOD), int(Tissue.MUSCLE))
    lumen_r = 8.0 if anat.sex == "F" else 9.5
    age_f = 1.0 + 0.006 * (anat.age_years - 50.0)

    def tube(
        name: str,
        pts: list[tuple[float, float, float]],
        radii: list[float],
        tissue: int,
        **kw: object,
    ) -> Tube:
        arr = np.array([_p(anat, *q) for q in pts], dtype=np.float64)
        return Tube(name, arr, np.asarray(radii, dtype=np.float64), tissue, **kw)  # type: ignore[arg-type]

    blood = int(Tissue.BLOOD)
    tubes = [
        tube(
            "trachea",
            [(0.0, spine_top - 44.0, -60.0), (0.5, tr_y - 2.0, tc - 40.0), (1.5, tr_y, tc)],
            [lumen_r, lumen_r, lumen_r * 0.95],
            int(Tissue.GAS),
            paint_over=(*soft, int(Tissue.ESOPHAGUS)),
            wall_mm=2.0,
            margin_mm=4.0,
        ),
        tube(
            "right_main_bronchus",
            [(1.5, tr_y, tc), (-30.0, tr_y + 8.0, tc + 18.0), (-50.0, tr_y + 16.0, tc + 30.0)],
            [lumen_r * 0.8, 6.5, 5.5],
            int(Tissue.GAS),
            paint_over=soft,
            wall_mm=1.8,
            margin_mm=3.0,
        ),
        tube(
            "left_main_bronchus",
            [(1.5, tr_y, tc), (30.0, tr_y + 10.0, tc + 28.0), (54.0, tr_y + 20.0, tc + 44.0)],
            [lumen_r * 0.75, 5.8, 5.0],
            int(Tissue.GAS),
            paint_over=soft,
            wall_mm=1.8,
            margin_mm=3.0,
        ),
        tube(
            "aorta",
            [
                (6.0, yc - 2.0, tdr - 58.0 * s),
                (-12.0, yc - 22.0, tc + 5.0),
                (-10.0, yc - 26.0, tc - 22.0),
                (-3.0, tr_y - 12.0, tc - 36.0),
                (12.0, tr_y + 4.0, tc - 36.0),
                (21.0, spine_car - 24.0, tc - 20.0),
                (23.0, spine_car - 20.0, tc + 20.0),
                (18.0, spine_dome - 20.0, tdl),
                (8.0, spine_dome - 22.0, length + 80.0),
            ],
            [
                15.0 * age_f,
                15.5 * age_f,
                14.5 * age_f,
                13.0 * age_f,
                12.5 * age_f,
                12.0,
                11.5,
                11.0,
                10.5,
            ],
            blood,
            paint_over=soft,
            margin_mm=4.0,
        ),
        tube(
            "brachiocephalic_artery",
            [
                (-4.0, tr_y - 14.0, tc - 40.0),
                (-14.0, tr_y - 16.0, 10.0),
                (-22.0, tr_y - 12.0, -60.0),
            ],
            [6.5, 6.0, 5.5],
            blood,
            paint_over=soft,
        ),
        tube(
            "left_carotid",
            [(5.0, tr_y - 8.0, tc - 42.0), (10.0, tr_y - 10.0, 0.0), (14.0, tr_y - 8.0, -60.0)],
            [4.5, 4.0, 4.0],
            blood,
            paint_over=soft,
        ),
        tube(
            "left_subclavian",
            [(12.0, tr_y + 4.0, tc - 40.0), (22.0, tr_y + 6.0, 0.0), (45.0, tr_y + 2.0, -45.0)],
            [5.5, 5.0, 5.0],
            blood,
            paint_over=soft,
        ),
        tube(
            "pulmonary_trunk",
            [
                (14.0, yc - 40.0 * s, tdr - 48.0 * s),
                (18.0, yc - 24.0, tc + 22.0),
                (12.0, yc - 6.0, tc + 12.0),
            ],
            [13.0, 13.5, 12.0],
            blood,
            paint_over=soft,
        ),
        tube(
            "left_pulmonary_artery",
            [
                (12.0, yc - 6.0, tc + 12.0),
                (34.0, yc + 8.0, tc + 6.0),
                (56.0, tr_y + 28.0, tc + 20.0),
            ],
            [11.0, 10.0, 9.0],
            blood,
            paint_over=soft,
        ),
        tube(
            "right_pulmonary_artery",
            [
                (12.0, yc - 6.0, tc + 12.0),
                (-12.0, yc + 0.0, tc + 16.0),
                (-34.0, tr_y + 6.0, tc + 24.0),
                (-52.0, tr_y + 10.0, tc + 32.0),
            ],
            [11.0, 10.0, 9.5, 9.0],
            blood,
            paint_over=soft,
        ),
        tube(
            "svc",
            [(-28.0, yc - 30.0, -10.0), (-29.0, yc - 24.0, tc), (-26.0, yc - 18.0, tdr - 62.0 * s)],
            [8.5, 9.0, 9.0],
            blood,
            paint_over=soft,
        ),
        tube(
            "left_brachiocephalic_vein",
            [(48.0, tr_y - 20.0, -8.0), (20.0, yc - 42.0, 18.0), (-24.0, yc - 32.0, 26.0)],
            [6.0, 6.0, 6.5],
            blood,
            paint_over=soft,
        ),
        tube(
            "right_brachiocephalic_vein",
            [(-42.0, tr_y - 16.0, -50.0), (-34.0, yc - 30.0, -10.0)],
            [7.0, 7.5],
            blood,
            paint_over=soft,
        ),
        tube(
            "oesophagus",
            [
                (4.0, spine_top - 24.0, -60.0),
                (6.0, spine_car - 26.0, tc + 20.0),
                (10.0, spine_dome - 32.0, tdl - 10.0),
                (34.0, yc + 8.0, tdl + 24.0),
            ],
            [7.5, 8.0, 8.5, 9.0],
            int(Tissue.ESOPHAGUS),
            paint_over=soft,
            margin_mm=3.0,
        ),
        tube(
            "ivc",
            [
                (-16.0, spine_dome - 28.0, length + 90.0),
                (-14.0, yc + 6.0, tdr + 10.0),
                (-12.0, yc + 0.0, tdr - 8.0),
            ],
            [11.0, 12.0, 13.0],
            blood,
            paint_over=(*soft, int(Tissue.LIVER)),
            margin_mm=2.0,
        ),
        tube(
            "right_pulmonary_vein",
            [(-8.0, yc + 20.0, tc + 58.0), (-36.0, yc + 22.0, tc + 60.0)],
            [8.0, 6.5],
            blood,
            paint_over=soft,
        ),
        tube(
            "left_pulmonary_vein",
            [(26.0, yc + 22.0, tc + 62.0), (44.0, yc + 24.0, tc + 66.0)],
            [8.0, 6.5],
            blood,
            paint_over=soft,
        ),
    ]
    for side in (-1.0, 1.0):
        tubes.append(
            tube(
                "clavicle",
                [
                    (side * 22.0, yc - anat.cavity_anterior_mm * 0.5 - 18.0, -22.0),
                    (side * 70.0, yc - anat.cavity_anterior_mm * 0.5 - 22.0, -32.0),
                    (side * 135.0, yc - 10.0, -45.0),
                ],
                [7.0, 6.0, 6.5],
                int(Tissue.MARROW),
                paint_over=(
                    int(Tissue.FAT),
                    int(Tissue.MUSCLE),
                    int(Tissue.SKIN),
                    int(Tissue.LUNG),
                ),
                wall_mm=1.8,
                wall_tissue=int(Tissue.CORTEX),
                margin_mm=2.0,
            )
        )
    return tubes


def hilum_points(anat: PatientAnatomy) -> dict[str, F64]:
    """LPS mm roots of the intrapulmonary trees (end of bronchi, pulmonary arteries and veins)."""
    tubes = {t.name: t for t in mediastinal_tubes(anat)}
    return {
        "right_airway": tubes["right_main_bronchus"].points_lps_mm[-1],
        "left_airway": tubes["left_main_bronchus"].points_lps_mm[-1],
        "right_artery": tubes["right_pulmonary_artery"].points_lps_mm[-1],
        "left_artery": tubes["left_pulmonary_artery"].points_lps_mm[-1],
        "right_vein": tubes["right_pulmonary_vein"].points_lps_mm[-1],
        "left_vein": tubes["left_pulmonary_vein"].points_lps_mm[-1],
    }


def _segment_distance(px: F32, py: F32, pz: F32, a: F64, b: F64) -> tuple[F32, F32]:
    """Distance from points to segment ``a→b`` and the clamped parameter along it."""
    d = b - a
    dd = float(d @ d) or 1e-9
    wx, wy, wz = px - np.float32(a[0]), py - np.float32(a[1]), pz - np.float32(a[2])
    s = np.clip((wx * d[0] + wy * d[1] + wz * d[2]) / dd, 0.0, 1.0).astype(np.float32)
    ex, ey, ez = wx - s * d[0], wy - s * d[1], wz - s * d[2]
    return np.sqrt(ex * ex + ey * ey + ez * ez).astype(np.float32), s


def paint_tubes(tissue: U8, grid: Grid, tubes: list[Tube]) -> None:
    """Paint ``tubes`` into ``tissue`` in place, bounding box by bounding box.

    Within ``radius + margin`` lung becomes fat (so a fat plane separates lung and vessel);
    within ``radius + wall`` the wall tissue is painted, within ``radius`` the tube tissue,
    each only over the classes listed in ``paint_over``.
    """
    sx, sy, sz = grid.spacing_mm
    ox, oy, oz = grid.origin_lps_mm
    nk, nj, ni = grid.shape_kji
    lung, fat = np.uint8(Tissue.LUNG), np.uint8(Tissue.FAT)
    for tube in tubes:
        over = np.array(sorted(set(tube.paint_over)), dtype=np.uint8)
        for n in range(len(tube.points_lps_mm) - 1):
            a, b = tube.points_lps_mm[n], tube.points_lps_mm[n + 1]
            ra, rb = tube.radii_mm[n], tube.radii_mm[n + 1]
            reach = max(ra, rb) + max(tube.margin_mm, tube.wall_mm) + 1.0
            lo = np.minimum(a, b) - reach
            hi = np.maximum(a, b) + reach
            i0, i1 = (
                max(0, int(np.floor((lo[0] - ox) / sx))),
                min(ni, int(np.ceil((hi[0] - ox) / sx)) + 1),
            )
            j0, j1 = (
                max(0, int(np.floor((lo[1] - oy) / sy))),
                min(nj, int(np.ceil((hi[1] - oy) / sy)) + 1),
            )
            k0, k1 = (
                max(0, int(np.floor((lo[2] - oz) / sz))),
                min(nk, int(np.ceil((hi[2] - oz) / sz)) + 1),
            )
            if i0 >= i1 or j0 >= j1 or k0 >= k1:
                continue
            px = (ox + np.arange(i0, i1, dtype=np.float32) * sx)[None, None, :]
            py = (oy + np.arange(j0, j1, dtype=np.float32) * sy)[None, :, None]
            pz = (oz + np.arange(k0, k1, dtype=np.float32) * sz)[:, None, None]
            dist, s = _segment_distance(px, py, pz, a, b)
            radius = ra + s * (rb - ra)
            block = tissue[k0:k1, j0:j1, i0:i1]
            block[(dist < radius + tube.margin_mm) & (block == lung)] = fat
            paintable = np.isin(block, over)
            if tube.wall_mm > 0:
                block[(dist < radius + tube.wall_mm) & paintable] = np.uint8(tube.wall_tissue)
                paintable |= block == np.uint8(tube.wall_tissue)
            block[(dist < radius) & paintable] = np.uint8(tube.tissue)


# --------------------------------------------------------------------------------------------
# The slab renderer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeartShape:
    center_lps_mm: F64
    axes: F64  # (3, 3) rows: unit axes in LPS
    semi_mm: F64  # (3,)


def heart_shape(anat: PatientAnatomy) -> HeartShape:
    s = anat.heart_scale
    long_axis = np.array([0.78, -0.55, -0.30])  # towards left, anterior, inferior (LPS z up)
    long_axis /= np.linalg.norm(long_axis)
    second = np.cross(long_axis, np.array([0.0, 0.0, 1.0]))
    second /= np.linalg.norm(second)
    third = np.cross(long_axis, second)
    center = np.array(
        [
            24.0 * s,
            anat.center_y_mm - 0.18 * anat.cavity_anterior_mm,
            anat.apex_z_mm - (anat.dome_right_depth_mm - 36.0 * s),
        ]
    )
    return HeartShape(
        center, np.stack([long_axis, second, third]), np.array([64.0, 45.0, 38.0]) * s
    )


def _ellipsoid_r2(x: F32, y: F32, z: F32, center: F64, semi: F64, axes: F64 | None = None) -> F32:
    dx, dy, dz = x - np.float32(center[0]), y - np.float32(center[1]), z - np.float32(center[2])
    if axes is None:
        return np.asarray(
            (dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2, dtype=np.float32
        )
    total: F32 | None = None
    for n in range(3):
        u, v, w = (np.float32(c) for c in axes[n])
        proj = (dx * u + dy * v + dz * w) / np.float32(semi[n])
        total = proj * proj if total is None else total + proj * proj
    assert total is not None
    return total


@dataclass
class AnatomyMaps:
    """Outputs of ``render_anatomy`` on one grid."""

    tissue: U8  # Tissue classes [k, j, i]
    lungs_lr: U8  # 0 outside, 1 right lung, 2 left lung
    subpleural_mm: F32  # distance to the costal/diaphragmatic pleura (valid inside the lungs)
    posterior_frac: F32  # [k, j, 1]: 0 anterior .. 1 posterior chest wall
    basal_frac: F32  # [k, 1, 1]: 0 apex .. 1 deepest recess
    base_hu: F32  # sharp HU of every tissue with texture; lungs: parenchyma with gradient


def render_anatomy(
    anat: PatientAnatomy, grid: Grid, rng: np.random.Generator, slab: int = 8
) -> AnatomyMaps:
    """Render the tissue map and lung labels of ``anat`` on ``grid``.

    Returns ``AnatomyMaps`` with arrays ``[k, j, i]``. Deterministic given ``rng``.
    """
    nk, nj, ni = grid.shape_kji
    x = grid.x_mm.astype(np.float32)[None, None, :]
    y = grid.y_mm.astype(np.float32)[None, :, None]
    tissue = np.zeros(grid.shape_kji, dtype=np.uint8)
    lr = np.zeros(grid.shape_kji, dtype=np.uint8)
    subpleural = np.zeros(grid.shape_kji, dtype=np.float32)
    posterior = np.zeros((nk, nj, 1), dtype=np.float32)
    basal = np.zeros((nk, 1, 1), dtype=np.float32)
    mottle = SmoothField.draw(rng, grid, 5.0)
    gland = SmoothField.draw(rng, grid, 4.0) if anat.breast_mm > 0 else mottle
    heart = heart_shape(anat)
    length = anat.lung_height_mm
    tc = anat.carina_depth_mm
    yc = np.float32(anat.center_y_mm)

    for k0 in range(0, nk, slab):
        k1 = min(nk, k0 + slab)
        z = grid.z_mm[k0:k1].astype(np.float32)[:, None, None]
        t = (anat.apex_z_mm - z).astype(np.float64)
        pr = profiles(anat, t)
        a, b_ant, b_post = (v.astype(np.float32) for v in (pr.a, pr.b_ant, pr.b_post))
        dy = y - yc
        ant = dy < 0
        b = np.where(ant, b_ant, b_post)
        shape = (k1 - k0, nj, ni)
        tis = np.zeros(shape, dtype=np.uint8)
        tz = t.astype(np.float32)

        # patient table: carbon shells around a foam core, under the flattest part of the back
        table_top = np.float32(
            anat.center_y_mm + anat.cavity_posterior_mm + 36.0 + 0.6 * anat.fat_mm + 3.0
        )
        ty = y - table_top + 0.0006 * x * x
        in_x = np.abs(x) < 225.0
        tis[np.broadcast_to((ty >= 0) & (ty < 44) & in_x, shape)] = Tissue.TABLE_FOAM
        tis[
            np.broadcast_to((((ty >= 0) & (ty < 2.5)) | ((ty >= 41.5) & (ty < 44))) & in_x, shape)
        ] = Tissue.TABLE_SHELL

        # body outline: ellipse in front, flatter (4th power) at the back against the table
        def inside(
            half_x: F32, front: F32, backv: F32, xx: F32 = x, yy: F32 = dy
        ) -> npt.NDArray[np.bool_]:
            qx = (xx / half_x) ** 2
            qf = (yy / front) ** 2
            qb = (yy / backv) ** 2
            return np.where(yy < 0, qx + qf, qx * qx + qb * qb) < 1.0

        body_a, body_f, body_b = (
            v.astype(np.float32) for v in (pr.body_a, pr.body_front, pr.body_back)
        )
        body = inside(body_a, body_f, body_b)
        skin_in = inside(body_a - 2.0, body_f - 2.0, body_b - 2.0)
        glandular = np.zeros(shape, dtype=bool)
        # breasts (supine: flattened, falling laterally), with their own 2 mm of skin
        if anat.breast_mm > 0:
            gland_slab = gland.slab(k0, k1)
            tb = 0.56 * length
            w_t = np.exp(-0.5 * ((tz - tb) / 38.0) ** 2)
            bx = 0.45 * (anat.cavity_half_width_mm + 40.0)
            surface = -body_f * np.sqrt(np.clip(1.0 - (x / body_a) ** 2, 0.0, None))
            depth = np.float32(anat.breast_mm + 8.0)
            for side in (-1.0, 1.0):
                ex = (x - np.float32(side * bx)) / np.float32(62.0)
                ey = (dy - surface - 8.0) / depth
                r_b = ex * ex + ey * ey
                inner = (ex * 62.0 / 60.0) ** 2 + (ey * depth / (depth - 2.0)) ** 2
                body |= (r_b < w_t) & ant
                skin_in |= (inner < w_t) & ant
                glandular |= (gland_slab > 0.35) & (r_b < 0.45 * w_t) & ant
        tis[body & ~skin_in] = Tissue.SKIN
        fat_in = inside(
            pr.fat_a.astype(np.float32),
            pr.fat_front.astype(np.float32),
            pr.fat_back.astype(np.float32),
        )
        subcut = skin_in & ~fat_in
        tis[subcut] = Tissue.FAT
        tis[subcut & glandular] = Tissue.GLAND
        tis[fat_in & skin_in] = Tissue.MUSCLE

        # inner rib cage (cavity): an ellipse in front, a squarer superellipse (power 4) at the
        # back; first-order distance to its wall, delta = (F - 1) / |grad F|
        qx = x / a
        qy = dy / b
        qx2, qy2 = qx * qx, qy * qy
        r2 = np.sqrt(qx2 * qx2 + qy2 * qy2)
        r_back = np.sqrt(r2)
        r_front = np.sqrt(qx2 + qy2)
        r = np.where(ant, r_front, r_back)
        r3 = np.maximum(r, 1e-3) ** 3
        gx = np.where(ant, qx / np.maximum(r, 1e-3), qx2 * qx / r3) / a
        gy = np.where(ant, qy / np.maximum(r, 1e-3), qy2 * qy / r3) / b
        delta = (r - 1.0) / np.maximum(np.sqrt(gx * gx + gy * gy), 1e-6)  # mm outside (>0) the cage
        cavity = delta < 0
        tis[cavity] = Tissue.FAT
        # thoracic inlet above the apices: neck muscles and vessels with fat planes
        inlet = cavity & (tz < 12.0) & (mottle.slab(k0, k1) > -0.4)
        tis[inlet] = Tissue.MUSCLE

        # ribs, costal cartilage, sternum, scapulae in the chest wall band
        band = (delta > 0.5) & (delta < 28.0) & (tz > -40.0) & (tz < length + 40.0) & skin_in
        kk, jj, ii = np.nonzero(band)
        if kk.size:
            bx_ = x[0, 0, ii]
            by_ = dy[0, jj, 0]
            bt = tz[kk, 0, 0]
            bd = delta[kk, jj, ii]
            phi = np.arctan2(np.abs(bx_), by_)  # 0 at the back, pi at the front
            drop = 2.7 * anat.rib_pitch_mm
            m = (bt + 18.0 - drop * 0.5 * (1.0 - np.cos(phi))) / anat.rib_pitch_mm
            n = np.round(m)
            v = (m - n) * anat.rib_pitch_mm
            h_v = 4.5 + 2.5 * np.sin(phi)
            rho = np.sqrt((v / h_v) ** 2 + ((bd - 7.0) / 4.2) ** 2)
            end = np.where(n <= 6, 0.80 * np.pi, np.where(n <= 9, 0.70 * np.pi, 0.52 * np.pi))
            valid = (n >= 0) & (n <= 11) & (np.abs(bx_) > 16.0)
            rib = valid & (rho < 1.0) & (phi < end)
            cart = (
                valid
                & (rho < 0.9)
                & (phi >= end)
                & (phi < np.where(n <= 9, 0.95 * np.pi, 0.8 * np.pi))
            )
            vals = tis[kk, jj, ii]
            vals = np.where(rib, np.where(rho > 0.62, Tissue.CORTEX, Tissue.MARROW), vals)
            vals = np.where(cart & ~rib, Tissue.CARTILAGE, vals)
            # scapulae: thin plates behind the ribs in the upper half
            c_s = 24.0 + 0.6 * anat.muscle_mm
            lat = 0.42 * np.pi - 0.12 * np.pi * np.clip(bt / (0.45 * length), 0.0, 1.0)
            scap = (
                (np.abs(bd - c_s) < 2.2)
                & (phi > 0.20 * np.pi)
                & (phi < lat)
                & (bt > -30.0)
                & (bt < 0.45 * length)
            )
            vals = np.where(scap, Tissue.CORTEX, vals)
            tis[kk, jj, ii] = vals
        # sternum
        front_in = -b_ant
        st = (
            (np.abs(x) < np.float32(14.0) + 10.0 * (tz < 40))
            & (dy > front_in - 12.0)
            & (dy < front_in - 1.0)
        )
        st &= (tz > -8.0) & (tz < anat.dome_right_depth_mm + 12.0)
        st_core = (
            st
            & (np.abs(x) < np.float32(12.5) + 10.0 * (tz < 40))
            & (dy > front_in - 10.5)
            & (dy < front_in - 2.5)
        )
        tis[st] = Tissue.CORTEX
        tis[st_core] = Tissue.MARROW

        # diaphragm and upper abdomen
        td = dome_depth(anat, x, y).astype(np.float32)
        thorax = cavity & (tz < td)
        abdomen = cavity & (tz >= td + 4.0)
        tis[cavity & (tz >= td) & (tz < td + 4.0)] = Tissue.MUSCLE
        if abdomen.any():
            tis[abdomen] = np.where(mottle.slab(k0, k1)[abdomen] > 0.2, Tissue.BOWEL, Tissue.FAT)
            liver = abdomen & (x < np.float32(30.0) - 0.45 * (tz - anat.dome_right_depth_mm))
            tis[liver] = Tissue.LIVER
            spleen_c = np.array(
                [
                    0.72 * anat.cavity_half_width_mm,
                    anat.center_y_mm + 0.55 * anat.cavity_posterior_mm,
                    anat.apex_z_mm - anat.dome_left_depth_mm - 48.0,
                ]
            )
            spleen = abdomen & (
                _ellipsoid_r2(x, y, z, spleen_c, np.array([26.0, 48.0, 55.0])) < 1.0
            )
            tis[spleen] = Tissue.SPLEEN
            st_c = np.array(
                [
                    0.40 * anat.cavity_half_width_mm,
                    anat.center_y_mm - 0.25 * anat.cavity_anterior_mm,
                    anat.apex_z_mm - anat.dome_left_depth_mm - 42.0,
                ]
            )
            st_r2 = _ellipsoid_r2(x, y, z, st_c, np.array([46.0, 40.0, 50.0]))
            stomach = abdomen & (st_r2 < 1.0) & ~spleen
            gas_level = np.float32(anat.dome_left_depth_mm + 4.0 + anat.stomach_gas_mm)
            tis[stomach] = Tissue.MUSCLE
            lumen = stomach & (st_r2 < 0.82)
            tis[lumen] = np.where(
                np.broadcast_to(tz, shape)[lumen] < gas_level, Tissue.GAS, Tissue.STOMACH
            )
            for side, dt in ((-1.0, 12.0), (1.0, 0.0)):
                kc = np.array(
                    [
                        side * 62.0,
                        float(pr.spine_y.ravel()[0]) + 4.0,
                        anat.apex_z_mm - length - 55.0 - dt,
                    ]
                )
                kidney = abdomen & (_ellipsoid_r2(x, y, z, kc, np.array([28.0, 22.0, 55.0])) < 1.0)
                tis[kidney] = Tissue.KIDNEY

        # lung candidate: thorax minus mediastinum, apex caps per side
        mid = pr.mid_x.astype(np.float32)
        apex_cap = np.zeros(shape, dtype=bool)
        for side in (-1.0, 1.0):
            ax_ = np.float32(
                side * 0.40 * anat.cavity_half_width_mm + anat.apex_offset_mm[0] * side
            )
            ay_ = yc + np.float32(0.30 * anat.cavity_posterior_mm + anat.apex_offset_mm[1])
            # apical dome: the lung reaches depth h (rho / R)^1.6 at distance rho from its axis
            rho = np.sqrt((x - ax_) ** 2 + ((y - ay_) / 1.15) ** 2) / np.float32(78.0)
            dome = tz >= np.float32(80.0) * np.minimum(rho, 1.0) ** 1.6
            apex_cap |= dome & ((x - mid) * side > 0)
        spine_y = pr.spine_y.astype(np.float32)
        vb = ((x / 24.0) ** 2 + ((y - spine_y) / 20.0) ** 2 < 1.0) | (
            (np.abs(x) < 19.0) & (y > spine_y)
        )
        band_half = np.float32(2.2) + 5.0 * (dy < -0.3 * b_ant) * (tz < tc)
        hr2 = _ellipsoid_r2(x, y, z, heart.center_lps_mm, heart.semi_mm + 6.0, heart.axes)
        lungc = (
            thorax & apex_cap & (np.abs(x - mid) > band_half) & ~vb & (hr2 >= 1.0) & (delta < -1.0)
        )
        lungc &= tis == Tissue.FAT
        tis[lungc] = Tissue.LUNG

        # heart (unenhanced: blood and myocardium alike), epicardial fat around it
        hr2_in = _ellipsoid_r2(x, y, z, heart.center_lps_mm, heart.semi_mm, heart.axes)
        tis[(hr2_in < 1.0) & thorax] = Tissue.BLOOD

        # spine: vertebral bodies with discs and end plates, canal, posterior arch
        vpitch = anat.rib_pitch_mm
        phase = np.mod((tz + 18.0 - 0.35 * vpitch) / vpitch, 1.0)
        # vertebral bodies grow from the upper to the lower thoracic spine
        vscale = (anat.rib_pitch_mm / 22.5) * (0.78 + 0.22 * smoothstep(t / length)).astype(
            np.float32
        )
        sx_, sy_ = x / (19.0 * vscale), (y - spine_y) / (15.0 * vscale)
        vr = np.sqrt(sx_ * sx_ + sy_ * sy_)
        body_v = (vr < 1.0) & skin_in
        disc = phase < 0.2
        plate = ((phase >= 0.2) & (phase < 0.25)) | (phase > 0.96)
        tis[body_v] = np.where(
            np.broadcast_to(disc, shape)[body_v],
            Tissue.DISC,
            np.where(
                (vr[body_v] > 0.88) | np.broadcast_to(plate, shape)[body_v],
                Tissue.CORTEX,
                Tissue.MARROW,
            ),
        )
        canal_y = spine_y + 24.0
        cr = np.sqrt(x * x + (y - canal_y) ** 2)
        arch = (cr < 13.5) & (y > canal_y - 10.0) & skin_in
        spinous = (
            (np.abs(x) < 3.0 + 0.1 * (canal_y + 30.0 - y))
            & (y > canal_y)
            & (y < canal_y + 30.0)
            & (phase > 0.3)
            & skin_in
        )
        ax_abs = np.abs(x)
        transverse = (
            (ax_abs > 6.0)
            & (ax_abs < 26.0)
            & (np.abs(y - canal_y + 4.0 - 0.45 * (ax_abs - 6.0)) < 3.5)
        )
        transverse &= (phase > 0.45) & (phase < 0.85) & skin_in
        bone = arch | spinous | transverse
        tis[bone & ~body_v] = Tissue.CORTEX
        tis[(cr < 8.0) & skin_in] = Tissue.CORD
        tis[(arch | transverse) & (cr >= 9.5) & (cr < 12.0) & ~body_v] = Tissue.MARROW

        tissue[k0:k1] = tis
        lung_here = tis == Tissue.LUNG
        lr[k0:k1] = np.where(lung_here, np.where(x < mid, 1, 2), 0).astype(np.uint8)
        d_dia = (td - tz) * 0.85
        subpleural[k0:k1] = np.where(lung_here, np.minimum(-delta, d_dia), 0.0).astype(np.float32)
        yfrac = (dy + b_ant) / (b_ant + b_post)
        posterior[k0:k1] = np.clip(yfrac, 0.0, 1.0)
        basal[k0:k1] = np.clip(tz / np.float32(length), 0.0, 1.2)

    paint_tubes(tissue, grid, mediastinal_tubes(anat))
    lung = tissue == Tissue.LUNG
    lr[~lung] = 0
    _keep_largest_per_side(lr)
    tissue[(tissue == Tissue.LUNG) & (lr == 0)] = Tissue.FAT
    base = np.empty(grid.shape_kji, dtype=np.float32)
    texture_gain = np.zeros(32, dtype=np.float32)
    texture_gain[[Tissue.FAT, Tissue.MUSCLE, Tissue.MARROW, Tissue.LIVER]] = (8.0, 5.0, 60.0, 4.0)
    for k0 in range(0, nk, slab):
        k1 = min(nk, k0 + slab)
        tis = tissue[k0:k1]
        hu = TISSUE_HU[tis] + texture_gain[tis] * mottle.slab(k0, k1)
        if anat.breast_mm > 0:
            hu += np.where(tis == Tissue.GLAND, 15.0 * gland.slab(k0, k1), 0.0).astype(np.float32)
        # lung parenchyma: dependent (posterior) density gradient, slightly denser bases
        lung_hu = -872.0 + 80.0 * posterior[k0:k1] ** 1.6 + 14.0 * np.clip(basal[k0:k1], 0.0, 1.0)
        base[k0:k1] = np.where(lr[k0:k1] > 0, lung_hu, hu)
    return AnatomyMaps(tissue, lr, subpleural, posterior, basal, base)


def _keep_largest_per_side(lr: U8) -> None:
    """Drop lung islands: keep the largest 6-connected component of each lung (in place)."""
    where = np.nonzero(lr.any(axis=(1, 2)))[0]
    if where.size == 0:
        return
    rows = np.nonzero(lr.any(axis=(0, 2)))[0]
    cols = np.nonzero(lr.any(axis=(0, 1)))[0]
    box = (
        slice(where[0], where[-1] + 1),
        slice(rows[0], rows[-1] + 1),
        slice(cols[0], cols[-1] + 1),
    )
    sub = lr[box]
    labels, count = ndi.label(sub > 0)  # the two lungs never touch: one labelling serves both
    if count <= 2:
        return
    sizes = np.bincount(labels.ravel())
    sides = np.zeros(count + 1, dtype=np.uint8)
    sides[labels[sub > 0]] = sub[sub > 0]
    keep = np.zeros(count + 1, dtype=bool)
    for side in (1, 2):
        candidates = np.nonzero(sides == side)[0]
        if candidates.size:
            keep[candidates[np.argmax(sizes[candidates])]] = True
    sub[~keep[labels]] = 0
