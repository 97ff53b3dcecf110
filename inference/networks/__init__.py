"""Segmentation networks of Chassagnon et al. 2020 (``nn.Module``s; hyper-parameters only).

* :class:`~inference.networks.atlasnet.DualDecoderSegNet`: AtlasNet's per-template network.
* :class:`~inference.networks.unet.UNet2D`: the U-Net comparator.
* :mod:`.losses`: weighted cross-entropy and the semantic constraint.
* :mod:`.slicewise`: slice-wise inference helpers used by the engines.
* :mod:`.engines`: registers the ``"atlasnet"`` and ``"unet"`` engines (imported on demand by
  :func:`inference.segmentation.get_engine`, not here).
"""

from __future__ import annotations

from inference.networks.atlasnet import DualDecoderSegNet
from inference.networks.losses import AtlasNetLoss, semantic_constraint, weighted_cross_entropy
from inference.networks.unet import UNet2D

__all__ = [
    "AtlasNetLoss",
    "DualDecoderSegNet",
    "UNet2D",
    "semantic_constraint",
    "weighted_cross_entropy",
]
