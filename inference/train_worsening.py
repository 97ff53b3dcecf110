"""Train the longitudinal worsening classifier (functional and morphologic) on a cohort folder.

Usage::

    python -m inference.train_worsening --cohort DIR --out MODEL_DIR \\
        [--maps {exact,registered}] [--lungs {truth,classical}] \\
        [--template-spacing-mm 4] [--template-cases 12] [--template-iterations 1] \\
        [--template DIR] [--registration-spacing-mm 4] [--epochs 60] [--seed 0] \\
        [--val-fraction 0.2] [--smoothing-mm 0] [--threads 1]

``DIR`` is a phantom cohort (``python -m inference.phantoms --out DIR --patients N --seed S``, or
:func:`inference.phantoms.write_cohort`). The template is built from ``--template-cases``
baselines (a seeded draw) unless ``--template`` names an existing template folder. Each pair's
log-Jacobian is the phantom's exact map (``--maps exact``, cheap) or our torch registration of the
follow-up onto the baseline at ``--registration-spacing-mm`` (``--maps registered``, what the app
produces). The model folder (``model.pt``, ``metadata.json``, ``template/``) is what
:func:`inference.worsening.load_model` reads.

To predict for one pair from files, see ``python -m inference.worsening --help``.

Exit status 0 on success (a JSON summary is printed), 1 with a readable message otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference.train_worsening",
        description="Train the worsening classifier (template + two 3D CNNs) on a cohort folder.",
    )
    parser.add_argument("--cohort", required=True, type=Path, help="write_cohort folder")
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument("--maps", choices=["exact", "registered"], default="exact")
    parser.add_argument("--lungs", choices=["truth", "classical"], default="truth")
    parser.add_argument("--template", type=Path, help="existing template folder to reuse")
    parser.add_argument("--template-spacing-mm", type=float, default=4.0)
    parser.add_argument("--template-cases", type=int, default=12, help="0: all baselines")
    parser.add_argument("--template-iterations", type=int, default=1)
    parser.add_argument("--registration-spacing-mm", type=float, default=4.0)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--smoothing-mm", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def run(args: argparse.Namespace) -> dict[str, object]:
    """Train and save; returns the summary printed by :func:`main`."""
    import torch

    from inference.worsening.classifier import TARGETS, TrainingConfig, save_model
    from inference.worsening.template import LungTemplate, TemplateSettings, registration_params
    from inference.worsening.training import CohortTrainingSettings, train_from_cohort

    torch.set_num_threads(max(1, int(args.threads)))
    start = time.perf_counter()

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - start:7.1f} s] {line}", file=sys.stderr, flush=True)

    template = LungTemplate.load(args.template) if args.template else None
    spacing = float(args.template_spacing_mm)
    settings = CohortTrainingSettings(
        template=TemplateSettings(
            spacing_mm=spacing,
            iterations=int(args.template_iterations),
            params=registration_params(spacing, threads=args.threads),
        ),
        template_cases=None if args.template_cases <= 0 else int(args.template_cases),
        maps=args.maps,
        lungs=args.lungs,
        registration_spacing_mm=float(args.registration_spacing_mm),
        training=TrainingConfig(
            epochs=int(args.epochs),
            seed=int(args.seed),
            val_fraction=float(args.val_fraction),
            threads=int(args.threads),
            smoothing_mm=float(args.smoothing_mm),
        ),
    )
    result = train_from_cohort(args.cohort, settings, template=template, progress=progress)
    folder = save_model(result.model, args.out)
    from inference.worsening.classifier import load_model

    model = load_model(folder)
    targets = model.metadata["targets"]
    return {
        "model_dir": str(folder),
        "version": model.version,
        "template_digest": model.template.digest,
        "cases": len(result.cases),
        "train": len(result.train_ids),
        "validation": len(result.val_ids),
        "thresholds": {t: model.thresholds[t] for t in TARGETS},
        "validation_accuracy": {
            t: (targets[t]["validation_metrics"] or {}).get("accuracy", {}).get("estimate")
            for t in TARGETS
        },
        "seconds": result.seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from inference.registration import RegistrationError
    from inference.worsening.classifier import WorseningModelError
    from inference.worsening.cohort import CohortError
    from inference.worsening.template import TemplateError

    try:
        summary = run(args)
    except (
        CohortError,
        TemplateError,
        WorseningModelError,
        RegistrationError,
        FileNotFoundError,
        ValueError,
    ) as error:
        print(f"inference.train_worsening: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
