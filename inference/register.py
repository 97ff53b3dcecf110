"""Register a follow-up chest CT onto its baseline and write the Jacobian maps.

Usage::

    python -m inference.register --fixed BASELINE --moving FOLLOWUP --output-dir OUT \\
        [--backend {torch,elastix}] [--spacing-mm 1.0] [--fixed-mask M] [--moving-mask M] \\
        [--params JSON] [--threads N]

Both images (DICOM folder, NIfTI, NRRD or MHA) are resampled to isotropic voxels
(Chassagnon et al., Radiology 2021: 1 mm); lung masks come from
``inference.segmentation.classical.lung_mask`` unless given; registration is affine then
deformable, restricted to the lungs. Written on the resampled baseline grid:

* ``displacement.nii.gz`` — 3-vector per voxel, **LPS mm** (see ``summary.json``
  ``"vector_frame": "LPS"``; NIfTI stores the geometry as RAS but the components are LPS):
  baseline point ``x`` corresponds to follow-up point ``x + u(x)``;
* ``warped_followup.nii.gz`` — the follow-up resampled onto the baseline grid;
* ``log_jacobian.nii.gz`` — ``log det(I + grad u)``, negative = shrinkage;
* ``lung_mask.nii.gz`` — the baseline lung mask used (1 right, 2 left);
* ``summary.json`` — mean log-Jacobian over the lung and per region, folding and clipped
  fractions, backend, version, parameters, timings.

Exit status 0 on success, 1 with a readable message on bad input or a failed registration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.volume import GeometryError, Volume


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference.register",
        description="Register FOLLOWUP onto BASELINE; write displacement and log-Jacobian maps.",
    )
    parser.add_argument("--fixed", required=True, type=Path, help="baseline CT (fixed image)")
    parser.add_argument("--moving", required=True, type=Path, help="follow-up CT (moving image)")
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--backend", default="torch", choices=["torch", "elastix"])
    parser.add_argument("--spacing-mm", type=float, default=1.0, help="isotropic spacing")
    parser.add_argument("--fixed-mask", type=Path, help="baseline lung mask (any grid)")
    parser.add_argument("--moving-mask", type=Path, help="follow-up lung mask (any grid)")
    parser.add_argument(
        "--params", default="{}", help="backend parameters as a JSON object (overrides defaults)"
    )
    parser.add_argument(
        "--epsilon", type=float, default=1e-3, help="determinants below this are clipped"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for the backend (default: all cores; use 1 on a busy shared machine)",
    )
    return parser


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - start, 3)


def _mask_for(
    image: Volume, path: Path | None, read: Callable[[Path], Volume]
) -> tuple[Volume, str]:
    from inference.registration.resample import resample_to_grid

    if path is not None:
        mask = resample_to_grid(read(path), image, interpolation="nearest", default_value=0)
        return mask.with_array(mask.array.astype(np.uint8)), str(path)
    from inference.segmentation.classical import lung_mask

    return lung_mask(image), "inference.segmentation.classical.lung_mask"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True, eq=False)
class PipelineOutputs:
    """What :func:`run_volumes` computed, besides the files it wrote.

    Attributes:
        summary: the ``summary.json`` content.
        grid: the isotropic baseline grid everything below lies on.
        displacement: ``[k, j, i, 3]`` LPS mm on ``grid`` (baseline ``x`` ↔ follow-up
            ``x + u(x)``).
        log_jacobian: ``log det(I + grad u)`` on ``grid``.
        lung_mask: the baseline lung mask used (1 right, 2 left) on ``grid``.
    """

    summary: dict[str, Any]
    grid: Volume
    displacement: npt.NDArray[np.float32]
    log_jacobian: Volume
    lung_mask: Volume


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the pipeline on the files the arguments name; returns the summary.

    Raises:
        FileNotFoundError, ValueError, GeometryError, RegistrationError: on bad input or a
            failed registration.
    """
    from inference.imageio import read_image

    params = json.loads(args.params)
    if not isinstance(params, dict):
        raise ValueError("--params must be a JSON object")
    if args.threads:
        params.setdefault("threads", args.threads)
    timings: dict[str, float] = {}
    with _timed(timings, "read"):
        fixed_raw = read_image(args.fixed)
        moving_raw = read_image(args.moving)
    return run_volumes(
        fixed_raw,
        moving_raw,
        Path(args.output_dir),
        backend=args.backend,
        spacing_mm=args.spacing_mm,
        epsilon=args.epsilon,
        params=params,
        fixed_mask=args.fixed_mask,
        moving_mask=args.moving_mask,
        inputs={"fixed": str(args.fixed), "moving": str(args.moving)},
        timings=timings,
    ).summary


