"""Registration benchmark: torch backend vs elastix on pairs with a known deformation.

One command::

    .venv/bin/python benchmarks/bench_registration.py            # 1 mm, both cases, both backends
    .venv/bin/python benchmarks/bench_registration.py --quick    # 2 mm, a few minutes

Cases (each a baseline/follow-up pair with the true field ``u`` on the baseline grid):

* ``phantom`` — ``inference.phantoms.make_longitudinal_pair(progression="worse")`` at the
  benchmark spacing (posterior-basal shrinkage, breathing, fibrotic volume loss, new ILD);
  falls back to ``inference.registration.synthetic.make_synthetic_pair`` when the phantoms
  package is absent.
* ``popi`` — the real POPI end-inhale CT (``$ILD_REAL_DATA/popi-00-ct``, default
  ``../shared/data/real``) resampled to the benchmark spacing, as the follow-up; the baseline is
  the same CT warped by a known field (global affine + smooth sinusoidal motion + Gaussian
  shrinkage centred in the posterior base of the right lung), with fresh noise.

Both images are cropped to the lungs plus a margin; both backends get identical inputs and the
baseline lung mask. Printed per pair and backend: seconds, mean/95th-percentile TRE over all
baseline lung voxels (mm), mean log-Jacobian in the shrinking region (estimate, truth, error),
folding % in the lung; then torch/elastix ratios and the torch targets
(TRE <= 1.0 mm, |log-Jacobian error| <= 0.02, folding < 0.1 %, faster than elastix).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from inference.volume import Volume  # noqa: E402

TARGETS = {"tre_mm": 1.0, "log_jacobian_error": 0.02, "folding_pct": 0.1}


@dataclass
class Case:
    name: str
    source: str
    baseline: Volume
    baseline_mask: Volume
    followup: Volume
    followup_mask: Volume
    displacement: npt.NDArray[np.float32]
    log_jacobian: npt.NDArray[np.float32]
    shrink_region: npt.NDArray[np.bool_]


def _crop(case: Case, margin_mm: float) -> Case:
    """Crop everything (all on one grid) to both lung masks' bounding box plus a margin."""
    from inference.registration import crop_to_mask

    union = case.baseline_mask.with_array(
        ((case.baseline_mask.array > 0) | (case.followup_mask.array > 0)).astype(np.uint8)
    )
    baseline, box = crop_to_mask(case.baseline, union, margin_mm=margin_mm)

    def cut(volume: Volume) -> Volume:
        return baseline.with_array(np.ascontiguousarray(volume.array[box]))

    return Case(
        name=case.name,
        source=case.source,
        baseline=baseline,
        baseline_mask=cut(case.baseline_mask),
        followup=cut(case.followup),
        followup_mask=cut(case.followup_mask),
        displacement=np.ascontiguousarray(case.displacement[box]),
        log_jacobian=np.ascontiguousarray(case.log_jacobian[box]),
        shrink_region=np.ascontiguousarray(case.shrink_region[box]),
    )


def phantom_case(spacing_mm: float, seed: int) -> Case:
    # ~320 mm field of view whatever the spacing, like the phantom's default.
    shape = (round(300 / spacing_mm), round(320 / spacing_mm), round(320 / spacing_mm))
    try:
        from inference.phantoms import make_longitudinal_pair
    except ImportError:
        from inference.registration.synthetic import make_synthetic_pair

        pair = make_synthetic_pair(
            seed=seed,
            shape_kji=(round(200 / spacing_mm), round(240 / spacing_mm), round(240 / spacing_mm)),
            spacing_mm=(spacing_mm,) * 3,
            shrink_strength=0.12,
            shrink_sigma_mm=25.0,
            sinusoid_amplitude_mm=3.0,
        )
        return Case(
            "phantom",
            "inference.registration.synthetic.make_synthetic_pair",
            pair.baseline,
            pair.baseline_mask,
            pair.followup,
            pair.followup_mask,
            pair.displacement_lps_mm,
            pair.log_jacobian.array,
            pair.shrink_region,
        )
    ph = make_longitudinal_pair(
        seed=seed, shape_kji=shape, spacing_mm=(spacing_mm,) * 3, progression="worse"
    )
    return Case(
        "phantom",
        f"inference.phantoms.make_longitudinal_pair(seed={seed}, {ph.scenario})",
        ph.baseline.ct,
        ph.baseline.lungs_lr,
        ph.followup.ct,
        ph.followup.lungs_lr,
        ph.displacement_lps_mm,
        ph.log_jacobian.array,
        ph.shrink_region.array > 0,
    )


