"""A lung template built from a cohort's baseline CTs, and log-Jacobian maps mapped into it.

Chassagnon et al. (Radiology 2021, "Elastic Registration"): "to obtain statistics for all patients
and allow comparison between groups, all Jacobian maps were elastically registered to a common
template using the same registration algorithm". Here:

**Building** (:func:`build_template`), at a coarse isotropic spacing (default 4 mm):

1. every baseline CT and its lung mask are resampled onto an axis-aligned (identity direction,
   LPS) grid of that spacing around the lungs plus ``margin_mm`` (:func:`prepare_case`);
2. the reference is the case of median lung volume (the lower median for an even count; ties go
   to the first case id in sorted order);
3. pass 0: every other case is registered onto the reference with
   :func:`inference.registration.register` (torch backend by default, lung masks on both sides);
   the warped CTs (linear, -1024 HU outside) and warped lung masks (linear, as fractions) are
   averaged voxelwise, the reference included as it is. The template lung is the voxels where at
   least half of the warped lungs agree (mean ≥ 0.5);
4. ``iterations`` refinement passes (default 1): every case, the reference included, is
   registered onto the current template (fixed = template CT, fixed mask = template lung) and the
   average is taken again.

The template grid is the reference's grid. No shape-centring step is applied (the average keeps
the reference's overall shape; the refinement pass only sharpens it).

**Mapping** (:func:`register_to_template`, :func:`to_template`): the baseline (moving) is
registered onto the template (fixed) with the same interface and the template's own registration
settings; the log-Jacobian map, on any grid of the baseline's physical space (the registration
grid of ``python -m inference.register``, say), is then resampled through the field with linear
interpolation (0 outside the map). The value at a template voxel is the baseline's log-Jacobian at
the corresponding baseline point: the map is transported, not re-modulated by the template
registration's own Jacobian.

**On disk** (:meth:`LungTemplate.save` / :meth:`LungTemplate.load`)::

    template_ct.nii.gz      mean CT (float32 HU) on the template grid
    template_lung.nii.gz    template lung mask (uint8 0/1), same grid
    metadata.json           format, version, spacing, grid, registration settings, reference,
                            cases, cohort digest, template digest, build quality, files' SHA-256
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.records import check_file, read_record, sha256_file
from inference.registration import RegistrationResult, register, resample_to_grid
from inference.volume import Volume

TEMPLATE_FORMAT = "ild-review-lung-template"
TEMPLATE_FORMAT_VERSION = 1
TEMPLATE_VERSION = "1.0.0"
TEMPLATE_CT_FILE = "template_ct.nii.gz"
TEMPLATE_LUNG_FILE = "template_lung.nii.gz"
METADATA_FILE = "metadata.json"
AIR_HU = -1024.0


class TemplateError(ValueError):
    """A template folder cannot be used (missing, malformed, corrupt), or a build cannot run."""


def registration_params(spacing_mm: float, *, threads: int | None = 1) -> dict[str, Any]:
    """Torch-backend parameters for registering onto a template of ``spacing_mm``.

    Affine then deformable on two levels (``2 s`` and ``s`` mm) with short runs: about 2 s per
    case at 6 mm and 6-8 s at 4 mm on one CPU thread. ``threads=None`` lets the backend choose.
    """
    params: dict[str, Any] = {
        "affine_levels_mm": [2.0 * spacing_mm],
        "affine_iterations": [50],
        "levels_mm": [2.0 * spacing_mm, spacing_mm],
        "iterations": [40, 25],
        "seed": 0,
    }
    if threads is not None:
        params["threads"] = int(threads)
    return params


@dataclass(frozen=True)
class TemplateSettings:
    """How a template is built, and how cases are registered onto it (kept in its metadata).

    Attributes:
        spacing_mm: isotropic spacing of the template grid (and of the registrations).
        margin_mm: margin around the lungs of every prepared grid.
        iterations: refinement passes after the pass onto the reference (0: none).
        backend: :func:`inference.registration.register` backend.
        params: backend parameters (default :func:`registration_params` at ``spacing_mm``).
    """

    spacing_mm: float = 4.0
    margin_mm: float = 12.0
    iterations: int = 1
    backend: str = "torch"
    params: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        if not self.margin_mm >= 0:
            raise ValueError(f"margin_mm must be non-negative, got {self.margin_mm}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")

    @property
    def resolved_params(self) -> dict[str, Any]:
        return (
            dict(self.params) if self.params is not None else registration_params(self.spacing_mm)
        )

    def registration_record(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "spacing_mm": self.spacing_mm,
            "margin_mm": self.margin_mm,
            "params": self.resolved_params,
        }


@dataclass(frozen=True, eq=False)
class TemplateCase:
    """One baseline for the template: CT (HU) and lung mask (non-zero = lung; any grid in the
    CT's physical space)."""

    case_id: str
    ct: Volume
    lung: Volume


# ----------------------------------------------------------------------------------- grids


def _lung_bbox_lps(lung: Volume) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    inside = np.nonzero(np.asarray(lung.array))
    if inside[0].size == 0:
        raise ValueError("lung mask is empty")
    lo = [int(a.min()) for a in inside]  # k, j, i
    hi = [int(a.max()) for a in inside]
    corners = np.array(
        [[i, j, k] for i in (lo[2], hi[2]) for j in (lo[1], hi[1]) for k in (lo[0], hi[0])],
        dtype=np.float64,
    )
    points = lung.index_to_lps(corners)
    half = 0.5 * max(lung.spacing_mm)
    return points.min(axis=0) - half, points.max(axis=0) + half


def canonical_grid(lung: Volume, spacing_mm: float, margin_mm: float) -> Volume:
    """An identity-direction (LPS) grid of ``spacing_mm`` covering the lung plus ``margin_mm``.

    Axis ``i`` runs to the patient's left (LPS x), ``j`` posterior (y), ``k`` superior (z).

    Raises:
        ValueError: if the mask is empty.
    """
    lo, hi = _lung_bbox_lps(lung)
    lo, hi = lo - margin_mm, hi + margin_mm
    size_ijk = [max(2, math.ceil((b - a) / spacing_mm) + 1) for a, b in zip(lo, hi, strict=True)]
    return Volume(
        np.zeros(size_ijk[::-1], dtype=np.uint8),
        (spacing_mm,) * 3,
        (float(lo[0]), float(lo[1]), float(lo[2])),
        np.eye(3),
    )


def prepare_case(
    ct: Volume, lung: Volume, spacing_mm: float, margin_mm: float = 12.0
) -> tuple[Volume, Volume]:
    """CT (float32 HU, -1024 outside) and binary lung mask (uint8) on :func:`canonical_grid`.

    Raises:
        ValueError: if the lung mask is empty.
    """
    grid = canonical_grid(lung, spacing_mm, margin_mm)
    ct_c = resample_to_grid(ct, grid, interpolation="linear", default_value=AIR_HU)
    binary = lung.with_array((np.asarray(lung.array) != 0).astype(np.uint8))
    lung_c = resample_to_grid(binary, grid, interpolation="nearest", default_value=0.0)
    if not np.any(lung_c.array):
        raise ValueError("the lung mask holds no voxel on the template-spacing grid")
    return (
        grid.with_array(np.asarray(ct_c.array, dtype=np.float32)),
        grid.with_array(np.asarray(lung_c.array, dtype=np.uint8)),
    )


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.count_nonzero(a & b)) / total if total else 1.0


