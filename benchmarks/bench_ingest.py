"""Ingest throughput and peak memory for a 400-slice 512×512 CT series.

    .venv/bin/python benchmarks/bench_ingest.py [--slices 400] [--size 512] [--no-deidentify]

Generates a phantom series once (cached under var/bench/), then ingests it into a fresh
database (DATABASE_URL, default SQLite in a temporary folder) twice: first as new instances, then
as duplicates. dcmtk's ``storescu``/``storescp`` pair is the peer when installed: the same folder is
sent over DICOM C-STORE on loopback into a file store, which is what a PACS receive costs.
Prints instances/s, MB/s, peak RSS and the ratio to the peer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate_series(out: Path, *, slices: int, size: int) -> list[Path]:
    from inference.phantoms import make_phantom
    from inference.phantoms.dicom_writer import (
        PatientInfo,
        SeriesInfo,
        StudyInfo,
        uid_from,
        write_ct_series,
    )

    done = out.parent / f"{out.name}.complete"
    if done.exists():
        return sorted(out.glob("*.dcm"))
    shutil.rmtree(out, ignore_errors=True)
    phantom = make_phantom(seed=400, shape_kji=(slices, size, size), extent_pct=15.0)
    paths = write_ct_series(
        phantom.ct,
        out,
        patient=PatientInfo("BENCH-400", "BENCH^FOUR HUNDRED", dt.date(1960, 5, 1), "F"),
        study=StudyInfo(
            str(uid_from("bench", "study")), dt.date(2024, 1, 15), dt.time(10, 0), "ACC400", "1"
        ),
        series=SeriesInfo(
            str(uid_from("bench", "series")),
            str(uid_from("bench", "for")),
            2,
            "CT 1mm",
            120.0,
            "B70f",
            200.0,
            "bench",
        ),
    )
    done.touch()
    return paths


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dcmtk_store_rate(folder: Path, count: int) -> float | None:
    storescp, storescu = shutil.which("storescp"), shutil.which("storescu")
    if not (storescp and storescu):
        return None
    port = free_port()
    with tempfile.TemporaryDirectory() as received:
        server = subprocess.Popen(
            [storescp, "--output-directory", received, "--accept-all", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            start = time.perf_counter()
            subprocess.run(
                [
                    storescu,
                    "--scan-directories",
                    "--propose-lossless",
                    "127.0.0.1",
                    str(port),
                    str(folder),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            elapsed = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait()
        stored = sum(1 for _ in Path(received).iterdir())
    return stored / elapsed if stored == count else None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--no-deidentify", action="store_true")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    series_dir = REPO / "var" / "bench" / f"ingest-{args.slices}x{args.size}"
    if args.generate_only:
        generate_series(series_dir, slices=args.slices, size=args.size)
        return 0
    t0 = time.perf_counter()
    # The phantom is generated in a child process so that its memory is not counted here.
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--generate-only",
            "--slices",
            str(args.slices),
            "--size",
            str(args.size),
        ],
        check=True,
    )
    paths = sorted(series_dir.glob("*.dcm"))
    print(
        f"series: {len(paths)} instances of {args.size}x{args.size} ({time.perf_counter() - t0:.1f} s to prepare)"
    )
    megabytes = sum(p.stat().st_size for p in paths) / 1e6

    work = Path(tempfile.mkdtemp(prefix="ild-bench-ingest-"))
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{work / 'db.sqlite3'}")
    os.environ["ILD_STORAGE_ROOT"] = str(work / "storage")
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings.base"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from core.models import Project
    from studies.models import Instance
    from studies.services.ingest import ingest_paths

    if connection.vendor == "postgresql":
        # a scratch database, so that a real one is never touched
        from django.test.utils import setup_databases

        setup_databases(verbosity=0, interactive=False)
    else:
        call_command("migrate", verbosity=0)
    project, _ = Project.objects.get_or_create(slug="bench", defaults={"name": "Benchmark"})
    rss_before = peak_rss_mb()

    start = time.perf_counter()
    report = ingest_paths([series_dir], project=project, deidentify=not args.no_deidentify)
    first = time.perf_counter() - start
    assert report.stored == len(paths), report.to_dict()["files"][:3]
    start = time.perf_counter()
    again = ingest_paths([series_dir], project=project, deidentify=not args.no_deidentify)
    second = time.perf_counter() - start
    assert again.duplicate == len(paths)

    ours = len(paths) / first
    print(f"database: {connection.vendor}; de-identify: {not args.no_deidentify}")
    print(
        f"ingest new:       {ours:8.1f} instances/s  {megabytes / first:7.1f} MB/s  ({first:.1f} s)"
    )
    print(f"ingest duplicate: {len(paths) / second:8.1f} instances/s  ({second:.1f} s)")
    print(f"peak RSS:         {peak_rss_mb():8.0f} MB (before ingest {rss_before:.0f} MB)")
    print(f"indexed rows:     {Instance.objects.count()}")
    peer = dcmtk_store_rate(series_dir, len(paths))
    if peer:
        print(
            f"dcmtk storescu→storescp (C-STORE to files): {peer:.1f} instances/s; ratio ours/dcmtk {ours / peer:.2f}"
        )
    else:
        print("dcmtk storescu/storescp not installed: no peer figure (apt-get install dcmtk)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
