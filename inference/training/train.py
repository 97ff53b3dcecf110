"""Train AtlasNet or the U-Net comparator on a dataset folder; write a model folder.

Following Chassagnon et al. 2020:

* **optimiser**: SGD, learning rate 0.01, momentum 0.9, weight decay 5e-4; the rate decreases
  by 2.5e-3 every 10 epochs (``lr_decrease``, ``lr_decrease_every``; floored at
  ``min_learning_rate`` so that it never reaches 0 — the paper does not say what happens after
  epoch 40). Short CPU runs shorten ``lr_decrease_every`` so the whole schedule is traversed.
* **AtlasNet**: ``templates`` (6) cases of the training split are templates, picked at evenly
  spaced quantiles of lung volume (anatomical spread, deterministic). Every case (training and
  validation) is registered onto every template (:func:`map_case_to_template`, the same
  registration code as inference); network ``t`` is a ``DualDecoderSegNet`` trained on the
  training cases' slices warped onto template ``t`` with :class:`AtlasNetLoss` (lung {1, 4},
  disease {1, 65}, semantic term, all weights 1). No other augmentation. With
  ``template_margin_mm`` a template grid covers only its case's lungs and that margin
  (:func:`make_template`): the network's pixels fall on the lungs, not on the whole field.
* **U-Net**: one ``UNet2D`` (3 classes, weights {1, 4, 65}) on every training slice resampled
  in-plane to the input size, with random rotations (±10°) and translations (up to 20 px at
  512) per slice.
* **split**: by patient group, ``validation_fraction`` (0.2) of the groups, seeded.
* **ILD cut**: the engine's ILD probability cut (after the class-weight prior is removed) is
  chosen on the validation split among ``ild_thresholds`` by median per-slice ILD Dice, and
  recorded (``training.ild_threshold``, with the Dice of every cut) for the engines to use:
  the networks are not calibrated once the paper's 65-fold disease weight is removed.
* **validation Dice** (recorded in ``metadata.json``): the finished engine run on the
  validation cases in their own space — lung Dice per case, and the median (IQR) per-slice ILD
  Dice over annotated slices with ILD — plus each AtlasNet network's Dice in its template space.

Everything is seeded (``seed``): split, template choice, initial weights, batch order,
augmentation. Slices are ``[N, rows, cols]`` axial, LPS-oriented.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from inference.networks.atlasnet import UPSAMPLING_MODES, DualDecoderSegNet, Upsampling
from inference.networks.losses import (
    PAPER_DISEASE_WEIGHTS,
    PAPER_LUNG_WEIGHTS,
    PAPER_TERM_WEIGHTS,
    UNET_CLASS_WEIGHTS,
    AtlasNetLoss,
    weighted_cross_entropy,
)
from inference.networks.slicewise import (
    canonical,
    in_plane_grid,
    remove_class_weights,
    resize_slices,
)
from inference.networks.unet import UNet2D
from inference.registration.resample import mask_box
from inference.segmentation.atlasnet_engine import (
    AtlasNetEngine,
    AtlasTemplate,
    RegistrationSettings,
    TemplateMapping,
    map_case_to_template,
    rough_lung_mask,
)
from inference.segmentation.metrics import dice, dice_per_slice
from inference.segmentation.unet_engine import UNetEngine
from inference.segmentation.weights import InputSpec, ModelMetadata, save_model
from inference.training.augment import RigidAugmentation
from inference.training.datasets import Dataset, SegmentationCase, split_cases
from inference.volume import Volume

TRAINING_VERSION = "1.2.0"
ModelName = Literal["atlasnet", "unet"]
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in ``metadata.json``).

    Attributes:
        model: ``"atlasnet"`` or ``"unet"``.
        in_plane_size: network slice size, pixels (square; a multiple of 16).
        width: channel multiplier (1.0: the paper's 64→1024).
        templates: AtlasNet templates / networks (paper: 6).
        decoder_upsampling: how AtlasNet's decoders upsample (``"indices"``, SegNet's pooling
            indices; ``"nearest"``, the paper's Keras upsampling layers).
        epochs: passes over the training slices, per network.
        batch_size: slices per SGD step.
        learning_rate, momentum, weight_decay: SGD (paper: 0.01, 0.9, 5e-4).
        lr_decrease, lr_decrease_every, min_learning_rate: the step schedule (see module docs).
        validation_fraction: share of patient groups held out for validation.
        seed: the one seed of the run.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        hu_window: input window (HU).
        lung_weights, disease_weights, term_weights: AtlasNet loss weights.
        unet_class_weights: U-Net class weights (background, lung, ILD).
        max_rotation_deg, max_translation_px: U-Net augmentation (translation at 512 px).
        registration: AtlasNet case-to-template registration.
        template_margin_mm: AtlasNet template grids cover the template case's lungs and this
            margin (:func:`make_template`); ``None``: its whole field of view.
        threads: torch CPU threads (``None``: torch's default).
        ild_thresholds: ILD probability cuts tried on the validation split; the best (median
            per-slice ILD Dice) is recorded and used by the engine (``()``: keep 0.5 / argmax).
    """

    model: ModelName = "atlasnet"
    in_plane_size: int = 256
    width: float = 0.125
    templates: int = 6
    decoder_upsampling: Upsampling = "indices"
    epochs: int = 40
    batch_size: int = 8
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decrease: float = 2.5e-3
    lr_decrease_every: int = 10
    min_learning_rate: float = 2.5e-4
    validation_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    lung_weights: tuple[float, float] = PAPER_LUNG_WEIGHTS
    disease_weights: tuple[float, float] = PAPER_DISEASE_WEIGHTS
    term_weights: tuple[float, float, float] = PAPER_TERM_WEIGHTS
    unet_class_weights: tuple[float, float, float] = UNET_CLASS_WEIGHTS
    max_rotation_deg: float = 10.0
    max_translation_px: float = 20.0
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)
    template_margin_mm: float | None = None
    threads: int | None = None
    ild_thresholds: tuple[float, ...] = (
        0.005,
        0.01,
        0.02,
        0.05,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
    )

    def __post_init__(self) -> None:
        if self.model not in ("atlasnet", "unet"):
            raise ValueError(f"model must be 'atlasnet' or 'unet', got {self.model!r}")
        if self.in_plane_size < 16 or self.in_plane_size % 16:
            raise ValueError(f"in_plane_size must be a multiple of 16, got {self.in_plane_size}")
        if self.epochs < 1 or self.batch_size < 1 or self.templates < 1:
            raise ValueError("epochs, batch_size and templates must be at least 1")
        if self.decoder_upsampling not in UPSAMPLING_MODES:
            raise ValueError(
                f"decoder_upsampling must be one of {UPSAMPLING_MODES}, "
                f"got {self.decoder_upsampling!r}"
            )
        if self.template_margin_mm is not None and self.template_margin_mm < 0:
            raise ValueError(f"template_margin_mm must be >= 0, got {self.template_margin_mm}")
        if self.lr_decrease_every < 1 or not self.learning_rate > 0:
            raise ValueError("lr_decrease_every must be >= 1 and learning_rate > 0")

    def learning_rate_at(self, epoch: int) -> float:
        """The paper's step schedule: ``lr0 - lr_decrease * (epoch // every)``, floored."""
        steps = epoch // self.lr_decrease_every
        return max(self.learning_rate - self.lr_decrease * steps, self.min_learning_rate)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["registration"] = self.registration.as_dict()
        return data


