"""Cohort folders for the worsening engine: reading a ``write_cohort`` folder, and template-space
log-Jacobian maps of its pairs (exact ground truth, or our torch registration).

A cohort is what :func:`inference.phantoms.write_cohort` writes (``cohort.json``, ``pft.csv``,
per patient ``baseline/``, ``followup/`` and ``pair/``; see :mod:`inference.phantoms.cohort`).
Per patient:

* **functional worsening** from the PFTs in ``pft.csv`` (the rows dated as the manifest's
  baseline/follow-up PFTs) through :func:`inference.stats.longitudinal.functional_worsening`;
* **morphologic worsening**: the cohort tag ``"worse"`` (the phantoms' ground truth for the visual
  call); the three-way tag (``improved``/``stable``/``worse``) is kept for Figure 5;
* **ILD extent change** from the ground-truth label maps (manifest), and optionally from the
  classical segmentation of both CTs (:func:`classical_extent_change`).

Maps (:func:`case_map`):

* ``"exact"``: the phantom's ``pair/log_jacobian.nii.gz`` (true deformation, baseline grid);
* ``"registered"``: both CTs resampled to ``registration_spacing_mm`` isotropic, the follow-up
  registered onto the baseline with :func:`inference.registration.register` (torch backend,
  lung masks), and ``log det(I + grad u)`` computed as ``python -m inference.register`` does.

Either map is then transported onto the template (:func:`inference.worsening.template.to_template`).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from inference.stats.longitudinal import functional_worsening
from inference.volume import Volume
from inference.worsening.template import (
    LungTemplate,
    TemplateCase,
    register_to_template,
)

MapSource = Literal["exact", "registered"]
LungSource = Literal["truth", "classical"]
MAP_SOURCES: tuple[str, ...] = ("exact", "registered")
LUNG_SOURCES: tuple[str, ...] = ("truth", "classical")


class CohortError(ValueError):
    """A cohort folder cannot be read (missing manifest, file or PFT)."""


def pair_registration_params(spacing_mm: float, *, threads: int | None = 1) -> dict[str, Any]:
    """Torch-backend parameters for a baseline/follow-up pair at a coarse ``spacing_mm``:
    affine at ``2 s``, deformable at ``2 s`` then ``s`` mm (about 7 s per pair at 4 mm on one
    thread)."""
    params: dict[str, Any] = {
        "affine_levels_mm": [2.0 * spacing_mm],
        "affine_iterations": [60],
        "levels_mm": [2.0 * spacing_mm, spacing_mm],
        "iterations": [40, 30],
        "seed": 0,
    }
    if threads is not None:
        params["threads"] = int(threads)
    return params


class PairCase(Protocol):
    """What the worsening engine needs of one patient (a cohort-folder or in-memory case)."""

    @property
    def case_id(self) -> str: ...

    @property
    def morphologic_tag(self) -> str: ...

    @property
    def morphologic_worsening(self) -> bool: ...

    @property
    def functional_worsening(self) -> bool | None: ...

    @property
    def extent_change_truth(self) -> float: ...

    def ct(self, timepoint: str) -> Volume: ...

    def lungs(self, timepoint: str) -> Volume: ...

    def exact_log_jacobian(self) -> Volume: ...


class _HasCohortTag(Protocol):
    @property
    def cohort_tag(self) -> str: ...


class _Tagged:
    """The morphologic call of a case whose cohort tag says how its ILD went."""

    @property
    def morphologic_tag(self: _HasCohortTag) -> str:
        """``"improved"``, ``"stable"`` or ``"worse"`` (the cohort tag)."""
        return self.cohort_tag

    @property
    def morphologic_worsening(self: _HasCohortTag) -> bool:
        return self.cohort_tag == "worse"


@dataclass(frozen=True)
class CohortCase(_Tagged):
    """One patient of a cohort folder (volumes are read on demand)."""

    root: Path
    entry: Mapping[str, Any]
    fvc: tuple[float | None, float | None]
    dlco: tuple[float | None, float | None]

    @property
    def case_id(self) -> str:
        return str(self.entry["patient_id"])

    @property
    def cohort_tag(self) -> str:
        return str(self.entry.get("cohort", ""))

    @property
    def functional_worsening(self) -> bool | None:
        return functional_worsening(self.fvc[0], self.fvc[1], self.dlco[0], self.dlco[1])

    @property
    def extent_change_truth(self) -> float:
        """Follow-up minus baseline ILD extent (points of % lung volume), ground-truth labels."""
        tps = self.entry["timepoints"]
        return float(tps["followup"]["extent_pct"]) - float(tps["baseline"]["extent_pct"])

    @property
    def mean_log_jacobian_truth(self) -> float:
        return float(self.entry["pair"]["mean_log_jacobian_lung"])

    def _path(self, *keys: str) -> Path:
        node: Any = self.entry
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                raise CohortError(f"{self.case_id}: manifest has no {'.'.join(keys)}")
            node = node[key]
        path = self.root / str(node)
        if not path.exists():
            raise CohortError(f"{self.case_id}: {path} is missing")
        return path

    def ct(self, timepoint: str) -> Volume:
        """The CT in HU (NIfTI copy when written, else the DICOM series)."""
        from inference.imageio import read_image

        tp = self.entry["timepoints"][timepoint]
        if "ct_nifti" in tp:
            return read_image(self._path("timepoints", timepoint, "ct_nifti"))
        return read_image(self._path("timepoints", timepoint, "dicom_dir"))

    def lungs(self, timepoint: str) -> Volume:
        """Ground-truth lungs (1 right, 2 left)."""
        from inference.imageio import read_image

        return read_image(self._path("timepoints", timepoint, "lungs_lr"))

    def exact_log_jacobian(self) -> Volume:
        from inference.imageio import read_image

        return read_image(self._path("pair", "log_jacobian"))


def read_cohort(folder: Path | str) -> list[CohortCase]:
    """Every patient with a follow-up in a ``write_cohort`` folder, in manifest order.

    Raises:
        CohortError: no ``cohort.json``, no follow-ups, a PFT row missing from ``pft.csv``.
    """
    root = Path(folder)
    manifest_path = root / "cohort.json"
    if not manifest_path.is_file():
        raise CohortError(f"{root}: no cohort.json (write one with python -m inference.phantoms)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CohortError(f"{manifest_path}: cannot read: {error}") from error
    rows: dict[tuple[str, str], dict[str, str]] = {}
    pft_path = root / str(manifest.get("pft_csv", "pft.csv"))
    if pft_path.is_file():
        with pft_path.open(newline="") as handle:
            for line in csv.DictReader(handle):
                rows[(line["patient_id"], line["date"])] = line

    def value(row: Mapping[str, Any] | None, key: str) -> float | None:
        if row is None or row.get(key) in (None, ""):
            return None
        return float(row[key])

    cases = []
    for entry in manifest.get("patients", []):
        if "pair" not in entry or "followup" not in entry.get("timepoints", {}):
            continue
        found: list[dict[str, str] | None] = []
        for tp in ("baseline", "followup"):
            pft = entry["timepoints"][tp].get("pft") or {}
            row: dict[str, str] | None = rows.get((entry["patient_id"], str(pft.get("date"))))
            if row is None and pft:
                row = {k: str(v) for k, v in pft.items()}  # manifest copy of the same session
            found.append(row)
        cases.append(
            CohortCase(
                root,
                entry,
                (value(found[0], "fvc_pct_predicted"), value(found[1], "fvc_pct_predicted")),
                (value(found[0], "dlco_pct_predicted"), value(found[1], "dlco_pct_predicted")),
            )
        )
    if not cases:
        raise CohortError(f"{root}: the cohort has no baseline/follow-up pair")
    return cases


@dataclass(frozen=True, eq=False)
class MemoryCase(_Tagged):
    """One synthetic patient held in memory (no files): the pair and its labels."""

    case_id: str
    cohort_tag: str
    pair: Any  # inference.phantoms.PhantomPair

    @property
    def functional_worsening(self) -> bool | None:
        b, f = self.pair.pft_baseline, self.pair.pft_followup
        return functional_worsening(
            b.fvc_pct_predicted, f.fvc_pct_predicted, b.dlco_pct_predicted, f.dlco_pct_predicted
        )

    @property
    def extent_change_truth(self) -> float:
        return float(self.pair.followup.extent_pct - self.pair.baseline.extent_pct)

    def ct(self, timepoint: str) -> Volume:
        return self._phantom(timepoint).ct  # type: ignore[no-any-return]

    def lungs(self, timepoint: str) -> Volume:
        return self._phantom(timepoint).lungs_lr  # type: ignore[no-any-return]

    def exact_log_jacobian(self) -> Volume:
        return self.pair.log_jacobian  # type: ignore[no-any-return]

    def _phantom(self, timepoint: str) -> Any:
        if timepoint not in ("baseline", "followup"):
            raise CohortError(f"timepoint must be 'baseline' or 'followup', got {timepoint!r}")
        return self.pair.baseline if timepoint == "baseline" else self.pair.followup


def synthetic_cohort(
    *, patients: int, seed: int, shape_kji: tuple[int, int, int]
) -> list[MemoryCase]:
    """The patients ``inference.phantoms.write_cohort(patients=, seed=, shape_kji=)`` would write
    (same extents, tags and patient seeds), generated in memory without DICOM or NIfTI files.

    Raises:
        ValueError: ``patients < 1`` or an invalid grid.
    """
    from inference.phantoms.cohort import COHORT_TAG_PROBABILITIES, COHORT_TAGS, patient_seed
    from inference.phantoms.generator import make_longitudinal_pair
    from inference.phantoms.pft import sample_cohort_extents

    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    rng = np.random.default_rng([int(seed), 424242])
    extents = sample_cohort_extents(rng, patients)
    tags = rng.choice(len(COHORT_TAGS), size=patients, p=COHORT_TAG_PROBABILITIES)
    cases = []
    for n in range(1, patients + 1):
        tag = COHORT_TAGS[int(tags[n - 1])]
        extent = float(round(extents[n - 1], 2))
        if tag == "improved" and extent < 4.0:
            tag = "stable"
        pair = make_longitudinal_pair(
            seed=patient_seed(seed, n), shape_kji=shape_kji, extent_pct=extent, progression=tag
        )
        cases.append(MemoryCase(f"P{n:03d}", tag, pair))
    return cases


def classical_extent_change(case: PairCase, known: dict[str, float] | None = None) -> float:
    """Follow-up minus baseline ILD extent (points) from the classical segmentation.

    ``known`` may hold extents already measured (``{"baseline": ..., "followup": ...}``, as
    :func:`case_map` records them in ``info["classical_extent_pct"]``); the rest is segmented.
    """
    from inference.segmentation.classical import segment

    extents = dict(known or {})
    for tp in ("baseline", "followup"):
        if tp not in extents:
            extents[tp] = float(segment(case.ct(tp)).extent_pct)
    return float(extents["followup"] - extents["baseline"])


def _lung_for(
    case: PairCase,
    timepoint: str,
    ct: Volume,
    source: LungSource,
    info: dict[str, Any] | None = None,
) -> Volume:
    """The lung mask of one CT: ground truth, or the classical segmentation (whose ILD extent is
    then recorded in ``info["classical_extent_pct"][timepoint]``)."""
    if source == "truth":
        return case.lungs(timepoint)
    from inference.segmentation.classical import segment

    result = segment(ct)
    mask = result.lungs_lr if result.lungs_lr is not None else result.label_map
    if not np.any(mask.array):  # the classical engine found nothing: fall back, and say so
        if info is not None:
            info.setdefault("lung_fallback", []).append(timepoint)
        return case.lungs(timepoint)
    if info is not None:
        info.setdefault("classical_extent_pct", {})[timepoint] = float(result.extent_pct)
    return mask


def template_case(case: PairCase, lungs: LungSource = "truth") -> TemplateCase:
    ct = case.ct("baseline")
    return TemplateCase(case.case_id, ct, _lung_for(case, "baseline", ct, lungs))


@dataclass(frozen=True, eq=False)
class PairMap:
    """A pair's log-Jacobian on its baseline's (possibly resampled) grid, with that baseline."""

    log_jacobian: Volume
    baseline_ct: Volume
    baseline_lung: Volume
    seconds: float
    info: dict[str, Any]


def register_pair(
    baseline_ct: Volume,
    followup_ct: Volume,
    baseline_lung: Volume,
    followup_lung: Volume,
    *,
    spacing_mm: float = 4.0,
    params: Mapping[str, Any] | None = None,
    backend: str = "torch",
) -> PairMap:
    """Follow-up onto baseline at ``spacing_mm`` isotropic; the log-Jacobian on that grid.

    The steps of ``python -m inference.register`` (isotropic resampling, lung masks onto the
    resampled grids, affine + deformable registration, ``summarize_jacobian``) on volumes.
    """
    from inference.registration import (
        register,
        resample_isotropic,
        resample_to_grid,
        summarize_jacobian,
    )

    start = time.perf_counter()
    fixed = resample_isotropic(baseline_ct, spacing_mm, default_value=-1024.0)
    moving = resample_isotropic(followup_ct, spacing_mm, default_value=-1024.0)

    def mask_on(mask: Volume, grid: Volume) -> Volume:
        binary = mask.with_array(np.asarray(mask.array).astype(np.uint8))
        return resample_to_grid(binary, grid, interpolation="nearest", default_value=0.0)

    fixed_mask, moving_mask = mask_on(baseline_lung, fixed), mask_on(followup_lung, moving)
    merged = {**pair_registration_params(spacing_mm), **dict(params or {})}
    result = register(
        fixed,
        moving,
        fixed_mask=fixed_mask,
        moving_mask=moving_mask if np.any(moving_mask.array) else None,
        backend=backend,
        params=merged,
    )
    log_jac, summary = summarize_jacobian(result.displacement, fixed, fixed_mask)
    return PairMap(
        fixed.with_array(log_jac),
        fixed,
        fixed_mask,
        time.perf_counter() - start,
        {
            "backend": result.backend,
            "version": result.version,
            "spacing_mm": spacing_mm,
            "mean_log_jacobian": summary.mean_log_jacobian,
            "folding_fraction": summary.folding_fraction,
        },
    )


@dataclass(frozen=True, eq=False)
class CaseMap:
    """A case's log-Jacobian map on the template grid, and where it came from."""

    case_id: str
    template_map: npt.NDArray[np.float32]
    source: str
    mean_log_jacobian_native: float
    mean_log_jacobian_template: float
    template_lung_dice: float
    seconds: dict[str, float]
    info: dict[str, Any]
    log_jacobian: Volume | None = None
    baseline_lung: Volume | None = None


