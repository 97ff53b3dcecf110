"""The worsening classifier on template-space log-Jacobian maps (Chassagnon et al., Radiology 2021).

Paper ("Deep Learning-based Classification"): "a deep learning architecture (fully connected
convolutional neural network with four layers and cross entropy loss) was trained twice,
successively targeting depiction of functional or morphologic changes ... Patients showing visual
improvement were included in the same group as those with stable disease. The Jacobian maps of the
whole lung were used as input, and patients were randomly split into a learning set (80 % for
training and 20 % for validation) and a test set." Appendix E1 is not in the text we have; the
authors' public classifier code builds stride-2 3x3x3 convolutions (each with batch norm and
ReLU) followed by fully connected layers (batch norm, ReLU) and a single-logit linear output
trained with binary cross-entropy on logits and Adam (β₁ = 0.5, weight decay 5e-4), keeping the
epoch of lowest validation loss, with the cut-off then tuned on the validation set. We follow
that:

**Network** (:class:`WorseningCNN`, four learnable layers): ``Conv3d(1→c₁, 3, stride 2) + BN +
ReLU → Conv3d(c₁→c₂, 3, stride 2) + BN + ReLU → flatten → Linear(→h) + BN + ReLU (+ dropout) →
Linear(h→1)``, a logit; ``sigmoid`` gives the probability. Defaults ``c = (8, 16)``, ``h = 16``.

**Input** (:class:`InputSpec`): the template-space log-Jacobian map, optionally smoothed
(Gaussian, ``smoothing_mm``), clipped to ``±clip``, multiplied by the template lung mask (0
outside) and divided by ``scale``; shape ``[N, 1, k, j, i]`` of the template grid.

**Targets**: ``"functional"`` — ATS/ERS worsening from the PFTs (FVC % predicted drop ≥ 10 or
DLCO % predicted drop ≥ 15 points, :func:`inference.stats.longitudinal.functional_worsening`);
``"morphologic"`` — the visual call "worse" (improvement counts as not worse).

**Training** (:func:`train_target`): seeded (weights, shuffling), Adam, BCE on logits; the epoch
with the lowest validation loss is kept; the decision threshold is then chosen on the validation
set only (:func:`choose_threshold`: Youden's J on the validation ROC, the cut-off halfway between
the chosen validation probability and the next lower one).

**Model folder** (:func:`save_model` / :func:`load_model`)::

    model.pt          {"functional": state_dict, "morphologic": state_dict} (torch.save)
    metadata.json     format, version, targets (definition, threshold, validation metrics),
                      input_spec (incl. template digest), network, training (dataset digest,
                      cases, config), files' SHA-256 — written last
    template/         the lung template (:class:`~inference.worsening.template.LungTemplate`)

**Prediction** (:func:`predict_worsening`): baseline CT + lung mask + log-Jacobian map (from the
registration job) → registration of the baseline onto the template → map transported → both
networks → :class:`WorseningPrediction` (plain values).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from inference.records import check_file, read_record, sha256_file
from inference.stats.diagnostic import DiagnosticMetrics, diagnostic_metrics, roc_threshold
from inference.volume import Volume
from inference.worsening.template import (
    LungTemplate,
    TemplateError,
    jsonable,
    register_to_template,
)

MODEL_FORMAT = "ild-review-worsening-model"
MODEL_FORMAT_VERSION = 1
MODEL_VERSION = "1.0.0"
MODEL_FILE = "model.pt"
METADATA_FILE = "metadata.json"
TEMPLATE_DIR = "template"
TARGETS = ("functional", "morphologic")
TARGET_DEFINITIONS = {
    "functional": (
        "ATS/ERS/JRS/ALAT functional worsening: FVC % predicted drop >= 10 points or DLCO % "
        "predicted drop >= 15 points (inference.stats.longitudinal.functional_worsening)"
    ),
    "morphologic": (
        "visual morphologic worsening at CT (improvement grouped with stability); in phantom "
        "cohorts the cohort tag 'worse'"
    ),
}
NETWORK_CLASS = "WorseningCNN"
DEFAULT_CONV_CHANNELS: tuple[int, ...] = (8, 16)
DEFAULT_HIDDEN_UNITS = 16

FloatArray = npt.NDArray[np.float32]


class WorseningModelError(ValueError):
    """A worsening model folder cannot be used: missing, malformed, corrupt or inconsistent."""


# ----------------------------------------------------------------------------------- network


def _conv_out(n: int) -> int:
    return (n + 2 * 1 - 3) // 2 + 1


class WorseningCNN(nn.Module):
    """Stride-2 3D convolutions (BN + ReLU) then fully connected layers: four learnable layers
    with the defaults.

    Args:
        input_shape_kji: template grid ``(k, j, i)``; the input is ``[N, 1, k, j, i]``.
        conv_channels: output channels of each 3x3x3 stride-2 convolution (1 to 3 of them).
        hidden_units: width of the hidden fully connected layer (BN + ReLU + dropout); 0 for
            none (the convolutions then feed the output layer directly).
        dropout: dropout before the output layer (0 disables it).

    ``forward`` returns one logit per case ``[N]``; :meth:`probability` its sigmoid.
    """

    def __init__(
        self,
        input_shape_kji: Sequence[int],
        conv_channels: Sequence[int] = DEFAULT_CONV_CHANNELS,
        hidden_units: int = DEFAULT_HIDDEN_UNITS,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        shape = [int(n) for n in input_shape_kji]
        channels = [int(c) for c in conv_channels]
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"input_shape_kji must be three positive sizes, got {input_shape_kji}")
        if not 1 <= len(channels) <= 3 or min(channels) < 1:
            raise ValueError(f"conv_channels must be 1 to 3 positive counts, got {conv_channels}")
        if int(hidden_units) < 0:
            raise ValueError(f"hidden_units must be >= 0, got {hidden_units}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_shape_kji = tuple(shape)
        layers: list[nn.Module] = []
        previous = 1
        for count in channels:
            layers += [
                nn.Conv3d(previous, count, 3, stride=2, padding=1),
                nn.BatchNorm3d(count),
                nn.ReLU(inplace=True),
            ]
            previous = count
        self.features = nn.Sequential(*layers)
        reduced = shape
        for _ in channels:
            reduced = [_conv_out(n) for n in reduced]
        self.flat_features = channels[-1] * int(np.prod(reduced))
        head: list[nn.Module] = []
        width = self.flat_features
        if int(hidden_units) > 0:
            head += [
                nn.Linear(width, int(hidden_units)),
                nn.BatchNorm1d(int(hidden_units)),
                nn.ReLU(inplace=True),
            ]
            width = int(hidden_units)
        head += [nn.Dropout(float(dropout)), nn.Linear(width, 1)]
        self.classifier = nn.Sequential(*head)
        self.apply(_init_weights)

    def learnable_layers(self) -> list[nn.Module]:
        """The convolutional and fully connected layers (batch norms belong to their layer)."""
        return [m for m in self.modules() if isinstance(m, nn.Conv3d | nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or tuple(x.shape[2:]) != self.input_shape_kji or x.shape[1] != 1:
            raise ValueError(
                f"expected input [N, 1, {', '.join(map(str, self.input_shape_kji))}], "
                f"got {list(x.shape)}"
            )
        features = self.features(x).flatten(1)
        logits: torch.Tensor = self.classifier(features)
        return logits[:, 0]

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv3d | nn.Linear):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ------------------------------------------------------------------------------------- input


@dataclass(frozen=True)
class InputSpec:
    """What the networks take (recorded in the model; training and prediction share it).

    Attributes:
        shape_kji: template grid shape.
        spacing_mm: template spacing.
        template_digest: :attr:`LungTemplate.digest` of the template the maps live on.
        scale: the clipped, masked log-Jacobian is divided by this.
        clip: ``|log-Jacobian|`` is clipped to this first.
        smoothing_mm: Gaussian sigma applied in template space before clipping (0: none).
    """

    shape_kji: tuple[int, int, int]
    spacing_mm: float
    template_digest: str
    scale: float = 0.1
    clip: float = 1.0
    smoothing_mm: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "shape_kji": list(self.shape_kji),
            "layout": "[N, 1, k, j, i] float32 on the template grid",
            "mask": "template lung (0 outside)",
            "quantity": "log det(I + grad u) of the baseline/follow-up registration, transported "
            "onto the template; negative = shrinkage",
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        try:
            shape = tuple(int(n) for n in data["shape_kji"])
            spec = cls(
                shape_kji=(shape[0], shape[1], shape[2]),
                spacing_mm=float(data["spacing_mm"]),
                template_digest=str(data["template_digest"]),
                scale=float(data.get("scale", 0.1)),
                clip=float(data.get("clip", 1.0)),
                smoothing_mm=float(data.get("smoothing_mm", 0.0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise WorseningModelError(f"input_spec is malformed: {error!r}") from error
        if len(shape) != 3 or spec.scale <= 0 or spec.clip <= 0 or spec.smoothing_mm < 0:
            raise WorseningModelError(f"input_spec has invalid values: {dict(data)}")
        return spec

    @classmethod
    def for_template(cls, template: LungTemplate, **kwargs: Any) -> InputSpec:
        return cls(template.shape_kji, template.spacing_mm, template.digest, **kwargs)

    def prepare(
        self, values: npt.NDArray[np.floating], lung: npt.NDArray[np.generic]
    ) -> FloatArray:
        """One template-space map → the network input ``[k, j, i]`` float32.

        Raises:
            ValueError: if the map or mask is not on the template grid's shape.
        """
        data = np.asarray(values, dtype=np.float32)
        if data.shape != self.shape_kji or np.shape(lung) != self.shape_kji:
            raise ValueError(
                f"map {data.shape} / lung {np.shape(lung)} not on the template grid {self.shape_kji}"
            )
        data = np.nan_to_num(data, nan=0.0, posinf=self.clip, neginf=-self.clip)
        if self.smoothing_mm > 0:
            from scipy import ndimage

            data = ndimage.gaussian_filter(
                data, self.smoothing_mm / self.spacing_mm, mode="nearest"
            )
        data = np.clip(data, -self.clip, self.clip) * (np.asarray(lung) != 0)
        return (data / self.scale).astype(np.float32)


# ---------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings (paper's code: Adam, β₁ 0.5, weight decay 5e-4, BCE on logits).

    Attributes:
        epochs: passes over the training set.
        batch_size: mini-batch size (a last batch of one joins the previous one).
        learning_rate, betas, weight_decay: Adam.
        seed: weights, shuffling and the learning-set split.
        val_fraction: share of the learning set held for validation (stratified).
        threads: torch CPU threads while training (restored after).
        conv_channels, hidden_units, dropout: network hyper-parameters.
        scale, clip, smoothing_mm: input spec.
    """

    epochs: int = 60
    batch_size: int = 8
    learning_rate: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 5e-4
    seed: int = 0
    val_fraction: float = 0.2
    threads: int = 1
    conv_channels: tuple[int, ...] = DEFAULT_CONV_CHANNELS
    hidden_units: int = DEFAULT_HIDDEN_UNITS
    dropout: float = 0.25
    scale: float = 0.1
    clip: float = 1.0
    smoothing_mm: float = 0.0
    augment: bool = False

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["betas"] = list(self.betas)
        record["conv_channels"] = list(self.conv_channels)
        return record

    def network_hyperparameters(self, shape_kji: Sequence[int]) -> dict[str, Any]:
        return {
            "input_shape_kji": [int(n) for n in shape_kji],
            "conv_channels": list(self.conv_channels),
            "hidden_units": self.hidden_units,
            "dropout": self.dropout,
        }


