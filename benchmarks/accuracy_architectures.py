"""AtlasNet's network against the U-Net on the very same slices, across widths (one command).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy_architectures.py            # ~10 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy_architectures.py \\
        --widths 0.125,0.25,0.5 --only segnet:0.5                   # one cell, then print all

``accuracy_segmentation.py`` compares the two engines end to end: AtlasNet's networks see
cases registered onto their templates and vote, the U-Net sees the cases as they are. This
benchmark takes registration and the vote out, to tell what the architecture alone costs:

1. Writes (or reuses) the training phantom cohort and the held-out cohort of
   ``accuracy_segmentation.py`` (same seeds and shape).
2. For each width and each architecture — ``segnet``, AtlasNet's dual-decoder SegNet with its
   loss (lung {1, 4}, disease {1, 65}, semantic term), and ``unet``, the U-Net with its
   3-class weighted loss — trains one network on the training split's slices resampled
   in-plane to ``--size`` (``inference.training.train.case_slices``), both with the U-Net's
   augmentation (rotations ±10°, translations up to 20 px at 512) unless
   ``--no-augmentation``, with the paper's optimiser and schedule (``inference.training.train.fit``).
3. Chooses the ILD cut (class-weight prior removed) on the validation split as training does,
   and scores the held-out slices at that cut on the networks' grid: median (IQR) per-slice
   ILD Dice over slices with ILD, and lung Dice.

Each cell's result goes to ``--work``/``cells/ARCH-WIDTH.json`` and is reused; ``--only
ARCH:WIDTH`` runs one cell (so cells can run in parallel processes), and every run prints the
table of the cells found.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from accuracy_segmentation import ensure_cohorts  # this folder is sys.path[0]

from inference.networks.atlasnet import DualDecoderSegNet
from inference.networks.slicewise import predict_slices, remove_class_weights
from inference.networks.unet import UNet2D
from inference.segmentation.weights import InputSpec
from inference.training.augment import RigidAugmentation
from inference.training.datasets import load_dataset, split_cases
from inference.training.train import (
    SliceSet,
    TrainConfig,
    atlasnet_loss,
    case_slices,
    fit,
    seed_everything,
    slice_dice_summary,
    unet_loss,
)

ARCHITECTURES = ("segnet", "unet")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Scorer:
    """A trained network's prior-corrected probabilities on ``slices``, computed once, scored
    at any ILD cut."""

    def __init__(self, network: torch.nn.Module, slices: SliceSet, config: TrainConfig) -> None:
        spec = InputSpec(in_plane_size=(config.in_plane_size,) * 2, hu_window=config.hu_window)
        out = predict_slices(network, spec.normalise(slices.hu), device=config.device)
        if config.model == "unet":
            p = np.asarray(remove_class_weights(out[0], config.unet_class_weights))
            self.lung, self.disease = p[1] + p[2] >= 0.5, p[2]
        else:
            self.lung = np.asarray(remove_class_weights(out[0], config.lung_weights))[1] >= 0.5
            self.disease = np.asarray(remove_class_weights(out[1], config.disease_weights))[1]
        self.valid = slices.valid
        self.truth = np.where(slices.valid, slices.labels, 0).astype(np.uint8)

    def labels_at(self, cut: float) -> np.ndarray:
        """0/1/2 labels at ILD cut ``cut``; 0 where a slice is not annotated."""
        ild = self.lung & (self.disease >= cut)
        labels = np.where(ild, 2, np.where(self.lung, 1, 0))
        return np.where(self.valid, labels, 0).astype(np.uint8)

    def score(self, cut: float) -> dict[str, Any]:
        return slice_dice_summary([self.labels_at(cut)], [self.truth])


def run_cell(
    architecture: str, width: float, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Train one network and score it (see the module docstring)."""
    dataset = load_dataset(work / "train")
    held_out = load_dataset(work / "test")
    config = TrainConfig(
        model="unet" if architecture == "unet" else "atlasnet",
        in_plane_size=args.size,
        width=width,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr_decrease_every=args.lr_decrease_every,
        seed=args.seed,
        device=args.device,
    )
    training, validation = split_cases(
        dataset.cases, validation_fraction=config.validation_fraction, seed=config.seed
    )

    def slices_of(cases: Any) -> SliceSet:
        return SliceSet.concat([case_slices(c, args.size) for c in cases]).keep_annotated()

    train_slices = slices_of(training)
    seed_everything(config.seed)
    if architecture == "unet":
        network: torch.nn.Module = UNet2D(width=width)
        loss_of = unet_loss(config)
    else:
        network = DualDecoderSegNet(width=width)
        loss_of = atlasnet_loss(config)
    augmentation = (
        None
        if args.no_augmentation
        else RigidAugmentation(config.max_rotation_deg, config.max_translation_px)
    )
    start = time.perf_counter()
    history = fit(
        network,
        train_slices,
        loss_of,
        config,
        seed=config.seed,
        augmentation=augmentation,
        log=_log,
        label=f"{architecture} width {width:g}",
    )
    seconds = time.perf_counter() - start
    network.eval()
    validation_slices = slices_of(validation)
    on_validation = Scorer(network, validation_slices, config)
    tried = {
        cut: on_validation.score(cut)["dice_ild_median_slice"] for cut in config.ild_thresholds
    }
    cut = max(tried, key=lambda c: (tried[c], -abs(c - 0.5)))
    result = Scorer(network, slices_of(held_out.cases), config).score(cut)
    return {
        "architecture": architecture,
        "width": width,
        "parameters": sum(p.numel() for p in network.parameters()),
        "ild_cut": cut,
        "validation_ild_dice_by_cut": {f"{c:g}": round(v, 4) for c, v in tried.items()},
        "held_out": result,
        "train_seconds": round(seconds, 1),
        "final_loss": history[-1]["loss"],
        "options": {k: v for k, v in vars(args).items() if k not in ("work", "only", "widths")},
    }


