"""Agreement dashboard and exports at the papers' scale: server time, memory, incremental update.

One command (needs PostgreSQL on 127.0.0.1:5432, user postgres; ``--sqlite`` for a file)::

    .venv/bin/python benchmarks/bench_agreement.py                   # 200 x 3 x 20, 512 x 512
    .venv/bin/python benchmarks/bench_agreement.py --patients 20 --quick

It creates a scratch database, migrates it and loads a reading study of ``--patients`` cases,
each read by ``--readers`` radiologists on ``--slices`` protocol slices of ``--size``² pixels
(ILD and lung contours as contour versions with their packed masks, ~15 % of slices without
ILD for everyone), plus one segmentation engine's label maps (``--no-engine`` to skip). Then it
measures, in this process (the server's work without the network):

* the first full computation of every per-slice Dice row (reader pairs, engine, STAPLE
  consensus) — what the first dashboard load pays;
* the agreement dashboard page and the agreement JSON API, cold (bootstrap CIs computed) and
  warm (rows and intervals cached) — through Django's test client, i.e. the whole view;
* the exports: agreement XLSX and the ZIP bundle of every table;
* a new contour version on one slice: ``refresh_for_contour`` (what the save hook costs), and
  the dashboard right after it, against recomputing everything (the ratio is the point);
* a sync that has to check every row's digest (no hook installed) with nothing stale.

Memory: peak Python allocations of each step (tracemalloc, which numpy reports to) and the
process's peak RSS. Prints a table and one JSON line. The scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn: Callable[[], Any], *, memory: bool = True) -> tuple[Any, float, float]:
    """(result, seconds, peak traced MB). Timed without tracing, then traced once more when
    ``memory`` (tracemalloc slows numpy-heavy code)."""
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    peak = float("nan")
    if memory:
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    return result, seconds, peak


# ---- data -------------------------------------------------------------------------------


def ellipse(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.ogrid[:size, :size]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def mask_banks(size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Slowly shifting ILD blobs (neighbours overlap partly) and lung outlines."""
    s = size / 512
    ild = []
    for i in range(40):
        blob = ellipse(
            size, (300 + 2 * i) * s, (150 + 3 * i) * s, (40 + i % 7) * s, (30 + i % 5) * s
        )
        blob |= ellipse(size, (330 - i) * s, (360 - 2 * i) * s, (25 + i % 4) * s, (35 + i % 6) * s)
        ild.append(blob)
    lung = [
        ellipse(size, 256 * s, (150 + i) * s, (170 + i % 5) * s, (90 + i % 3) * s)
        | ellipse(size, 256 * s, (362 - i) * s, (170 + i % 4) * s, (90 + i % 4) * s)
        for i in range(12)
    ]
    return ild, lung