def stratified_split(
    labels: Sequence[Hashable], *, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices ``(train, validation)``: about ``val_fraction`` of each stratum (each distinct
    label; at least one case of every stratum with two or more members) goes to validation,
    drawn with ``seed``.

    Raises:
        ValueError: ``val_fraction`` outside ``(0, 1)`` or fewer than 2 cases.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(labels) < 2:
        raise ValueError("a split needs at least 2 cases")
    rng = np.random.default_rng([int(seed), 2718])
    train: list[int] = []
    val: list[int] = []
    strata: list[Hashable] = []
    for label in labels:
        if label not in strata:
            strata.append(label)
    for value in sorted(strata, key=repr):
        members = [i for i, v in enumerate(labels) if v == value]
        order = rng.permutation(len(members))
        members = [members[i] for i in order]
        n_val = round(len(members) * val_fraction)
        n_val = min(max(n_val, 1), len(members) - 1) if len(members) >= 2 else 0
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


def choose_threshold(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> dict[str, Any]:
    """Decision threshold from *validation* probabilities and labels only.

    Youden's J on the validation ROC (:func:`inference.stats.diagnostic.roc_threshold`; ties to
    the higher cut-off); the threshold is placed halfway between the chosen validation
    probability and the next lower one (so validation cases keep their calls and the cut-off does
    not sit on one case's score). With one class only in validation, 0.5.

    Returns:
        ``{"threshold", "criterion", "validation_sensitivity", "validation_specificity",
        "validation_auc"}``.
    """
    probs = np.asarray(probabilities, dtype=np.float64).ravel()
    truth = np.asarray(labels).astype(bool).ravel()
    if probs.size != truth.size:
        raise ValueError(f"{probs.size} probabilities but {truth.size} labels")
    if truth.all() or not truth.any():
        return {
            "threshold": 0.5,
            "criterion": "0.5 (validation set has one class only)",
            "validation_sensitivity": None,
            "validation_specificity": None,
            "validation_auc": None,
        }
    fit = roc_threshold(probs, truth, criterion="youden")
    lower = probs[probs < fit.threshold]
    threshold = 0.5 * (fit.threshold + float(lower.max())) if lower.size else fit.threshold
    return {
        "threshold": float(threshold),
        "criterion": "youden on validation, midpoint to the next lower validation probability",
        "validation_sensitivity": fit.sensitivity,
        "validation_specificity": fit.specificity,
        "validation_auc": fit.curve.auc,
    }


@dataclass(frozen=True, eq=False)
class TargetTraining:
    """One trained target: network, threshold and the record of its training."""

    target: str
    network: WorseningCNN
    threshold: float
    record: dict[str, Any]


class _Threads:
    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.before = torch.get_num_threads()

    def __enter__(self) -> None:
        if self.threads:
            torch.set_num_threads(int(self.threads))

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def _batches(order: npt.NDArray[np.int64], size: int) -> list[npt.NDArray[np.int64]]:
    parts = [order[i : i + size] for i in range(0, order.size, size)]
    if len(parts) > 1 and parts[-1].size == 1:
        parts[-2] = np.concatenate([parts[-2], parts[-1]])
        parts.pop()
    return parts


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Left-right mirror (half of the cases) and a shift of up to one voxel per axis."""
    out = x.clone()
    flip = rng.random(x.shape[0]) < 0.5
    if flip.any():
        rows = torch.from_numpy(np.nonzero(flip)[0])
        out[rows] = torch.flip(out[rows], dims=[4])
    shifts = [int(v) for v in rng.integers(-1, 2, size=3)]
    return torch.roll(out, shifts=shifts, dims=[2, 3, 4])


def predict_probabilities(
    network: WorseningCNN, inputs: npt.NDArray[np.float32], *, batch_size: int = 16
) -> FloatArray:
    """Probabilities for ``[N, k, j, i]`` prepared inputs (eval mode, no gradient)."""
    network.eval()
    out = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch_size]))[:, None]
            out.append(network.probability(x).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def train_target(
    target: str,
    inputs: npt.NDArray[np.float32],
    labels: Sequence[bool],
    train_index: Sequence[int],
    val_index: Sequence[int],
    config: TrainingConfig,
) -> TargetTraining:
    """Train one network on prepared inputs; keep the best validation-loss epoch; pick the
    threshold on the validation set (:func:`choose_threshold`).

    Args:
        target: ``"functional"`` or ``"morphologic"`` (recorded).
        inputs: ``[N, k, j, i]`` float32 from :meth:`InputSpec.prepare`.
        labels: per case, the reference (True = worsening).
        train_index, val_index: disjoint index lists into ``inputs``.
        config: optimisation settings.

    Raises:
        ValueError: empty training set, overlapping or out-of-range indices, a training set
            with one class only.
    """
    y = np.asarray(labels, dtype=bool)
    train_idx = np.asarray(sorted(train_index), dtype=np.int64)
    val_idx = np.asarray(sorted(val_index), dtype=np.int64)
    if train_idx.size < 2:
        raise ValueError("the training set needs at least 2 cases")
    if set(train_idx.tolist()) & set(val_idx.tolist()):
        raise ValueError("training and validation indices overlap")
    if max(int(train_idx.max()), int(val_idx.max()) if val_idx.size else 0) >= len(y):
        raise ValueError("an index is out of range")
    if y[train_idx].all() or not y[train_idx].any():
        raise ValueError(f"{target}: the training set holds one class only")
    start = time.perf_counter()
    with _Threads(config.threads):
        torch.manual_seed(int(config.seed))
        network = WorseningCNN(**config.network_hyperparameters(inputs.shape[1:]))
        optimiser = torch.optim.Adam(
            network.parameters(),
            lr=config.learning_rate,
            betas=config.betas,
            weight_decay=config.weight_decay,
        )
        loss_fn = nn.BCEWithLogitsLoss()
        rng = np.random.default_rng([int(config.seed), 31337])
        x_all = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))[:, None]
        y_all = torch.from_numpy(y.astype(np.float32))
        has_val = val_idx.size > 0
        best_loss, best_epoch = math.inf, -1
        best_state: dict[str, torch.Tensor] = {}
        history: list[dict[str, float]] = []
        for epoch in range(int(config.epochs)):
            network.train()
            total = 0.0
            for batch in _batches(rng.permutation(train_idx), int(config.batch_size)):
                index = torch.from_numpy(batch)
                optimiser.zero_grad()
                x_batch = x_all[index]
                if config.augment:
                    x_batch = _augment(x_batch, rng)
                loss = loss_fn(network(x_batch), y_all[index])
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * batch.size
            network.eval()
            with torch.no_grad():
                monitor = val_idx if has_val else train_idx
                index = torch.from_numpy(monitor)
                monitored = float(loss_fn(network(x_all[index]), y_all[index]))
            history.append(
                {"epoch": epoch, "train_loss": total / train_idx.size, "monitor_loss": monitored}
            )
            if monitored < best_loss - 1e-7:
                best_loss, best_epoch = monitored, epoch
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        network.load_state_dict(best_state)
        network.eval()
        train_probs = predict_probabilities(network, inputs[train_idx])
        val_probs = predict_probabilities(network, inputs[val_idx]) if has_val else np.zeros(0)
    choice: dict[str, Any] = (
        choose_threshold(val_probs, y[val_idx])
        if has_val
        else {"threshold": 0.5, "criterion": "0.5 (no validation set)"}
    )
    threshold = float(choice["threshold"])
    record: dict[str, Any] = {
        "definition": TARGET_DEFINITIONS.get(target, target),
        "threshold": threshold,
        "threshold_choice": choice,
        "best_epoch": best_epoch,
        "best_monitor_loss": best_loss,
        "monitor": "validation loss" if has_val else "training loss (no validation set)",
        "n_train": int(train_idx.size),
        "n_validation": int(val_idx.size),
        "train_positive": int(y[train_idx].sum()),
        "validation_positive": int(y[val_idx].sum()) if has_val else 0,
        "training_metrics": diagnostic_metrics(y[train_idx], train_probs >= threshold).to_dict(),
        "validation_metrics": (
            diagnostic_metrics(y[val_idx], val_probs >= threshold).to_dict() if has_val else None
        ),
        "history": history,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return TargetTraining(target, network, threshold, record)


def evaluate(
    labels: Sequence[bool], probabilities: npt.ArrayLike, threshold: float
) -> DiagnosticMetrics:
    """Sensitivity, specificity, accuracy, PPV, NPV (exact CIs) of ``probability ≥ threshold``."""
    probs = np.asarray(probabilities, dtype=np.float64)
    return diagnostic_metrics(np.asarray(labels, dtype=bool), probs >= threshold)


def extent_comparator(
    train_change_pct: npt.ArrayLike,
    train_worsened: npt.ArrayLike,
    test_change_pct: npt.ArrayLike,
    test_worsened: npt.ArrayLike,
) -> dict[str, Any]:
    """The paper's comparator: worsening called when the ILD extent rose by at least a cut-off
    chosen by ROC (Youden) on the *training* set, evaluated on the test set
    (:func:`inference.stats.longitudinal.extent_change_criterion`).

    Returns:
        ``{"threshold_pct", "training_auc", "training_sensitivity", "training_specificity",
        "test": DiagnosticMetrics.to_dict()}``.
    """
    from inference.stats.longitudinal import extent_change_criterion

    criterion = extent_change_criterion(
        train_change_pct, train_worsened, test_change_pct, test_worsened
    )
    return {
        "threshold_pct": criterion.threshold_pct,
        "training_auc": criterion.training.curve.auc,
        "training_sensitivity": criterion.training.sensitivity,
        "training_specificity": criterion.training.specificity,
        "test": criterion.test.to_dict(),
    }


def dataset_digest(
    case_ids: Sequence[str],
    inputs: npt.NDArray[np.float32],
    labels: Mapping[str, Sequence[bool | None]],
) -> str:
    """SHA-256 over the case ids, the prepared inputs and the labels of each target."""
    digest = hashlib.sha256()
    for n, case_id in enumerate(case_ids):
        digest.update(case_id.encode())
        digest.update(np.ascontiguousarray(inputs[n], dtype=np.float32).tobytes())
        for target in sorted(labels):
            digest.update(f"{target}={labels[target][n]}".encode())
    return f"sha256:{digest.hexdigest()}"


# ------------------------------------------------------------------------------------- model


@dataclass(frozen=True, eq=False)
class WorseningModel:
    """Template, input spec, one network and threshold per target, and the metadata record."""

    template: LungTemplate
    input_spec: InputSpec
    networks: Mapping[str, WorseningCNN]
    thresholds: Mapping[str, float]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", MODEL_VERSION))

    def predict_prepared(self, prepared: npt.NDArray[np.float32]) -> dict[str, FloatArray]:
        """Probabilities per target for ``[N, k, j, i]`` prepared inputs."""
        return {t: predict_probabilities(net, prepared) for t, net in self.networks.items()}

    def prepare(self, template_map: npt.NDArray[np.floating]) -> FloatArray:
        return self.input_spec.prepare(template_map, self.template.lung.array)


def build_model(
    template: LungTemplate,
    trained: Mapping[str, TargetTraining],
    config: TrainingConfig,
    *,
    training: Mapping[str, Any],
) -> WorseningModel:
    """Assemble a :class:`WorseningModel` (both targets) with its metadata record."""
    missing = [t for t in TARGETS if t not in trained]
    if missing:
        raise ValueError(f"targets missing: {missing}")
    spec = InputSpec.for_template(
        template, scale=config.scale, clip=config.clip, smoothing_mm=config.smoothing_mm
    )
    hyper = config.network_hyperparameters(template.shape_kji)
    metadata = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "targets": {t: trained[t].record for t in TARGETS},
        "input_spec": spec.as_dict(),
        "network": {"class": NETWORK_CLASS, "hyperparameters": hyper, "learnable_layers": 4},
        "template": {
            "folder": TEMPLATE_DIR,
            "digest": template.digest,
            "version": template.version,
            "spacing_mm": template.spacing_mm,
            "shape_kji": list(template.shape_kji),
            "cohort_digest": template.metadata.get("cohort_digest"),
        },
        "training": {**dict(training), "config": config.as_dict()},
    }
    return WorseningModel(
        template=template,
        input_spec=spec,
        networks={t: trained[t].network for t in TARGETS},
        thresholds={t: trained[t].threshold for t in TARGETS},
        metadata=metadata,
    )


def save_model(model: WorseningModel, folder: Path | str) -> Path:
    """Write ``model.pt``, ``template/`` and then ``metadata.json``; return the folder.

    The version is ``1.0.0+<first 12 hex of model.pt's SHA-256>``.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            t: {k: v.detach().cpu() for k, v in net.state_dict().items()}
            for t, net in model.networks.items()
        },
        out / MODEL_FILE,
    )
    model.template.save(out / TEMPLATE_DIR)
    file_digest = sha256_file(out / MODEL_FILE)
    record = dict(model.metadata)
    record.update(
        {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "version": f"{MODEL_VERSION}+{file_digest.split(':', 1)[1][:12]}",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "thresholds": {t: float(model.thresholds[t]) for t in TARGETS},
            "files": {MODEL_FILE: file_digest},
        }
    )
    partial = out / (METADATA_FILE + ".partial")
    partial.write_text(json.dumps(jsonable(record), indent=2, sort_keys=True) + "\n")
    partial.replace(out / METADATA_FILE)
    return out


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise WorseningModelError(f"{where}: '{key}' is missing")
    value = data[key]
    if not isinstance(value, kind):
        raise WorseningModelError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def load_model(folder: Path | str, *, device: str = "cpu") -> WorseningModel:
    """Load and check a worsening model folder.

    Checks, in order: the folder and ``metadata.json`` exist and parse; format and version;
    thresholds in ``[0, 1]`` for both targets; the input spec; ``model.pt`` present with the
    recorded SHA-256; the template folder (its own checks) with the digest the input spec names
    and the same grid shape; the network hyper-parameters; ``model.pt`` read with
    ``torch.load(weights_only=True)`` and matching each network exactly.

    Raises:
        WorseningModelError: naming the file and the field at fault.
    """
    root = Path(folder)
    if not root.is_dir():
        raise WorseningModelError(
            f"no worsening model at {root}: the folder does not exist (train one with "
            "`python -m inference.train_worsening --cohort DIR --out MODEL_DIR`, or use "
            "inference.worsening.default_model(cache_dir))"
        )
    path = root / METADATA_FILE
    data = read_record(
        path,
        expected=MODEL_FORMAT,
        version=MODEL_FORMAT_VERSION,
        error=WorseningModelError,
        kind="worsening model",
        what="model metadata",
    )
    _require(data, "version", str, str(path))
    thresholds_raw = _require(data, "thresholds", dict, str(path))
    thresholds: dict[str, float] = {}
    for target in TARGETS:
        value = thresholds_raw.get(target)
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise WorseningModelError(
                f"{path}: thresholds.{target} must be a probability in [0, 1], got {value!r}"
            )
        thresholds[target] = float(value)
    _require(data, "targets", dict, str(path))
    spec = InputSpec.from_dict(_require(data, "input_spec", dict, str(path)))
    network_record = _require(data, "network", dict, str(path))
    if network_record.get("class") != NETWORK_CLASS:
        raise WorseningModelError(
            f"{path}: network.class is {network_record.get('class')!r}, expected {NETWORK_CLASS!r}"
        )
    hyper = _require(network_record, "hyperparameters", dict, f"{path} network")
    files = _require(data, "files", dict, str(path))
    weights = root / MODEL_FILE
    check_file(weights, files.get(MODEL_FILE), WorseningModelError)
    template_record = _require(data, "template", dict, str(path))
    template_dir = root / str(template_record.get("folder", TEMPLATE_DIR))
    try:
        template = LungTemplate.load(template_dir)
    except TemplateError as error:
        raise WorseningModelError(f"{root}: template: {error}") from error
    if template.digest != spec.template_digest:
        raise WorseningModelError(
            f"{root}: the template's digest {template.digest} differs from input_spec."
            f"template_digest {spec.template_digest}"
        )
    if template.shape_kji != spec.shape_kji:
        raise WorseningModelError(
            f"{root}: input_spec.shape_kji {spec.shape_kji} differs from the template grid "
            f"{template.shape_kji}"
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad or unsafe pickle
        raise WorseningModelError(f"{weights}: not a loadable weights file: {error}") from error
    if not isinstance(state, Mapping) or set(state) != set(TARGETS):
        raise WorseningModelError(
            f"{weights}: expected {{'functional': state_dict, 'morphologic': state_dict}}"
        )
    networks: dict[str, WorseningCNN] = {}
    for target in TARGETS:
        try:
            network = WorseningCNN(**hyper)
        except (TypeError, ValueError) as error:
            raise WorseningModelError(
                f"{path}: invalid network hyper-parameters: {error}"
            ) from error
        if tuple(network.input_shape_kji) != spec.shape_kji:
            raise WorseningModelError(
                f"{path}: network input shape {network.input_shape_kji} differs from the input "
                f"spec {spec.shape_kji}"
            )
        target_state = state[target]
        if not isinstance(target_state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in target_state.values()
        ):
            raise WorseningModelError(f"{weights}: {target} is not a state_dict of tensors")
        try:
            network.load_state_dict(target_state, strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise WorseningModelError(
                f"{weights}: {target} weights do not fit {NETWORK_CLASS}({hyper}): {first}"
            ) from error
        networks[target] = network.to(device).eval()
    return WorseningModel(template, spec, networks, thresholds, data, root)


# -------------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class WorseningPrediction:
    """One baseline/follow-up pair's prediction, in plain values (JSON-ready via ``as_dict``).

    Attributes:
        functional_probability, morphologic_probability: network outputs in ``[0, 1]``.
        functional_worsening, morphologic_worsening: ``probability >= threshold``.
        functional_threshold, morphologic_threshold: the model's validation-chosen cut-offs.
        model_version: the model's version string.
        template_digest: the template's digest.
        mean_log_jacobian_template: mean of the transported map over the template lung.
        mean_log_jacobian_baseline: mean of the input map over the baseline lung (its own grid).
        template_lung_dice: Dice of the warped baseline lung with the template lung.
        seconds: wall time (registration onto the template, transport, networks).
        template_map: the log-Jacobian map carried onto the template grid (for group maps and
            Figure 5; left out of ``as_dict``).
        template_lung: the template's lung mask (its grid is the template map's).
    """

    functional_probability: float
    functional_worsening: bool
    functional_threshold: float
    morphologic_probability: float
    morphologic_worsening: bool
    morphologic_threshold: float
    model_version: str
    template_digest: str
    mean_log_jacobian_template: float
    mean_log_jacobian_baseline: float
    template_lung_dice: float
    seconds: float
    template_map: Volume | None = field(default=None, repr=False, compare=False)
    template_lung: Volume | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        skip = ("template_map", "template_lung")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


def _mean_in_lung(values: Volume, lung: Volume) -> float:
    from inference.registration import resample_to_grid

    binary = lung.with_array((np.asarray(lung.array) != 0).astype(np.uint8))
    on_grid = resample_to_grid(binary, values, interpolation="nearest", default_value=0.0)
    inside = np.asarray(on_grid.array) != 0
    return (
        float(np.asarray(values.array)[inside].mean(dtype=np.float64)) if inside.any() else math.nan
    )


def predict_worsening(
    baseline_ct: Volume,
    baseline_lung: Volume,
    log_jacobian: Volume,
    model: WorseningModel,
    *,
    registration_params: Mapping[str, Any] | None = None,
) -> WorseningPrediction:
    """Functional and morphologic worsening of one pair from its log-Jacobian map.

    Args:
        baseline_ct: baseline CT in HU (any grid; e.g. the registration job's resampled baseline
            or the baseline series).
        baseline_lung: baseline lung mask (non-zero = lung; labels 1/2 fine), any grid of the
            baseline's physical space (e.g. the registration job's ``lung_mask.nii.gz``).
        log_jacobian: ``log det(I + grad u)`` of the follow-up→baseline registration (negative =
            shrinkage), on its own grid (e.g. the job's ``log_jacobian.nii.gz``).
        model: from :func:`load_model` or :func:`inference.worsening.default_model`.
        registration_params: backend parameters overriding the template's (e.g. threads).

    Returns:
        A :class:`WorseningPrediction`.

    Raises:
        ValueError: empty lung mask.
        inference.registration.RegistrationError: the registration onto the template failed.
    """
    start = time.perf_counter()
    registration = register_to_template(
        baseline_ct, baseline_lung, model.template, params=registration_params
    )
    template_map = registration.warp_map(log_jacobian)
    prepared = model.prepare(np.asarray(template_map.array))[None]
    probabilities = model.predict_prepared(prepared)
    inside = model.template.lung.array > 0
    p_f = float(probabilities["functional"][0])
    p_m = float(probabilities["morphologic"][0])
    return WorseningPrediction(
        functional_probability=p_f,
        functional_worsening=bool(p_f >= model.thresholds["functional"]),
        functional_threshold=float(model.thresholds["functional"]),
        morphologic_probability=p_m,
        morphologic_worsening=bool(p_m >= model.thresholds["morphologic"]),
        morphologic_threshold=float(model.thresholds["morphologic"]),
        model_version=model.version,
        template_digest=model.template.digest,
        mean_log_jacobian_template=float(
            np.asarray(template_map.array)[inside].mean(dtype=np.float64)
        ),
        mean_log_jacobian_baseline=_mean_in_lung(log_jacobian, baseline_lung),
        template_lung_dice=float(registration.lung_dice),
        seconds=round(time.perf_counter() - start, 3),
        template_map=template_map,
        template_lung=model.template.lung,
    )