def _array_digest(*volumes: Volume) -> str:
    digest = hashlib.sha256()
    for volume in volumes:
        array = np.ascontiguousarray(volume.array)
        digest.update(str(array.dtype).encode())
        digest.update(json.dumps(list(array.shape)).encode())
        digest.update(np.round(np.asarray(volume.spacing_mm), 3).tobytes())
        digest.update(np.round(np.asarray(volume.origin_lps_mm), 3).tobytes())
        digest.update(np.round(volume.direction, 4).tobytes())
        digest.update(array.tobytes())
    return f"sha256:{digest.hexdigest()}"


def cohort_digest(cases: Sequence[TemplateCase]) -> str:
    """SHA-256 over the sorted case ids and each case's CT and lung voxels and geometry."""
    digest = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c.case_id):
        digest.update(case.case_id.encode())
        digest.update(_array_digest(case.ct, case.lung).encode())
    return f"sha256:{digest.hexdigest()}"


# -------------------------------------------------------------------------------- template


@dataclass(frozen=True, eq=False)
class LungTemplate:
    """A template CT (float32 HU) and lung mask (uint8 0/1) on one identity-direction grid.

    ``metadata`` holds the build record (see the module docstring); ``digest`` is computed from
    the voxels and geometry, so it identifies the template whatever folder it was loaded from.
    """

    ct: Volume
    lung: Volume
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ct.same_grid(self.lung):
            raise TemplateError("template lung mask is not on the template CT's grid")
        if not np.any(self.lung.array):
            raise TemplateError("template lung mask is empty")
        if not np.allclose(self.ct.direction, np.eye(3), atol=1e-6):
            raise TemplateError("template grid must have the identity (LPS) direction")
        object.__setattr__(
            self, "ct", self.ct.with_array(np.asarray(self.ct.array, dtype=np.float32))
        )
        object.__setattr__(
            self, "lung", self.lung.with_array((np.asarray(self.lung.array) != 0).astype(np.uint8))
        )

    @property
    def digest(self) -> str:
        return _array_digest(self.ct, self.lung)

    @property
    def spacing_mm(self) -> float:
        return float(self.ct.spacing_mm[0])

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return self.ct.shape_kji

    @property
    def version(self) -> str:
        return f"{TEMPLATE_VERSION}+{self.digest.split(':', 1)[1][:12]}"

    @property
    def settings(self) -> TemplateSettings:
        """Registration settings for mapping onto this template (from its metadata)."""
        reg = dict(self.metadata.get("registration") or {})
        return TemplateSettings(
            spacing_mm=float(reg.get("spacing_mm", self.spacing_mm)),
            margin_mm=float(reg.get("margin_mm", 12.0)),
            iterations=int(self.metadata.get("iterations", 0)),
            backend=str(reg.get("backend", "torch")),
            params=dict(reg["params"]) if "params" in reg else None,
        )

    def save(self, folder: Path | str) -> Path:
        """Write the template folder (NIfTI volumes, then ``metadata.json``); return it."""
        from inference.imageio import write_image

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        write_image(self.ct, out / TEMPLATE_CT_FILE)
        write_image(self.lung, out / TEMPLATE_LUNG_FILE)
        record = dict(self.metadata)
        record.update(
            {
                "format": TEMPLATE_FORMAT,
                "format_version": TEMPLATE_FORMAT_VERSION,
                "version": self.version,
                "digest": self.digest,
                "spacing_mm": self.spacing_mm,
                "shape_kji": list(self.shape_kji),
                "origin_lps_mm": list(self.ct.origin_lps_mm),
                "files": {
                    name: sha256_file(out / name) for name in (TEMPLATE_CT_FILE, TEMPLATE_LUNG_FILE)
                },
            }
        )
        partial = out / (METADATA_FILE + ".partial")
        partial.write_text(json.dumps(jsonable(record), indent=2, sort_keys=True) + "\n")
        partial.replace(out / METADATA_FILE)
        return out

    @classmethod
    def load(cls, folder: Path | str) -> LungTemplate:
        """Read and check a template folder.

        Raises:
            TemplateError: missing folder or file, unreadable or foreign metadata, a file whose
                SHA-256 or a template whose voxel digest differs from the metadata.
        """
        from inference.imageio import read_image

        root = Path(folder)
        path = root / METADATA_FILE
        if not root.is_dir():
            raise TemplateError(f"no template folder at {root}")
        data = read_record(
            path,
            expected=TEMPLATE_FORMAT,
            version=TEMPLATE_FORMAT_VERSION,
            error=TemplateError,
            kind="template",
            what="template metadata",
        )
        files = data.get("files")
        if not isinstance(files, dict):
            raise TemplateError(f"{path}: 'files' must map file names to SHA-256 digests")
        for name in (TEMPLATE_CT_FILE, TEMPLATE_LUNG_FILE):
            check_file(root / name, files.get(name), TemplateError)
        try:
            ct = read_image(root / TEMPLATE_CT_FILE)
            lung = read_image(root / TEMPLATE_LUNG_FILE)
            template = cls(ct, lung, data)
        except (ValueError, OSError, RuntimeError) as error:
            raise TemplateError(f"{root}: cannot read the template volumes: {error}") from error
        if data.get("digest") != template.digest:
            raise TemplateError(
                f"{root}: template voxels do not match the recorded digest {data.get('digest')!r}"
            )
        return template