def load(args: argparse.Namespace) -> dict[str, Any]:
    from django.conf import settings

    from annotation.models import Assignment, ContourVersion, ReadingCase, ReadingStudy
    from annotation.services.geometry import pack_mask
    from core.models import Membership, Project, User
    from jobs.models import Job
    from studies.models import Instance, Patient, Series, Study

    rng = np.random.default_rng(5)
    project = Project.objects.create(slug="bench", name="Benchmark")
    coordinator = User.objects.create_user("coordinator", password="x", role="coordinator")
    readers = [
        User.objects.create_user(f"reader-{i + 1}", password="x", role="radiologist")
        for i in range(args.readers)
    ]
    for user in [coordinator, *readers]:
        Membership.objects.create(user=user, project=project)
    study = ReadingStudy.objects.create(
        project=project, name="Benchmark", protocol_slice_count=args.slices
    )
    ild_bank, lung_bank = mask_banks(args.size)
    ild_packed = [(pack_mask(m), int(m.sum())) for m in ild_bank]
    lung_packed = [(pack_mask(m), int(m.sum())) for m in lung_bank]
    empty = (pack_mask(np.zeros((args.size, args.size), bool)), 0)
    geometry = {"schema_version": 1, "polygons": [[[0, 0, 0], [1, 0, 0], [1, 1, 0]]]}
    spacing = 350.0 / args.size
    contours: list[ContourVersion] = []
    cohorts = ["training", "test", "correlation", "external"]
    for p in range(args.patients):
        patient = Patient.objects.create(
            project=project, patient_id=f"ILD-{p:05d}", cohort=cohorts[p % 4], sex="F"
        )
        ct = Study.objects.create(patient=patient, study_instance_uid=f"2.25.{uuid.uuid4().int}")
        series = Series.objects.create(
            study=ct, series_instance_uid=f"2.25.{uuid.uuid4().int}", modality="CT"
        )
        instances = [
            Instance(
                series=series,
                sop_instance_uid=f"2.25.{uuid.uuid4().int}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                instance_number=k + 1,
                rows=args.size,
                columns=args.size,
                image_position_patient=[-175.0, -175.0, -10.0 * k],
                image_orientation_patient=[1, 0, 0, 0, 1, 0],
                pixel_spacing=[spacing, spacing],
                file=f"bench/{p}/{k}.dcm",
                size_bytes=0,
                sha256="0" * 64,
            )
            for k in range(args.slices)
        ]
        Instance.objects.bulk_create(instances)
        uids = [i.sop_instance_uid for i in instances]
        case = ReadingCase.objects.create(
            study=study,
            series=series,
            label=f"Case {p + 1:04d}",
            protocol_status="ready",
            slice_sop_instance_uids=uids,
        )
        for r, reader in enumerate(readers):
            assignment = Assignment.objects.create(
                study=study,
                case=case,
                reader=reader,
                order=p + 1,
                status="submitted",
                submitted_at="2024-01-01T00:00:00Z",
            )
            for k, uid in enumerate(uids):
                no_ild = (p * 31 + k * 7) % 100 < 15
                base = (p * 7 + k * 3) % 35
                ild = empty if no_ild else ild_packed[base + int(rng.integers(0, 4)) + r % 2]
                lung = lung_packed[(p + k + r) % len(lung_packed)]
                for structure, (data, count) in (("ild", ild), ("lung", lung)):
                    contours.append(
                        ContourVersion(
                            assignment=assignment,
                            structure=structure,
                            referenced_sop_instance_uid=uid,
                            version=1,
                            schema_version=1,
                            geometry=geometry,
                            mask=data,
                            mask_rows=args.size,
                            mask_columns=args.size,
                            pixel_count=count,
                            area_mm2=count * spacing * spacing,
                            author=reader,
                        )
                    )
        if len(contours) >= 4000:
            ContourVersion.objects.bulk_create(contours, batch_size=1000)
            contours = []
        if args.engine:
            labels = np.zeros((args.slices, args.size, args.size), np.uint8)
            for k in range(args.slices):
                labels[k][lung_bank[(p + k) % len(lung_bank)]] = 1
                if (p * 31 + k * 7) % 100 >= 15:
                    labels[k][ild_bank[(p * 7 + k * 3) % 35 + 1] & (labels[k] > 0)] = 2
            relpath = f"jobs/segmentation/{series.series_instance_uid}/atlasnet/labels.npz"
            path = Path(settings.STORAGE_ROOT) / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, labels=labels, sop_instance_uids=np.asarray(uids))
            Job.objects.create(
                kind="segmentation",
                status="succeeded",
                series=series,
                engine="atlasnet",
                result={"label_map_npz": relpath, "extent_pct": float(rng.uniform(0, 40))},
            )
    ContourVersion.objects.bulk_create(contours, batch_size=1000)
    return {"study": study, "coordinator": coordinator, "readers": readers}