def print_table(cells: list[dict[str, Any]]) -> None:
    print("\nThe same held-out slices; median (IQR) per-slice ILD Dice over slices with ILD.\n")
    print("| width | network | parameters | ILD Dice | lung Dice | ILD cut | training s |")
    print("|---|---|---|---|---|---|---|")
    for cell in sorted(cells, key=lambda c: (c["width"], c["architecture"])):
        held = cell["held_out"]
        q25, q75 = held["dice_ild_iqr"]
        print(
            f"| {cell['width']:g} | {cell['architecture']} | {cell['parameters']:,} | "
            f"{held['dice_ild_median_slice']:.2f} ({q25:.2f}–{q75:.2f}) | "
            f"{held['dice_lung']:.3f} | {cell['ild_cut']:g} | {cell['train_seconds']:.0f} |"
        )
    by_width: dict[float, dict[str, float]] = {}
    for cell in cells:
        by_width.setdefault(cell["width"], {})[cell["architecture"]] = cell["held_out"][
            "dice_ild_median_slice"
        ]
    for width, pair in sorted(by_width.items()):
        if len(pair) == 2:
            print(f"width {width:g}: U-Net - SegNet = {pair['unet'] - pair['segnet']:+.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-out/architectures"))
    parser.add_argument("--widths", default="0.125,0.25", help="comma-separated multipliers")
    parser.add_argument("--only", help="ARCH:WIDTH, e.g. segnet:0.25: run this cell only")
    parser.add_argument("--train-patients", type=int, default=8)
    parser.add_argument("--test-patients", type=int, default=4)
    parser.add_argument("--train-seed", type=int, default=1101)
    parser.add_argument("--test-seed", type=int, default=2202)
    parser.add_argument("--slices", type=int, default=64, help="phantom slices (k)")
    parser.add_argument("--size", type=int, default=96, help="phantom and network slice size")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr-decrease-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-augmentation", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.train_seed == args.test_seed:
        parser.error("the held-out seed must differ from the training seed")
    try:
        widths = [float(w) for w in args.widths.split(",")]
    except ValueError:
        parser.error(f"--widths must be comma-separated numbers, got {args.widths!r}")
    cells = [(a, w) for w in widths for a in ARCHITECTURES]
    if args.only:
        arch, _, width = args.only.partition(":")
        if arch not in ARCHITECTURES:
            parser.error(f"--only takes ARCH:WIDTH with ARCH one of {ARCHITECTURES}")
        try:
            cells = [(arch, float(width))]
        except ValueError:
            parser.error(f"--only takes ARCH:WIDTH, got {args.only!r}")

    work: Path = args.work
    problem = ensure_cohorts(work, args)
    if problem:
        parser.error(problem)

    options = {k: v for k, v in vars(args).items() if k not in ("work", "only", "widths")}
    (work / "cells").mkdir(parents=True, exist_ok=True)
    for arch, width in cells:
        path = work / "cells" / f"{arch}-{width:g}.json"
        if path.is_file() and json.loads(path.read_text())["options"] == options:
            continue
        _log(f"{arch}, width {width:g}: training")
        path.write_text(json.dumps(run_cell(arch, width, args, work), indent=2))
    found = [json.loads(p.read_text()) for p in sorted((work / "cells").glob("*.json"))]
    print_table([c for c in found if c["options"] == options])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
