"""Training of the segmentation networks (AtlasNet, U-Net). Never imported by inference code.

* :mod:`.datasets`: training data folders — a phantom cohort (``inference.phantoms``) or an
  export of the app's reader contours (format documented there; :func:`write_contour_export`).
* :mod:`.augment`: the U-Net comparator's rotations and translations.
* :mod:`.train`: :func:`train_model` (seeded, SGD with the paper's schedule, model folders with
  ``metadata.json``).

Command line: ``python -m inference.train_segmentation DATASET --model {atlasnet,unet}``.
"""

from __future__ import annotations
