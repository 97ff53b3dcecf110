"""Synthetic chest CTs with SSc-ILD and exact ground truth: single scans and longitudinal pairs.

Pipeline per scan: patient parameters (seed) → tissue map on the grid (``anatomy``) → vessel and
airway trees (``trees``) → ILD at the requested extent (``disease``) → sharp HU image → scanner
blur and correlated noise (``imaging``). A follow-up is the same patient rendered with its own
ILD extent in the baseline frame, then warped by a known diffeomorphism (``deformation``), with
fresh noise. Arrays are ``[k, j, i]``; geometry in LPS mm (``inference.volume.Volume``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from inference.phantoms._grid import F32, F64, Grid, SmoothField, smoothstep
from inference.phantoms.anatomy import (
    AnatomyMaps,
    PatientAnatomy,
    hilum_points,
    render_anatomy,
    sample_anatomy,
)
from inference.phantoms.deformation import Deformation, ShrinkBlob, VelocityField
from inference.phantoms.disease import (
    DiseaseFields,
    DiseasePattern,
    disease_fields,
    paint_ild,
    propensity,
    sample_pattern,
    threshold_for_extent,
)
from inference.phantoms.imaging import ScannerModel, acquire, sample_scanner
from inference.phantoms.pft import (
    PftResult,
    draw_latent,
    followup_percent,
    functional_worsening,
    percent_predicted,
    predicted_values,
)
from inference.phantoms.trees import (
    TubePoints,
    bronchial_tree,
    grow_tree,
    sample_targets,
    sample_tubes,
    splat_tubes,
)
from inference.volume import Volume

PHANTOM_VERSION = "1.0.0"
DEFAULT_SHAPE_KJI: tuple[int, int, int] = (128, 256, 256)
DEFAULT_FOV_MM: tuple[float, float, float] = (358.4, 358.4, 320.0)
MORPHOLOGIC_CALLS = ("improved", "stable", "worse")
PROGRESSIONS = {
    "worse": "worse",
    "progression": "worse",
    "stable": "stable",
    "improved": "improved",
    "regression": "improved",
}
MIN_LUNG_VOXELS = 50
EXTENT_CALL_PCT = 1.0  # change in extent (points) that makes a morphologic call
SHRINK_CALL_LOG_JAC = -0.06  # regional shrinkage that alone makes a "worse" call

B = npt.NDArray[np.bool_]
U8 = npt.NDArray[np.uint8]


class _Streams:
    """Independent, reproducible random streams of one patient seed."""

    ANATOMY, PATTERN, SCANNER, FIELDS, TREES, DISEASE, SCENARIO, PFT = range(1, 9)
    NOISE = 10

    def __init__(self, seed: int) -> None:
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.seed = int(seed)

    def __call__(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])


def place_grid(
    anatomy: PatientAnatomy,
    shape_kji: tuple[int, int, int],
    spacing_mm: tuple[float, float, float] | None,
) -> Grid:
    """The scan grid: centred in-plane on the body; top slice 25 mm above the apex when the
    craniocaudal field of view covers the lungs, else centred on the lungs.

    ``spacing_mm`` (x, y, z) defaults to a 358 × 358 × 320 mm field of view.

    Raises:
        ValueError: if a shape or spacing value is not positive.
    """
    k, j, i = (int(v) for v in shape_kji)
    if min(k, j, i) < 2:
        raise ValueError(f"shape_kji must have at least 2 voxels per axis, got {shape_kji}")
    if spacing_mm is None:
        sx, sy, sz = (DEFAULT_FOV_MM[0] / i, DEFAULT_FOV_MM[1] / j, DEFAULT_FOV_MM[2] / k)
    else:
        values = [float(s) for s in spacing_mm]
        if len(values) != 3 or not min(values) > 0:
            raise ValueError(
                f"spacing_mm must be three positive values (x, y, z), got {spacing_mm}"
            )
        sx, sy, sz = values
    fov_z = (k - 1) * sz
    if fov_z >= anatomy.lung_height_mm + 25.0 + 25.0:
        top = anatomy.apex_z_mm + 25.0
    else:
        top = anatomy.apex_z_mm - 0.5 * anatomy.lung_height_mm + 0.5 * fov_z
    origin = (-(i - 1) / 2.0 * sx, -(j - 1) / 2.0 * sy, top - fov_z)
    return Grid((k, j, i), (sx, sy, sz), origin)


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic CT and its exact ground truth (all volumes on the same grid).

    ``ct`` int16 HU; ``labels`` uint8 (0 background, 1 lung without ILD, 2 ILD);
    ``lungs_lr`` uint8 (0 background, 1 right lung, 2 left lung); ``tissue`` uint8 ``Tissue``
    classes. ``extent_pct`` = ILD volume / lung volume × 100 as realised on the grid.
    """

    ct: Volume
    labels: Volume
    lungs_lr: Volume
    tissue: Volume
    extent_pct: float
    lung_ml: float
    ild_ml: float
    honeycomb_ml: float
    requested_extent_pct: float
    seed: int
    anatomy: PatientAnatomy
    pattern: DiseasePattern
    scanner: ScannerModel


