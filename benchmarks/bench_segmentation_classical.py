"""Classical lung/ILD engine on a full-size synthetic chest CT: seconds, peak memory, Dice.

One command (CPU)::

    .venv/bin/python benchmarks/bench_segmentation_classical.py            # 400 x 512 x 512
    .venv/bin/python benchmarks/bench_segmentation_classical.py --slices 128 --size 256  # quick

It generates one SSc phantom (``inference.phantoms.make_phantom``; generation is timed apart and
cached under ``--cache``), then segments it in a fresh child process so that memory is the
segmentation's own, and prints a table and a JSON line:

* seconds per stage and in total, and voxels per second;
* peak memory of the child: ``tracemalloc`` peak of the allocations made while segmenting (numpy
  reports its buffers to ``tracemalloc``) and the peak resident set size (``VmHWM``, which also
  counts the interpreter, the libraries and the loaded CT);
* lung Dice, right/left Dice, ILD Dice, median per-slice ILD Dice over slices with disease, the
  ILD extent against the truth, and the share of the dense ILD (> -400 HU) kept in the lung;
* the lung Dice and time of a bare peer, as ratios: -400 HU threshold, air touching the slice
  border removed, two largest 3D components ("threshold + components").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.segmentation import classical
from inference.segmentation.engines import ILD
from inference.segmentation.metrics import dice, median_slice_dice
from inference.volume import Volume


def threshold_peer(hu: np.ndarray) -> np.ndarray:
    """Bare threshold lung mask: HU < -400, minus air touching the slice border, 2 largest parts."""
    air = hu < -400
    outside = np.zeros_like(air)
    for k in range(air.shape[0]):
        labels, _ = ndimage.label(air[k])
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        outside[k] = np.isin(labels, border[border > 0])
    labels, n = ndimage.label(air & ~outside)
    if n == 0:
        return np.zeros_like(air)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.argsort(sizes)[::-1][:2]
    keep = keep[sizes[keep] >= 0.1 * sizes[keep[0]]]
    return np.isin(labels, keep)


def _peak_rss_mb() -> float:
    """This process' peak resident set size: VmHWM on Linux (``ru_maxrss`` survives ``exec``, so
    a spawned child would report its parent's peak), else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(folder: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Load the CT, segment it, save the labels; report seconds and memory."""
    data = np.load(Path(folder) / "ct.npz")
    ct = Volume(data["hu"], tuple(data["spacing"]), tuple(data["origin"]), data["direction"])  # type: ignore[arg-type]
    tracemalloc.start()
    start = time.perf_counter()
    result = classical.segment(ct)
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.lungs_lr is not None
    np.savez(Path(folder) / "out.npz", labels=result.label_map.array, lr=result.lungs_lr.array)
    queue.put(
        {
            "seconds": seconds,
            "stages": result.timings_s,
            "traced_peak_mb": traced_peak / 2**20,
            "max_rss_mb": _peak_rss_mb(),
            "extent_pct": result.extent_pct,
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--spacing-xy", type=float, default=0.75, help="mm")
    parser.add_argument("--spacing-z", type=float, default=0.8, help="mm")
    parser.add_argument("--extent", type=float, default=20.0, help="ILD extent of the phantom, %%")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="folder to keep the phantom in")
    parser.add_argument("--no-peer", action="store_true", help="skip the threshold peer")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-seg-"))
    name = f"phantom-{args.seed}-{args.slices}x{args.size}-{args.extent:g}.npz"
    cached = args.cache / name if args.cache else None
    start = time.perf_counter()
    if cached is not None and cached.exists():
        truth_file = np.load(cached)
        generate_s: float | None = None
    else:
        from inference.phantoms import make_phantom

        phantom = make_phantom(
            seed=args.seed,
            shape_kji=(args.slices, args.size, args.size),
            spacing_mm=(args.spacing_xy, args.spacing_xy, args.spacing_z),
            extent_pct=args.extent,
        )
        generate_s = time.perf_counter() - start
        arrays = {
            "hu": phantom.ct.array,
            "spacing": np.asarray(phantom.ct.spacing_mm),
            "origin": np.asarray(phantom.ct.origin_lps_mm),
            "direction": phantom.ct.direction,
            "labels": phantom.labels.array,
            "lr": phantom.lungs_lr.array,
        }
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, **arrays)  # type: ignore[arg-type]
        truth_file = arrays  # type: ignore[assignment]
        del phantom
    hu = np.asarray(truth_file["hu"])
    truth = np.asarray(truth_file["labels"])
    truth_lr = np.asarray(truth_file["lr"])
    np.savez(
        work / "ct.npz",
        hu=hu,
        spacing=truth_file["spacing"],
        origin=truth_file["origin"],
        direction=truth_file["direction"],
    )

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(str(work), queue))
    process.start()
    child = queue.get()
    process.join()
    out = np.load(work / "out.npz")
    labels, lr = out["labels"], out["lr"]

    voxels = int(hu.size)
    truth_lung = int(np.count_nonzero(truth))
    truth_extent = 100.0 * int(np.count_nonzero(truth == ILD)) / max(truth_lung, 1)
    dense = (truth == ILD) & (hu > -400)
    lung_dice = dice(labels, truth)
    report: dict[str, object] = {
        "shape_kji": list(hu.shape),
        "spacing_mm": [round(float(s), 4) for s in truth_file["spacing"]],
        "voxels": voxels,
        "phantom_extent_pct": round(truth_extent, 2),
        "generate_s": None if generate_s is None else round(generate_s, 2),
        "segment_s": round(child["seconds"], 2),
        "mvoxels_per_s": round(voxels / child["seconds"] / 1e6, 2),
        "stages_s": {k: round(v, 2) for k, v in child["stages"].items()},
        "tracemalloc_peak_mb": round(child["traced_peak_mb"], 1),
        "child_max_rss_mb": round(child["max_rss_mb"], 1),
        "lung_dice": round(lung_dice, 4),
        "right_dice": round(dice(lr, truth_lr, label=1), 4),
        "left_dice": round(dice(lr, truth_lr, label=2), 4),
        "ild_dice": round(dice(labels, truth, label=ILD), 4),
        "ild_median_slice_dice": round(median_slice_dice(labels, truth, label=ILD), 4),
        "extent_pct": round(child["extent_pct"], 2),
        "dense_ild_kept_pct": round(
            100.0 * int(np.count_nonzero(labels[dense])) / max(int(np.count_nonzero(dense)), 1), 1
        ),
    }
    if not args.no_peer:
        start = time.perf_counter()
        peer = threshold_peer(hu)
        peer_s = time.perf_counter() - start
        peer_dice = dice(peer, truth > 0)
        report["peer_threshold_lung_dice"] = round(peer_dice, 4)
        report["peer_threshold_s"] = round(peer_s, 2)
        report["lung_dice_ratio_vs_peer"] = round(lung_dice / peer_dice, 4)
        report["time_ratio_vs_peer"] = round(child["seconds"] / peer_s, 2)

    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
