"""Segment the lungs and interstitial lung disease on a chest CT, from the command line.

Usage::

    python -m inference.segment INPUT --output OUT.nii.gz \\
        [--engine {classical,atlasnet,unet}] [--weights DIR] [--device cpu|cuda]

``INPUT`` is a DICOM series folder, or a NIfTI, NRRD or MHA file, in Hounsfield units. The label
map (``uint8``: 0 background, 1 lung without ILD, 2 ILD) is written in the input's geometry, in
the format the output suffix names. A JSON summary is printed on stdout: ``lung_ml``, ``ild_ml``,
``extent_pct``, ``per_slice`` (``index_k``, ``z_mm`` in LPS, ``lung_ml``, ``ild_ml``),
``timings_s``, ``engine``, ``version``.

Exit status: 0 on success, 2 for bad arguments, 3 when the engine is unavailable, 4 when the
input cannot be read or used, 5 when the output cannot be written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from inference.segmentation.engines import EngineUnavailable, available_engines
from inference.segmentation.pipeline import SegmentationPipeline

EXIT_USAGE = 2
EXIT_ENGINE = 3
EXIT_INPUT = 4
EXIT_OUTPUT = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference.segment",
        description="Lung and ILD segmentation of a chest CT (0 background, 1 lung, 2 ILD).",
    )
    parser.add_argument("input", type=Path, help="DICOM folder, or NIfTI / NRRD / MHA file")
    parser.add_argument(
        "--engine", default="classical", choices=available_engines(), help="default: classical"
    )
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (networks)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument(
        "--output", "-o", type=Path, required=True, help="label map to write, e.g. labels.nii.gz"
    )
    parser.add_argument(
        "--no-per-slice", action="store_true", help="leave per-slice values out of the JSON"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    if not args.input.exists():
        print(f"error: input {args.input} does not exist", file=sys.stderr)
        return EXIT_INPUT
    try:
        pipeline = SegmentationPipeline(args.engine, weights=args.weights, device=args.device)
    except EngineUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ENGINE
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE

    from inference.imageio import read_image

    start = time.perf_counter()
    try:
        ct = read_image(args.input)
    except (OSError, ValueError) as error:  # ImageIOError, DicomSeriesError, GeometryError
        print(f"error: cannot read {args.input}: {error}", file=sys.stderr)
        return EXIT_INPUT
    read_s = time.perf_counter() - start
    try:
        result = pipeline(ct)
    except ValueError as error:  # GeometryError included
        print(f"error: cannot segment {args.input}: {error}", file=sys.stderr)
        return EXIT_INPUT
    start = time.perf_counter()
    try:
        pipeline.write(result, args.output)
    except (OSError, ValueError) as error:  # ImageIOError
        print(f"error: cannot write {args.output}: {error}", file=sys.stderr)
        return EXIT_OUTPUT
    write_s = time.perf_counter() - start

    summary = result.summary()
    summary.pop("parameters", None)
    if args.no_per_slice:
        summary.pop("per_slice", None)
    timings = {"read": round(read_s, 4)}
    timings.update({stage: round(seconds, 4) for stage, seconds in result.timings_s.items()})
    timings["write"] = round(write_s, 4)
    summary["timings_s"] = timings
    summary["output"] = str(args.output)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