@dataclass(frozen=True, eq=False)
class PhantomPair:
    """A baseline and a follow-up CT of one patient with the true deformation between them.

    ``displacement_lps_mm`` ``[k, j, i, 3]`` float32 on the baseline grid: baseline point ``x``
    corresponds to follow-up point ``x + u(x)`` (components x, y, z in LPS mm).
    ``log_jacobian``: ``log det(I + ∇u)`` on the baseline grid (< 0 where the lung shrinks).
    ``shrink_region``: uint8 mask (baseline grid) of the lung within one sigma of a shrinkage
    centre. ``morphologic_call`` ∈ {"improved", "stable", "worse"}; ``functional_worsening`` per
    ATS/ERS from ``pft_baseline``/``pft_followup``.
    """

    baseline: Phantom
    followup: Phantom
    displacement_lps_mm: F32
    log_jacobian: Volume
    shrink_region: Volume
    scenario: str
    morphologic_call: str
    extent_change_pct: float
    mean_log_jacobian_lung: float
    mean_log_jacobian_shrink: float
    regional_log_jacobian: float
    breathing_log_scale: float
    fibrotic_volume_loss: float
    pft_baseline: PftResult
    pft_followup: PftResult
    functional_worsening: bool

    @property
    def fvc_change_pct(self) -> float:
        """Follow-up minus baseline FVC, points of % predicted."""
        return round(self.pft_followup.fvc_pct_predicted - self.pft_baseline.fvc_pct_predicted, 1)

    @property
    def dlco_change_pct(self) -> float:
        """Follow-up minus baseline DLCO, points of % predicted."""
        return round(self.pft_followup.dlco_pct_predicted - self.pft_baseline.dlco_pct_predicted, 1)