# ---- run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    data = load(args)
    study, coordinator = data["study"], data["coordinator"]
    from annotation.models import Assignment, ContourVersion
    from annotation.services.contours import save_contour
    from reports.models import SliceAgreement
    from reports.services import agreement
    from studies.models import Instance

    # one read is reopened before the first computation, so a new contour can be saved later
    # without taking a read out of the consensus (that would be a second, separate change)
    first = study.assignments.order_by("case__label", "reader__username").first()
    Assignment.objects.filter(pk=first.pk).update(status="in_progress", submitted_at=None)
    load_s = time.perf_counter() - started
    n_contours = ContourVersion.objects.count()
    print(f"loaded {args.patients} cases, {n_contours} contour versions in {load_s:.0f} s")

    out: dict[str, Any] = {
        "patients": args.patients,
        "readers": args.readers,
        "slices": args.slices,
        "size": args.size,
        "engine": args.engine,
        "contours": n_contours,
    }
    rss_before = rss_mb()
    started = time.perf_counter()
    sync = agreement.sync_study(study)
    out["full_compute_s"] = time.perf_counter() - started
    out["rows"] = SliceAgreement.objects.count()
    out["full_compute_rss_growth_mb"] = rss_mb() - rss_before
    print(
        f"full computation: {out['rows']} rows in {out['full_compute_s']:.1f} s "
        f"(peak RSS +{out['full_compute_rss_growth_mb']:.0f} MB), computed {sync.rows_computed}"
    )

    client = Client()
    client.force_login(coordinator)
    page = f"/reports/studies/{study.pk}/agreement/?n_resamples={args.n_resamples}"
    api = f"/api/v1/reports/studies/{study.pk}/agreement/?n_resamples={args.n_resamples}"

    def get(url: str) -> Any:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        return response

    _, out["dashboard_cold_s"], _ = measure(lambda: get(page), memory=False)
    _, out["dashboard_warm_s"], out["dashboard_warm_peak_mb"] = measure(lambda: get(page))
    _, out["api_warm_s"], out["api_warm_peak_mb"] = measure(lambda: get(api))
    lung = page + "&structure=lung"
    _, out["dashboard_lung_cold_s"], _ = measure(lambda: get(lung), memory=False)
    export = f"/api/v1/reports/export/agreement.xlsx?reading_study={study.pk}&n_resamples={args.n_resamples}"
    response, out["export_xlsx_s"], out["export_xlsx_peak_mb"] = measure(lambda: get(export))
    out["export_xlsx_mb"] = len(response.content) / 1e6
    bundle = (
        f"/api/v1/reports/export/all.zip?reading_study={study.pk}&n_resamples={args.n_resamples}"
    )
    response, out["export_zip_all_s"], out["export_zip_all_peak_mb"] = measure(lambda: get(bundle))
    out["export_zip_all_mb"] = len(response.content) / 1e6
    print(
        f"dashboard cold {out['dashboard_cold_s']:.2f} s, warm {out['dashboard_warm_s']:.2f} s; "
        f"XLSX {out['export_xlsx_s']:.2f} s, ZIP (all tables) {out['export_zip_all_s']:.2f} s"
    )

    # a new contour on one slice of the reopened read (twice: timed, then traced)
    def new_contour(k: int, scale: float) -> Any:
        instance = Instance.objects.get(sop_instance_uid=first.case.slice_sop_instance_uids[k])
        z = float((instance.image_position_patient or [0, 0, 0])[2])
        polygon = [[-40.0 * scale, -30.0, z], [40.0 * scale, -30.0, z], [40.0, 50.0 * scale, z]]
        latest = (
            ContourVersion.objects.filter(
                assignment=first,
                structure="ild",
                referenced_sop_instance_uid=instance.sop_instance_uid,
            )
            .order_by("-version")
            .first()
        )
        return save_contour(
            assignment=first,
            user=first.reader,
            structure="ild",
            referenced_sop_instance_uid=instance.sop_instance_uid,
            base_version=latest.version if latest else 0,
            geometry_json={"schema_version": 1, "polygons": [polygon]},
        ).contour

    saved = new_contour(5, 1.0)
    started = time.perf_counter()
    result = agreement.refresh_for_contour(saved)
    out["refresh_for_contour_s"] = time.perf_counter() - started
    out["refresh_rows_computed"] = result.rows_computed
    saved = new_contour(6, 1.5)
    tracemalloc.start()
    agreement.refresh_for_contour(saved)
    out["refresh_for_contour_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    _, out["dashboard_after_edit_s"], _ = measure(lambda: get(page), memory=False)
    check, out["sync_check_all_rows_s"], _ = measure(
        lambda: agreement.sync_study(study, force=True), memory=False
    )
    out["sync_check_rows_computed"] = check.rows_computed
    out["incremental_vs_full"] = out["refresh_for_contour_s"] / out["full_compute_s"]
    out["peak_rss_mb"] = rss_mb()
    print(
        f"new contour: refresh_for_contour {out['refresh_for_contour_s'] * 1000:.0f} ms "
        f"({result.rows_computed} rows), dashboard after it {out['dashboard_after_edit_s']:.2f} s; "
        f"checking every row without the hook {out['sync_check_all_rows_s']:.2f} s"
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--n-resamples", type=int, default=2000)
    parser.add_argument("--no-engine", dest="engine", action="store_false")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--quick", action="store_true", help="256 px, 500 resamples")
    args = parser.parse_args()
    if args.quick:
        args.size, args.n_resamples = 256, 500

    work = Path(tempfile.mkdtemp(prefix="bench-agreement-"))
    os.environ["ILD_STORAGE_ROOT"] = str(work / "storage")
    os.environ["ILD_VAR_DIR"] = str(work)
    name = f"ild_bench_reports_{os.getpid()}"
    admin = None
    if args.sqlite:
        os.environ["DATABASE_URL"] = f"sqlite:///{work / 'db.sqlite3'}"
    else:
        import psycopg

        admin = psycopg.connect(f"{args.postgres}/postgres", autocommit=True)
        admin.execute(f'CREATE DATABASE "{name}"')
        os.environ["DATABASE_URL"] = f"{args.postgres}/{name}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.base")
    import django

    django.setup()
    from django.conf import settings

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    try:
        out = run(args)
    finally:
        from django.db import connections

        connections.close_all()
        if admin is not None:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| step | server time | peak traced memory |")
    print("|---|---|---|")
    for label, key, mem in (
        ("first computation of every row", "full_compute_s", None),
        ("dashboard, cold (bootstrap CIs computed)", "dashboard_cold_s", None),
        ("dashboard, warm", "dashboard_warm_s", "dashboard_warm_peak_mb"),
        ("agreement API, warm", "api_warm_s", "api_warm_peak_mb"),
        ("export XLSX (agreement, ILD + lung)", "export_xlsx_s", "export_xlsx_peak_mb"),
        ("export ZIP (every table)", "export_zip_all_s", "export_zip_all_peak_mb"),
        (
            "refresh_for_contour (one new contour)",
            "refresh_for_contour_s",
            "refresh_for_contour_peak_mb",
        ),
        ("dashboard right after the new contour", "dashboard_after_edit_s", None),
        ("check every row's digest (no hook)", "sync_check_all_rows_s", None),
    ):
        memory = f"{out[mem]:.0f} MB" if mem else ""
        print(f"| {label} | {out[key]:.3f} s | {memory} |")
    print(
        f"\nrows: {out['rows']}; incremental / full = {out['incremental_vs_full']:.5f}; "
        f"peak RSS {out['peak_rss_mb']:.0f} MB"
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