# ---------------------------------------------------------------------------- registration


@dataclass(frozen=True, eq=False)
class TemplateRegistration:
    """A baseline registered onto a template: template point ``x`` ↔ baseline ``x + u(x)``.

    Attributes:
        result: the :class:`~inference.registration.RegistrationResult` (fixed = template).
        template: the template.
        case_ct, case_lung: the baseline as prepared at the template spacing (moving image).
        lung_dice: Dice of the warped baseline lung (≥ 0.5) with the template lung.
        seconds: wall time of preparation and registration.
    """

    result: RegistrationResult
    template: LungTemplate
    case_ct: Volume
    case_lung: Volume
    lung_dice: float
    seconds: float

    def warp_map(self, values: Volume, *, default_value: float = 0.0) -> Volume:
        """A map in the baseline's physical space (any grid), resampled onto the template grid
        (linear; ``default_value`` outside the map)."""
        return self.result.warp(values, interpolation="linear", default_value=default_value)

    def summary(self) -> dict[str, Any]:
        return {
            "backend": self.result.backend,
            "version": self.result.version,
            "lung_dice": round(self.lung_dice, 4),
            "seconds": round(self.seconds, 3),
        }


def register_to_template(
    baseline_ct: Volume,
    baseline_lung: Volume,
    template: LungTemplate,
    *,
    params: Mapping[str, Any] | None = None,
    backend: str | None = None,
) -> TemplateRegistration:
    """Register a baseline CT (moving) onto the template (fixed) with the template's settings.

    Args:
        baseline_ct: baseline CT in HU, any grid.
        baseline_lung: its lung mask (non-zero = lung), any grid of the same physical space.
        template: the template.
        params: backend parameters overriding the template's (e.g. ``{"threads": 2}``).
        backend: backend overriding the template's.

    Raises:
        ValueError: empty lung mask.
        inference.registration.RegistrationError: the backend failed.
    """
    start = time.perf_counter()
    settings = template.settings
    case_ct, case_lung = prepare_case(
        baseline_ct, baseline_lung, template.spacing_mm, settings.margin_mm
    )
    merged = {**settings.resolved_params, **dict(params or {})}
    result = register(
        template.ct,
        case_ct,
        fixed_mask=template.lung,
        moving_mask=case_lung,
        backend=backend or settings.backend,
        params=merged,
    )
    warped_lung = result.warp(
        case_lung.with_array(case_lung.array.astype(np.float32)), default_value=0.0
    )
    dice = _dice(np.asarray(warped_lung.array) >= 0.5, template.lung.array > 0)
    return TemplateRegistration(
        result, template, case_ct, case_lung, dice, time.perf_counter() - start
    )