class ChestModel:
    """Everything about one patient on one grid that does not depend on the ILD extent."""

    def __init__(self, seed: int, grid: Grid) -> None:
        streams = _Streams(seed)
        self.seed = int(seed)
        self.streams = streams
        self.grid = grid
        self.anatomy = sample_anatomy(streams(_Streams.ANATOMY))
        self.pattern = sample_pattern(streams(_Streams.PATTERN))
        self.scanner = sample_scanner(streams(_Streams.SCANNER))
        self.maps: AnatomyMaps = render_anatomy(self.anatomy, grid, streams(_Streams.FIELDS))
        self.lung: B = self.maps.lungs_lr > 0
        if int(self.lung.sum()) < MIN_LUNG_VOXELS:
            raise ValueError(
                f"the field of view ({grid.shape_kji} voxels of {grid.spacing_mm} mm) holds "
                f"{int(self.lung.sum())} lung voxels; at least {MIN_LUNG_VOXELS} are needed"
            )
        rng = streams(_Streams.DISEASE)
        patchy = SmoothField.draw(rng, grid, 14.0, detail=(5.0, 0.4))
        self.propensity = np.empty(grid.shape_kji, dtype=np.float32)
        maps = self.maps
        for k0 in range(0, grid.shape_kji[0], 16):
            k1 = min(grid.shape_kji[0], k0 + 16)
            self.propensity[k0:k1] = propensity(
                self.pattern,
                self.lung[k0:k1],
                maps.subpleural_mm[k0:k1],
                maps.posterior_frac[k0:k1],
                maps.basal_frac[k0:k1],
                patchy.slab(k0, k1),
            )
        self.lung_p: F32 = self.propensity[self.lung]
        self.p_high = float(np.percentile(self.lung_p, 99.5)) if self.lung_p.size else 1.0
        self.fields: DiseaseFields = disease_fields(
            rng, grid, self.lung, self.maps.subpleural_mm, self.pattern
        )
        self._grow_trees(streams(_Streams.TREES))

    # ---- trees -------------------------------------------------------------------------------
    def _grow_trees(self, rng: np.random.Generator) -> None:
        grid = self.grid
        roots = hilum_points(self.anatomy)
        step = 0.7 * min(grid.spacing_mm)
        vessels: list[TubePoints] = []
        walls: list[TubePoints] = []
        lumens: list[TubePoints] = []
        for side, name in ((1, "right"), (2, "left")):
            mask = self.maps.lungs_lr == side
            volume_ml = float(mask.sum()) * grid.voxel_ml
            # vessels much thinner than a voxel are invisible: fewer branches on coarse grids,
            # more on sub-millimetre ones
            detail = float(np.clip((1.4 / min(grid.spacing_mm)) ** 2, 0.15, 1.8))
            n_art = int(np.clip(volume_ml / 1.4 * detail, 40, 3600))
            arteries = grow_tree(
                roots[f"{name}_artery"],
                sample_targets(mask, grid, n_art, rng),
                rng,
                leaf_radius_mm=0.5,
            )
            veins = grow_tree(
                roots[f"{name}_vein"],
                sample_targets(mask, grid, int(0.8 * n_art), rng),
                rng,
                leaf_radius_mm=0.5,
            )
            airways = bronchial_tree(arteries, roots[f"{name}_airway"], min_leaves=3)
            vessels += [sample_tubes(arteries, step), sample_tubes(veins, step)]
            lumen = sample_tubes(airways, step)
            wall_r = lumen.radius_mm + 0.2 * lumen.radius_mm + 0.3
            walls.append(TubePoints(lumen.points_lps_mm, wall_r))
            lumens.append(lumen)

        def cat(parts: list[TubePoints]) -> TubePoints:
            return TubePoints(
                np.concatenate([p.points_lps_mm for p in parts]),
                np.concatenate([p.radius_mm for p in parts]),
            )

        self.vessels, self.airway_walls, self.airway_lumens = cat(vessels), cat(walls), cat(lumens)

    # ---- images ------------------------------------------------------------------------------
    @cached_property
    def base_hu(self) -> F32:
        """Sharp HU of the healthy chest with major fissures (no vessels), ``[k, j, i]`` float32.

        Shares memory with ``maps.base_hu`` (painted in place once)."""
        hu = self.maps.base_hu
        self._paint_fissures(hu)
        return hu

    def _paint_fissures(self, hu: F32) -> None:
        anat, grid = self.anatomy, self.grid
        ramp = float(min(grid.spacing_mm))
        box = self.fields.box
        z = grid.z_mm[box[0]][:, None, None]
        y = grid.y_mm[box[1]][None, :, None]
        x = grid.x_mm[box[2]][None, None, :]
        t = anat.apex_z_mm - z
        length = anat.lung_height_mm
        yc = anat.center_y_mm
        # oblique plane: high at the back (T4), low at the front (near the dome)
        t_back, t_front = 0.30 * length, anat.dome_right_depth_mm - 5.0
        frac = np.clip(
            (yc + anat.cavity_posterior_mm - y)
            / (anat.cavity_anterior_mm + anat.cavity_posterior_mm),
            0,
            1,
        )
        plane = t_back + (t_front - t_back) * frac + 0.55 * (np.abs(x) - 60.0)
        slope = np.sqrt(
            1.0 + ((t_front - t_back) / (anat.cavity_anterior_mm + anat.cavity_posterior_mm)) ** 2
        )
        dist = np.abs(t - plane) / slope
        line = np.clip(1.0 - dist / ramp, 0.0, 1.0) * 0.35
        sub = hu[box]
        in_lung = self.lung[box] & (line > 0)
        sub[in_lung] = (sub * (1.0 - line) + 20.0 * line)[in_lung]

    def threshold(self, extent_pct: float, log_jacobian: F32 | None = None) -> float:
        """Propensity threshold giving ``extent_pct`` % of the lung (of its deformed volume when
        ``log_jacobian`` on the grid is given)."""
        weights = (
            None if log_jacobian is None else np.exp(log_jacobian[self.lung]).astype(np.float32)
        )
        return threshold_for_extent(self.lung_p, extent_pct, weights)

    def render(
        self, threshold: float, extent_pct: float, density_log_jacobian: F32 | None = None
    ) -> tuple[F32, U8, B]:
        """Sharp HU, labels (0/1/2) and honeycomb mask for ILD where propensity ≥ ``threshold``."""
        hu = self.base_hu.copy()
        ild = self.lung & (self.propensity >= threshold)
        span = max(self.p_high - threshold, 1e-3) if np.isfinite(threshold) else 1.0
        honeycomb = paint_ild(
            hu,
            ild,
            self.propensity,
            threshold,
            span,
            self.maps.subpleural_mm,
            self.maps.posterior_frac,
            self.grid,
            self.fields,
            self.pattern,
            extent_pct,
        )
        splat_tubes(hu, self.lung, self.grid, self.vessels, value_hu=40.0, brighten=True)
        flat_ild = ild.reshape(-1)
        flat_p = self.propensity.reshape(-1)

        def traction(flat_index: npt.NDArray[np.int64], radius: F64) -> F64:
            # traction bronchiectasis: small airways in fibrosis dilate and become visible
            sev = np.clip((flat_p[flat_index] - threshold) / span, 0.0, 1.0)
            dilated = np.minimum(radius * (1.8 + 1.6 * sev), radius + 0.8 + 1.6 * sev)
            return np.where(flat_ild[flat_index], dilated, radius).astype(np.float64)

        splat_tubes(
            hu,
            self.lung,
            self.grid,
            self.airway_walls,
            value_hu=30.0,
            brighten=True,
            radius_scale=traction,
        )
        splat_tubes(
            hu,
            self.lung,
            self.grid,
            self.airway_lumens,
            value_hu=-1000.0,
            brighten=False,
            radius_scale=traction,
        )
        if density_log_jacobian is not None:
            # mass is conserved: a voxel that shrinks by J gets denser by 1/J
            air_like = self.lung & (hu < -100.0)
            hu[air_like] = (hu[air_like] + 1000.0) * np.exp(
                -density_log_jacobian[air_like]
            ) - 1000.0
        labels = np.where(self.lung, np.where(ild, 2, 1), 0).astype(np.uint8)
        return hu, labels, honeycomb

    def noise_scale_k(self) -> F64:
        t = self.anatomy.apex_z_mm - self.grid.z_mm
        shoulders = 1.0 - smoothstep((t + 10.0) / 70.0)
        abdomen = smoothstep((t - self.anatomy.lung_height_mm) / 50.0)
        return np.asarray(1.0 + 0.3 * shoulders + 0.15 * abdomen)

    def phantom(
        self,
        *,
        hu: F32,
        labels: U8,
        lungs_lr: U8,
        tissue: U8,
        honeycomb: B,
        requested_extent_pct: float,
        scanner: ScannerModel,
        noise_stream: int,
    ) -> Phantom:
        ct = acquire(
            hu, self.grid, scanner, self.streams(noise_stream), noise_scale_k=self.noise_scale_k()
        )
        vox = self.grid.voxel_ml
        lung_n = int((labels > 0).sum())
        ild_n = int((labels == 2).sum())
        return Phantom(
            ct=self.grid.volume(ct),
            labels=self.grid.volume(labels),
            lungs_lr=self.grid.volume(lungs_lr),
            tissue=self.grid.volume(tissue),
            extent_pct=100.0 * ild_n / lung_n if lung_n else 0.0,
            lung_ml=lung_n * vox,
            ild_ml=ild_n * vox,
            honeycomb_ml=int(honeycomb.sum()) * vox,
            requested_extent_pct=float(requested_extent_pct),
            seed=self.seed,
            anatomy=self.anatomy,
            pattern=self.pattern,
            scanner=scanner,
        )


