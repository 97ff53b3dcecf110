"""Train a lung/ILD segmentation network from the command line.

Usage::

    python -m inference.train_segmentation DATASET --model {atlasnet,unet} [--out DIR]
        [--preset {cpu,paper}] [--size PX] [--width W] [--templates N] [--epochs E]
        [--batch-size B] [--lr-decrease-every E] [--seed S] [--device auto|cpu|cuda]
        [--registration-spacing MM] [--template-margin MM|none]
        [--decoder-upsampling {indices,nearest}] [--validation-fraction F]
        [--timepoints baseline[,followup]]

``DATASET`` is a phantom cohort (``python -m inference.phantoms --out DIR --patients N --seed S``)
or a reader-contour export (``dataset.json``; format in :mod:`inference.training.datasets`).
The model folder (default ``var/models/<model>/``, where ``--engine atlasnet``/``unet`` look
when no ``--weights`` is given) gets the weights, AtlasNet's templates and ``metadata.json``
(version, input spec, labels, training-data digest, validation Dice). A JSON summary is printed.

Presets (any option given explicitly overrides them):

* ``cpu`` (default): 256 px slices, width 1/8 (8→128 channels), 2 templates, registration on a
  6 mm grid with short iterations, 20 epochs with the learning rate lowered every 5; AtlasNet's
  templates cover their lungs and 20 mm (``--template-margin``), so its 256 px fall on the
  lungs rather than the whole field of view.
* ``paper``: 512 px, width 1 (64→1024), 6 templates, registration on a 3 mm grid with the
  backend's default iterations, 50 epochs lowered every 10, templates over the whole field of
  view — a GPU workload.

AtlasNet's decoders upsample with the encoder's max-pooling indices, as SegNet does
(``--decoder-upsampling indices``, both presets); ``nearest`` repeats each value 2x2, as the
paper's Keras "upsampling layers" may be read (it scores lower on the phantoms, see
``benchmarks/README.md``).

Exit status: 0 on success, 2 for bad arguments, 4 when the dataset cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_DATA = 4

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "in_plane_size": 256,
        "width": 0.125,
        "templates": 2,
        "epochs": 20,
        "lr_decrease_every": 5,
        "batch_size": 8,
        "registration_spacing_mm": 6.0,
        "registration_params": "cpu",
        "template_margin_mm": 20.0,
    },
    "paper": {
        "in_plane_size": 512,
        "width": 1.0,
        "templates": 6,
        "epochs": 50,
        "lr_decrease_every": 10,
        "batch_size": 8,
        "registration_spacing_mm": 3.0,
        "registration_params": "default",
        "template_margin_mm": None,
    },
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference.train_segmentation",
        description="Train AtlasNet or the U-Net comparator (Chassagnon et al. 2020).",
    )
    parser.add_argument("dataset", type=Path, help="phantom cohort or reader-contour export")
    parser.add_argument("--model", choices=("atlasnet", "unet"), default="atlasnet")
    parser.add_argument(
        "--out", type=Path, default=None, help="model folder (default var/models/MODEL)"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--size", type=int, default=None, help="in-plane input size, px (x16)")
    parser.add_argument("--width", type=float, default=None, help="channel multiplier")
    parser.add_argument("--templates", type=int, default=None, help="AtlasNet templates")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr-decrease-every", type=int, default=None, help="epochs per lr step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda[:N]")
    parser.add_argument("--registration-spacing", type=float, default=None, help="mm")
    parser.add_argument(
        "--template-margin",
        type=template_margin,
        default=None,
        help="AtlasNet templates cover their lungs and this margin, mm; 'none': the whole field",
    )
    parser.add_argument(
        "--decoder-upsampling",
        choices=("indices", "nearest"),
        default="indices",
        help="AtlasNet decoders: SegNet's max-pooling indices, or nearest (2x2 repeat)",
    )
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument(
        "--timepoints", default="baseline", help="phantom cohorts: baseline[,followup]"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


WHOLE_FIELD = "none"


def template_margin(text: str) -> float | str:
    """``--template-margin``: millimetres (>= 0), or ``none`` for the whole field of view."""
    if text.strip().lower() == WHOLE_FIELD:
        return WHOLE_FIELD
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected millimetres or 'none', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"the margin must be >= 0 mm, got {text!r}")
    return value


def _pick(value: Any, preset: dict[str, Any], key: str) -> Any:
    return preset[key] if value is None else value


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~inference.training.train.TrainConfig` the arguments describe.

    Raises:
        ValueError: an invalid combination (e.g. a size that is not a multiple of 16).
    """
    import torch

    from inference.segmentation.atlasnet_engine import RegistrationSettings, cpu_registration_params
    from inference.training.train import TrainConfig

    preset = PRESETS[args.preset]
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here")
    spacing_mm = float(_pick(args.registration_spacing, preset, "registration_spacing_mm"))
    params = cpu_registration_params(spacing_mm) if preset["registration_params"] == "cpu" else {}
    registration = RegistrationSettings(spacing_mm=spacing_mm, params=params)
    margin = _pick(args.template_margin, preset, "template_margin_mm")
    config = TrainConfig(
        model=args.model,
        in_plane_size=int(_pick(args.size, preset, "in_plane_size")),
        width=float(_pick(args.width, preset, "width")),
        templates=int(_pick(args.templates, preset, "templates")),
        decoder_upsampling=args.decoder_upsampling,
        epochs=int(_pick(args.epochs, preset, "epochs")),
        batch_size=int(_pick(args.batch_size, preset, "batch_size")),
        lr_decrease_every=int(_pick(args.lr_decrease_every, preset, "lr_decrease_every")),
        validation_fraction=float(args.validation_fraction),
        seed=int(args.seed),
        device=device,
        registration=registration,
        template_margin_mm=None if margin == WHOLE_FIELD else margin,
        threads=args.threads,
    )
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    from inference.segmentation.weights import default_model_dir
    from inference.training.datasets import DatasetError, load_dataset
    from inference.training.train import train_model

    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    out = args.out if args.out is not None else default_model_dir(args.model)
    timepoints = tuple(t.strip() for t in args.timepoints.split(",") if t.strip())
    try:
        dataset = load_dataset(args.dataset, timepoints=timepoints)
    except (DatasetError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DATA

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    try:
        report = train_model(dataset, config, out, log=log)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DATA if "cases" in str(error) or "slices" in str(error) else EXIT_USAGE
    summary = {
        "model": report.metadata.model,
        "version": report.metadata.version,
        "model_dir": str(report.model_dir),
        "dataset_digest": dataset.digest,
        "validation": {k: v for k, v in report.metadata.validation.items() if k != "per_template"},
        "seconds": {k: round(v, 1) for k, v in report.seconds.items()},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
