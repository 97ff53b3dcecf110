"""Seconds and peak memory per whole-thorax CT: classical engine, one network, the ensembles.

    .venv/bin/python benchmarks/bench_segmentation.py                    # 400 x 512 x 512, CPU
    .venv/bin/python benchmarks/bench_segmentation.py --slices 120 --size 256   # quick
    .venv/bin/python benchmarks/bench_segmentation.py --device cuda      # when a GPU is lent

One synthetic SSc CT (``make_phantom``, the whole thorax: 358 x 358 x 320 mm, i.e. 0.70 x 0.70 x
0.8 mm at 400 x 512 x 512; generated once and cached under ``--work``) is segmented by each
configuration in its own process (so each peak RSS is its own):

* ``classical``: the weight-free default engine;
* ``unet-cpu``: one U-Net, width 1/8, 256 px slices;
* ``atlasnet-cpu-1``: one AtlasNet network + its registration (width 1/8, 256 px, 6 mm grid);
* ``atlasnet-cpu``: the CPU configuration, 2 templates, majority vote;
* ``atlasnet-cpu-6``: the paper's 6-network ensemble at the CPU settings (width 1/8, 256 px,
  6 mm registration grid);
* ``atlasnet-cpu-w4``, ``atlasnet-cpu-w2``: the CPU configuration with networks of width 1/4 and
  1/2 (not in the default list);
* ``atlasnet-paper-1``: one full-width network at 512 px + its 3 mm registration (a GPU row;
  not in the default list);
* ``atlasnet-paper``: the paper's configuration, 6 full-width networks at 512 px, registration
  on a 3 mm grid with the backend's default iterations. On a CPU this takes hours, so unless
  ``--full-paper`` is given it is *extrapolated*: one registration and ``--paper-slices`` slices
  of one full-width network are timed, then scaled to the CT's slices x 6 networks (printed as
  such).

The "per 400 slices" column scales the slice-wise work to 400 slices and keeps the registrations
(a fixed-size grid over the same thorax) as measured; it is the measurement itself at
``--slices 400``.

Network weights are random (speed does not depend on them); templates are the benchmark CT
itself resampled to the template grid (for the CPU configurations, its lungs and 20 mm, as the
CPU preset's). Peak memory is the child process' maximum RSS
(``VmHWM``), with its RSS after loading the CT and the engine for reference. Besides the
wall-clock seconds, each row gives the process' CPU seconds (``time.process_time``), which do
not depend on what else runs on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.volume import Volume

DESCRIPTIONS = {
    "classical": "weight-free classical engine",
    "unet-cpu": "1 U-Net, width 1/8, 256 px",
    "atlasnet-cpu-1": "1 AtlasNet network + its registration (width 1/8, 256 px, 6 mm grid)",
    "atlasnet-cpu": "CPU configuration: 2 networks (width 1/8, 256 px, 6 mm grid), vote",
    "atlasnet-cpu-6": "6 networks at the CPU settings (width 1/8, 256 px, 6 mm grid), vote",
    "atlasnet-cpu-w4": "2 networks of width 1/4 (256 px, 6 mm grid), vote",
    "atlasnet-cpu-w2": "2 networks of width 1/2 (256 px, 6 mm grid), vote",
    "atlasnet-paper-1": "1 full-width network at 512 px + its 3 mm registration",
    "atlasnet-paper": "paper: 6 full-width networks at 512 px, 3 mm grid",
    "atlasnet-paper-full": "paper: 6 full-width networks at 512 px, 3 mm grid (run in full)",
}


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    # VmHWM is this process image's high-water mark; ru_maxrss would carry over the parent's
    # peak through fork + exec on Linux.
    return _status_mb("VmHWM")


def _load_ct(work: Path) -> Volume:
    geometry = json.loads((work / "ct.json").read_text())
    return Volume(
        np.load(work / "ct.npy"),
        tuple(geometry["spacing_mm"]),  # type: ignore[arg-type]
        tuple(geometry["origin_lps_mm"]),  # type: ignore[arg-type]
        np.asarray(geometry["direction"]),
    )


def make_ct(work: Path, slices: int, size: int, seed: int) -> Volume:
    if not (work / "ct.npy").is_file():
        from inference.phantoms import make_phantom

        start = time.perf_counter()
        # The phantom's whole-thorax field of view (358 x 358 x 320 mm) at any grid size, so
        # that a smaller benchmark CT is the same chest, coarser — not a crop of it.
        phantom = make_phantom(seed=seed, shape_kji=(slices, size, size), extent_pct=20.0)
        work.mkdir(parents=True, exist_ok=True)
        np.save(work / "ct.npy", phantom.ct.array)
        (work / "ct.json").write_text(
            json.dumps(
                {
                    "spacing_mm": phantom.ct.spacing_mm,
                    "origin_lps_mm": phantom.ct.origin_lps_mm,
                    "direction": phantom.ct.direction.tolist(),
                    "generate_s": time.perf_counter() - start,
                }
            )
        )
    return _load_ct(work)


def make_models(work: Path, ct: Volume) -> None:
    """Random-weight model folders for the configurations (written once)."""
    import torch

    from inference.networks.atlasnet import DualDecoderSegNet
    from inference.networks.unet import UNet2D
    from inference.segmentation.atlasnet_engine import (
        AtlasTemplate,
        RegistrationSettings,
        cpu_registration_params,
        rough_lung_mask,
    )
    from inference.segmentation.weights import InputSpec, ModelMetadata, save_model
    from inference.training.datasets import SegmentationCase
    from inference.training.train import make_template

    torch.manual_seed(0)
    # The labels only shape the template: its lung mask, and (CPU preset) the box it covers.
    rough = np.asarray(rough_lung_mask(ct).array).astype(np.uint8)
    case = SegmentationCase(
        "bench", "bench", ct, ct.with_array(rough), np.ones(ct.shape_kji[0], bool)
    )
    for name, size, width, n, spacing, params, margin in (
        ("atlasnet-cpu", 256, 0.125, 2, 6.0, cpu_registration_params(6.0), 20.0),
        ("atlasnet-cpu-6", 256, 0.125, 6, 6.0, cpu_registration_params(6.0), 20.0),
        ("atlasnet-cpu-w4", 256, 0.25, 2, 6.0, cpu_registration_params(6.0), 20.0),
        ("atlasnet-cpu-w2", 256, 0.5, 2, 6.0, cpu_registration_params(6.0), 20.0),
        ("atlasnet-paper", 512, 1.0, 6, 3.0, {}, None),
    ):
        folder = work / "models" / name
        if (folder / "metadata.json").is_file():
            continue
        template: AtlasTemplate = make_template(case, size, margin_mm=margin)
        entries = [
            {"ct": f"t{t}_ct.nii.gz", "labels": f"t{t}_labels.nii.gz", "network": f"n{t}.pt"}
            for t in range(n)
        ]
        metadata = ModelMetadata(
            model="atlasnet",
            version=f"{name}-random",
            input_spec=InputSpec(in_plane_size=(size, size)),
            network_class="DualDecoderSegNet",
            hyperparameters={"width": width},
            networks=[e["network"] for e in entries],
            templates=entries,  # type: ignore[arg-type]
            registration=RegistrationSettings(spacing_mm=spacing, params=params).as_dict(),
        )
        volumes: dict[str, Volume] = {}
        for e in entries:
            volumes[e["ct"]], volumes[e["labels"]] = template.ct, template.labels
        state = DualDecoderSegNet(width=width).state_dict()
        save_model(
            folder, metadata, state_dicts={e["network"]: state for e in entries}, volumes=volumes
        )
    folder = work / "models" / "unet-cpu"
    if not (folder / "metadata.json").is_file():
        metadata = ModelMetadata(
            model="unet",
            version="unet-cpu-random",
            input_spec=InputSpec(in_plane_size=(256, 256)),
            network_class="UNet2D",
            hyperparameters={"width": 0.125},
            networks=["network_00.pt"],
        )
        save_model(
            folder, metadata, state_dicts={"network_00.pt": UNet2D(width=0.125).state_dict()}
        )


def _child(config: str, work: str, device: str, paper_slices: int, queue: Any) -> None:
    import torch

    from inference.segmentation.atlasnet_engine import AtlasNetEngine
    from inference.segmentation.classical import segment
    from inference.segmentation.unet_engine import UNetEngine

    folder = Path(work)
    ct = _load_ct(folder)
    out: dict[str, Any] = {"config": config, "device": device}
    if config == "classical":
        out["rss_loaded_mb"] = _rss_mb()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = segment(ct)
    elif config == "unet-cpu":
        engine: Any = UNetEngine.from_folder(folder / "models" / "unet-cpu", device=device)
        out["rss_loaded_mb"] = _rss_mb()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = engine.predict(ct)
    elif config in (
        "atlasnet-cpu",
        "atlasnet-cpu-1",
        "atlasnet-cpu-6",
        "atlasnet-cpu-w4",
        "atlasnet-cpu-w2",
        "atlasnet-paper-1",
        "atlasnet-paper-full",
    ):
        # Configurations that time another configuration's models (in part or in full).
        name = {
            "atlasnet-cpu-1": "atlasnet-cpu",
            "atlasnet-paper-1": "atlasnet-paper",
            "atlasnet-paper-full": "atlasnet-paper",
        }.get(config, config)
        engine = AtlasNetEngine.from_folder(folder / "models" / name, device=device)
        if config in ("atlasnet-cpu-1", "atlasnet-paper-1"):
            engine = AtlasNetEngine(
                engine.networks[:1],
                engine.templates[:1],
                input_spec=engine.input_spec,
                registration=engine.registration,
                device=device,
            )
        out["rss_loaded_mb"] = _rss_mb()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = engine.predict(ct)
    elif config == "atlasnet-paper":
        # One registration + a few slices of one full-width network, scaled up.
        engine = AtlasNetEngine.from_folder(folder / "models" / "atlasnet-paper", device=device)
        out["rss_loaded_mb"] = _rss_mb()
        start, cpu_start = time.perf_counter(), time.process_time()
        one = AtlasNetEngine(
            engine.networks[:1],
            engine.templates[:1],
            input_spec=engine.input_spec,
            registration=engine.registration,
            device=device,
        )
        t0 = time.perf_counter()
        mapping = one.map_case(ct)[0]
        register_s = time.perf_counter() - t0
        slices = engine.input_spec.normalise(
            np.asarray(engine.templates[0].ct.array)[:paper_slices]
        )
        network = engine.networks[0]
        with torch.inference_mode():
            x = torch.from_numpy(slices[:1])[:, None].to(device)
            network(x)  # warm-up
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for k in range(slices.shape[0]):
                network(torch.from_numpy(slices[k : k + 1])[:, None].to(device))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            per_slice_s = (time.perf_counter() - t0) / slices.shape[0]
        del mapping
        n_slices = ct.shape_kji[0]  # the template grid has the case's slice count
        n_networks = len(engine.networks)
        out.update(
            {
                "extrapolated": True,
                "n_networks": n_networks,
                "register_one_s": register_s,
                "network_per_slice_s": per_slice_s,
                "seconds": n_networks * (register_s + per_slice_s * n_slices),
                "measured_s": time.perf_counter() - start,
                "cpu_s": time.process_time() - cpu_start,
                "peak_rss_mb": _peak_mb(),
            }
        )
        queue.put(out)
        return
    else:
        raise ValueError(config)
    out["seconds"] = time.perf_counter() - start
    out["cpu_s"] = time.process_time() - cpu_start
    out["peak_rss_mb"] = _peak_mb()
    out["timings_s"] = {k: round(v, 2) for k, v in result.timings_s.items()}
    out["lung_ml"] = round(result.lung_ml, 1)
    if device.startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    queue.put(out)


def run(config: str, work: Path, device: str, paper_slices: int) -> dict[str, Any]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(config, str(work), device, paper_slices, queue))
    process.start()
    result: dict[str, Any] = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument(
        "--configs",
        default="classical,unet-cpu,atlasnet-cpu-1,atlasnet-cpu,atlasnet-cpu-6,atlasnet-paper",
        help="comma-separated subset",
    )
    parser.add_argument("--paper-slices", type=int, default=3, help="slices timed (paper config)")
    parser.add_argument("--full-paper", action="store_true", help="run the paper config in full")
    args = parser.parse_args(argv)
    work = args.work or Path("bench-out") / f"segmentation-{args.slices}x{args.size}"
    ct = make_ct(work, args.slices, args.size, args.seed)
    make_models(work, ct)
    print(
        f"CT {ct.shape_kji} voxels, spacing {tuple(round(s, 3) for s in ct.spacing_mm)} mm; device {args.device}"
    )
    rows = []
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        if config == "atlasnet-paper" and args.full_paper:
            config = "atlasnet-paper-full"
        result = run(config, work, args.device, args.paper_slices)
        rows.append(result)
        print(json.dumps(result), flush=True)
    # Per 400 slices: the slice-wise work scales with the slice count; the registrations run
    # on a fixed-size isotropic grid of the same thorax and do not (exact at --slices 400).
    scale = 400.0 / ct.shape_kji[0]
    for r in rows:
        if r.get("extrapolated"):
            fixed = r["n_networks"] * r["register_one_s"]
        else:
            fixed = r.get("timings_s", {}).get("register", 0.0)
        r["seconds_per_400_slices"] = fixed + (r["seconds"] - fixed) * scale
    print()
    print(
        f"| configuration ({args.device}, {_threads()} thread(s)) | s per CT | CPU s per CT "
        "| s per 400 slices | min per 400 slices | peak RSS MB | note |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        note = DESCRIPTIONS.get(r["config"], "")
        if r.get("extrapolated"):
            note += (
                f"; extrapolated: {r['n_networks']} x (1 registration "
                f"{r['register_one_s']:.0f} s + {ct.shape_kji[0]} slices x "
                f"{r['network_per_slice_s']:.2f} s); peak RSS of 1 registration + "
                f"{args.paper_slices} slices"
            )
        print(
            f"| {r['config']} | {r['seconds']:.1f} | {r.get('cpu_s', float('nan')):.1f} "
            f"| {r['seconds_per_400_slices']:.0f} "
            f"| {r['seconds_per_400_slices'] / 60.0:.1f} | {r['peak_rss_mb']:.0f} | {note} |"
        )
    results = {
        "ct_shape_kji": list(ct.shape_kji),
        "spacing_mm": list(ct.spacing_mm),
        "device": args.device,
        "threads": _threads(),
        "rows": rows,
    }
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nfull results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