def _check_extent(extent_pct: float) -> float:
    value = float(extent_pct)
    if not 0.0 <= value <= 80.0:
        raise ValueError(
            f"extent_pct must be within [0, 80] % of the lung volume, got {extent_pct}"
        )
    return value


def make_phantom(
    *,
    seed: int,
    shape_kji: tuple[int, int, int] = DEFAULT_SHAPE_KJI,
    spacing_mm: tuple[float, float, float] | None = None,
    extent_pct: float = 12.7,
) -> Phantom:
    """A synthetic chest CT with SSc-ILD covering ``extent_pct`` % of the lung volume.

    Args:
        seed: non-negative integer; the same seed gives the same patient and image (and the
            same patient at any grid size).
        shape_kji: voxels ``(K, J, I)`` — slices, rows, columns.
        spacing_mm: voxel size ``(x, y, z)`` in mm; default: a 358 × 358 × 320 mm field of view.
        extent_pct: requested ILD extent (ILD volume / lung volume × 100), realised to a voxel.

    Returns:
        ``Phantom`` whose volumes share an axial grid (identity direction, LPS mm, slice ``k``
        increasing towards the head).

    Raises:
        ValueError: for a negative seed, a non-positive shape or spacing, an extent outside
            [0, 80] %, or a field of view that contains no lung.
    """
    extent = _check_extent(extent_pct)
    streams = _Streams(seed)
    grid = place_grid(sample_anatomy(streams(_Streams.ANATOMY)), shape_kji, spacing_mm)
    model = ChestModel(seed, grid)
    t = model.threshold(extent)
    hu, labels, honeycomb = model.render(t, extent)
    return model.phantom(
        hu=hu,
        labels=labels,
        lungs_lr=model.maps.lungs_lr,
        tissue=model.maps.tissue,
        honeycomb=honeycomb,
        requested_extent_pct=extent,
        scanner=model.scanner,
        noise_stream=_Streams.NOISE,
    )


