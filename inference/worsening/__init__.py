"""Longitudinal worsening engine: lung template, template-space maps, Figure 5, CNN classifier.

Follows Chassagnon et al., Radiology 2021 (Jacobian maps of follow-up → baseline registration,
registered to a common template, averaged per group, and classified by a small 3D CNN for
functional and morphologic worsening).

Public interface::

    from inference.worsening import default_model, load_model, predict_worsening

    model = default_model(cache_dir)            # or load_model(MODEL_DIR)
    prediction = predict_worsening(baseline_ct, baseline_lung, log_jacobian, model)
    prediction.as_dict()   # probabilities, flags, thresholds, model version, mean log-Jacobian

Modules: :mod:`~inference.worsening.template` (build, save/load, ``to_template``),
:mod:`~inference.worsening.figures` (group maps, sagittal projections, PNG),
:mod:`~inference.worsening.classifier` (network, training, thresholds, model folder, prediction),
:mod:`~inference.worsening.cohort` (phantom cohort folders, exact or registered maps),
:mod:`~inference.worsening.training` (cohort → model), :mod:`~inference.worsening.default`
(weight-free default model).
"""

from __future__ import annotations

from inference.worsening.classifier import (
    TARGETS,
    InputSpec,
    TrainingConfig,
    WorseningCNN,
    WorseningModel,
    WorseningModelError,
    WorseningPrediction,
    choose_threshold,
    evaluate,
    load_model,
    predict_worsening,
    save_model,
    train_target,
)
from inference.worsening.default import DefaultModelSettings, default_cache_dir, default_model
from inference.worsening.figures import (
    figure5,
    group_mean_maps,
    render_projections,
    sagittal_projection,
)
from inference.worsening.template import (
    LungTemplate,
    TemplateCase,
    TemplateError,
    TemplateSettings,
    build_template,
    register_to_template,
    to_template,
)

__all__ = [
    "TARGETS",
    "DefaultModelSettings",
    "InputSpec",
    "LungTemplate",
    "TemplateCase",
    "TemplateError",
    "TemplateSettings",
    "TrainingConfig",
    "WorseningCNN",
    "WorseningModel",
    "WorseningModelError",
    "WorseningPrediction",
    "build_template",
    "choose_threshold",
    "default_cache_dir",
    "default_model",
    "evaluate",
    "figure5",
    "group_mean_maps",
    "load_model",
    "predict_worsening",
    "register_to_template",
    "render_projections",
    "sagittal_projection",
    "save_model",
    "to_template",
    "train_target",
]