def case_map(
    case: PairCase,
    template: LungTemplate,
    *,
    source: MapSource = "exact",
    lungs: LungSource = "truth",
    registration_spacing_mm: float = 4.0,
    pair_params: Mapping[str, Any] | None = None,
    template_params: Mapping[str, Any] | None = None,
    keep_native: bool = False,
) -> CaseMap:
    """The case's log-Jacobian map (exact or registered) transported onto the template.

    With ``keep_native`` the map on its own grid and the baseline lung mask used are kept in
    the result (``log_jacobian``, ``baseline_lung``), e.g. to run another model on them.

    Raises:
        CohortError: unknown source, missing files.
        ValueError, RegistrationError: from the registrations.
    """
    if source not in MAP_SOURCES:
        raise CohortError(f"map source must be one of {MAP_SOURCES}, got {source!r}")
    if lungs not in LUNG_SOURCES:
        raise CohortError(f"lung source must be one of {LUNG_SOURCES}, got {lungs!r}")
    seconds: dict[str, float] = {}
    info: dict[str, Any] = {"lungs": lungs}
    t0 = time.perf_counter()
    baseline_ct = case.ct("baseline")
    baseline_lung = _lung_for(case, "baseline", baseline_ct, lungs, info)
    seconds["read_and_lungs"] = time.perf_counter() - t0
    if source == "exact":
        log_jacobian = case.exact_log_jacobian()
    else:
        t1 = time.perf_counter()
        followup_ct = case.ct("followup")
        followup_lung = _lung_for(case, "followup", followup_ct, lungs, info)
        seconds["read_and_lungs"] += time.perf_counter() - t1
        pair = register_pair(
            baseline_ct,
            followup_ct,
            baseline_lung,
            followup_lung,
            spacing_mm=registration_spacing_mm,
            params=pair_params,
        )
        seconds["pair_registration"] = pair.seconds
        info["pair_registration"] = pair.info
        log_jacobian = pair.log_jacobian
    inside_native = _native_mean(log_jacobian, baseline_lung)
    reg = register_to_template(baseline_ct, baseline_lung, template, params=template_params)
    seconds["template_registration"] = reg.seconds
    mapped = np.asarray(reg.warp_map(log_jacobian).array, dtype=np.float32)
    inside = template.lung.array > 0
    return CaseMap(
        case_id=case.case_id,
        template_map=mapped,
        source=source,
        mean_log_jacobian_native=inside_native,
        mean_log_jacobian_template=float(mapped[inside].mean(dtype=np.float64)),
        template_lung_dice=reg.lung_dice,
        seconds={k: round(v, 3) for k, v in seconds.items()},
        info=info,
        log_jacobian=log_jacobian if keep_native else None,
        baseline_lung=baseline_lung if keep_native else None,
    )


def _native_mean(values: Volume, lung: Volume) -> float:
    from inference.registration import resample_to_grid

    binary = lung.with_array((np.asarray(lung.array) != 0).astype(np.uint8))
    mask = resample_to_grid(binary, values, interpolation="nearest", default_value=0.0)
    inside = np.asarray(mask.array) != 0
    return (
        float(np.asarray(values.array)[inside].mean(dtype=np.float64))
        if inside.any()
        else float("nan")
    )