def to_template(
    log_jacobian: Volume,
    baseline_ct: Volume,
    baseline_lung: Volume,
    template: LungTemplate,
    *,
    params: Mapping[str, Any] | None = None,
    registration: TemplateRegistration | None = None,
) -> Volume:
    """A log-Jacobian map of a baseline, mapped onto the template grid (float32).

    Args:
        log_jacobian: ``log det(I + grad u)`` on any grid of the baseline's physical space
            (typically the registration grid of the baseline/follow-up pair).
        baseline_ct, baseline_lung: the baseline CT and lung mask (registered onto the template).
        template: the template.
        params: backend parameters overriding the template's.
        registration: an existing :func:`register_to_template` result to reuse.

    Returns:
        The map on the template grid (0 where the baseline point falls outside the map).

    Raises:
        ValueError, RegistrationError: as :func:`register_to_template`.
    """
    reg = registration or register_to_template(baseline_ct, baseline_lung, template, params=params)
    return reg.warp_map(log_jacobian)


# -------------------------------------------------------------------------------- building


@dataclass(frozen=True, eq=False)
class TemplateBuild:
    """A built template and what its last pass saw.

    Attributes:
        template: the template.
        reference: id of the reference case.
        warped_ct: case id → CT warped onto the template grid by the last pass.
        warped_lung: case id → lung fraction warped by the last pass.
        reference_ct: the reference CT on the template grid.
    """

    template: LungTemplate
    reference: str
    warped_ct: dict[str, Volume]
    warped_lung: dict[str, Volume]
    reference_ct: Volume


Progress = Callable[[str], None]


