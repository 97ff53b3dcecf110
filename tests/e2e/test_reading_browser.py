"""The reading workflow in a real browser (Debian chromium driven by playwright-core), against
the app served by a live server on the test database (PostgreSQL in CI).

Reader A logs in, opens the next assigned slice of a 400-slice 512×512 series, draws an ILD
contour with the mouse, reloads and finds it, submits; reader B cannot obtain it and gets a
resolvable conflict between two of their own tabs; the coordinator sees the progress. The test
prints the time to first image and the scroll rate, and writes docs/images/viewer-contour.png.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.harness import CHROMIUM, PASSWORD, REPO, missing, require, run_driver

SCRIPT = Path(__file__).with_name("reading_flow.mjs")
# The README's picture is refreshed with ILD_UPDATE_SCREENSHOTS=1; ordinary runs write elsewhere.
SCREENSHOT = (
    REPO / "docs" / "images" / "viewer-contour.png"
    if os.environ.get("ILD_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "ild-e2e" / "viewer-contour.png"
)
NODE_TIMEOUT_S = int(os.environ.get("ILD_E2E_TIMEOUT_S", "240"))

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def requirements():
    require(missing(entry="src/main.ts"))


def _setup_reading_study(monkeypatch) -> dict[str, object]:
    from pydicom.uid import generate_uid

    import inference.segmentation.classical as classical
    from annotation.services import setup
    from core.models import Membership, Project, User
    from studies.models import Series
    from studies.services.ingest import ingest_datasets_bytes
    from tests.e2e.phantom_series import dicom_files, make_browser_series

    project = Project.objects.create(slug="browser", name="Browser cohort")
    users = {}
    for username, role in (
        ("reader-a", "radiologist"),
        ("reader-b", "radiologist"),
        ("coordinator", "coordinator"),
    ):
        users[username] = User.objects.create_user(username=username, password=PASSWORD, role=role)
        Membership.objects.create(user=users[username], project=project)

    timings: dict[str, float] = {}
    start = time.perf_counter()
    browser_series = make_browser_series()
    timings["phantom_s"] = time.perf_counter() - start
    start = time.perf_counter()
    series_uid = generate_uid()
    report = ingest_datasets_bytes(
        dicom_files(
            browser_series.ct,
            patient_id="BROWSER-1",
            study_uid=generate_uid(),
            series_uid=series_uid,
        ),
        project=project,
        deidentify=False,
    )
    assert report.stored == 400, report.to_dict()["files"][:3]
    timings["ingest_s"] = time.perf_counter() - start

    # The phantom's exact lung labels stand in for the classical lung mask (tested on its own);
    # everything else in the protocol is the production path.
    monkeypatch.setattr(classical, "lung_mask", lambda ct: browser_series.lungs_lr)
    study = setup.create_study(
        project=project,
        name="Browser reading study",
        created_by=users["coordinator"],
        protocol="equally_spaced",
        protocol_slice_count=20,
    )
    start = time.perf_counter()
    series = Series.objects.get(series_instance_uid=series_uid)
    (case,) = setup.add_cases(study, [setup.CaseSpec(series=series)], compute_protocol=False)
    case = setup.compute_protocol(case)
    assert case.protocol_status == "ready", case.protocol_error
    assert len(case.slice_sop_instance_uids) == 20
    timings["protocol_s"] = time.perf_counter() - start
    setup.assign_readers(study, [users["reader-a"], users["reader-b"]])
    return {
        "study_id": str(study.pk),
        "assignment_a": str(study.assignments.get(reader=users["reader-a"]).pk),
        "assignment_b": str(study.assignments.get(reader=users["reader-b"]).pk),
        "protocol_first_sop": case.slice_sop_instance_uids[0],
        # Mid-lung: where the screenshot shows a contour in a large lung.
        "protocol_draw_sop": case.slice_sop_instance_uids[9],
        "timings": timings,
    }


def test_reading_workflow_in_chromium(requirements, live_server, monkeypatch, capsys):
    from annotation.models import Assignment, ContourVersion

    data = _setup_reading_study(monkeypatch)
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
        if result.get("error"):
            print("[browser] error:", result["error"], log[-3000:])
    assert not result.get("error"), result["error"]

    checks = result["checks"]
    assert checks["opened_protocol_slice"] == 0  # the first protocol slice (apex)
    assert checks["saved_contour_versions"] >= 1
    assert checks["found_after_reload"] >= 1
    assert checks["submitted_worklist_url"].endswith("/reading/")
    assert checks["reader_b_statuses"] == [404, 404, 404]
    assert checks["reader_b_export_contours"] == 0
    assert checks["reader_b_sees_contours"] == 0
    assert checks["conflict_dialog_shown"] is True
    assert checks["conflict_resolved_version"] == 2  # tab 1: v1; tab 2 merged: v2
    assert checks["brush_saved_lung_versions"] == 1
    assert checks["coordinator_progress_submitted"] == "1"
    assert SCREENSHOT.exists() and SCREENSHOT.stat().st_size > 20_000

    assignment_a = Assignment.objects.get(pk=str(data["assignment_a"]))
    assert assignment_a.status == Assignment.Status.SUBMITTED
    contour = ContourVersion.objects.filter(assignment=assignment_a, structure="ild").latest(
        "version"
    )
    assert contour.referenced_sop_instance_uid == data["protocol_draw_sop"]
    assert contour.pixel_count > 50  # the mouse-drawn circle, rasterized server-side
    assert assignment_a.reading_times.exists()