@dataclass(frozen=True)
class _Scenario:
    tag: str
    extent_change_pct: float
    center_log_jacobian: float
    breathing: float
    fibrotic_volume_loss: float


def _scenario(rng: np.random.Generator, progression: str | float, extent_pct: float) -> _Scenario:
    breathing = float(np.clip(rng.normal(0.0, 0.035), -0.07, 0.07))
    if isinstance(progression, str):
        key = progression.strip().lower()
        if key not in PROGRESSIONS:
            raise ValueError(
                f"progression must be one of {sorted(PROGRESSIONS)} or a number, got {progression!r}"
            )
        tag = PROGRESSIONS[key]
        if tag == "worse":
            delta = float(rng.uniform(2.5, 9.0))
            center = -float(rng.uniform(0.12, 0.25))
            loss = -float(rng.uniform(0.01, 0.05))
        elif tag == "stable":
            delta = float(rng.uniform(-0.3, 0.3))
            center = float(rng.uniform(-0.03, 0.02))
            loss = 0.0
        else:
            delta = -min(float(rng.uniform(2.0, 6.0)), 0.6 * extent_pct)
            center = float(rng.uniform(0.04, 0.12))
            loss = float(rng.uniform(0.0, 0.02))
    else:
        delta = float(progression)
        if not np.isfinite(delta):
            raise ValueError(f"progression must be finite, got {progression}")
        tag = (
            "worse"
            if delta >= EXTENT_CALL_PCT
            else "improved"
            if delta <= -EXTENT_CALL_PCT
            else "stable"
        )
        center = float(
            np.clip(-0.022 * delta - (0.04 if delta >= EXTENT_CALL_PCT else 0.0), -0.25, 0.12)
        )
        loss = float(np.clip(-0.004 * delta, -0.05, 0.02))
    return _Scenario(tag, delta, center, breathing + loss, loss)


