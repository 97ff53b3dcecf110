"""``python -m inference.phantoms --out DIR --patients N --seed S [...]``: write a cohort."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from inference.phantoms.cohort import write_cohort
from inference.phantoms.generator import DEFAULT_SHAPE_KJI


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference.phantoms",
        description="Synthetic chest CTs with SSc-ILD, exact labels, known deformations and PFTs.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--patients", type=_positive_int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (non-negative)")
    parser.add_argument(
        "--shape-kji",
        type=_positive_int,
        nargs=3,
        metavar=("K", "J", "I"),
        default=list(DEFAULT_SHAPE_KJI),
        help=f"slices, rows, columns (default {' '.join(map(str, DEFAULT_SHAPE_KJI))})",
    )
    parser.add_argument(
        "--spacing-mm",
        type=_positive_float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        default=None,
        help="voxel size in mm (default: a 358 x 358 x 320 mm field of view)",
    )
    parser.add_argument("--no-followup", action="store_true", help="baseline scans only")
    parser.add_argument(
        "--no-ct-nifti", action="store_true", help="skip ct.nii.gz next to the DICOM"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seed < 0:
        print("error: --seed must be non-negative", file=sys.stderr)
        return 2
    start = time.perf_counter()
    manifest = write_cohort(
        args.out,
        patients=args.patients,
        seed=args.seed,
        shape_kji=tuple(args.shape_kji),
        spacing_mm=None if args.spacing_mm is None else tuple(args.spacing_mm),
        followup=not args.no_followup,
        ct_nifti=not args.no_ct_nifti,
    )
    print(f"{manifest} ({args.patients} patients, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
