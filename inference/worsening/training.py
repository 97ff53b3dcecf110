"""Train the worsening model from a cohort folder: template, maps, split, both targets.

Steps (:func:`train_from_cohort`):

1. read the cohort (:func:`inference.worsening.cohort.read_cohort`);
2. build the template from the baselines of ``template_cases`` patients drawn with the seed (all
   when ``None``), unless a template is given;
3. every pair's log-Jacobian map (``"exact"`` ground truth or ``"registered"`` with the torch
   backend) transported onto the template;
4. one learning-set split, stratified on (functional, morphologic) labels: ``val_fraction`` for
   validation, the rest for training (the paper's 80 %/20 %);
5. one network per target (:func:`inference.worsening.classifier.train_target`); patients whose
   functional status cannot be decided from their PFTs are left out of that target only.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.worsening.classifier import (
    InputSpec,
    TargetTraining,
    TrainingConfig,
    WorseningModel,
    build_model,
    dataset_digest,
    stratified_split,
    train_target,
)
from inference.worsening.cohort import (
    CaseMap,
    LungSource,
    MapSource,
    PairCase,
    case_map,
    read_cohort,
    template_case,
)
from inference.worsening.template import (
    LungTemplate,
    TemplateSettings,
    build_template,
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CohortTrainingSettings:
    """Everything :func:`train_from_cohort` needs besides the cohort.

    Attributes:
        template: template build and registration settings.
        template_cases: baselines used for the template (a seeded draw); ``None``: all.
        maps: ``"exact"`` (phantom ground truth) or ``"registered"`` (torch backend).
        lungs: lung masks from the ground truth or the classical segmentation.
        registration_spacing_mm: isotropic grid of the pair registrations (``"registered"``).
        training: network and optimisation settings.
    """

    template: TemplateSettings = field(default_factory=TemplateSettings)
    template_cases: int | None = 12
    maps: MapSource = "exact"
    lungs: LungSource = "truth"
    registration_spacing_mm: float = 4.0
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def as_dict(self) -> dict[str, Any]:
        return {
            "template": {
                **self.template.registration_record(),
                "iterations": self.template.iterations,
            },
            "template_cases": self.template_cases,
            "maps": self.maps,
            "lungs": self.lungs,
            "registration_spacing_mm": self.registration_spacing_mm,
            "training": self.training.as_dict(),
        }


@dataclass(frozen=True, eq=False)
class CohortTraining:
    """A trained model and what went into it."""

    model: WorseningModel
    cases: list[PairCase]
    maps: list[CaseMap]
    train_ids: list[str]
    val_ids: list[str]
    seconds: dict[str, float]


def choose_template_cases(
    cases: Sequence[PairCase], count: int | None, seed: int
) -> list[PairCase]:
    """``count`` cases drawn with ``seed`` (all when ``None`` or at least the cohort size)."""
    if count is None or count >= len(cases):
        return list(cases)
    if count < 2:
        raise ValueError(f"template_cases must be at least 2, got {count}")
    order = np.random.default_rng([int(seed), 1618]).permutation(len(cases))[:count]
    return [cases[int(i)] for i in sorted(order)]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes())
    return f"sha256:{digest.hexdigest()}"


def labels_of(cases: Sequence[PairCase]) -> dict[str, list[bool | None]]:
    return {
        "functional": [c.functional_worsening for c in cases],
        "morphologic": [c.morphologic_worsening for c in cases],
    }


def train_on_maps(
    template: LungTemplate,
    case_ids: Sequence[str],
    maps: Sequence[npt.NDArray[np.floating]],
    labels: dict[str, list[bool | None]],
    config: TrainingConfig,
    *,
    training_record: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> tuple[WorseningModel, list[str], list[str]]:
    """Split, train both targets and assemble the model from template-space maps.

    Returns:
        ``(model, training ids, validation ids)``.

    Raises:
        ValueError: as :func:`~inference.worsening.classifier.train_target`.
    """
    spec = InputSpec.for_template(
        template, scale=config.scale, clip=config.clip, smoothing_mm=config.smoothing_mm
    )
    inputs = np.stack([spec.prepare(m, template.lung.array) for m in maps]).astype(np.float32)
    strata = [(labels["functional"][n], labels["morphologic"][n]) for n in range(len(case_ids))]
    train_idx, val_idx = stratified_split(
        strata, val_fraction=config.val_fraction, seed=config.seed
    )
    trained: dict[str, TargetTraining] = {}
    for target in ("functional", "morphologic"):
        known = [n for n, v in enumerate(labels[target]) if v is not None]
        y = [bool(v) for v in labels[target]]
        trained[target] = train_target(
            target,
            inputs,
            y,
            [n for n in train_idx if n in known],
            [n for n in val_idx if n in known],
            config,
        )
        if progress is not None:
            rec = trained[target].record
            progress(
                f"{target}: best epoch {rec['best_epoch']}, threshold {rec['threshold']:.3f}, "
                f"{rec['seconds']} s"
            )
    record = {
        **(training_record or {}),
        "dataset_digest": dataset_digest(list(case_ids), inputs, labels),
        "cases": list(case_ids),
        "train_cases": [case_ids[n] for n in train_idx],
        "validation_cases": [case_ids[n] for n in val_idx],
    }
    model = build_model(template, trained, config, training=record)
    return model, [case_ids[n] for n in train_idx], [case_ids[n] for n in val_idx]


def train_from_cases(
    cases: Sequence[PairCase],
    settings: CohortTrainingSettings | None = None,
    *,
    template: LungTemplate | None = None,
    training_record: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> CohortTraining:
    """Build (or reuse) the template, map every pair, train both targets.

    Raises:
        TemplateError, RegistrationError, ValueError: from the steps.
    """
    settings = settings or CohortTrainingSettings()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if template is None:
        chosen = choose_template_cases(cases, settings.template_cases, settings.training.seed)
        t0 = time.perf_counter()
        build = build_template(
            [template_case(c, settings.lungs) for c in chosen],
            settings.template,
            progress=progress,
        )
        template = build.template
        seconds["template"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    maps = []
    for n, case in enumerate(cases, start=1):
        maps.append(
            case_map(
                case,
                template,
                source=settings.maps,
                lungs=settings.lungs,
                registration_spacing_mm=settings.registration_spacing_mm,
            )
        )
        if progress is not None:
            progress(
                f"map {n}/{len(cases)} {case.case_id} ({settings.maps}): template lung Dice "
                f"{maps[-1].template_lung_dice:.3f}"
            )
    seconds["maps"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    record = {
        **(training_record or {}),
        "maps": settings.maps,
        "lungs": settings.lungs,
        "registration_spacing_mm": settings.registration_spacing_mm,
        "settings": settings.as_dict(),
    }
    model, train_ids, val_ids = train_on_maps(
        template,
        [c.case_id for c in cases],
        [m.template_map for m in maps],
        labels_of(cases),
        settings.training,
        training_record=record,
        progress=progress,
    )
    seconds["training"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start
    return CohortTraining(
        model, list(cases), maps, train_ids, val_ids, {k: round(v, 2) for k, v in seconds.items()}
    )


def train_from_cohort(
    cohort_dir: Path | str,
    settings: CohortTrainingSettings | None = None,
    *,
    template: LungTemplate | None = None,
    progress: Progress | None = None,
) -> CohortTraining:
    """:func:`train_from_cases` on a ``write_cohort`` folder.

    Raises:
        CohortError: unreadable cohort.
        TemplateError, RegistrationError, ValueError: from the steps.
    """
    root = Path(cohort_dir)
    cases = read_cohort(root)
    record = {"cohort": str(root), "cohort_manifest_digest": file_digest(root / "cohort.json")}
    return train_from_cases(
        cases, settings, template=template, training_record=record, progress=progress
    )
