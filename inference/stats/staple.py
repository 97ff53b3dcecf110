"""STAPLE consensus of several readers' binary masks (Warfield et al., IEEE TMI 2004).

STAPLE estimates, by expectation-maximisation, a probabilistic "true" segmentation together with
each rater's sensitivity and specificity against it. We run SimpleITK's ``STAPLEImageFilter``
(binary STAPLE) and threshold the probability map at ``≥ 0.5`` for the consensus mask.

Note that the EM is run over every voxel of the arrays given: a large, trivially empty
background (air outside the body) pushes every rater's specificity towards 1. Crop to the lungs
(or a bounding box) first when the specificities themselves are of interest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from inference.stats._common import BoolArray, FloatArray, jsonable
from inference.volume import GeometryError, Volume


@dataclass(frozen=True, eq=False)
class StapleResult:
    """STAPLE output on the grid of the input masks (axes as given, ``[k, j, i]`` for 3D).

    Attributes:
        probability: per voxel, the estimated probability of foreground in ``[0, 1]``.
        consensus: ``probability ≥ threshold``.
        sensitivity, specificity: per rater, in input order (fractions).
        iterations: EM iterations run.
        threshold: the cut-off used for ``consensus``.
        geometry: the first input ``Volume`` when masks were given as volumes, else ``None``.
    """

    probability: FloatArray
    consensus: BoolArray
    sensitivity: tuple[float, ...]
    specificity: tuple[float, ...]
    iterations: int
    threshold: float
    geometry: Volume | None = None

    def probability_volume(self) -> Volume:
        """The probability map with the inputs' geometry.

        Raises:
            GeometryError: if the masks were plain arrays (no geometry to attach).
        """
        return self._volume(self.probability)

    def consensus_volume(self) -> Volume:
        """The consensus mask (``uint8``, 1 = foreground) with the inputs' geometry.

        Raises:
            GeometryError: if the masks were plain arrays.
        """
        return self._volume(self.consensus.astype(np.uint8))

    def _volume(self, array: npt.NDArray[np.generic]) -> Volume:
        if self.geometry is None:
            raise GeometryError("STAPLE ran on plain arrays; there is no geometry to attach")
        return self.geometry.with_array(array)

    def to_dict(self) -> dict[str, Any]:
        """Summary without the voxel arrays (rater parameters, iterations, consensus size)."""
        return jsonable(
            {
                "sensitivity": list(self.sensitivity),
                "specificity": list(self.specificity),
                "iterations": self.iterations,
                "threshold": self.threshold,
                "consensus_voxels": int(np.count_nonzero(self.consensus)),
                "shape": list(self.consensus.shape),
            }
        )


def staple(
    masks: Sequence[Volume | npt.ArrayLike],
    *,
    threshold: float = 0.5,
    max_iterations: int = 200,
    confidence_weight: float = 1.0,
) -> StapleResult:
    """STAPLE consensus of two or more binary masks of one image.

    Args:
        masks: one mask per rater (non-zero = foreground), same shape, 2D or 3D (``[k, j, i]``);
            either all ``Volume`` on the same grid, or all arrays.
        threshold: probability at or above which a voxel is in the consensus (default 0.5).
        max_iterations: cap on EM iterations (SimpleITK stops earlier on convergence).
        confidence_weight: SimpleITK's prior weight (1.0 = the standard algorithm).

    Returns:
        :class:`StapleResult`.

    Raises:
        ValueError: for fewer than two masks, a threshold outside ``[0, 1]``, or masks that are
            all empty (STAPLE has nothing to estimate and would return NaN).
        GeometryError: if shapes or grids differ, or masks mix ``Volume`` and arrays.
    """
    if len(masks) < 2:
        raise ValueError(f"STAPLE needs at least two masks, got {len(masks)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    volumes = [mask for mask in masks if isinstance(mask, Volume)]
    if volumes and len(volumes) != len(masks):
        raise GeometryError("masks mix Volume and plain arrays")
    if volumes and not all(volumes[0].same_grid(other) for other in volumes[1:]):
        raise GeometryError("the masks are not on the same grid")
    arrays = [np.asarray(mask.array if isinstance(mask, Volume) else mask) != 0 for mask in masks]
    shape = arrays[0].shape
    if any(array.shape != shape for array in arrays):
        raise GeometryError(f"mask shapes differ: {[array.shape for array in arrays]}")
    if len(shape) not in (2, 3):
        raise GeometryError(f"STAPLE needs 2D or 3D masks, got shape {shape}")
    if not any(array.any() for array in arrays):
        raise ValueError("every mask is empty; STAPLE is undefined")

    images = [sitk.GetImageFromArray(array.astype(np.uint8)) for array in arrays]
    if volumes:
        reference = volumes[0].to_sitk()
        for image in images:
            image.CopyInformation(reference)
    staple_filter = sitk.STAPLEImageFilter()
    staple_filter.SetForegroundValue(1.0)
    staple_filter.SetMaximumIterations(int(max_iterations))
    staple_filter.SetConfidenceWeight(float(confidence_weight))
    probability = sitk.GetArrayFromImage(staple_filter.Execute(images)).astype(np.float64)
    return StapleResult(
        probability=probability,
        consensus=np.asarray(probability >= threshold),
        sensitivity=tuple(float(v) for v in staple_filter.GetSensitivity()),
        specificity=tuple(float(v) for v in staple_filter.GetSpecificity()),
        iterations=int(staple_filter.GetElapsedIterations()),
        threshold=float(threshold),
        geometry=volumes[0] if volumes else None,
    )