def _average(
    cases: Sequence[tuple[str, Volume, Volume]],
    fixed_ct: Volume,
    fixed_lung: Volume,
    settings: TemplateSettings,
    skip: str | None,
    progress: Progress | None,
    label: str,
) -> tuple[Volume, Volume, dict[str, Volume], dict[str, Volume], list[float]]:
    params = settings.resolved_params
    ct_sum = np.zeros(fixed_ct.shape_kji, dtype=np.float64)
    lung_sum = np.zeros(fixed_ct.shape_kji, dtype=np.float64)
    warped_ct: dict[str, Volume] = {}
    warped_lung: dict[str, Volume] = {}
    dices: list[float] = []
    for n, (case_id, ct, lung) in enumerate(cases, start=1):
        if case_id == skip:
            w_ct = fixed_ct
            w_lung = fixed_lung.with_array(fixed_lung.array.astype(np.float32))
        else:
            result = register(
                fixed_ct,
                ct,
                fixed_mask=fixed_lung,
                moving_mask=lung,
                backend=settings.backend,
                params=params,
            )
            w_ct = result.warp(ct, interpolation="linear", default_value=AIR_HU)
            w_lung = result.warp(lung.with_array(lung.array.astype(np.float32)), default_value=0.0)
        warped_ct[case_id], warped_lung[case_id] = w_ct, w_lung
        ct_sum += w_ct.array
        lung_sum += w_lung.array
        dices.append(_dice(np.asarray(w_lung.array) >= 0.5, fixed_lung.array > 0))
        if progress is not None:
            progress(f"template {label}: {n}/{len(cases)} {case_id} (lung Dice {dices[-1]:.3f})")
    count = float(len(cases))
    mean_ct = fixed_ct.with_array((ct_sum / count).astype(np.float32))
    mean_lung = fixed_ct.with_array(((lung_sum / count) >= 0.5).astype(np.uint8))
    return mean_ct, mean_lung, warped_ct, warped_lung, dices


def build_template(
    cases: Sequence[TemplateCase],
    settings: TemplateSettings | None = None,
    *,
    progress: Progress | None = None,
) -> TemplateBuild:
    """Build a lung template from baseline CTs (see the module docstring).

    Args:
        cases: at least two baselines with distinct ids.
        settings: spacing, margin, refinement passes, backend and parameters.
        progress: called with a line of text after each registration.

    Returns:
        A :class:`TemplateBuild` whose ``template.metadata`` records the build.

    Raises:
        TemplateError: fewer than two cases, duplicate ids, an empty lung mask.
        inference.registration.RegistrationError: a registration failed.
    """
    settings = settings or TemplateSettings()
    if len(cases) < 2:
        raise TemplateError(f"a template needs at least 2 baselines, got {len(cases)}")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise TemplateError("template case ids must be distinct")
    start = time.perf_counter()
    ordered = sorted(cases, key=lambda c: c.case_id)
    prepared: list[tuple[str, Volume, Volume]] = []
    volumes_ml: dict[str, float] = {}
    for case in ordered:
        try:
            ct, lung = prepare_case(case.ct, case.lung, settings.spacing_mm, settings.margin_mm)
        except ValueError as error:
            raise TemplateError(f"case {case.case_id}: {error}") from error
        prepared.append((case.case_id, ct, lung))
        volumes_ml[case.case_id] = float(lung.array.sum()) * lung.voxel_volume_ml
    by_volume = sorted(prepared, key=lambda p: (volumes_ml[p[0]], p[0]))
    reference_id, reference_ct, reference_lung = by_volume[(len(by_volume) - 1) // 2]

    fixed_ct, fixed_lung, warped_ct, warped_lung, dices = _average(
        prepared, reference_ct, reference_lung, settings, reference_id, progress, "pass 0"
    )
    passes = [{"pass": 0, "fixed": "reference", "lung_dice_mean": float(np.mean(dices))}]
    for n in range(1, settings.iterations + 1):
        fixed_ct, fixed_lung, warped_ct, warped_lung, dices = _average(
            prepared, fixed_ct, fixed_lung, settings, None, progress, f"pass {n}"
        )
        passes.append({"pass": n, "fixed": "template", "lung_dice_mean": float(np.mean(dices))})

    metadata = {
        "format": TEMPLATE_FORMAT,
        "format_version": TEMPLATE_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "iterations": settings.iterations,
        "reference_case": reference_id,
        "reference_rule": "median lung volume (lower median; ties by case id)",
        "cases": ids,
        "case_lung_ml": {k: round(v, 2) for k, v in sorted(volumes_ml.items())},
        "cohort_digest": cohort_digest(cases),
        "registration": settings.registration_record(),
        "passes": passes,
        "template_lung_ml": round(float(fixed_lung.array.sum()) * fixed_lung.voxel_volume_ml, 2),
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    template = LungTemplate(fixed_ct, fixed_lung, metadata)
    return TemplateBuild(template, reference_id, warped_ct, warped_lung, reference_ct)


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, paths and non-finite floats made JSON-ready."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
