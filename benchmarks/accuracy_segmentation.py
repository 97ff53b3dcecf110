"""Segmentation accuracy on held-out phantoms: classical vs AtlasNet vs U-Net (one command).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy_segmentation.py --real   # CPU scale
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/accuracy_segmentation.py --size 192 \
        --work bench-out/accuracy-s192                        # 1.85 mm phantoms, ~25 min
    .venv/bin/python benchmarks/accuracy_segmentation.py --work bench-out/accuracy-large \\
        --train-patients 16 --test-patients 8 --size 256 --slices 96 --epochs 50 \\
        --lr-decrease-every 10                                           # GPU-sized run

1. Writes a training phantom cohort (``--train-seed``) and a held-out cohort (``--test-seed``,
   never used in training) with ``inference.phantoms.write_cohort``.
2. Trains AtlasNet (CPU configuration: ``--templates`` templates, width ``--width``, registration
   on a ``--registration-spacing`` mm grid, templates over their lungs and ``--template-margin``
   mm) and the U-Net comparator (same width and input size, the paper's augmentation) with
   ``inference.training.train_model`` — the code behind ``python -m inference.train_segmentation``.
   ``--train-only MODEL`` trains one of them and stops, so the two can train in parallel
   processes before a last run evaluates.
3. Segments every held-out CT with the classical engine, AtlasNet (the N-network majority vote,
   and each of its networks alone, reusing the same registrations) and the U-Net, and prints the
   paper's Table 2 layout with the phantom truth as the first reader and each engine as a
   further one: median (IQR) per-slice ILD Dice over slices whose truth has ILD, pooled over the
   held-out CTs (truth against each engine, and engine against engine); then lung Dice per CT,
   ILD extent error and seconds per CT.
4. With ``--real``: each engine on the real CTs of ``$ILD_REAL_DATA`` (default
   ``../shared/data/real``): lung volume (mL), ILD extent, and lung voxels outside the body.

Results go to ``--work`` (default ``bench-out/accuracy``) as ``results.json``; models stay there.
The default scale (8 + 4 patients of 64 x 96 x 96 voxels, 3.7 x 3.7 x 5 mm, 20 epochs, width
1/8) takes about 10 minutes on one quiet CPU thread (40 on a busy one); ``--width 0.25`` about
4 times that. Targets (issue #5): AtlasNet ILD Dice ≥ 0.80 and ≥ U-Net's; lung Dice ≥ 0.97 for
every engine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.networks.atlasnet import UPSAMPLING_MODES
from inference.phantoms import write_cohort
from inference.segmentation.atlasnet_engine import (
    AtlasNetEngine,
    RegistrationSettings,
    cpu_registration_params,
)
from inference.segmentation.classical import segment as classical_segment
from inference.segmentation.metrics import dice, dice_per_slice
from inference.segmentation.unet_engine import UNetEngine
from inference.train_segmentation import WHOLE_FIELD, template_margin
from inference.training.datasets import load_dataset
from inference.training.train import ModelName, TrainConfig, train_model


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _median_iqr(values: list[float]) -> dict[str, float]:
    if not values:
        return {"median": math.nan, "q25": math.nan, "q75": math.nan, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "q25": float(np.percentile(a, 25)),
        "q75": float(np.percentile(a, 75)),
        "min": float(a.min()),
        "n": int(a.size),
    }


def ensure_cohorts(work: Path, args: argparse.Namespace) -> str | None:
    """Write the training and held-out phantom cohorts under ``work`` (``train``, ``test``)
    unless there; what is wrong when a folder holds another cohort."""
    shape = (args.slices, args.size, args.size)
    for name, patients, seed in (
        ("train", args.train_patients, args.train_seed),
        ("test", args.test_patients, args.test_seed),
    ):
        manifest = work / name / "cohort.json"
        if manifest.is_file():
            existing = json.loads(manifest.read_text())
            if existing.get("shape_kji") != list(shape) or existing.get("seed") != seed:
                return f"{work / name} holds another cohort; use another --work"
        else:
            _log(f"writing {name} cohort: {patients} patients, seed {seed}, {shape}")
            write_cohort(work / name, patients=patients, seed=seed, shape_kji=shape, followup=False)
    return None


_MISSING = object()


def changed_options(recorded: dict[str, Any], config: TrainConfig) -> list[str]:
    """The training options of ``config`` that a model folder's recorded config lacks or
    holds another value for (where the run executes, device and threads, aside)."""
    wanted = json.loads(json.dumps(config.as_dict()))
    return sorted(
        key
        for key, value in wanted.items()
        if key not in ("device", "threads") and recorded.get(key, _MISSING) != value
    )


def _fmt(stat: dict[str, float], digits: int = 2) -> str:
    if not stat.get("n"):
        return "n/a"
    return f"{stat['median']:.{digits}f} ({stat['q25']:.{digits}f}–{stat['q75']:.{digits}f})"


def _extent_pct(labels: np.ndarray) -> float:
    lung = int(np.count_nonzero(labels))
    return 100.0 * int(np.count_nonzero(labels == 2)) / lung if lung else 0.0


class Scores:
    """Per-slice ILD Dice and per-CT lung Dice of one engine over the held-out cohort."""

    def __init__(self) -> None:
        self.ild_slices: list[float] = []
        self.lung_cases: list[float] = []
        self.extent_error: list[float] = []
        self.seconds: list[float] = []

    def add(self, predicted: np.ndarray, truth: np.ndarray, seconds: float) -> None:
        has_ild = (truth == 2).any(axis=(1, 2))
        per_slice = dice_per_slice(predicted == 2, truth == 2, empty_value=0.0)[has_ild]
        self.ild_slices.extend(float(v) for v in per_slice)
        self.lung_cases.append(float(dice(predicted > 0, truth > 0)))
        self.extent_error.append(_extent_pct(predicted) - _extent_pct(truth))
        self.seconds.append(seconds)

    def summary(self) -> dict[str, Any]:
        return {
            "ild_dice_per_slice": _median_iqr(self.ild_slices),
            "lung_dice_per_ct": _median_iqr(self.lung_cases),
            "extent_error_points": _median_iqr(self.extent_error),
            "seconds_per_ct": _median_iqr(self.seconds),
        }


def _body(hu: np.ndarray) -> np.ndarray:
    from inference.networks.slicewise import body_mask

    return body_mask(hu)


def evaluate_real(engines: dict[str, Any], root: Path) -> dict[str, Any]:
    """Lung volume, ILD extent, lung outside the body for each engine on each real CT."""
    from inference.imageio import read_image

    found = {
        "popi-00-ct": root / "popi-00-ct",
        "pyradiomics-lung1": next(iter(sorted((root / "pyradiomics-lung1").glob("*.nrrd"))), None)
        if (root / "pyradiomics-lung1").exists()
        else None,
    }
    out: dict[str, Any] = {}
    for name, path in found.items():
        if path is None or not Path(path).exists():
            continue
        ct = read_image(path)
        body = _body(np.asarray(ct.array))
        out[name] = {"shape_kji": list(ct.shape_kji), "spacing_mm": list(ct.spacing_mm)}
        for engine_name, predict in engines.items():
            start = time.perf_counter()
            result = predict(ct)
            labels = np.asarray(result.label_map.array)
            out[name][engine_name] = {
                "lung_ml": round(result.lung_ml, 1),
                "extent_pct": round(result.extent_pct, 2),
                "lung_voxels_outside_body": int(np.count_nonzero((labels > 0) & ~body)),
                "seconds": round(time.perf_counter() - start, 1),
            }
            _log(f"real {name} {engine_name}: {out[name][engine_name]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-out/accuracy"))
    parser.add_argument("--train-patients", type=int, default=8)
    parser.add_argument("--test-patients", type=int, default=4)
    parser.add_argument("--train-seed", type=int, default=1101)
    parser.add_argument("--test-seed", type=int, default=2202)
    parser.add_argument("--slices", type=int, default=64, help="phantom slices (k)")
    parser.add_argument(
        "--size", type=int, default=96, help="phantom in-plane size = network input"
    )
    parser.add_argument(
        "--network-size",
        type=int,
        default=None,
        help="networks' in-plane input size, pixels (default: --size)",
    )
    parser.add_argument("--templates", type=int, default=2)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument(
        "--decoder-upsampling",
        choices=UPSAMPLING_MODES,
        default="indices",
        help="AtlasNet decoders: SegNet's pooling indices or the paper's nearest upsampling",
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--unet-epochs", type=int, default=None, help="default: --epochs")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr-decrease-every", type=int, default=5)
    parser.add_argument("--registration-spacing", type=float, default=6.0)
    parser.add_argument(
        "--template-margin",
        type=template_margin,
        default=20.0,
        help="AtlasNet templates cover their lungs and this margin, mm, as the CPU preset's "
        "(default 20); 'none': the whole field of view",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--real", action="store_true", help="also run on ../shared/data/real")
    parser.add_argument("--retrain", action="store_true", help="train even if models exist")
    parser.add_argument(
        "--train-only",
        choices=("atlasnet", "unet"),
        help="train this model (if missing) and stop: the two can train in parallel processes",
    )
    args = parser.parse_args(argv)
    if args.train_seed == args.test_seed:
        parser.error("the held-out seed must differ from the training seed")

    work = args.work
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    timings: dict[str, float] = {}
    start = time.perf_counter()
    problem = ensure_cohorts(work, args)
    if problem:
        parser.error(problem)
    timings["cohorts"] = time.perf_counter() - start
    train_set = load_dataset(work / "train")
    test_set = load_dataset(work / "test")

    registration = RegistrationSettings(
        spacing_mm=args.registration_spacing,
        params=cpu_registration_params(args.registration_spacing),
    )
    common = {
        "in_plane_size": args.network_size or args.size,
        "width": args.width,
        "templates": args.templates,
        "batch_size": args.batch_size,
        "lr_decrease_every": args.lr_decrease_every,
        "seed": args.seed,
        "registration": registration,
        "device": device,
        "template_margin_mm": None if args.template_margin == WHOLE_FIELD else args.template_margin,
    }
    reports = {}
    runs: tuple[tuple[ModelName, int], ...] = (
        ("atlasnet", args.epochs),
        ("unet", args.unet_epochs or args.epochs),
    )
    for model, epochs in runs:
        if args.train_only not in (None, model):
            continue
        folder = work / "models" / model
        config = TrainConfig(
            model=model,
            epochs=epochs,
            decoder_upsampling=args.decoder_upsampling if model == "atlasnet" else "indices",
            **common,  # type: ignore[arg-type]
        )
        if args.retrain or not (folder / "metadata.json").is_file():
            start = time.perf_counter()
            reports[model] = train_model(train_set, config, folder, log=_log).metadata.validation
            timings[f"train_{model}"] = time.perf_counter() - start
        else:
            metadata = json.loads((folder / "metadata.json").read_text())
            changed = changed_options(metadata["training"].get("config", {}), config)
            if changed:
                parser.error(
                    f"{folder} was trained with other options ({', '.join(changed)}); "
                    "use another --work, or --retrain"
                )
            reports[model] = metadata["validation"]
    if args.train_only:
        return 0

    atlas = AtlasNetEngine.from_folder(work / "models" / "atlasnet", device=device)
    unet = UNetEngine.from_folder(work / "models" / "unet", device=device)
    n = len(atlas.networks)
    singles = [
        AtlasNetEngine(
            [atlas.networks[t]],
            [atlas.templates[t]],
            input_spec=atlas.input_spec,
            registration=atlas.registration,
            device=device,
            class_weights=atlas.class_weights,
            ild_threshold=atlas.ild_threshold,
        )
        for t in range(n)
    ]
    scores: dict[str, Scores] = {"classical": Scores(), "atlasnet": Scores(), "unet": Scores()}
    # Engine against engine, as the paper's Table 2 sets reader against reader: per-slice ILD
    # Dice on the slices whose truth has ILD.
    pairs: dict[str, list[float]] = {
        "classical|atlasnet": [],
        "classical|unet": [],
        "atlasnet|unet": [],
    }
    for t in range(n):
        scores[f"atlasnet[{t}] alone"] = Scores()
    start = time.perf_counter()
    for case in test_set.cases:
        truth = np.asarray(case.labels.array)
        t0 = time.perf_counter()
        labels = {"classical": np.asarray(classical_segment(case.ct).label_map.array)}
        scores["classical"].add(labels["classical"], truth, time.perf_counter() - t0)
        t0 = time.perf_counter()
        mappings = atlas.map_case(case.ct)
        register_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ensemble = atlas.predict_ensemble(case.ct, mappings=mappings).result
        labels["atlasnet"] = np.asarray(ensemble.label_map.array)
        scores["atlasnet"].add(labels["atlasnet"], truth, register_s + time.perf_counter() - t0)
        for t, single in enumerate(singles):
            t0 = time.perf_counter()
            alone = single.predict_ensemble(case.ct, mappings=[mappings[t]]).result
            scores[f"atlasnet[{t}] alone"].add(
                np.asarray(alone.label_map.array), truth, register_s / n + time.perf_counter() - t0
            )
        t0 = time.perf_counter()
        labels["unet"] = np.asarray(unet.predict(case.ct).label_map.array)
        scores["unet"].add(labels["unet"], truth, time.perf_counter() - t0)
        has_ild = (truth == 2).any(axis=(1, 2))
        for pair, values in pairs.items():
            a, b = pair.split("|")
            both = dice_per_slice(labels[a] == 2, labels[b] == 2, empty_value=1.0)
            values.extend(float(v) for v in both[has_ild])
        _log(
            f"{case.case_id}: lung {scores['atlasnet'].lung_cases[-1]:.3f}/"
            f"{scores['unet'].lung_cases[-1]:.3f}/{scores['classical'].lung_cases[-1]:.3f} "
            f"(atlasnet/unet/classical)"
        )
    timings["evaluate"] = time.perf_counter() - start

    summaries = {name: s.summary() for name, s in scores.items()}
    agreement = {pair: _median_iqr(values) for pair, values in pairs.items()}
    label_atlas = f"AtlasNet ({n} templates, width {args.width:g})"
    label_unet = f"U-Net (width {args.width:g})"
    print()
    print(
        f"Held-out phantoms: {len(test_set.cases)} CTs {test_set.cases[0].ct.shape_kji} "
        f"(seed {args.test_seed}); "
        f"trained on {len(train_set.cases)} (seed {args.train_seed}), {args.epochs} epochs"
    )
    print(
        "Table 2 layout: median (IQR) per-slice ILD Dice over the slices whose truth has ILD, "
        "the phantom truth as the first reader and each engine as a further one."
    )
    print()
    header = ["Reader", "Classical", label_atlas, label_unet]
    rows = [
        [
            "Phantom truth",
            _fmt(summaries["classical"]["ild_dice_per_slice"]),
            _fmt(summaries["atlasnet"]["ild_dice_per_slice"]),
            _fmt(summaries["unet"]["ild_dice_per_slice"]),
        ],
        [
            "Classical",
            "...",
            _fmt(agreement["classical|atlasnet"]),
            _fmt(agreement["classical|unet"]),
        ],
        [label_atlas, "", "...", _fmt(agreement["atlasnet|unet"])],
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("Lung, extent and time against the phantom truth; median (IQR) over the held-out CTs.")
    print()
    header = ["Measure", "Classical", label_atlas, label_unet]
    rows = [
        [
            "Truth: lung, Dice per CT",
            _fmt(summaries["classical"]["lung_dice_per_ct"], 3),
            _fmt(summaries["atlasnet"]["lung_dice_per_ct"], 3),
            _fmt(summaries["unet"]["lung_dice_per_ct"], 3),
        ],
        [
            "ILD extent error, points",
            _fmt(summaries["classical"]["extent_error_points"], 1),
            _fmt(summaries["atlasnet"]["extent_error_points"], 1),
            _fmt(summaries["unet"]["extent_error_points"], 1),
        ],
        [
            f"Seconds per CT ({device})",
            _fmt(summaries["classical"]["seconds_per_ct"], 1),
            _fmt(summaries["atlasnet"]["seconds_per_ct"], 1),
            _fmt(summaries["unet"]["seconds_per_ct"], 1),
        ],
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("AtlasNet networks alone (same registrations) vs their majority vote:")
    for name in [*(f"atlasnet[{t}] alone" for t in range(n)), "atlasnet"]:
        s = summaries[name]
        print(
            f"  {name:20s} ILD {_fmt(s['ild_dice_per_slice'])}  lung {_fmt(s['lung_dice_per_ct'], 3)}"
        )
    atlas_ild = summaries["atlasnet"]["ild_dice_per_slice"]["median"]
    unet_ild = summaries["unet"]["ild_dice_per_slice"]["median"]
    lung_min = {
        k: summaries[k]["lung_dice_per_ct"].get("min") for k in ("classical", "atlasnet", "unet")
    }
    print()
    print(
        f"Targets: AtlasNet ILD ≥ 0.80: {'yes' if atlas_ild >= 0.80 else 'NO'} ({atlas_ild:.3f}); "
        f"≥ U-Net: {'yes' if atlas_ild >= unet_ild else 'NO'} ({unet_ild:.3f}); lung ≥ 0.97 on "
        "every CT: "
        + ", ".join(
            f"{k} {'yes' if (v or 0) >= 0.97 else 'NO'} ({v:.3f})" for k, v in lung_min.items()
        )
    )

    results: dict[str, Any] = {
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "summaries": summaries,
        "engine_agreement_ild_dice_per_slice": agreement,
        "validation_at_training": reports,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    if args.real:
        root = Path(
            os.environ.get(
                "ILD_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
            )
        )
        if root.exists():
            results["real"] = evaluate_real(
                {
                    "classical": classical_segment,
                    "atlasnet": atlas.predict,
                    "unet": unet.predict,
                },
                root,
            )
            print()
            print("Real CTs: lung mL / ILD extent % / lung voxels outside the body")
            for name, per_engine in results["real"].items():
                cells = [
                    f"{e} {v['lung_ml']:.0f} mL / {v['extent_pct']:.1f} % / {v['lung_voxels_outside_body']}"
                    for e, v in per_engine.items()
                    if isinstance(v, dict)
                ]
                print(f"  {name}: " + "; ".join(cells))
        else:
            print(f"(no real data at {root})")
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nfull results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
