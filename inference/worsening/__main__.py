"""Predict functional and morphologic worsening for one baseline/follow-up pair from files.

Usage::

    python -m inference.worsening --baseline CT --log-jacobian MAP [--lung MASK] \\
        [--model MODEL_DIR | --cache-dir DIR] [--threads N]
    python -m inference.worsening --baseline CT --registration-dir OUT [--model MODEL_DIR]

``CT`` is the baseline CT (DICOM folder, NIfTI, NRRD or MHA). ``MAP`` is the log-Jacobian map of
the follow-up → baseline registration (``log_jacobian.nii.gz`` of ``python -m inference.register``;
any grid of the baseline's physical space). ``MASK`` is the baseline lung mask (any grid; default:
the classical lung segmentation of ``CT``). ``--registration-dir OUT`` takes
``OUT/log_jacobian.nii.gz`` and ``OUT/lung_mask.nii.gz`` from a ``python -m inference.register``
output folder. Without ``--model`` the weight-free default model is used (built into
``--cache-dir`` on first use, about a minute). Prints the prediction as JSON; exit status 1 with a
readable message on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference.worsening",
        description="Predict worsening of one pair from its baseline CT and log-Jacobian map.",
    )
    parser.add_argument("--baseline", required=True, type=Path, help="baseline CT")
    parser.add_argument("--log-jacobian", type=Path, help="log-Jacobian map (baseline space)")
    parser.add_argument("--lung", type=Path, help="baseline lung mask (baseline space)")
    parser.add_argument("--registration-dir", type=Path, help="python -m inference.register output")
    parser.add_argument("--model", type=Path, help="model folder (default: the default model)")
    parser.add_argument("--cache-dir", type=Path, help="where the default model is cached")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from inference.imageio import read_image
    from inference.registration import RegistrationError
    from inference.worsening.classifier import WorseningModelError, load_model, predict_worsening
    from inference.worsening.default import default_model
    from inference.worsening.template import TemplateError

    torch.set_num_threads(max(1, int(args.threads)))
    try:
        log_jacobian_path = args.log_jacobian
        lung_path = args.lung
        if args.registration_dir is not None:
            log_jacobian_path = log_jacobian_path or args.registration_dir / "log_jacobian.nii.gz"
            lung_path = lung_path or args.registration_dir / "lung_mask.nii.gz"
        if log_jacobian_path is None:
            raise ValueError("give --log-jacobian or --registration-dir")
        ct = read_image(args.baseline)
        log_jacobian = read_image(log_jacobian_path)
        if lung_path is not None:
            lung = read_image(lung_path)
        else:
            from inference.segmentation.classical import lung_mask

            lung = lung_mask(ct)
        model = load_model(args.model) if args.model else default_model(args.cache_dir)
        prediction = predict_worsening(
            ct, lung, log_jacobian, model, registration_params={"threads": int(args.threads)}
        )
    except (
        FileNotFoundError,
        ValueError,
        RegistrationError,
        TemplateError,
        WorseningModelError,
    ) as error:
        print(f"inference.worsening: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(prediction.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
