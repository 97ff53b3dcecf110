"""The U-Net comparator engine (Chassagnon et al. 2020): one 2D network, slice by slice.

``predict(ct)``: the CT is reoriented to LPS axes (permutation only), every axial slice is
windowed and scaled (``input_spec``), resampled in-plane to the network's size (same field of
view, antialiased), segmented into 3 classes (0 background, 1 lung without ILD, 2 ILD), and the
softmax probabilities are resampled back to the slice's own size before the argmax — after
removing the prior shift of the class weights the network was trained with (the paper's
{1, 4, 65}; :func:`inference.networks.slicewise.remove_class_weights`), when the model records
them. Voxels
outside the body (tissue above -500 HU, holes filled) are never lung (``restrict_to_body``).
The label map is on the input CT's grid.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.networks.slicewise import (
    body_mask,
    canonical,
    predict_slices,
    remove_class_weights,
    resize_slices,
)
from inference.segmentation.engines import EngineUnavailable, SegmentationResult, register_engine
from inference.segmentation.weights import (
    InputSpec,
    WeightsError,
    load_network,
    read_metadata,
    recorded_ild_threshold,
    resolve_model_dir,
)
from inference.volume import Volume

ENGINE_NAME = "unet"
ENGINE_VERSION = "1.1.0"


class UNetEngine:
    """One trained ``UNet2D`` applied slice-wise; see the module docstring.

    Args:
        network: the trained network (3 output classes).
        input_spec: its input (size, HU window).
        model_version: the model folder's version (recorded in results).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        batch_size: slices per forward pass.
        restrict_to_body: no lung outside the body mask.
        class_weights: the (background, lung, ILD) class weights the network was trained with;
            their prior shift is removed before the argmax (``None``: plain argmax).
        ild_threshold: ``None``, the argmax; else lung where P(lung) + P(ILD) ≥ 0.5 and ILD
            inside it where P(ILD) reaches this (the cut the model's training chose on its
            validation split; see ``inference.training.train``).
    """

    name = ENGINE_NAME

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        input_spec: InputSpec,
        model_version: str = "untracked",
        device: str = "cpu",
        batch_size: int = 8,
        restrict_to_body: bool = True,
        class_weights: tuple[float, float, float] | None = None,
        ild_threshold: float | None = None,
    ) -> None:
        if ild_threshold is not None and not 0.0 < ild_threshold < 1.0:
            raise ValueError(f"ild_threshold must be in (0, 1), got {ild_threshold}")
        self.network = network.to(device).eval()
        self.input_spec = input_spec
        self.model_version = model_version
        self.device = device
        self.batch_size = batch_size
        self.restrict_to_body = restrict_to_body
        self.class_weights = class_weights
        self.ild_threshold = ild_threshold

    @property
    def version(self) -> str:
        return f"{ENGINE_VERSION}/{self.model_version}"

    @classmethod
    def from_folder(cls, folder: Path, *, device: str = "cpu", **options: Any) -> UNetEngine:
        """Load a checked model folder (see :mod:`inference.segmentation.weights`).

        Raises:
            WeightsError: anything wrong with the folder.
        """
        metadata = read_metadata(folder, model="unet")
        if len(metadata.networks) != 1:
            raise WeightsError(f"{folder}: a U-Net model has exactly one network")
        network = load_network(folder, metadata, metadata.networks[0], device=device)
        options.setdefault("class_weights", training_class_weights(metadata.training))
        options.setdefault("ild_threshold", recorded_ild_threshold(metadata.training))
        return cls(
            network,
            input_spec=metadata.input_spec,
            model_version=metadata.version,
            device=device,
            **options,
        )

    @classmethod
    def create(cls, *, weights: Path | None = None, device: str = "cpu") -> UNetEngine:
        """The registry factory: ``weights`` folder, or the default trained-in-project folder.

        Raises:
            EngineUnavailable: no model there (the message says how to train one), a model that
                fails its checks, or CUDA asked for but absent.
        """
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailable(f"device {device!r} asked for, but CUDA is not available here")
        try:
            return cls.from_folder(resolve_model_dir(weights, "unet"), device=device)
        except WeightsError as error:
            raise EngineUnavailable(str(error)) from error

    def parameters(self) -> dict[str, object]:
        return {
            "in_plane_size": list(self.input_spec.in_plane_size),
            "restrict_to_body": self.restrict_to_body,
            "class_weights_removed": list(self.class_weights) if self.class_weights else None,
            "ild_threshold": self.ild_threshold,
            "device": self.device,
        }

    def predict(self, ct: Volume) -> SegmentationResult:
        """Segment ``ct`` (HU, array ``[k, j, i]``, any axis-aligned orientation)."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        view = canonical(ct)
        hu = np.asarray(view.volume.array)
        n_k, n_j, n_i = view.volume.shape_kji
        labels = np.zeros((n_k, n_j, n_i), np.uint8)
        size = self.input_spec.in_plane_size
        timings["reorient"] = time.perf_counter() - start

        t = time.perf_counter()
        slices = np.empty((n_k, *size), np.float32)
        for k0 in range(0, n_k, 16):
            k1 = min(n_k, k0 + 16)
            block = torch.from_numpy(self.input_spec.normalise(hu[k0:k1]))[:, None]
            slices[k0:k1] = resize_slices(block, size)[:, 0].numpy()
        timings["preprocess"] = time.perf_counter() - t

        weights = self.class_weights
        threshold = self.ild_threshold

        def decide(probs: list[torch.Tensor]) -> list[torch.Tensor]:
            # On the network's device: only the labels come back.
            p = probs[0]
            if weights is not None:
                p = torch.as_tensor(remove_class_weights(p, weights, axis=1))
            if threshold is None:
                return [p.argmax(dim=1).to(torch.uint8)]
            lung = (p[:, 1] + p[:, 2]) >= 0.5
            ild = lung & (p[:, 2] >= threshold)
            return [lung.to(torch.uint8) + ild.to(torch.uint8)]

        def keep(k0: int, k1: int, decided: list[torch.Tensor]) -> None:
            labels[k0:k1] = decided[0].numpy()

        t = time.perf_counter()
        predict_slices(
            self.network,
            slices,
            device=self.device,
            batch_size=self.batch_size,
            out_size=(n_j, n_i),
            consume=keep,
            decide=decide,
        )
        timings["network"] = time.perf_counter() - t

        t = time.perf_counter()
        if self.restrict_to_body:
            labels[~body_mask(hu)] = 0
        label_map = view.restore(labels)
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        return SegmentationResult.from_label_map(
            label_map,
            engine=self.name,
            version=self.version,
            timings_s=timings,
            parameters=self.parameters(),
        )


def training_class_weights(training: dict[str, Any]) -> tuple[float, float, float] | None:
    """The (background, lung, ILD) class weights in a model's ``training.config``, if any.

    Raises:
        WeightsError: weights that are present but malformed.
    """
    weights = (training.get("config") or {}).get("unet_class_weights")
    if weights is None:
        return None
    try:
        values = tuple(float(w) for w in weights)
    except (TypeError, ValueError) as error:
        raise WeightsError(f"metadata training.config.unet_class_weights: {error}") from error
    if len(values) != 3 or min(values) <= 0:
        raise WeightsError("metadata training.config.unet_class_weights must be 3 positive numbers")
    return (values[0], values[1], values[2])


def _factory(*, weights: Path | None = None, device: str = "cpu") -> UNetEngine:
    return UNetEngine.create(weights=weights, device=device)


register_engine(ENGINE_NAME, _factory, replace=True)

__all__ = ["ENGINE_NAME", "ENGINE_VERSION", "UNetEngine"]