def _velocity_field(
    model: ChestModel, scenario: _Scenario, rng: np.random.Generator
) -> VelocityField:
    anat, grid = model.anatomy, model.grid
    blobs = []
    for side in (1, 2):
        mask = model.maps.lungs_lr == side
        if not mask.any():
            continue
        p = model.propensity[mask]
        top = p >= np.percentile(p, 90.0)
        k, j, i = (idx[top] for idx in np.nonzero(mask))
        centre = np.asarray(grid.origin_lps_mm) + np.array(
            [i.mean(), j.mean(), k.mean()]
        ) * np.asarray(grid.spacing_mm)
        sigma = (
            float(rng.uniform(22.0, 32.0)),
            float(rng.uniform(14.0, 20.0)),
            float(rng.uniform(24.0, 36.0)),
        )
        lj = scenario.center_log_jacobian * float(rng.uniform(0.85, 1.15))
        point = (float(centre[0]), float(centre[1]), float(centre[2]))
        blobs.append(ShrinkBlob.with_center_log_jacobian(point, sigma, lj))
    return VelocityField(
        breathing=scenario.breathing,
        lateral=0.3 * scenario.breathing,
        apex_z_mm=anat.apex_z_mm + 10.0,
        base_z_mm=anat.apex_z_mm - anat.lung_height_mm - 15.0,
        center_y_mm=anat.center_y_mm,
        softness_mm=12.0,
        blobs=tuple(blobs),
    )


def _within_one_sigma(field: VelocityField, grid: Grid) -> B:
    """Baseline voxels within one (anisotropic) sigma of a shrinkage centre, measured after
    breathing (where the regional flow acts)."""
    out = np.zeros(grid.shape_kji, dtype=bool)
    z1, total = field.breathing_flow(grid.z_mm)
    scale = np.exp(field.lateral * total)[:, None, None]
    x1 = grid.x_mm[None, None, :] * scale
    y1 = field.center_y_mm + (grid.y_mm[None, :, None] - field.center_y_mm) * scale
    for blob, (cx, cy, cz) in zip(field.blobs, field.moved_centers(), strict=True):
        sx, sy, sz = blob.sigma_mm
        r2 = ((x1 - cx) / sx) ** 2 + ((y1 - cy) / sy) ** 2 + (((z1 - cz) / sz) ** 2)[:, None, None]
        out |= r2 <= 1.0
    return out


def morphologic_call(extent_change_pct: float, regional_log_jacobian: float) -> str:
    """Ground-truth visual call: "worse" for ≥ 1 point more ILD or clear regional shrinkage,
    "improved" for ≥ 1 point less ILD, else "stable"."""
    if extent_change_pct >= EXTENT_CALL_PCT:
        return "worse"
    if extent_change_pct <= -EXTENT_CALL_PCT:
        return "improved"
    if regional_log_jacobian <= SHRINK_CALL_LOG_JAC:
        return "worse"
    return "stable"


