"""The reference backend: the ``elastix`` and ``transformix`` binaries, called as subprocesses.

Steps: write the images (and the dilated fixed lung mask) as MHA to a temporary folder, write an
affine and a B-spline parameter file, run ``elastix -f fixed -m moving -fMask mask -p affine
-p bspline``, then ``transformix -def all -jac all`` on the final transform, and read
``deformationField.mha`` back.

Convention: elastix's transform maps *fixed-image* points to *moving-image* points, and
transformix's deformation field holds ``T(x) - x`` in physical (ITK = LPS) millimetres on the
fixed grid, so it is already our ``u`` (fixed ``x`` -> moving ``x + u(x)``) with no sign flip
or axis permutation.

Parameters are based on the elastix Model Zoo lung CT set **Par0011** (Staring, Klein, Reiber,
Niessen, Stoel, "Pulmonary image registration with elastix using a standard intensity-based
algorithm", EMPIRE10 workshop, MICCAI 2010; files ``Parameters.Par0011.affine.txt`` and
``Parameters.Par0011.bspline{1,2}_s.txt``): affine then B-spline, AdvancedNormalizedCorrelation
+ TransformBendingEnergyPenalty, ASGD with automatic parameter estimation, random-coordinate
sampling, recursive pyramids. Deviations, for run time on 1 mm CT on a few CPU cores and for our
use (each generated parameter file cites Par0011 and points here):

* one B-spline stage (final grid 10 mm as in ``bspline1``) instead of two (10 mm unmasked then
  5 mm masked);
* the fixed lung mask is used in both stages and *dilated* by ``mask_dilation_mm`` instead of
  eroded at coarse levels, so the pleural boundary (the main evidence of lung volume loss) is
  sampled;
* bending-energy relative weight 0.1 instead of 0.05 (see ``DEFAULT_PARAMS``);
* the number of resolutions follows the image size (Par0011: 5 for 0.7 mm scans) and the
  iterations per level are 250 (affine) / 500 (B-spline) instead of 1000 / 2000, with 3000
  samples instead of 2000.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from inference.registration.base import BackendOutput, RegistrationError, merge_params
from inference.registration.resample import dilate_mask
from inference.volume import Volume

PARAMETER_SOURCE = (
    "elastix Model Zoo Par0011 (Staring et al., EMPIRE10 2010), "
    "https://github.com/SuperElastix/ElastixModelZoo/tree/master/models/Par0011"
)

DEFAULT_PARAMS: dict[str, Any] = {
    # elastix -threads; None = all CPU cores.
    "threads": None,
    # Number of pyramid levels; None = as many as keep the coarsest level >= 16 voxels (max 4).
    "number_of_resolutions": None,
    "affine": True,
    "affine_iterations": 250,
    "bspline_iterations": 500,
    "spatial_samples": 3000,
    "final_grid_spacing_mm": 10.0,
    # Par0011: 0.05. Doubled after the 1 mm benchmark: at 0.05 the phantom follow-up's new ILD
    # and denser parenchyma read as extra shrinkage (log-Jacobian -0.275 vs -0.211 true).
    "bending_energy_weight": 0.1,
    "mask_dilation_mm": 6.0,
    "random_seed": 121212,
    "default_pixel_value": -1000.0,
    # Extra elastix parameters, written verbatim (e.g. {"MaximumStepLength": 1.0}).
    "affine_overrides": {},
    "bspline_overrides": {},
    # Seconds before elastix is killed.
    "timeout_s": 3600,
}


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return f'"{str(value).lower()}"'
    if isinstance(value, int | float | np.integer | np.floating):
        return repr(float(value)) if isinstance(value, float | np.floating) else str(value)
    return f'"{value}"'


def format_parameter_file(parameters: Mapping[str, Any], comment: str) -> str:
    """An elastix parameter file: ``(Name value ...)`` lines, strings quoted, booleans as strings."""
    lines = [f"// {line}" for line in comment.splitlines()]
    for key, value in parameters.items():
        values = value if isinstance(value, list | tuple) else [value]
        lines.append(f"({key} {' '.join(_format_value(v) for v in values)})")
    return "\n".join(lines) + "\n"


def _resolutions(fixed: Volume, requested: int | None) -> int:
    if requested is not None:
        return max(1, int(requested))
    smallest = min(fixed.shape_kji)
    return int(max(1, min(4, math.floor(math.log2(max(smallest, 1) / 16.0)) + 1)))


def _common(levels: int, p: Mapping[str, Any]) -> dict[str, Any]:
    schedule = [2 ** (levels - 1 - level) for level in range(levels) for _ in range(3)]
    return {
        "FixedInternalImagePixelType": "float",
        "MovingInternalImagePixelType": "float",
        "FixedImageDimension": 3,
        "MovingImageDimension": 3,
        "UseDirectionCosines": True,
        "FixedImagePyramid": "FixedRecursiveImagePyramid",
        "MovingImagePyramid": "MovingRecursiveImagePyramid",
        "NumberOfResolutions": levels,
        "ImagePyramidSchedule": schedule,
        "Interpolator": "BSplineInterpolator",
        "BSplineInterpolationOrder": 1,
        "ResampleInterpolator": "FinalBSplineInterpolator",
        "FinalBSplineInterpolationOrder": 3,
        "Resampler": "DefaultResampler",
        "Optimizer": "AdaptiveStochasticGradientDescent",
        "AutomaticParameterEstimation": True,
        "UseAdaptiveStepSizes": True,
        "ImageSampler": "RandomCoordinate",
        "NumberOfSpatialSamples": int(p["spatial_samples"]),
        "NewSamplesEveryIteration": True,
        "UseRandomSampleRegion": False,
        "MaximumNumberOfSamplingAttempts": 50,
        "RandomSeed": int(p["random_seed"]),
        "ErodeMask": False,
        "HowToCombineTransforms": "Compose",
        "WriteTransformParametersEachResolution": False,
        "WriteResultImage": False,
        "ResultImageFormat": "mha",
        "ResultImagePixelType": "float",
        "DefaultPixelValue": float(p["default_pixel_value"]),
    }


def affine_parameters(levels: int, p: Mapping[str, Any]) -> dict[str, Any]:
    """Affine stage, after ``Parameters.Par0011.affine.txt``."""
    params = _common(levels, p)
    params.update(
        {
            "Registration": "MultiResolutionRegistration",
            "Metric": "AdvancedNormalizedCorrelation",
            "Transform": "AffineTransform",
            "AutomaticScalesEstimation": True,
            "AutomaticTransformInitialization": True,
            "MaximumNumberOfIterations": int(p["affine_iterations"]),
        }
    )
    params.update(dict(p["affine_overrides"]))
    return params


def bspline_parameters(levels: int, p: Mapping[str, Any]) -> dict[str, Any]:
    """B-spline stage, after ``Parameters.Par0011.bspline1_s.txt`` (see module deviations)."""
    params = _common(levels, p)
    spacing = float(p["final_grid_spacing_mm"])
    params.update(
        {
            "Registration": "MultiMetricMultiResolutionRegistration",
            "Metric": ["AdvancedNormalizedCorrelation", "TransformBendingEnergyPenalty"],
            "UseRelativeWeights": True,
            "Metric0RelativeWeight": 1.0,
            "Metric1RelativeWeight": float(p["bending_energy_weight"]),
            "Transform": "BSplineTransform",
            "FinalGridSpacingInPhysicalUnits": [spacing, spacing, spacing],
            "GridSpacingSchedule": [float(2 ** (levels - 1 - level)) for level in range(levels)],
            "MaximumNumberOfIterations": int(p["bspline_iterations"]),
        }
    )
    params.update(dict(p["bspline_overrides"]))
    return params


@cache
def _elastix_version() -> str:
    try:
        out = subprocess.run(
            ["elastix", "--version"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "elastix (unknown version)"
    return out.strip().replace("elastix version:", "elastix").strip() or "elastix (unknown)"


def _run(command: list[str], log_path: Path, timeout_s: float) -> None:
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise RegistrationError(f"{command[0]} timed out after {timeout_s} s") from error
    if completed.returncode != 0:
        log = log_path.read_text(errors="replace") if log_path.exists() else completed.stdout
        tail = "\n".join(log.strip().splitlines()[-25:])
        raise RegistrationError(
            f"{command[0]} failed with exit code {completed.returncode}:\n{tail}\n{completed.stderr}"
        )


def _write(volume: Volume, path: Path, dtype: type[np.generic]) -> None:
    sitk.WriteImage(volume.with_array(volume.array.astype(dtype)).to_sitk(), str(path))


class ElastixBackend:
    """affine + B-spline with elastix (see the module docstring for the parameter set)."""

    name = "elastix"

    def version(self) -> str:
        return _elastix_version()

    def available(self) -> bool:
        return shutil.which("elastix") is not None and shutil.which("transformix") is not None

    def register(
        self,
        fixed: Volume,
        moving: Volume,
        *,
        fixed_mask: Volume | None,
        moving_mask: Volume | None,
        params: Mapping[str, Any],
    ) -> BackendOutput:
        """Run elastix then transformix; ``moving_mask`` is not used (as in Par0011).

        Raises:
            RegistrationError: if either binary fails or its outputs are missing.
        """
        p = merge_params(DEFAULT_PARAMS, params, backend=self.name)
        threads = int(p["threads"] or os.cpu_count() or 1)
        levels = _resolutions(fixed, p["number_of_resolutions"])
        p["number_of_resolutions_used"] = levels
        p["parameter_source"] = PARAMETER_SOURCE
        timings: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="ild-elastix-") as tmp:
            folder = Path(tmp)
            t0 = time.perf_counter()
            _write(fixed, folder / "fixed.mha", np.float32)
            _write(moving, folder / "moving.mha", np.float32)
            stage_files: list[Path] = []
            stages = []
            if p["affine"]:
                stages.append(("affine", affine_parameters(levels, p)))
            stages.append(("bspline", bspline_parameters(levels, p)))
            for name, stage in stages:
                path = folder / f"parameters.{name}.txt"
                path.write_text(
                    format_parameter_file(
                        stage,
                        f"{name} stage generated by inference.registration.elastix\n"
                        f"based on {PARAMETER_SOURCE}\n"
                        "deviations: see the inference.registration.elastix module docstring",
                    )
                )
                stage_files.append(path)
            out = folder / "elastix"
            out.mkdir()
            command = [
                "elastix",
                "-f", str(folder / "fixed.mha"),
                "-m", str(folder / "moving.mha"),
                "-out", str(out),
                "-threads", str(threads),
            ]  # fmt: skip
            if fixed_mask is not None:
                mask = dilate_mask(fixed_mask, float(p["mask_dilation_mm"]))
                _write(mask, folder / "fixed_mask.mha", np.uint8)
                command += ["-fMask", str(folder / "fixed_mask.mha")]
            for path in stage_files:
                command += ["-p", str(path)]
            timings["write_inputs"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            _run(command, out / "elastix.log", float(p["timeout_s"]))
            timings["elastix"] = time.perf_counter() - t0
            final = out / f"TransformParameters.{len(stage_files) - 1}.txt"
            if not final.exists():
                raise RegistrationError(f"elastix wrote no {final.name}")

            t0 = time.perf_counter()
            tx_out = folder / "transformix"
            tx_out.mkdir()
            transformix = ["transformix", "-def", "all", "-jac", "all", "-tp", str(final)]
            transformix += ["-out", str(tx_out), "-threads", str(threads)]
            _run(transformix, tx_out / "transformix.log", float(p["timeout_s"]))
            timings["transformix"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            field_files = sorted(tx_out.glob("deformationField.*"))
            field_files = [f for f in field_files if f.suffix in (".mha", ".mhd", ".nii")]
            if not field_files:
                raise RegistrationError("transformix wrote no deformationField")
            field_image = sitk.ReadImage(str(field_files[0]))
            field_volume_grid = Volume.from_sitk(
                sitk.VectorIndexSelectionCast(field_image, 0, sitk.sitkFloat32)
            )
            if not field_volume_grid.same_grid(fixed, atol_mm=1e-2):
                raise RegistrationError("transformix's deformation field is not on the fixed grid")
            displacement = sitk.GetArrayFromImage(field_image).astype(np.float32)
            jacobian_files = sorted(tx_out.glob("spatialJacobian.*"))
            determinant = (
                sitk.GetArrayFromImage(sitk.ReadImage(str(jacobian_files[0]))).astype(np.float32)
                if jacobian_files
                else None
            )
            p["parameter_files"] = {path.name: path.read_text() for path in stage_files}
            timings["read_outputs"] = time.perf_counter() - t0
        return BackendOutput(
            displacement=displacement,
            params=p,
            timings_s=timings,
            jacobian_determinant=determinant,
        )