def run_volumes(
    fixed_raw: Volume,
    moving_raw: Volume,
    output_dir: Path,
    *,
    backend: str = "torch",
    spacing_mm: float = 1.0,
    epsilon: float = 1e-3,
    params: dict[str, Any] | None = None,
    fixed_mask: Path | None = None,
    moving_mask: Path | None = None,
    inputs: dict[str, str] | None = None,
    timings: dict[str, float] | None = None,
) -> PipelineOutputs:
    """The pipeline on volumes in memory (preprocess -> register -> postprocess -> write).

    Args:
        fixed_raw, moving_raw: baseline and follow-up CT (HU), any grid.
        output_dir: where the files of the module docstring are written.
        backend, spacing_mm, epsilon, params: as the command line's options.
        fixed_mask, moving_mask: lung mask files (any grid); None: the classical lung mask.
        inputs: how the summary names the two images.
        timings: seconds already spent (``read``), added to the summary's.

    Raises:
        ValueError, GeometryError, RegistrationError: on bad input or a failed registration.
    """
    from inference.imageio import read_image, write_image
    from inference.registration import register, resample_isotropic, summarize_jacobian
    from inference.registration.fieldio import VECTOR_FRAME, write_displacement

    params = dict(params or {})
    timings = dict(timings or {})
    with _timed(timings, "resample"):
        fixed = resample_isotropic(fixed_raw, spacing_mm)
        moving = resample_isotropic(moving_raw, spacing_mm)
    with _timed(timings, "lung_masks"):
        fixed_lungs, fixed_mask_source = _mask_for(fixed, fixed_mask, read_image)
        moving_lungs, moving_mask_source = _mask_for(moving, moving_mask, read_image)
    if not np.any(fixed_lungs.array):
        raise ValueError("the baseline lung mask is empty")
    with _timed(timings, "register"):
        result = register(
            fixed,
            moving,
            fixed_mask=fixed_lungs,
            moving_mask=moving_lungs if np.any(moving_lungs.array) else None,
            backend=backend,
            params=params,
        )
    with _timed(timings, "warp"):
        warped = result.warp(moving, interpolation="linear")
    with _timed(timings, "jacobian"):
        logjac, jac_summary = summarize_jacobian(
            result.displacement, fixed, fixed_lungs, epsilon=epsilon
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _timed(timings, "write"):
        write_displacement(result.displacement, fixed, out / "displacement.nii.gz")
        write_image(warped, out / "warped_followup.nii.gz")
        write_image(fixed.with_array(logjac), out / "log_jacobian.nii.gz")
        write_image(fixed_lungs, out / "lung_mask.nii.gz")
    summary: dict[str, Any] = {
        "tool": "inference.register",
        "backend": result.backend,
        "version": result.version,
        "parameters": result.params,
        "vector_frame": VECTOR_FRAME,
        "displacement_convention": (
            "baseline (fixed) point x corresponds to follow-up (moving) point x + u(x); "
            "components are LPS millimetres (x to patient left, y posterior, z superior) "
            "although the NIfTI header stores the geometry as RAS"
        ),
        "log_jacobian_convention": (
            "log det(I + du/dx); negative = shrinkage from baseline to follow-up; determinants "
            "below epsilon (folds included) clipped to epsilon before the log"
        ),
        "regions": (
            "halves of the baseline lung mask split at the mid-plane of its extent along "
            "S (superior/inferior) and P (anterior/posterior); labels 1/2 = right/left lung"
        ),
        "grid": {
            "shape_kji": list(fixed.shape_kji),
            "spacing_mm": list(fixed.spacing_mm),
            "origin_lps_mm": list(fixed.origin_lps_mm),
            "direction": fixed.direction.tolist(),
        },
        "inputs": {
            **(inputs or {"fixed": "(in memory)", "moving": "(in memory)"}),
            "fixed_mask": fixed_mask_source,
            "moving_mask": moving_mask_source,
            "spacing_mm": spacing_mm,
        },
        "mean_log_jacobian": jac_summary.mean_log_jacobian,
        "regional_mean_log_jacobian": jac_summary.regional_mean_log_jacobian,
        "regional_voxel_count": jac_summary.regional_voxel_count,
        "folding_fraction": jac_summary.folding_fraction,
        "clipped_fraction": jac_summary.clipped_fraction,
        "epsilon": jac_summary.epsilon,
        "mean_determinant": jac_summary.mean_determinant,
        "affine_lps": None if result.affine_lps is None else result.affine_lps.tolist(),
        "timings_s": {**timings, "backend": result.timings_s},
        "outputs": [
            "displacement.nii.gz",
            "warped_followup.nii.gz",
            "log_jacobian.nii.gz",
            "lung_mask.nii.gz",
            "summary.json",
        ],
    }
    summary = _jsonable(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return PipelineOutputs(
        summary=summary,
        grid=fixed,
        displacement=result.displacement,
        log_jacobian=fixed.with_array(logjac),
        lung_mask=fixed_lungs,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from inference.registration import RegistrationError

    try:
        summary = run(args)
    except (FileNotFoundError, ValueError, GeometryError, RegistrationError) as error:
        print(f"inference.register: error: {error}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "output_dir": str(args.output_dir),
                "backend": summary["backend"],
                "mean_log_jacobian": summary["mean_log_jacobian"],
                "folding_fraction": summary["folding_fraction"],
                "seconds": summary["timings_s"]["register"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