def _read_popi(folder: Path) -> Volume:
    try:
        from inference.imageio import read_image
    except ImportError:
        import SimpleITK as sitk

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        return Volume.from_sitk(reader.Execute())
    return read_image(folder)


def _lung_mask(ct: Volume) -> Volume:
    try:
        from inference.segmentation.classical import lung_mask
    except ImportError:
        from scipy import ndimage

        air = ct.array < -400
        labels, _ = ndimage.label(air)
        border = np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel(),
                                           labels[:, 0].ravel(), labels[:, -1].ravel(),
                                           labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))  # fmt: skip
        inside = air & ~np.isin(labels, border)
        return ct.with_array(inside.astype(np.uint8))
    return lung_mask(ct)


def popi_case(spacing_mm: float, seed: int) -> Case | None:
    from inference.registration import crop_to_mask, resample_isotropic
    from inference.registration.synthetic import (
        affine_field,
        deform_into_baseline,
        posterior_basal_centre,
        shrinkage_field,
        sinusoidal_field,
    )

    root = Path(os.environ.get("ILD_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))
    folder = root / "popi-00-ct"
    if not folder.exists():
        print(f"# popi: {folder} not found (set ILD_REAL_DATA); skipped")
        return None
    ct = resample_isotropic(_read_popi(folder), spacing_mm)
    mask = _lung_mask(ct)
    ct, box = crop_to_mask(ct, mask, margin_mm=30.0)
    mask = ct.with_array(np.ascontiguousarray(mask.array[box]).astype(np.uint8))
    centre = posterior_basal_centre(
        mask, label=1 if np.any(mask.array == 1) else int(mask.array.max())
    )
    sigma = 25.0
    u = (
        shrinkage_field(ct, centre_lps_mm=centre, sigma_mm=sigma, strength=0.12)
        + sinusoidal_field(ct, amplitude_mm=3.0, wavelength_mm=160.0)
        + affine_field(ct, scale=(1.02, 0.98, 1.03), translation_mm=(2.0, -3.0, 4.0))
    )
    pair = deform_into_baseline(
        ct, mask, u, seed=seed, noise_hu=10.0, shrink_centre_lps_mm=centre, shrink_sigma_mm=sigma
    )
    return Case(
        "popi",
        f"POPI 00 CT ({folder}) warped by a known field",
        pair.baseline,
        pair.baseline_mask,
        pair.followup,
        pair.followup_mask,
        pair.displacement_lps_mm,
        pair.log_jacobian.array,
        pair.shrink_region,
    )


def evaluate(case: Case, backend: str, params: dict[str, Any]) -> dict[str, Any]:
    from inference.registration import register, summarize_jacobian

    start = time.perf_counter()
    result = register(
        case.baseline,
        case.followup,
        fixed_mask=case.baseline_mask,
        moving_mask=case.followup_mask,
        backend=backend,
        params=params,
    )
    seconds = time.perf_counter() - start
    inside = case.baseline_mask.array > 0
    error = np.linalg.norm(result.displacement - case.displacement, axis=-1)[inside]
    logjac, summary = summarize_jacobian(result.displacement, case.baseline, case.baseline_mask)
    estimate = float(logjac[case.shrink_region].mean())
    truth = float(case.log_jacobian[case.shrink_region].mean())
    return {
        "case": case.name,
        "backend": backend,
        "version": result.version,
        "seconds": seconds,
        "stage_seconds": {k: round(v, 1) for k, v in result.timings_s.items()},
        "tre_mean_mm": float(error.mean()),
        "tre_p95_mm": float(np.percentile(error, 95)),
        "tre_max_mm": float(error.max()),
        "log_jacobian_shrink_estimate": estimate,
        "log_jacobian_shrink_truth": truth,
        "log_jacobian_error": estimate - truth,
        "log_jacobian_lung_estimate": summary.mean_log_jacobian,
        "log_jacobian_lung_truth": float(case.log_jacobian[inside].mean()),
        "folding_pct": 100.0 * summary.folding_fraction,
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'case':8} {'backend':8} {'time_s':>7} {'TRE_mm':>7} {'p95_mm':>7} "
        f"{'logJ_est':>9} {'logJ_true':>9} {'logJ_err':>9} {'fold_%':>7}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['case']:8} {r['backend']:8} {r['seconds']:7.1f} {r['tre_mean_mm']:7.3f} "
            f"{r['tre_p95_mm']:7.3f} {r['log_jacobian_shrink_estimate']:9.4f} "
            f"{r['log_jacobian_shrink_truth']:9.4f} {r['log_jacobian_error']:+9.4f} "
            f"{r['folding_pct']:7.4f}"
        )


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for case in sorted({r["case"] for r in rows}):
        by = {r["backend"]: r for r in rows if r["case"] == case}
        if "torch" not in by:
            continue
        t = by["torch"]
        line: dict[str, Any] = {
            "case": case,
            "targets": {
                "tre_mm<=1.0": t["tre_mean_mm"] <= TARGETS["tre_mm"],
                "|logJ_err|<=0.02": abs(t["log_jacobian_error"]) <= TARGETS["log_jacobian_error"],
                "folding<0.1%": t["folding_pct"] < TARGETS["folding_pct"],
            },
        }
        if "elastix" in by:
            e = by["elastix"]
            line["time_torch/elastix"] = t["seconds"] / e["seconds"]
            line["tre_torch/elastix"] = t["tre_mean_mm"] / max(e["tre_mean_mm"], 1e-9)
            line["logJ_abs_err_torch/elastix"] = abs(t["log_jacobian_error"]) / max(
                abs(e["log_jacobian_error"]), 1e-9
            )
            line["targets"]["faster_than_elastix"] = t["seconds"] < e["seconds"]
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 mm instead of 1 mm")
    parser.add_argument("--spacing-mm", type=float, help="override the spacing")
    parser.add_argument("--cases", default="phantom,popi")
    parser.add_argument("--backends", default="torch,elastix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="threads for both backends (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows and ratios here")
    args = parser.parse_args(argv)

    from inference.registration import available_backends

    spacing = args.spacing_mm or (2.0 if args.quick else 1.0)
    backends = [b for b in args.backends.split(",") if b]
    usable = available_backends()
    for backend in list(backends):
        if not usable.get(backend, False):
            print(f"# backend {backend} unavailable here; skipped")
            backends.remove(backend)
    params: dict[str, dict[str, Any]] = {b: {} for b in backends}
    if args.threads:
        for b in backends:
            params[b]["threads"] = args.threads
    print(f"# spacing {spacing} mm, seed {args.seed}, load average {os.getloadavg()}")

    rows: list[dict[str, Any]] = []
    for name in [c for c in args.cases.split(",") if c]:
        t0 = time.perf_counter()
        case = (
            phantom_case(spacing, args.seed) if name == "phantom" else popi_case(spacing, args.seed)
        )
        if case is None:
            continue
        case = _crop(case, margin_mm=20.0)
        print(
            f"# {name}: {case.source}; grid {case.baseline.shape_kji} at {spacing} mm, "
            f"{int((case.baseline_mask.array > 0).sum())} lung voxels, "
            f"{int(case.shrink_region.sum())} shrinking; built in {time.perf_counter() - t0:.0f} s"
        )
        for backend in backends:
            row = evaluate(case, backend, params[backend])
            print(f"#   {backend}: {row['seconds']:.1f} s {row['stage_seconds']}")
            rows.append(row)
        del case
    print()
    _print_table(rows)
    ratios = _ratios(rows)
    for line in ratios:
        print(f"\n{line['case']}: " + json.dumps({k: v for k, v in line.items() if k != "case"}))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
