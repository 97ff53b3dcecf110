"""Lung and interstitial lung disease (ILD) segmentation of chest CT.

* :mod:`.engines`: the result type (:class:`SegmentationResult`) and the engine registry
  (:func:`get_engine`: ``"classical"``; ``"atlasnet"`` and ``"unet"`` are registered by the
  network engine modules when :mod:`inference.networks.engines` is imported, which
  :func:`get_engine` does on demand).
* :mod:`.classical`: the default, weight-free engine (:func:`lung_mask`, :func:`ild_mask`,
  :func:`segment`).
* :mod:`.pipeline`: ``preprocess → infer → postprocess → write`` with timings per stage.
* :mod:`.metrics`: Dice (3D, per slice) and volume agreement.

Label map convention: 0 background, 1 lung without ILD, 2 ILD (lung = 1 ∪ 2); the right/left
lung map uses 1 right, 2 left.
"""

from __future__ import annotations

from inference.segmentation.classical import (
    ClassicalEngine,
    ClassicalParameters,
    ild_mask,
    lung_mask,
    segment,
)
from inference.segmentation.engines import (
    BACKGROUND,
    ILD,
    LUNG,
    Engine,
    EngineUnavailable,
    SegmentationResult,
    SliceMeasure,
    available_engines,
    get_engine,
    register_engine,
)
from inference.segmentation.metrics import dice, dice_per_slice, median_slice_dice
from inference.segmentation.pipeline import SegmentationPipeline, run_segmentation

__all__ = [
    "BACKGROUND",
    "ILD",
    "LUNG",
    "ClassicalEngine",
    "ClassicalParameters",
    "Engine",
    "EngineUnavailable",
    "SegmentationPipeline",
    "SegmentationResult",
    "SliceMeasure",
    "available_engines",
    "dice",
    "dice_per_slice",
    "get_engine",
    "ild_mask",
    "lung_mask",
    "median_slice_dice",
    "register_engine",
    "run_segmentation",
    "segment",
]
