"""The weight-free default worsening model: trained in-project on a seeded synthetic cohort.

The app must run without downloaded weights. :func:`default_model` loads the model cached in
``cache_dir``; when there is none it generates a seeded phantom cohort in memory (the patients
``inference.phantoms.write_cohort(patients, seed, shape_kji)`` would write, without the files:
:func:`inference.worsening.cohort.synthetic_cohort`), builds a template from some of its
baselines, transports every pair's *exact* ground-truth log-Jacobian map onto it (training stays
cheap: no pair registration), trains both targets, saves the model into ``cache_dir`` and returns
it. Everything is seeded and runs on one CPU thread, so the same settings give the same model.
With :data:`DEFAULT_SETTINGS` (40 patients on a 48 × 96 × 96 grid, 6 mm template, one
deformable level for the template registrations) a build takes about a minute on one quiet
thread.

Concurrent callers are serialised with an exclusive lock file beside the cache folder; the model
is written to a scratch folder and renamed into place, so a reader never sees half a model. A
corrupt cached model raises :class:`~inference.worsening.classifier.WorseningModelError` (it is
never silently replaced: delete the folder to rebuild).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.worsening.classifier import (
    METADATA_FILE,
    TrainingConfig,
    WorseningModel,
    WorseningModelError,
    load_model,
    save_model,
)
from inference.worsening.template import TemplateSettings, registration_params
from inference.worsening.training import CohortTrainingSettings, train_from_cases

Progress = Callable[[str], None]


def _default_template() -> TemplateSettings:
    params = registration_params(6.0)
    params.update({"levels_mm": [12.0], "iterations": [40], "affine_iterations": [40]})
    return TemplateSettings(spacing_mm=6.0, margin_mm=12.0, iterations=0, params=params)


@dataclass(frozen=True)
class DefaultModelSettings:
    """The synthetic cohort and training settings of the default model.

    Attributes:
        patients: cohort size (learning set; 80 % training, 20 % validation).
        seed: cohort seed (also the training seed).
        shape_kji: phantom grid (a 358 × 358 × 320 mm field of view).
        training: cohort-training settings (template, maps, network, optimisation).
    """

    patients: int = 40
    seed: int = 20210
    shape_kji: tuple[int, int, int] = (48, 96, 96)
    training: CohortTrainingSettings = field(
        default_factory=lambda: CohortTrainingSettings(
            template=_default_template(),
            template_cases=8,
            maps="exact",
            lungs="truth",
            training=TrainingConfig(epochs=50, seed=20210, smoothing_mm=4.0),
        )
    )

    def as_dict(self) -> dict[str, Any]:
        return {
            "patients": self.patients,
            "seed": self.seed,
            "shape_kji": list(self.shape_kji),
            "training": self.training.as_dict(),
        }


DEFAULT_SETTINGS = DefaultModelSettings()


def default_cache_dir() -> Path:
    """``$ILD_MODELS_DIR/worsening``, else ``$ILD_VAR_DIR/models/worsening``, else
    ``var/models/worsening`` (as the segmentation models)."""
    from inference.segmentation.weights import default_model_dir

    return default_model_dir("worsening")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build_default_model(
    out_dir: Path | str,
    settings: DefaultModelSettings = DEFAULT_SETTINGS,
    *,
    progress: Progress | None = None,
) -> WorseningModel:
    """Write the synthetic cohort in a scratch folder, train, save into ``out_dir``."""
    from inference.worsening.cohort import synthetic_cohort

    out = Path(out_dir)
    cases = synthetic_cohort(
        patients=settings.patients, seed=settings.seed, shape_kji=settings.shape_kji
    )
    if progress is not None:
        progress(f"synthetic cohort generated: {settings.patients} patients, seed {settings.seed}")
    record = {
        "cohort": f"inference.phantoms.write_cohort(patients={settings.patients}, "
        f"seed={settings.seed}, shape_kji={tuple(settings.shape_kji)}), generated in memory",
        "origin": "default_model (weight-free, trained in-project on phantoms)",
        "default_settings": settings.as_dict(),
    }
    result = train_from_cases(cases, settings.training, training_record=record, progress=progress)
    model = result.model
    metadata = dict(model.metadata)
    metadata["training"] = {**dict(metadata.get("training", {})), "seconds": result.seconds}
    model = WorseningModel(
        model.template, model.input_spec, model.networks, model.thresholds, metadata
    )
    save_model(model, out)
    return load_model(out)


def default_model(
    cache_dir: Path | str | None = None,
    *,
    settings: DefaultModelSettings = DEFAULT_SETTINGS,
    progress: Progress | None = None,
) -> WorseningModel:
    """The cached default model, built (deterministically) on first use.

    Args:
        cache_dir: model folder; default :func:`default_cache_dir`.
        settings: cohort and training settings (tests pass smaller ones).
        progress: called with a line of text per step of a build.

    Returns:
        The loaded model.

    Raises:
        WorseningModelError: a model folder is there but corrupt (delete it to rebuild).
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if (folder / METADATA_FILE).is_file():
        return load_model(folder)
    lock = folder.parent / f".{folder.name}.lock"
    with _locked(lock):
        if (folder / METADATA_FILE).is_file():  # another process built it meanwhile
            return load_model(folder)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise WorseningModelError(
                f"{folder} exists but holds no worsening model ({METADATA_FILE} missing); "
                "remove it or choose another cache_dir"
            )
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
        try:
            build_default_model(scratch, settings, progress=progress)
            scratch.chmod(0o755)  # mkdtemp makes it private; the cache is shared by workers
            if folder.exists():
                folder.rmdir()  # empty (checked above)
            os.replace(scratch, folder)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
    return load_model(folder)
