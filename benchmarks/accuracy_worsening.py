"""Worsening benchmark: template-space log-Jacobian CNN vs the ILD-extent-change criterion.

One command (about 15 minutes on one quiet CPU thread, 23 under load; ``--quick`` about 5)::

    .venv/bin/python benchmarks/accuracy_worsening.py
    .venv/bin/python benchmarks/accuracy_worsening.py --quick

What it does (Chassagnon et al., Radiology 2021, "Depiction of Disease Worsening"):

1. writes a training cohort and a held-out cohort with ``inference.phantoms.write_cohort`` (the
   held-out seed is never used for training; patient seeds are checked to be disjoint);
2. builds the lung template from ``--template-cases`` training baselines (torch registration,
   ``--template-spacing-mm`` isotropic);
3. registers every pair of both cohorts with our torch backend at ``--registration-spacing-mm``
   (``--train-maps exact`` uses the phantoms' exact maps for training instead; the held-out
   evaluation always uses registered maps), and transports each log-Jacobian onto the template;
4. trains both targets (functional: ATS/ERS from the PFTs; morphologic: cohort tag "worse") with an
   80/20 training/validation split of the training cohort, thresholds chosen on validation;
5. evaluates on the held-out cohort: sensitivity, specificity, accuracy, PPV, NPV with exact
   Clopper-Pearson 95 % CIs; and the ILD-extent-change criterion with its threshold chosen by ROC
   (Youden) on the training cohort, extent change measured (a) by the classical segmentation of
   both CTs (``inference.segmentation.classical``; the realistic comparator) and (b) from the
   phantoms' ground-truth labels (an upper bound: the morphologic tag is defined by it);
6. evaluates the weight-free default model (``inference.worsening.default_model``: trained on
   exact maps of an in-memory phantom cohort, built into ``OUT/default-model``) on the same
   held-out registered maps through ``predict_worsening``, as the app calls it
   (``--no-default-model`` skips it);
7. writes Figure 5 (sagittal projections of the group-mean template-space maps of the held-out
   cohort, registered maps) and ``results.json`` under ``--out`` (default ``bench-out/worsening``).

Lung masks are the classical segmentation's (``--lungs classical``, as in the app) unless
``--lungs truth``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

TARGETS = ("functional", "morphologic")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-out" / "worsening")
    parser.add_argument("--train-patients", type=int, default=40)
    parser.add_argument("--test-patients", type=int, default=30)
    parser.add_argument("--train-seed", type=int, default=2021)
    parser.add_argument("--test-seed", type=int, default=7331)
    parser.add_argument("--shape", default="64,128,128", help="phantom grid k,j,i")
    parser.add_argument("--template-spacing-mm", type=float, default=6.0)
    parser.add_argument("--registration-spacing-mm", type=float, default=4.0)
    parser.add_argument("--template-cases", type=int, default=8)
    parser.add_argument("--template-iterations", type=int, default=1)
    parser.add_argument("--train-maps", choices=["registered", "exact"], default="registered")
    parser.add_argument("--lungs", choices=["classical", "truth"], default="classical")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--smoothing-mm", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="reuse cohorts, template and maps")
    parser.add_argument(
        "--no-default-model",
        action="store_true",
        help="skip the weight-free default model (inference.worsening.default_model, built into "
        "OUT/default-model, about a minute) on the held-out registered maps",
    )
    parser.add_argument("--quick", action="store_true", help="small cohorts (about 5 minutes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_patients, args.test_patients = 20, 12
        args.shape, args.template_cases, args.template_iterations = "48,96,96", 5, 0
        args.template_spacing_mm = args.registration_spacing_mm = 6.0
    if args.test_seed == args.train_seed:
        parser.error("--test-seed must differ from --train-seed")
    return args


def log(start: float, line: str) -> None:
    print(f"[{time.perf_counter() - start:7.1f} s] {line}", flush=True)


def write_cohorts(args: argparse.Namespace, start: float) -> dict[str, Path]:
    from inference.phantoms import write_cohort
    from inference.phantoms.cohort import patient_seed

    shape = tuple(int(v) for v in args.shape.split(","))
    train_seeds = {patient_seed(args.train_seed, n) for n in range(1, args.train_patients + 1)}
    test_seeds = {patient_seed(args.test_seed, n) for n in range(1, args.test_patients + 1)}
    if train_seeds & test_seeds:
        raise SystemExit("the held-out cohort shares patient seeds with the training cohort")
    folders = {}
    for name, patients, seed in (
        ("train", args.train_patients, args.train_seed),
        ("test", args.test_patients, args.test_seed),
    ):
        folder = args.out / "cohorts" / name
        if not (args.reuse and (folder / "cohort.json").is_file()):
            write_cohort(folder, patients=patients, seed=seed, shape_kji=shape, ct_nifti=True)  # type: ignore[arg-type]
        folders[name] = folder
        log(start, f"{name} cohort: {patients} patients, seed {seed}, grid {shape}")
    return folders


def build_or_load_template(args: argparse.Namespace, cases: list[Any], start: float) -> Any:
    from inference.worsening.cohort import template_case
    from inference.worsening.template import (
        LungTemplate,
        TemplateSettings,
        build_template,
        registration_params,
    )
    from inference.worsening.training import choose_template_cases

    folder = args.out / "template"
    if args.reuse and (folder / "metadata.json").is_file():
        return LungTemplate.load(folder)
    settings = TemplateSettings(
        spacing_mm=args.template_spacing_mm,
        iterations=args.template_iterations,
        params=registration_params(args.template_spacing_mm, threads=args.threads),
    )
    chosen = choose_template_cases(cases, args.template_cases, args.seed)
    build = build_template(
        [template_case(c, args.lungs) for c in chosen],
        settings,
        progress=lambda line: log(start, line),
    )
    build.template.save(folder)
    return build.template


def maps_for(
    args: argparse.Namespace, name: str, cases: list[Any], template: Any, source: str, start: float
) -> dict[str, Any]:
    """Template-space maps (cached in ``out/maps_<name>_<source>.npz`` for ``--reuse``)."""
    from inference.worsening.cohort import case_map, pair_registration_params

    cache = args.out / f"maps_{name}_{source}.npz"
    natives_cache = args.out / f"native_{name}_{source}.npz"
    if args.reuse and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
        if meta.get("template") == template.digest and meta.get("cases") == [
            c.case_id for c in cases
        ]:
            log(start, f"{name}: reusing {source} maps from {cache.name}")
            natives = load_natives(natives_cache, cases) if natives_cache.is_file() else None
            return {
                "maps": [data[c.case_id] for c in cases],
                "records": meta["records"],
                "natives": natives,
            }
    maps, records, natives = [], [], []
    for n, case in enumerate(cases, start=1):
        result = case_map(
            case,
            template,
            source=source,  # type: ignore[arg-type]
            lungs=args.lungs,
            registration_spacing_mm=args.registration_spacing_mm,
            pair_params=pair_registration_params(
                args.registration_spacing_mm, threads=args.threads
            ),
            template_params={"threads": args.threads},
            keep_native=name == "test",
        )
        maps.append(result.template_map)
        if result.log_jacobian is not None and result.baseline_lung is not None:
            natives.append((result.log_jacobian, result.baseline_lung))
        records.append(
            {
                "case_id": case.case_id,
                "source": source,
                "mean_log_jacobian_native": result.mean_log_jacobian_native,
                "mean_log_jacobian_template": result.mean_log_jacobian_template,
                "mean_log_jacobian_truth": case.mean_log_jacobian_truth,
                "template_lung_dice": result.template_lung_dice,
                "seconds": result.seconds,
                "classical_extent_pct": result.info.get("classical_extent_pct", {}),
                **(
                    {"pair": result.info["pair_registration"]}
                    if "pair_registration" in result.info
                    else {}
                ),
            }
        )
        log(
            start,
            f"{name} {source} map {n}/{len(cases)} {case.case_id} [{case.cohort_tag}]: mean "
            f"log-Jac {result.mean_log_jacobian_native:+.3f} (truth "
            f"{case.mean_log_jacobian_truth:+.3f}), template Dice {result.template_lung_dice:.3f}",
        )
    meta = {"template": template.digest, "cases": [c.case_id for c in cases], "records": records}
    np.savez_compressed(
        cache, meta=json.dumps(meta), **{c.case_id: m for c, m in zip(cases, maps, strict=True)}
    )
    if natives:
        save_natives(natives_cache, cases, natives)
    return {"maps": maps, "records": records, "natives": natives or None}


def save_natives(path: Path, cases: list[Any], natives: list[tuple[Any, Any]]) -> None:
    """Registered log-Jacobian maps and lung masks on their own grids (for --reuse)."""
    arrays: dict[str, Any] = {}
    for case, (log_jacobian, lung) in zip(cases, natives, strict=True):
        arrays[f"{case.case_id}_logjac"] = log_jacobian.array.astype(np.float32)
        arrays[f"{case.case_id}_lung"] = np.asarray(lung.array).astype(np.uint8)
        for suffix, volume in (("geometry", log_jacobian), ("lung_geometry", lung)):
            arrays[f"{case.case_id}_{suffix}"] = np.concatenate(
                [volume.spacing_mm, volume.origin_lps_mm, volume.direction.ravel()]
            )
    np.savez_compressed(path, **arrays)


def load_natives(path: Path, cases: list[Any]) -> list[tuple[Any, Any]] | None:
    from inference.volume import Volume

    data = np.load(path, allow_pickle=False)
    out = []
    for case in cases:
        key = case.case_id
        if f"{key}_logjac" not in data or f"{key}_lung_geometry" not in data:
            return None
        g, h = data[f"{key}_geometry"], data[f"{key}_lung_geometry"]
        grid = Volume(data[f"{key}_logjac"], tuple(g[0:3]), tuple(g[3:6]), g[6:15].reshape(3, 3))
        lung = Volume(data[f"{key}_lung"], tuple(h[0:3]), tuple(h[3:6]), h[6:15].reshape(3, 3))
        out.append((grid, lung))
    return out


def extent_changes(
    args: argparse.Namespace,
    name: str,
    cases: list[Any],
    records: list[dict[str, Any]],
    start: float,
) -> list[float]:
    from inference.worsening.cohort import classical_extent_change

    cache = args.out / f"extent_classical_{name}.json"
    ids = [c.case_id for c in cases]
    if args.reuse and cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("cases") == ids:
            return [float(v) for v in data["extent_change"]]
    values = [
        classical_extent_change(case, record.get("classical_extent_pct"))
        for case, record in zip(cases, records, strict=True)
    ]
    cache.write_text(json.dumps({"cases": ids, "extent_change": values}))
    log(start, f"{name}: classical ILD extent change measured on {len(cases)} pairs")
    return values


def evaluate_default_model(
    args: argparse.Namespace,
    cases: list[Any],
    labels: dict[str, list[Any]],
    natives: list[tuple[Any, Any]] | None,
    start: float,
) -> dict[str, Any]:
    """The weight-free default model on the held-out pairs' registered maps, through
    ``predict_worsening`` exactly as the app calls it."""
    from inference.worsening.classifier import evaluate, predict_worsening
    from inference.worsening.default import default_model

    if natives is None:
        log(start, "default model: no registered maps on their own grids (rerun without --reuse)")
        return {"skipped": "no native maps"}
    t0 = time.perf_counter()
    model = default_model(args.out / "default-model", progress=lambda line: log(start, line))
    build_s = time.perf_counter() - t0
    predictions = []
    for case, (log_jacobian, lung) in zip(cases, natives, strict=True):
        predictions.append(
            predict_worsening(
                case.ct("baseline"),
                lung,
                log_jacobian,
                model,
                registration_params={"threads": args.threads},
            )
        )
    out: dict[str, Any] = {
        "version": model.version,
        "build_or_load_seconds": round(build_s, 1),
        "predict_seconds_mean": round(float(np.mean([p.seconds for p in predictions])), 2),
        "targets": {},
    }
    rows = []
    for target in TARGETS:
        known = [n for n, v in enumerate(labels[target]) if v is not None]
        y = [bool(labels[target][n]) for n in known]
        probs = [getattr(predictions[n], f"{target}_probability") for n in known]
        metrics = evaluate(y, probs, model.thresholds[target]).to_dict()
        out["targets"][target] = {"threshold": model.thresholds[target], "metrics": metrics}
        rows.append((f"{target}: default model (exact-map phantoms)", metrics))
    print_table(rows)
    return out


def fmt(metric: dict[str, Any]) -> str:
    if metric["total"] == 0:
        return "n/a"
    return (
        f"{100 * metric['estimate']:.0f}% ({metric['successes']}/{metric['total']}; "
        f"{100 * metric['ci_low']:.0f}-{100 * metric['ci_high']:.0f})"
    )


def print_table(rows: list[tuple[str, dict[str, Any]]]) -> None:
    names = ("sensitivity", "specificity", "accuracy", "ppv", "npv")
    width = max(len(label) for label, _ in rows) + 2
    print()
    print("".ljust(width) + "".join(n.upper().ljust(24) for n in names))
    for label, metrics in rows:
        print(label.ljust(width) + "".join(fmt(metrics[n]).ljust(24) for n in names))
    print()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from inference.worsening.classifier import (
        TrainingConfig,
        evaluate,
        extent_comparator,
        load_model,
        save_model,
    )
    from inference.worsening.cohort import read_cohort
    from inference.worsening.figures import figure5
    from inference.worsening.training import labels_of, train_on_maps

    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    folders = write_cohorts(args, start)
    train_cases, test_cases = read_cohort(folders["train"]), read_cohort(folders["test"])
    timings["cohorts"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    template = build_or_load_template(args, train_cases, start)
    timings["template"] = time.perf_counter() - t0
    log(start, f"template {template.shape_kji} at {template.spacing_mm} mm, {template.digest[:19]}")

    t0 = time.perf_counter()
    train_maps = maps_for(args, "train", train_cases, template, args.train_maps, start)
    timings["train_maps"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_maps = maps_for(args, "test", test_cases, template, "registered", start)
    timings["test_maps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    config = TrainingConfig(
        epochs=args.epochs, seed=args.seed, threads=args.threads, smoothing_mm=args.smoothing_mm
    )
    train_labels = labels_of(train_cases)
    model, train_ids, val_ids = train_on_maps(
        template,
        [c.case_id for c in train_cases],
        train_maps["maps"],
        train_labels,
        config,
        training_record={
            "cohort": str(folders["train"]),
            "maps": args.train_maps,
            "lungs": args.lungs,
            "registration_spacing_mm": args.registration_spacing_mm,
        },
        progress=lambda line: log(start, line),
    )
    model_dir = save_model(model, args.out / "model")
    model = load_model(model_dir)
    timings["training"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    prepared = np.stack([model.prepare(m) for m in test_maps["maps"]])
    probabilities = model.predict_prepared(prepared)
    test_labels = labels_of(test_cases)
    classical_train = extent_changes(args, "train", train_cases, train_maps["records"], start)
    classical_test = extent_changes(args, "test", test_cases, test_maps["records"], start)
    truth_train = [c.extent_change_truth for c in train_cases]
    truth_test = [c.extent_change_truth for c in test_cases]
    timings["evaluation"] = time.perf_counter() - t0

    results: dict[str, Any] = {"targets": {}}
    for target in TARGETS:
        known_test = [n for n, v in enumerate(test_labels[target]) if v is not None]
        known_train = [n for n, v in enumerate(train_labels[target]) if v is not None]
        y_test = [bool(test_labels[target][n]) for n in known_test]
        y_train = [bool(train_labels[target][n]) for n in known_train]
        probs = probabilities[target][known_test]
        cnn = evaluate(y_test, probs, model.thresholds[target])
        entry: dict[str, Any] = {
            "n_test": len(y_test),
            "test_positive": int(sum(y_test)),
            "threshold": model.thresholds[target],
            "cnn": cnn.to_dict(),
            "validation": model.metadata["targets"][target]["validation_metrics"],
        }
        for label, train_x, test_x in (
            ("extent_classical", classical_train, classical_test),
            ("extent_truth", truth_train, truth_test),
        ):
            entry[label] = extent_comparator(
                [train_x[n] for n in known_train],
                y_train,
                [test_x[n] for n in known_test],
                y_test,
            )
        results["targets"][target] = entry
        print_table(
            [
                (f"{target}: log-Jacobian CNN", entry["cnn"]),
                (
                    f"{target}: extent change >= {entry['extent_classical']['threshold_pct']:.2f} (classical)",
                    entry["extent_classical"]["test"],
                ),
                (
                    f"{target}: extent change >= {entry['extent_truth']['threshold_pct']:.2f} (truth)",
                    entry["extent_truth"]["test"],
                ),
            ]
        )

    if not args.no_default_model:
        t0 = time.perf_counter()
        results["default_model"] = evaluate_default_model(
            args, test_cases, test_labels, test_maps.get("natives"), start
        )
        timings["default_model"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    figure = figure5(
        test_maps["maps"],
        test_labels["functional"],
        [c.morphologic_tag for c in test_cases],
        template.lung,
        args.out,
    )
    timings["figures"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start

    results.update(
        {
            "paper": "Chassagnon et al., Radiology 2021",
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "cohorts": {
                "train": {
                    "folder": str(folders["train"]),
                    "seed": args.train_seed,
                    "patients": len(train_cases),
                },
                "test": {
                    "folder": str(folders["test"]),
                    "seed": args.test_seed,
                    "patients": len(test_cases),
                },
            },
            "split": {"train": train_ids, "validation": val_ids},
            "template": {
                "digest": template.digest,
                "shape_kji": list(template.shape_kji),
                "spacing_mm": template.spacing_mm,
                "reference": template.metadata.get("reference_case"),
                "passes": template.metadata.get("passes"),
            },
            "model": {"dir": str(model_dir), "version": model.version},
            "figure5": figure,
            "test_cases": [
                {
                    "case_id": c.case_id,
                    "cohort_tag": c.cohort_tag,
                    "functional_worsening": c.functional_worsening,
                    "extent_change_truth": truth_test[n],
                    "extent_change_classical": classical_test[n],
                    "functional_probability": float(probabilities["functional"][n]),
                    "morphologic_probability": float(probabilities["morphologic"][n]),
                    **test_maps["records"][n],
                }
                for n, c in enumerate(test_cases)
            ],
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
        }
    )
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    log(
        start,
        f"wrote {args.out / 'results.json'} and {', '.join(Path(f).name for f in figure['files'])}",
    )
    print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
