"""The longitudinal viewer in a real browser (Debian chromium driven by playwright-core), against
the app served by a live server on the test database.

A patient has a small phantom baseline/follow-up pair with posterior-basal shrinkage (64 slices
of 128², 5 mm); the real registration job runs synchronously. A clinician opens the viewer and
the test checks, from the canvas pixels and the viewer's ``window.ildLongitudinal`` hook, that:
the baseline shows blue (shrinkage) overlay pixels in the lung and the follow-up is not tinted;
the overlay lies on the image's lung (also zoomed and panned); range and opacity act on it;
scrolling the baseline with the mouse wheel to a slice whose registered follow-up slice is not
the same index moves the follow-up to the job's slice (also after a quick flick of the wheel,
and back, through the inverse mapping); the O key and the button hide the overlay. A reader blinded to the pair gets no page.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.harness import CHROMIUM, PASSWORD, REPO, missing, require, run_driver

SCRIPT = Path(__file__).with_name("longitudinal_flow.mjs")
# The docs' picture is refreshed with ILD_UPDATE_SCREENSHOTS=1; ordinary runs write elsewhere.
SCREENSHOT = (
    REPO / "docs" / "images" / "longitudinal-viewer.png"
    if os.environ.get("ILD_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "ild-e2e" / "longitudinal-viewer.png"
)
NODE_TIMEOUT_S = int(os.environ.get("ILD_E2E_TIMEOUT_S", "180"))
SHAPE_KJI = (64, 128, 128)
PAIR_SEED = 3
# One coarse level: the test is about the viewer, the registration has its own tests.
REGISTRATION_PARAMS = {
    "spacing_mm": 10.0,
    "backend_params": {
        "levels_mm": [10.0],
        "iterations": [40],
        "affine_levels_mm": [10.0],
        "affine_iterations": [40],
        "threads": 1,
    },
}

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def requirements():
    require(missing(entry="src/longitudinal.ts"))


def _write_pair(root: Path) -> None:
    from inference.phantoms import make_longitudinal_pair
    from inference.phantoms.dicom_writer import (
        PatientInfo,
        SeriesInfo,
        StudyInfo,
        uid_from,
        write_ct_series,
    )

    pair = make_longitudinal_pair(seed=PAIR_SEED, shape_kji=SHAPE_KJI, progression="worse")
    assert pair.mean_log_jacobian_lung < -0.05  # the scenario: shrinkage
    patient = PatientInfo("LONG-E2E-1", "PHANTOM^LONG", dt.date(1958, 2, 1), "F")
    for name, phantom, date in (
        ("baseline", pair.baseline, dt.date(2020, 1, 14)),
        ("followup", pair.followup, dt.date(2023, 2, 2)),
    ):
        study = StudyInfo(
            study_instance_uid=uid_from("long-e2e", name, "study"),
            study_date=date,
            study_time=dt.time(9, 30),
            accession_number=f"ACC-{name}",
            study_id="1",
        )
        series = SeriesInfo(
            series_instance_uid=uid_from("long-e2e", name, "series"),
            frame_of_reference_uid=uid_from("long-e2e", name, "for"),
            series_number=2,
            description=f"Phantom {name}",
            kvp=120.0,
            kernel="B60f",
            tube_current_ma=200.0,
            software_version="test",
        )
        write_ct_series(phantom.ct, root / name, patient=patient, study=study, series=series)


def _setup(tmp_path: Path) -> dict[str, object]:
    from annotation.services import setup as reading_setup
    from core.models import Membership, Project, User
    from jobs import services
    from jobs.models import Job
    from studies.models import Series
    from studies.services import storage
    from studies.services.ingest import ingest_paths

    timings: dict[str, float] = {}
    project = Project.objects.create(slug="longitudinal", name="Longitudinal cohort")
    users = {}
    for username, role in (
        ("clinician", "clinician"),
        ("reader-blind", "radiologist"),
        ("coordinator", "coordinator"),
    ):
        users[username] = User.objects.create_user(username=username, password=PASSWORD, role=role)
        Membership.objects.create(user=users[username], project=project)

    start = time.perf_counter()
    _write_pair(tmp_path)
    timings["phantom_s"] = time.perf_counter() - start
    start = time.perf_counter()
    series = {}
    for name in ("baseline", "followup"):
        report = ingest_paths([tmp_path / name], project=project, deidentify=True)
        assert report.stored == SHAPE_KJI[0], report.to_dict()["files"][:3]
        series[name] = Series.objects.order_by("-created").first()
    baseline, followup = series["baseline"], series["followup"]
    assert baseline is not None and followup is not None and baseline.pk != followup.pk
    timings["ingest_s"] = time.perf_counter() - start

    start = time.perf_counter()
    # The real job, run in this process (as management commands do), not through a worker.
    job = services.request_registration(
        baseline, followup, backend="torch", params=REGISTRATION_PARAMS, inline=True
    )
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    timings["registration_s"] = time.perf_counter() - start

    with np.load(storage.absolute(job.result["log_jacobian"])) as data:
        baseline_sops = [str(u) for u in data["sop_instance_uids"]]
        inside = data["lung"] > 0
        logjac = data["log_jacobian"].astype(np.float32)
    # The map itself shows the shrinkage the page should paint blue.
    assert logjac[inside].mean() < -0.02

    # Reader "reader-blind" has an open read of this pair: model output is withheld from them.
    study = reading_setup.create_study(
        project=project,
        name="Blinded longitudinal read",
        created_by=users["coordinator"],
        longitudinal=True,
    )
    reading_setup.add_cases(
        study,
        [reading_setup.CaseSpec(series=followup, baseline_series=baseline)],
        compute_protocol=False,
    )
    reading_setup.assign_readers(study, [users["reader-blind"]])
    # Lung slices of the baseline with the most lung (for the pixel checks), by SOP.
    lung_area = inside.sum(axis=(1, 2))
    return {
        "job_id": str(job.pk),
        "baseline_sops": baseline_sops,
        "followup_sop_for_baseline_slice": job.result["followup_sop_for_baseline_slice"],
        "followup_slice_for_baseline_slice": job.result["followup_slice_for_baseline_slice"],
        "largest_lung_sop": baseline_sops[int(np.argmax(lung_area))],
        "mean_log_jacobian": job.result["mean_log_jacobian"],
        "timings": timings,
    }


def test_longitudinal_viewer_in_chromium(requirements, live_server, tmp_path, capsys):
    data = _setup(tmp_path)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "baseUrl": live_server.url,
        "password": PASSWORD,
        "chromium": CHROMIUM,
        "screenshot": str(SCREENSHOT),
        **data,
    }
    result, log = run_driver(SCRIPT, config, NODE_TIMEOUT_S)
    with capsys.disabled():
        print("\n[browser] log:\n" + log[-3000:])
        print("[browser] setup timings:", json.dumps(data["timings"]))
        print("[browser] metrics:", json.dumps(result.get("metrics", {})))
        print("[browser] checks:", json.dumps(result.get("checks", {})))
    assert not result.get("error"), f"{result['error']}\n{result.get('console')}"

    checks = result["checks"]
    # The page shows the pair and the job's numbers.
    assert checks["clinician_page_status"] == 200
    assert checks["job_id_on_page"] == data["job_id"]
    assert "LONG-E2E-1" not in checks["header_text"]  # de-identified: the pseudonym is shown
    # Overlay: blue (shrinkage) pixels inside the baseline's lung, none on the follow-up.
    assert checks["baseline_blue_pixels"] > 2000
    assert checks["followup_blue_pixels"] < 20
    assert checks["followup_blue_pixels"] * 10 < checks["baseline_blue_pixels"]
    # The overlay lies on the image's lung, zoomed and panned too: shifting it by a few screen
    # pixels in any direction (6…36) puts less of it over dark lung than leaving it in place.
    for name in ("alignment", "alignment_zoomed"):
        best = checks[name]["best_shift"]
        assert checks[name]["overlay_pixels"] > 2000, name
        assert abs(best["dx"]) <= 6 and abs(best["dy"]) <= 6, (name, best)
    # A narrower range saturates more of the lung; opacity 0 hides it; the bar follows.
    assert checks["blue_range_005"] > checks["baseline_blue_pixels"]
    assert "0.05" in checks["colour_bar_ticks"]
    assert checks["blue_opacity_0"] < 20
    # Linked scrolling through the registration, not by slice index.
    link = checks["linked"]
    assert link["baseline_index"] != link["expected_followup_index"]
    assert link["followup_index"] == link["expected_followup_index"]
    assert link["header_followup_sop"] == link["expected_followup_sop"]
    flick = checks["flick"]
    assert flick["consistent"] and flick["moved"] >= 4
    assert flick["followup_index"] == flick["linked"]
    back = checks["linked_back"]
    assert back["followup_sop_of_baseline"] == back["followup_sop"]
    # Toggling hides the overlay (O key), the button brings it back.
    assert checks["blue_after_toggle_off"] < 20
    assert checks["blue_after_toggle_on"] > 2000
    # The blinded reader gets no page and no overlay.
    assert checks["blinded_page_status"] in (403, 404)
    assert checks["blinded_overlay_status"] in (403, 404)
    assert SCREENSHOT.exists() and SCREENSHOT.stat().st_size > 10_000
