"""Registers the network engines (``"atlasnet"``, ``"unet"``) with the segmentation registry.

:data:`inference.segmentation.engines.ENGINE_MODULES` names this module for both reserved
names; importing it imports the two engine modules, which call ``register_engine``.
"""

from __future__ import annotations

from inference.segmentation import atlasnet_engine, unet_engine

__all__ = ["atlasnet_engine", "unet_engine"]
