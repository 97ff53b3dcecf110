"""Trained segmentation models on disk: weights, templates and ``metadata.json``, saved and loaded.

A *model folder* (MONAI-bundle-like) holds everything one engine needs::

    metadata.json              what the model is (schema below); written last
    network_00.pt …            state_dict of each network (torch.save; loaded weights_only)
    template_00_ct.nii.gz …    AtlasNet only: template CT (HU) on the template grid
    template_00_labels.nii.gz  AtlasNet only: template label map (0/1/2), same grid

``metadata.json`` (``format_version`` 1)::

    {
      "format": "ild-review-segmentation-model", "format_version": 1,
      "model": "atlasnet" | "unet",
      "version": "1.0.0+<first 12 hex of the training-data digest>",
      "created": ISO 8601 UTC,
      "labels": {"0": "background", "1": "lung without ILD", "2": "ILD"},
      "input_spec": {"axis": "axial", "layout": "[N, 1, j, i]", "in_plane_size": [rows, cols],
                     "hu_window": [-1000.0, 400.0], "channels": 1, "dtype": "float32",
                     "normalisation": "..."},
      "network": {"class": "DualDecoderSegNet" | "UNet2D", "hyperparameters": {...}},
      "networks": ["network_00.pt", ...],
      "templates": [{"ct": ..., "labels": ..., "network": ..., "source_case": ...}, ...],
      "registration": {"backend": "torch", "spacing_mm": 6.0, "params": {...}, ...},
      "training": {"dataset_digest": "sha256:...", "dataset": ..., "cases": [...], ...},
      "validation": {"dice_lung": ..., "dice_ild_median_slice": ..., ...},
      "files": {"network_00.pt": "sha256:...", ...}
    }

Loading validates all of it before any tensor is built: the format and version, the model kind,
a known network class whose hyper-parameters it accepts, an input size the network can take,
the listed files present with their recorded SHA-256, and a state_dict that matches the network
exactly. User-supplied ``.pt`` files are read with ``torch.load(weights_only=True)`` (tensors
only, no pickled code). Any failure raises :class:`WeightsError` naming the file and the field.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from inference.records import check_file, check_format, read_json_object, sha256_file

MODEL_FORMAT = "ild-review-segmentation-model"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
MODEL_KINDS = ("atlasnet", "unet")
LABELS: dict[str, str] = {"0": "background", "1": "lung without ILD", "2": "ILD"}
DEFAULT_HU_WINDOW: tuple[float, float] = (-1000.0, 400.0)

ModelKind = Literal["atlasnet", "unet"]


class WeightsError(ValueError):
    """A model folder cannot be used: missing, malformed, tampered or for another network."""


@dataclass(frozen=True)
class InputSpec:
    """What a network takes: axial slices ``[N, 1, rows, cols]`` of windowed, scaled HU.

    ``normalise`` maps HU to ``(clip(HU, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)``, i.e. the
    window onto ``[-1, 1]``.

    Attributes:
        in_plane_size: ``(rows j, cols i)`` of every slice given to the network (pixels).
        hu_window: ``(lo, hi)`` Hounsfield units clipped before scaling.
        channels: input channels (1).
        axis: slicing axis, ``"axial"`` (array axis ``k`` of the model grid).
    """

    in_plane_size: tuple[int, int]
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW
    channels: int = 1
    axis: str = "axial"

    def __post_init__(self) -> None:
        rows, cols = (int(v) for v in self.in_plane_size)
        if rows < 1 or cols < 1:
            raise WeightsError(
                f"input_spec.in_plane_size must be positive, got {self.in_plane_size}"
            )
        lo, hi = (float(v) for v in self.hu_window)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise WeightsError(
                f"input_spec.hu_window must be (lo, hi) with lo < hi, got {self.hu_window}"
            )
        if self.channels != 1:
            raise WeightsError(f"input_spec.channels must be 1, got {self.channels}")
        if self.axis != "axial":
            raise WeightsError(f"input_spec.axis must be 'axial', got {self.axis!r}")
        object.__setattr__(self, "in_plane_size", (rows, cols))
        object.__setattr__(self, "hu_window", (lo, hi))

    def normalise(self, hu: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        """Window and scale HU (any shape) to float32 in ``[-1, 1]``."""
        lo, hi = self.hu_window
        centre, half = (lo + hi) / 2.0, (hi - lo) / 2.0
        clipped = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
        return ((clipped - np.float32(centre)) / np.float32(half)).astype(np.float32)

    def check_multiple(self, multiple: int) -> None:
        """Raise :class:`WeightsError` unless both sizes are multiples of ``multiple``."""
        rows, cols = self.in_plane_size
        if rows % multiple or cols % multiple:
            raise WeightsError(
                f"input_spec.in_plane_size {rows}x{cols} is not a multiple of {multiple}, "
                "which the network's poolings need"
            )

    def as_dict(self) -> dict[str, Any]:
        lo, hi = self.hu_window
        return {
            "axis": self.axis,
            "layout": "[N, 1, j, i]",
            "in_plane_size": list(self.in_plane_size),
            "hu_window": [lo, hi],
            "channels": self.channels,
            "dtype": "float32",
            "normalisation": f"(clip(HU, {lo:g}, {hi:g}) - {(lo + hi) / 2:g}) / {(hi - lo) / 2:g}",
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        """Parse ``metadata["input_spec"]``.

        Raises:
            WeightsError: if a field is missing or malformed.
        """
        try:
            size = data["in_plane_size"]
            window = data.get("hu_window", list(DEFAULT_HU_WINDOW))
            if len(size) != 2 or len(window) != 2:
                raise ValueError("in_plane_size and hu_window need two values")
            return cls(
                in_plane_size=(int(size[0]), int(size[1])),
                hu_window=(float(window[0]), float(window[1])),
                channels=int(data.get("channels", 1)),
                axis=str(data.get("axis", "axial")),
            )
        except WeightsError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise WeightsError(f"metadata input_spec is malformed: {error!r}") from error


@dataclass
class ModelMetadata:
    """The parsed ``metadata.json`` of a model folder (see the module docstring)."""

    model: ModelKind
    version: str
    input_spec: InputSpec
    network_class: str
    hyperparameters: dict[str, Any]
    networks: list[str]
    templates: list[dict[str, Any]] = field(default_factory=list)
    registration: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    created: str = ""
    labels: dict[str, str] = field(default_factory=lambda: dict(LABELS))

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "version": self.version,
            "created": self.created,
            "labels": self.labels,
            "input_spec": self.input_spec.as_dict(),
            "network": {"class": self.network_class, "hyperparameters": self.hyperparameters},
            "networks": self.networks,
            "templates": self.templates,
            "registration": self.registration,
            "training": self.training,
            "validation": self.validation,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = METADATA_FILE) -> ModelMetadata:
        """Parse and check a metadata mapping.

        Raises:
            WeightsError: wrong format or version, unknown model kind or network class,
                missing fields, labels other than the 0/1/2 convention.
        """
        check_format(
            data, source, expected=MODEL_FORMAT, version=FORMAT_VERSION, error=WeightsError
        )
        model = data.get("model")
        if model not in MODEL_KINDS:
            raise WeightsError(f"{source}: 'model' must be one of {MODEL_KINDS}, got {model!r}")
        labels = {str(k): str(v) for k, v in dict(data.get("labels") or {}).items()}
        if labels != LABELS:
            raise WeightsError(f"{source}: 'labels' must be {LABELS}, got {labels}")
        network = data.get("network")
        if not isinstance(network, Mapping) or not isinstance(network.get("class"), str):
            raise WeightsError(f"{source}: 'network' must hold a 'class' name")
        hyper = network.get("hyperparameters", {})
        if not isinstance(hyper, Mapping):
            raise WeightsError(f"{source}: 'network.hyperparameters' must be an object")
        networks = data.get("networks")
        if (
            not isinstance(networks, list)
            or not networks
            or not all(isinstance(n, str) for n in networks)
        ):
            raise WeightsError(f"{source}: 'networks' must list at least one weights file")
        if "input_spec" not in data:
            raise WeightsError(f"{source}: 'input_spec' is missing")
        version = data.get("version")
        if not isinstance(version, str) or not version:
            raise WeightsError(f"{source}: 'version' must be a non-empty string")
        templates = list(data.get("templates") or [])
        if model == "atlasnet":
            if len(templates) != len(networks):
                raise WeightsError(
                    f"{source}: AtlasNet needs one template per network, got {len(templates)} "
                    f"templates for {len(networks)} networks"
                )
            for t in templates:
                if not isinstance(t, Mapping) or not {"ct", "labels", "network"} <= set(t):
                    raise WeightsError(f"{source}: each template needs 'ct', 'labels', 'network'")
        return cls(
            model=model,
            version=version,
            input_spec=InputSpec.from_dict(data["input_spec"]),
            network_class=str(network["class"]),
            hyperparameters=dict(hyper),
            networks=list(networks),
            templates=[dict(t) for t in templates],
            registration=dict(data.get("registration") or {}),
            training=dict(data.get("training") or {}),
            validation=dict(data.get("validation") or {}),
            files={str(k): str(v) for k, v in dict(data.get("files") or {}).items()},
            created=str(data.get("created", "")),
            labels=labels,
        )


def recorded_ild_threshold(training: Mapping[str, Any]) -> float | None:
    """The ILD probability cut a training run chose on its validation split
    (``training.ild_threshold.value``), or None for a model that records none.

    Raises:
        WeightsError: a value that is present but not a number strictly between 0 and 1.
    """
    entry = training.get("ild_threshold")
    if entry is None:
        return None
    try:
        value = float(entry["value"] if isinstance(entry, Mapping) else entry)
    except (TypeError, ValueError, KeyError) as error:
        raise WeightsError(f"metadata training.ild_threshold: {error}") from error
    if not 0.0 < value < 1.0:
        raise WeightsError(f"metadata training.ild_threshold must be in (0, 1), got {value}")
    return value


def default_model_dir(model: str) -> Path:
    """Where ``python -m inference.train_segmentation`` puts a model by default.

    ``$ILD_MODELS_DIR/<model>`` when set, else ``$ILD_VAR_DIR/models/<model>`` (the Makefile
    exports ``ILD_VAR_DIR``), else ``var/models/<model>`` under the working directory.
    """
    models = os.environ.get("ILD_MODELS_DIR")
    if models:
        return Path(models) / model
    return Path(os.environ.get("ILD_VAR_DIR", "var")) / "models" / model


def training_hint(model: str) -> str:
    """The command that trains a model into its default folder (for error messages)."""
    return (
        f"train one with `python -m inference.train_segmentation DATASET_DIR --model {model} "
        f"--out {default_model_dir(model)}` (DATASET_DIR: a phantom cohort from "
        f"`python -m inference.phantoms --out DIR --patients N --seed S`, or a reader-contour "
        f"export), or pass --weights DIR"
    )


def resolve_model_dir(weights: Path | None, model: ModelKind) -> Path:
    """The model folder for ``weights`` (a folder, or its ``metadata.json``), or the default.

    Raises:
        WeightsError: if there is no ``metadata.json`` there (the message says how to train).
    """
    folder = default_model_dir(model) if weights is None else Path(weights)
    if folder.is_file() and folder.name == METADATA_FILE:
        folder = folder.parent
    if not (folder / METADATA_FILE).is_file():
        where = "the default model folder" if weights is None else "the weights folder"
        raise WeightsError(
            f"no trained {model} model: {where} {folder} has no {METADATA_FILE}; "
            + training_hint(model)
        )
    return folder


def read_metadata(folder: Path, *, model: ModelKind | None = None) -> ModelMetadata:
    """Read and check ``folder/metadata.json`` and the files it lists.

    Args:
        folder: a model folder.
        model: the kind the caller needs (``"atlasnet"``/``"unet"``), or ``None`` for any.

    Raises:
        WeightsError: unreadable JSON, failed checks (see :meth:`ModelMetadata.from_dict`), a
            model of another kind, a listed file missing or with another SHA-256.
    """
    path = folder / METADATA_FILE
    data = read_json_object(path, WeightsError, "model metadata")
    metadata = ModelMetadata.from_dict(data, source=str(path))
    if model is not None and metadata.model != model:
        raise WeightsError(f"{path}: this is a {metadata.model} model, not {model}")
    needed = list(metadata.networks)
    for template in metadata.templates:
        needed += [str(template["ct"]), str(template["labels"])]
    for name in needed:
        if Path(name).name != name:
            raise WeightsError(
                f"{path}: file names must be plain names in the folder, got {name!r}"
            )
        check_file(folder / name, metadata.files.get(name), WeightsError)
    return metadata


def network_classes() -> dict[str, type[Any]]:
    """Network classes a model folder may name (constructors take hyper-parameters only)."""
    from inference.networks.atlasnet import DualDecoderSegNet
    from inference.networks.unet import UNet2D

    return {"DualDecoderSegNet": DualDecoderSegNet, "UNet2D": UNet2D}


def build_network(metadata: ModelMetadata) -> Any:
    """An untrained network of the class and hyper-parameters in ``metadata``.

    Raises:
        WeightsError: unknown class, unknown or invalid hyper-parameters, or an input size the
            network cannot take.
    """
    classes = network_classes()
    cls = classes.get(metadata.network_class)
    if cls is None:
        raise WeightsError(
            f"unknown network class {metadata.network_class!r}; known: {sorted(classes)}"
        )
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(metadata.hyperparameters) - accepted)
    if unknown:
        raise WeightsError(f"{metadata.network_class} does not take hyper-parameters {unknown}")
    try:
        network = cls(**metadata.hyperparameters)
    except (TypeError, ValueError) as error:
        raise WeightsError(f"invalid {metadata.network_class} hyper-parameters: {error}") from error
    metadata.input_spec.check_multiple(int(network.size_multiple))
    return network


def load_network(folder: Path, metadata: ModelMetadata, name: str, *, device: str = "cpu") -> Any:
    """Build the network and load ``folder/name`` into it, in eval mode on ``device``.

    The file is read with ``torch.load(weights_only=True)`` and must match the network's
    state_dict exactly (same keys, same shapes).

    Raises:
        WeightsError: the file is not a state_dict, or does not match the network.
    """
    import torch

    network = build_network(metadata)
    path = folder / name
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad or unsafe pickle
        raise WeightsError(f"{path}: not a loadable weights file: {error}") from error
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise WeightsError(f"{path}: expected a state_dict of tensors")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise WeightsError(
            f"{path}: weights do not fit {metadata.network_class}"
            f"({metadata.hyperparameters}): {first}"
        ) from error
    return network.to(device).eval()


def save_model(
    folder: Path,
    metadata: ModelMetadata,
    *,
    state_dicts: Mapping[str, Mapping[str, Any]],
    volumes: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model folder: state_dicts, volumes, then ``metadata.json`` with their SHA-256.

    Args:
        folder: created if needed; files of the same names are overwritten.
        metadata: everything but ``files`` and ``created`` (filled here).
        state_dicts: file name → ``network.state_dict()``.
        volumes: file name → :class:`~inference.volume.Volume` (templates), written with
            :func:`inference.imageio.write_image`.

    Returns:
        The path of ``metadata.json``.

    Raises:
        WeightsError: if ``metadata.networks`` and the template files are not exactly the
            files given.
    """
    import torch

    from inference.imageio import write_image

    volumes = dict(volumes or {})
    template_files = {str(t[key]) for t in metadata.templates for key in ("ct", "labels")}
    if set(state_dicts) != set(metadata.networks) or set(volumes) != template_files:
        raise WeightsError("the files given do not match metadata.networks / templates")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for name, state in state_dicts.items():
        torch.save({k: v.detach().cpu() for k, v in state.items()}, folder / name)
        files[name] = sha256_file(folder / name)
    for name, volume in volumes.items():
        write_image(volume, folder / name)
        files[name] = sha256_file(folder / name)
    metadata.files = files
    metadata.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = folder / METADATA_FILE
    partial = folder / (METADATA_FILE + ".partial")
    partial.write_text(json.dumps(metadata.as_dict(), indent=2, default=_json_default) + "\n")
    partial.replace(path)
    return path


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Sequence):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to metadata.json")