def make_longitudinal_pair(
    *,
    seed: int,
    shape_kji: tuple[int, int, int] = DEFAULT_SHAPE_KJI,
    spacing_mm: tuple[float, float, float] | None = None,
    extent_pct: float = 12.7,
    progression: str | float = "worse",
) -> PhantomPair:
    """A baseline CT (identical to ``make_phantom`` with the same arguments) and a follow-up.

    Args:
        seed, shape_kji, spacing_mm, extent_pct: as for ``make_phantom`` (baseline).
        progression: "worse" (ILD +2.5..9 points, posterior-basal shrinkage with a log-Jacobian
            of about -0.12..-0.25 at its centre, fibrotic volume loss), "stable" (±0.3 point,
            no shrinkage), "improved" (ILD -2..-6 points, mild re-expansion), or a number: the
            requested change in extent (follow-up minus baseline, points of %).

    Returns:
        ``PhantomPair``; the follow-up shares the baseline grid, has its own noise and breathing
        depth, and its extent is realised on the deformed lung (within a few tenths of a point).

    Raises:
        ValueError: as ``make_phantom``, or for an unknown ``progression``.
    """
    extent = _check_extent(extent_pct)
    streams = _Streams(seed)
    grid = place_grid(sample_anatomy(streams(_Streams.ANATOMY)), shape_kji, spacing_mm)
    model = ChestModel(seed, grid)
    t0 = model.threshold(extent)
    hu0, labels0, honey0 = model.render(t0, extent)
    baseline = model.phantom(
        hu=hu0,
        labels=labels0,
        lungs_lr=model.maps.lungs_lr,
        tissue=model.maps.tissue,
        honeycomb=honey0,
        requested_extent_pct=extent,
        scanner=model.scanner,
        noise_stream=_Streams.NOISE,
    )
    del hu0
    rng = streams(_Streams.SCENARIO)
    scenario = _scenario(rng, progression, extent)
    field = _velocity_field(model, scenario, rng)
    step = float(np.clip(0.999 * max(grid.spacing_mm), 4.0, 8.0))
    deformation = Deformation.compute(field, grid, step_mm=step)
    log_jac = deformation.log_jacobian()
    extent1 = float(np.clip(extent + scenario.extent_change_pct, 0.0, 80.0))
    t1 = model.threshold(extent1, log_jacobian=log_jac)
    hu1, labels1_b, honey1_b = model.render(t1, extent1, density_log_jacobian=log_jac)
    # one nearest-neighbour resampling for all label-like maps, packed in a uint16 code
    code = (
        model.maps.tissue.astype(np.uint16)
        | (labels1_b.astype(np.uint16) << 8)
        | (model.maps.lungs_lr.astype(np.uint16) << 10)
        | (honey1_b.astype(np.uint16) << 12)
    )
    hu1, code1 = deformation.warp_to_followup([(hu1, 1, -1000.0), (code, 0, 0.0)])
    del code
    tissue1 = (code1 & 0xFF).astype(np.uint8)
    labels1 = ((code1 >> 8) & 0x3).astype(np.uint8)
    lr1 = ((code1 >> 10) & 0x3).astype(np.uint8)
    honey1 = ((code1 >> 12) & 0x1).astype(bool)
    scanner1 = sample_scanner(streams(_Streams.SCANNER + 100))
    followup = model.phantom(
        hu=hu1,
        labels=labels1,
        lungs_lr=lr1,
        tissue=tissue1,
        honeycomb=honey1,
        requested_extent_pct=extent1,
        scanner=scanner1,
        noise_stream=_Streams.NOISE + 1,
    )
    # truth
    lung = model.lung
    shrink = lung & _within_one_sigma(field, grid)
    mean_lung = float(log_jac[lung].mean())
    mean_shrink = float(log_jac[shrink].mean()) if shrink.any() else 0.0
    breathing_div = 2.0 * field.lateral + field.breathing
    regional = mean_shrink - breathing_div
    change = followup.extent_pct - baseline.extent_pct
    call = morphologic_call(change, regional)
    anat = model.anatomy
    predicted = predicted_values(anat.sex, anat.age_years, anat.height_cm)
    prng = streams(_Streams.PFT)
    latent = draw_latent(prng)
    pft0 = PftResult.from_percent(percent_predicted(baseline.extent_pct, latent), predicted)
    pct1 = followup_percent(
        pft0,
        prng,
        extent_change_pct=change,
        regional_log_jacobian=regional,
        fibrotic_volume_loss=scenario.fibrotic_volume_loss,
    )
    pft1 = PftResult.from_percent(pct1, predicted)
    return PhantomPair(
        baseline=baseline,
        followup=followup,
        displacement_lps_mm=deformation.displacement_lps_mm(),
        log_jacobian=grid.volume(log_jac),
        shrink_region=grid.volume(shrink.astype(np.uint8)),
        scenario=scenario.tag,
        morphologic_call=call,
        extent_change_pct=change,
        mean_log_jacobian_lung=mean_lung,
        mean_log_jacobian_shrink=mean_shrink,
        regional_log_jacobian=regional,
        breathing_log_scale=field.breathing,
        fibrotic_volume_loss=scenario.fibrotic_volume_loss,
        pft_baseline=pft0,
        pft_followup=pft1,
        functional_worsening=functional_worsening(pft0, pft1),
    )


def baseline_pft(phantom: Phantom) -> PftResult:
    """The PFT of a single phantom (same patient residuals as in ``make_longitudinal_pair``)."""
    anat = phantom.anatomy
    latent = draw_latent(_Streams(phantom.seed)(_Streams.PFT))
    return PftResult.from_percent(
        percent_predicted(phantom.extent_pct, latent),
        predicted_values(anat.sex, anat.age_years, anat.height_cm),
    )


__all__ = [
    "DEFAULT_SHAPE_KJI",
    "PHANTOM_VERSION",
    "Phantom",
    "PhantomPair",
    "baseline_pft",
    "make_longitudinal_pair",
    "make_phantom",
    "morphologic_call",
    "place_grid",
]