@dataclass
class TrainingReport:
    """What a run produced: the model folder, its metadata, and per-network histories."""

    model_dir: Path
    metadata: ModelMetadata
    histories: list[list[dict[str, float]]]
    seconds: dict[str, float]


# ---------------------------------------------------------------- slices


@dataclass
class SliceSet:
    """Training slices in memory: HU ``int16`` ``[N, H, W]``, labels, annotated pixels."""

    hu: npt.NDArray[np.int16]
    labels: npt.NDArray[np.uint8]
    valid: npt.NDArray[np.bool_]

    @classmethod
    def concat(cls, parts: Sequence[SliceSet]) -> SliceSet:
        return cls(
            hu=np.concatenate([p.hu for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            valid=np.concatenate([p.valid for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.hu.shape[0])

    def keep_annotated(self) -> SliceSet:
        """Only slices with at least one annotated pixel."""
        keep = self.valid.any(axis=(1, 2))
        return SliceSet(self.hu[keep], self.labels[keep], self.valid[keep])


def _resize_stack(
    array: npt.NDArray[np.generic], size: tuple[int, int], *, nearest: bool
) -> npt.NDArray[np.float32]:
    out = np.empty((array.shape[0], *size), np.float32)
    for k0 in range(0, array.shape[0], 32):
        block = torch.from_numpy(np.asarray(array[k0 : k0 + 32], dtype=np.float32))[:, None]
        out[k0 : k0 + 32] = resize_slices(block, size, mode="nearest" if nearest else "bilinear")[
            :, 0
        ].numpy()
    return out


def case_slices(case: SegmentationCase, size: int) -> SliceSet:
    """A case's slices, LPS-oriented and resampled in-plane to ``size × size`` (U-Net input)."""
    view = canonical(case.ct)
    labels = canonical(case.labels).volume.array
    valid = canonical(_annotated_volume(case)).volume.array
    hu = _resize_stack(np.asarray(view.volume.array), (size, size), nearest=False)
    return SliceSet(
        hu=np.clip(np.rint(hu), -1024, 3071).astype(np.int16),
        labels=_resize_stack(np.asarray(labels), (size, size), nearest=True).astype(np.uint8),
        valid=_resize_stack(np.asarray(valid), (size, size), nearest=True) > 0.5,
    )


def _lungs(ct: Volume, labels: Volume) -> Volume:
    """The labelled lung (1 and 2) and the air of :func:`rough_lung_mask` connected to it
    (uint8), so a case annotated on a few slices (the 20-slice protocol stops at the right dome)
    still has its lung bases, and gas in the stomach does not count; the rough mask alone when
    no lung is labelled."""
    from scipy import ndimage

    labelled = np.asarray(labels.array) > 0
    air, _ = ndimage.label(np.asarray(rough_lung_mask(ct).array) > 0)
    touching = np.unique(air[labelled & (air > 0)])
    lungs = labelled | np.isin(air, touching) if labelled.any() else air > 0
    return ct.with_array(lungs.astype(np.uint8))


def lung_box(case: SegmentationCase, margin_mm: float) -> tuple[slice, slice, slice]:
    """The ``[k, j, i]`` box of the case's lungs (:func:`_lungs`), LPS-oriented
    (:func:`canonical`), widened by ``margin_mm`` and clipped; the whole volume when no lung is
    found."""
    ct, labels = canonical(case.ct).volume, canonical(case.labels).volume
    return _lung_box(ct, labels, margin_mm)


def _lung_box(ct: Volume, labels: Volume, margin_mm: float) -> tuple[slice, slice, slice]:
    lungs = _lungs(ct, labels)
    if not np.any(lungs.array):
        return (slice(None), slice(None), slice(None))
    return mask_box(lungs, margin_mm=margin_mm)


def _annotated_volume(case: SegmentationCase) -> Volume:
    """The case's annotated slices as a uint8 volume on its grid."""
    return case.ct.with_array(
        np.broadcast_to(case.annotated[:, None, None], case.ct.shape_kji).astype(np.uint8)
    )


def make_template(
    case: SegmentationCase, size: int, *, margin_mm: float | None = None
) -> AtlasTemplate:
    """A case on a template grid: LPS-oriented, ``size × size`` in-plane.

    With ``margin_mm`` the grid covers only the case's lungs and that margin (:func:`lung_box`)
    in-plane and along the slices: every case is registered onto the template, so the network
    needs no field of view beyond it, and its pixels are finer by the field of view's ratio to
    the lungs'. Its pixels need not be square. ``None`` keeps the case's whole field of view
    and slices.
    """
    ct, labels = canonical(case.ct).volume, canonical(case.labels).volume
    if margin_mm is not None:
        box = _lung_box(ct, labels, margin_mm)
        ct, labels = ct.crop(box), labels.crop(box)
    grid = in_plane_grid(ct, (size, size))
    hu = _resize_stack(np.asarray(ct.array), (size, size), nearest=False)
    lab = _resize_stack(np.asarray(labels.array), (size, size), nearest=True)
    return AtlasTemplate(
        ct=grid.with_array(np.clip(np.rint(hu), -1024, 3071).astype(np.int16)),
        labels=grid.with_array(lab.astype(np.uint8)),
        source_case=case.case_id,
    )


def warped_slices(
    case: SegmentationCase,
    template: AtlasTemplate,
    mapping: TemplateMapping | None,
    *,
    device: str = "cpu",
) -> SliceSet:
    """A case's CT, labels and annotated mask on the template grid (identity for the template's
    own case, whose slices the template holds from its first one on); the resampling runs on
    ``device``."""
    if mapping is None:
        annotated = canonical(_annotated_volume(case)).volume
        n = template.ct.shape_kji[0]
        k0 = round(float(annotated.lps_to_index(template.ct.origin_lps_mm)[2]))
        per_slice = np.asarray(annotated.array[k0 : k0 + n]).reshape(n, -1).max(axis=1) > 0
        valid = np.broadcast_to(per_slice[:, None, None], template.ct.shape_kji).copy()
        return SliceSet(
            np.asarray(template.ct.array, np.int16), np.asarray(template.labels.array), valid
        )
    hu = mapping.case_to_template(case.ct, default_value=-1024.0, device=device)
    labels = mapping.case_to_template(case.labels, interpolation="nearest", device=device)
    valid = (
        mapping.case_to_template(_annotated_volume(case), interpolation="nearest", device=device)
        > 0.5
    )
    return SliceSet(
        hu=np.clip(np.rint(hu), -1024, 3071).astype(np.int16),
        labels=np.rint(labels).astype(np.uint8),
        valid=valid,
    )


def choose_templates(cases: Sequence[SegmentationCase], n: int) -> list[SegmentationCase]:
    """``n`` cases at evenly spaced quantiles of lung volume (deterministic).

    Raises:
        ValueError: if there are fewer cases than templates.
    """
    if n > len(cases):
        raise ValueError(
            f"{n} templates asked for but the training split has only {len(cases)} cases; "
            "use fewer templates (--templates) or more data"
        )
    ordered = sorted(cases, key=lambda c: (c.lung_ml, c.case_id))
    picks = [min(len(ordered) - 1, int((i + 0.5) * len(ordered) / n)) for i in range(n)]
    return [ordered[i] for i in picks]


# ---------------------------------------------------------------- fitting


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[npt.NDArray[np.intp]]:
    order = rng.permutation(n)
    return [order[b : b + batch_size] for b in range(0, n, batch_size)]


def fit(
    network: nn.Module,
    slices: SliceSet,
    loss_of: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    config: TrainConfig,
    *,
    seed: int,
    augmentation: RigidAugmentation | None = None,
    log: Log = _stderr,
    label: str = "network",
) -> list[dict[str, float]]:
    """SGD over ``slices`` with the paper's schedule; returns one record per epoch.

    ``loss_of(network, images [N,1,H,W], labels [N,H,W], valid [N,H,W])`` gives the loss.
    """
    device = torch.device(config.device)
    spec = InputSpec(in_plane_size=(config.in_plane_size,) * 2, hu_window=config.hu_window)
    network.to(device).train()
    optimiser = torch.optim.SGD(
        network.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    rng = np.random.default_rng([seed, 17])
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    history: list[dict[str, float]] = []
    for epoch in range(config.epochs):
        lr = config.learning_rate_at(epoch)
        for group in optimiser.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        total, steps = 0.0, 0
        for index in _batches(len(slices), config.batch_size, rng):
            if len(index) < 2 and len(slices) >= 2:
                continue  # batch norm needs two samples
            images = torch.from_numpy(spec.normalise(slices.hu[index]))[:, None].to(device)
            labels = torch.from_numpy(slices.labels[index].astype(np.int64)).to(device)
            valid = torch.from_numpy(slices.valid[index]).to(device)
            if augmentation is not None:
                images, labels, moved_valid = augmentation(
                    images, labels, generator=generator, valid=valid
                )
                assert moved_valid is not None
                valid = moved_valid
            loss = loss_of(network, images, labels, valid)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
            steps += 1
        record = {
            "epoch": float(epoch + 1),
            "learning_rate": lr,
            "loss": total / max(steps, 1),
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        log(
            f"{label} epoch {epoch + 1}/{config.epochs} lr {lr:.4g} "
            f"loss {record['loss']:.4f} ({record['seconds']:.1f} s)"
        )
    network.eval()
    return history


def atlasnet_loss(config: TrainConfig) -> Callable[..., torch.Tensor]:
    """``loss_of`` for :func:`fit`: the dual-decoder network's :class:`AtlasNetLoss`."""
    criterion = AtlasNetLoss(config.lung_weights, config.disease_weights, config.term_weights)

    def loss_of(
        network: nn.Module, images: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        lung, disease = network(images)
        return criterion(lung, disease, labels, valid=valid)

    return loss_of


def unet_loss(config: TrainConfig) -> Callable[..., torch.Tensor]:
    """``loss_of`` for :func:`fit`: the U-Net's weighted cross-entropy over its 3 classes."""

    def loss_of(
        network: nn.Module, images: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        return weighted_cross_entropy(
            network(images), labels, config.unet_class_weights, valid=valid
        )

    return loss_of


# ---------------------------------------------------------------- evaluation


def slice_dice_summary(
    predictions: Sequence[npt.NDArray[np.uint8]],
    truths: Sequence[npt.NDArray[np.uint8]],
    valids: Sequence[npt.NDArray[np.bool_]] | None = None,
) -> dict[str, Any]:
    """Lung Dice per volume and per-slice ILD Dice pooled over slices whose truth has ILD.

    Arrays ``[k, j, i]`` 0/1/2; ``valids`` (``[k]`` bool) restricts to annotated slices.

    Returns:
        ``dice_lung`` (mean over volumes), ``dice_lung_per_case``, ``dice_ild_median_slice``,
        ``dice_ild_iqr`` ``[q25, q75]``, ``slices_with_ild``.
    """
    lung: list[float] = []
    per_slice: list[float] = []
    for n, (pred, truth) in enumerate(zip(predictions, truths, strict=True)):
        keep = valids[n] if valids is not None else np.ones(truth.shape[0], bool)
        p, t = pred[keep], truth[keep]
        lung.append(float(dice(p > 0, t > 0, empty_value=1.0)))
        has_ild = (t == 2).any(axis=(1, 2))
        values = dice_per_slice(p == 2, t == 2, empty_value=0.0)[has_ild]
        per_slice.extend(float(v) for v in values)
    ild = np.asarray(per_slice)
    return {
        "dice_lung": float(np.mean(lung)) if lung else math.nan,
        "dice_lung_per_case": [round(v, 4) for v in lung],
        "dice_ild_median_slice": float(np.median(ild)) if ild.size else math.nan,
        "dice_ild_iqr": [float(np.percentile(ild, 25)), float(np.percentile(ild, 75))]
        if ild.size
        else [math.nan, math.nan],
        "slices_with_ild": int(ild.size),
    }


def _template_space_dice(
    network: nn.Module, slices: SliceSet, config: TrainConfig
) -> dict[str, Any]:
    from inference.networks.slicewise import predict_slices

    if len(slices) == 0:
        return {}
    spec = InputSpec(in_plane_size=(config.in_plane_size,) * 2, hu_window=config.hu_window)
    lung_p, disease_p = predict_slices(network, spec.normalise(slices.hu), device=config.device)
    # The engine's decision at the default cut (the class weights' prior shift removed, then
    # 0.5): each network's own Dice, before the run chooses the ensemble's cut.
    lung_p = np.asarray(remove_class_weights(lung_p, config.lung_weights))
    disease_p = np.asarray(remove_class_weights(disease_p, config.disease_weights))
    lung = lung_p[1] >= 0.5
    pred = np.where(lung & (disease_p[1] >= 0.5), 2, np.where(lung, 1, 0)).astype(np.uint8)
    truth = np.where(slices.valid, slices.labels, 0).astype(np.uint8)
    pred = np.where(slices.valid, pred, 0).astype(np.uint8)
    return _rounded(slice_dice_summary([pred], [truth]))


def _rounded(summary: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, float):
            out[key] = None if math.isnan(value) else round(value, 4)
        elif isinstance(value, list):
            out[key] = [None if isinstance(v, float) and math.isnan(v) else v for v in value]
        else:
            out[key] = value
    return out


def _native_validation(
    predict: Callable[[SegmentationCase], npt.NDArray[np.uint8]],
    cases: Sequence[SegmentationCase],
) -> dict[str, Any]:
    if not cases:
        return {"cases": [], "note": "no validation split (a single patient group)"}
    preds = [predict(c) for c in cases]
    summary = slice_dice_summary(
        preds, [np.asarray(c.labels.array) for c in cases], [c.annotated for c in cases]
    )
    return {"cases": [c.case_id for c in cases], **_rounded(summary)}


def choose_ild_threshold(
    predict_at: Callable[[float, SegmentationCase], npt.NDArray[np.uint8]],
    cases: Sequence[SegmentationCase],
    thresholds: Sequence[float],
) -> dict[str, Any] | None:
    """The ILD probability cut with the best median per-slice ILD Dice on ``cases``.

    Small CPU-scale networks trained with the paper's heavy disease weight are not calibrated
    after the prior correction; the cut is chosen on the validation split, as the worsening
    classifier's is, and ties go to the cut nearest 0.5. None without validation cases or
    without a validation slice that has ILD.

    Returns:
        ``{"value", "chosen_on", "median_slice_dice": {cut: dice}}``.
    """
    if not cases or not thresholds:
        return None
    truths = [np.asarray(c.labels.array) for c in cases]
    valids = [c.annotated for c in cases]
    scores: dict[float, float] = {}
    for cut in thresholds:
        preds = [predict_at(cut, c) for c in cases]
        score = slice_dice_summary(preds, truths, valids)["dice_ild_median_slice"]
        if not math.isnan(score):
            scores[cut] = score
    if not scores:
        return None
    best = max(scores, key=lambda cut: (round(scores[cut], 6), -abs(cut - 0.5)))
    return {
        "value": best,
        "chosen_on": "validation",
        "median_slice_dice": {f"{cut:g}": round(v, 4) for cut, v in scores.items()},
    }


# ---------------------------------------------------------------- entry points


def _version(model: str, digest: str, seed: int) -> str:
    return f"{model}-{TRAINING_VERSION}+{digest.removeprefix('sha256:')[:12]}.s{seed}"


def seed_everything(seed: int) -> None:
    """Seed torch's generators (and make cuDNN deterministic) before building a network."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def train_atlasnet(
    dataset: Dataset, config: TrainConfig, out_dir: Path, *, log: Log = _stderr
) -> TrainingReport:
    """Train AtlasNet (see the module docstring) and write its model folder to ``out_dir``.

    Raises:
        ValueError: fewer training cases than templates, or a bad configuration.
        inference.registration.RegistrationError: a registration failed.
    """
    seconds: dict[str, float] = {"register": 0.0, "train": 0.0, "validate": 0.0}
    training, validation = split_cases(
        dataset.cases, validation_fraction=config.validation_fraction, seed=config.seed
    )
    sources = choose_templates(training, config.templates)
    size = config.in_plane_size
    spec = InputSpec(in_plane_size=(size, size), hu_window=config.hu_window)
    hyper: dict[str, Any] = {
        "in_channels": 1,
        "base_channels": 64,
        "depth": 5,
        "width": config.width,
        "upsampling": config.decoder_upsampling,
    }
    networks: list[nn.Module] = []
    templates: list[AtlasTemplate] = []
    histories: list[list[dict[str, float]]] = []
    template_validation: list[dict[str, Any]] = []
    val_mappings: dict[str, list[TemplateMapping]] = {c.case_id: [] for c in validation}
    log(
        f"AtlasNet: {len(training)} training / {len(validation)} validation cases, "
        f"templates {[c.case_id for c in sources]}"
    )
    for t, source in enumerate(sources):
        template = make_template(source, size, margin_mm=config.template_margin_mm)
        coarse = template.coarse(config.registration.spacing_mm)
        train_parts, val_parts = [], []
        start = time.perf_counter()
        for case in [*training, *validation]:
            mapping = None
            if case.case_id != source.case_id:
                mapping = map_case_to_template(
                    template,
                    case.ct,
                    config.registration,
                    device=config.device,
                    coarse_template=coarse,
                )
                log(
                    f"template {t} ({source.case_id}) <- {case.case_id}: registered in "
                    f"{mapping.registration.timings_s.get('total', 0.0):.1f} s"
                )
            part = warped_slices(case, template, mapping, device=config.device)
            if case in validation:
                assert mapping is not None
                val_mappings[case.case_id].append(mapping)
                val_parts.append(part)
            else:
                train_parts.append(part)
        seconds["register"] += time.perf_counter() - start
        start = time.perf_counter()
        seed_everything(config.seed * 1000 + t)
        network = DualDecoderSegNet(**hyper)
        slices = SliceSet.concat(train_parts).keep_annotated()
        history = fit(
            network,
            slices,
            atlasnet_loss(config),
            config,
            seed=config.seed * 1000 + t,
            log=log,
            label=f"atlasnet[{t}]",
        )
        seconds["train"] += time.perf_counter() - start
        start = time.perf_counter()
        val_set = (
            SliceSet.concat(val_parts)
            if val_parts
            else SliceSet(
                np.zeros((0, size, size), np.int16),
                np.zeros((0, size, size), np.uint8),
                np.zeros((0, size, size), bool),
            )
        )
        template_validation.append(
            {"template": t, **_template_space_dice(network, val_set, config)}
        )
        seconds["validate"] += time.perf_counter() - start
        networks.append(network.cpu())
        templates.append(template)
        histories.append(history)
        del train_parts, val_parts, slices

    start = time.perf_counter()
    engine = AtlasNetEngine(
        networks,
        templates,
        input_spec=spec,
        registration=config.registration,
        device=config.device,
        class_weights=(config.lung_weights, config.disease_weights),
    )

    # The networks run once per validation case; each cut, and the validation Dice at the cut
    # chosen, only re-vote their probabilities (the engine's own labels at that cut).
    probabilities = {
        c.case_id: engine.case_probabilities(c.ct, val_mappings[c.case_id]) for c in validation
    }

    def predict_at(cut: float, case: SegmentationCase) -> npt.NDArray[np.uint8]:
        return engine.labels_from_probabilities(case.ct, probabilities[case.case_id], cut)

    ild_threshold = choose_ild_threshold(predict_at, validation, config.ild_thresholds)
    engine.ild_threshold = ild_threshold["value"] if ild_threshold else 0.5
    log(f"AtlasNet ILD cut: {ild_threshold}")
    validation_summary = _native_validation(
        lambda case: predict_at(engine.ild_threshold, case), validation
    )
    validation_summary["per_template"] = template_validation
    seconds["validate"] += time.perf_counter() - start
    template_entries: list[dict[str, Any]] = [
        {
            "ct": f"template_{t:02d}_ct.nii.gz",
            "labels": f"template_{t:02d}_labels.nii.gz",
            "network": f"network_{t:02d}.pt",
            "source_case": tpl.source_case,
            "shape_kji": list(tpl.ct.shape_kji),
            "spacing_mm": [round(v, 5) for v in tpl.ct.spacing_mm],
        }
        for t, tpl in enumerate(templates)
    ]
    metadata = ModelMetadata(
        model="atlasnet",
        version=_version("atlasnet", dataset.digest, config.seed),
        input_spec=spec,
        network_class="DualDecoderSegNet",
        hyperparameters=hyper,
        networks=[e["network"] for e in template_entries],
        templates=template_entries,
        registration=config.registration.as_dict(),
        training={
            **dataset.describe(),
            "training_cases": [c.case_id for c in training],
            "validation_cases": [c.case_id for c in validation],
            "config": config.as_dict(),
            "training_code": TRAINING_VERSION,
            "ild_threshold": ild_threshold,
            "histories": histories,
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "torch": torch.__version__,
        },
        validation=validation_summary,
    )
    state_dicts = {
        e["network"]: n.state_dict() for e, n in zip(template_entries, networks, strict=True)
    }
    volumes: dict[str, Volume] = {}
    for entry, tpl in zip(template_entries, templates, strict=True):
        volumes[entry["ct"]] = tpl.ct
        volumes[entry["labels"]] = tpl.labels
    save_model(out_dir, metadata, state_dicts=state_dicts, volumes=volumes)
    log(
        f"AtlasNet written to {out_dir}: validation {validation_summary.get('dice_ild_median_slice')}"
    )
    return TrainingReport(out_dir, metadata, histories, seconds)


def train_unet(
    dataset: Dataset, config: TrainConfig, out_dir: Path, *, log: Log = _stderr
) -> TrainingReport:
    """Train the U-Net comparator (see the module docstring) and write its model folder.

    Raises:
        ValueError: a bad configuration or no training slices.
    """
    seconds: dict[str, float] = {}
    training, validation = split_cases(
        dataset.cases, validation_fraction=config.validation_fraction, seed=config.seed
    )
    size = config.in_plane_size
    spec = InputSpec(in_plane_size=(size, size), hu_window=config.hu_window)
    hyper: dict[str, Any] = {
        "in_channels": 1,
        "classes": 3,
        "base_channels": 64,
        "depth": 5,
        "width": config.width,
    }
    log(f"U-Net: {len(training)} training / {len(validation)} validation cases")
    start = time.perf_counter()
    slices = SliceSet.concat([case_slices(c, size) for c in training]).keep_annotated()
    if len(slices) == 0:
        raise ValueError("no annotated training slices")
    seed_everything(config.seed)
    network = UNet2D(**hyper)
    augmentation = RigidAugmentation(config.max_rotation_deg, config.max_translation_px)
    history = fit(
        network,
        slices,
        unet_loss(config),
        config,
        seed=config.seed,
        augmentation=augmentation,
        log=log,
        label="unet",
    )
    seconds["train"] = time.perf_counter() - start
    start = time.perf_counter()
    engine = UNetEngine(
        network.cpu(),
        input_spec=spec,
        device=config.device,
        class_weights=config.unet_class_weights,
    )

    def predict_at(cut: float | None, case: SegmentationCase) -> npt.NDArray[np.uint8]:
        engine.ild_threshold = cut
        return np.asarray(engine.predict(case.ct).label_map.array)

    ild_threshold = choose_ild_threshold(predict_at, validation, config.ild_thresholds)
    log(f"U-Net ILD cut: {ild_threshold}")
    chosen = ild_threshold["value"] if ild_threshold else None
    validation_summary = _native_validation(lambda case: predict_at(chosen, case), validation)
    seconds["validate"] = time.perf_counter() - start
    metadata = ModelMetadata(
        model="unet",
        version=_version("unet", dataset.digest, config.seed),
        input_spec=spec,
        network_class="UNet2D",
        hyperparameters=hyper,
        networks=["network_00.pt"],
        training={
            **dataset.describe(),
            "training_cases": [c.case_id for c in training],
            "validation_cases": [c.case_id for c in validation],
            "config": config.as_dict(),
            "augmentation": {
                "max_rotation_deg": config.max_rotation_deg,
                "max_translation_px_at_512": config.max_translation_px,
            },
            "training_code": TRAINING_VERSION,
            "ild_threshold": ild_threshold,
            "histories": [history],
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "torch": torch.__version__,
        },
        validation=validation_summary,
    )
    save_model(out_dir, metadata, state_dicts={"network_00.pt": network.state_dict()})
    log(f"U-Net written to {out_dir}: validation {validation_summary.get('dice_ild_median_slice')}")
    return TrainingReport(out_dir, metadata, [history], seconds)


def train_model(
    dataset: Dataset, config: TrainConfig, out_dir: Path, *, log: Log = _stderr
) -> TrainingReport:
    """Train ``config.model`` on ``dataset`` into ``out_dir`` (seeded; see module docs).

    Raises:
        ValueError: a bad configuration or dataset.
    """
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        if config.model == "atlasnet":
            return train_atlasnet(dataset, config, out_dir, log=log)
        return train_unet(dataset, config, out_dir, log=log)
    finally:
        torch.set_num_threads(threads_before)
