"""The clinician's longitudinal report in a real browser (Debian chromium driven by
playwright-core) against the app on a live server.

A clinician logs in, goes from the patient page to the report of a worsening patient, then of a
stable one, and downloads both PDFs. The pages must differ in their flags and chart marks; page 1
of each PDF is rendered to PNG (``pdftoppm -png -r 60``) and must show the charts' colours, and
the red worsening marker on the worsening patient's PDF only.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.harness import CHROMIUM, PASSWORD, missing, require, run_driver

SCRIPT = Path(__file__).with_name("clinician_report.mjs")
NODE_TIMEOUT_S = int(os.environ.get("ILD_E2E_TIMEOUT_S", "120"))
# Colours of the charts (reports.services.clinician_figures) as RGB.
WORSENING_RED = (0xDC, 0x26, 0x26)
FVC_BLUE = (0x1F, 0x77, 0xB4)
DLCO_GREEN = (0x2C, 0xA0, 0x2C)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def requirements():
    require(missing(tools=("pdftoppm",)))


def _page_one(pdf: Path) -> np.ndarray:
    """Page 1 of ``pdf`` rendered at 60 dpi, as an RGB array."""
    from PIL import Image

    prefix = pdf.with_suffix("")
    subprocess.run(
        [
            "pdftoppm",
            "-png",
            "-r",
            "60",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(pdf),
            str(prefix),
        ],
        check=True,
        capture_output=True,
    )
    with Image.open(prefix.with_suffix(".png")) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def _pixels_near(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    return int((np.abs(image - np.array(rgb)).max(axis=-1) <= tolerance).sum())


def test_a_clinician_reads_and_prints_the_longitudinal_report(requirements, live_server, capsys):
    from core.models import Membership, Project, User
    from tests.reports_tests.clinician_patients import stable_patient, worsening_patient

    project = Project.objects.create(slug="browser-report", name="Browser cohort")
    clinician = User.objects.create_user(username="dr-c", password=PASSWORD, role="clinician")
    Membership.objects.create(user=clinician, project=project)
    worsening, stable = worsening_patient(project), stable_patient(project)

    out = Path(tempfile.mkdtemp(prefix="ild-e2e-report-"))
    config = {
        "baseUrl": live_server.url,
        "chromium": CHROMIUM,
        "username": "dr-c",
        "password": PASSWORD,
        "worsening": worsening.patient_id,
        "stable": stable.patient_id,
        "worseningPdf": str(out / "worsening.pdf"),
        "stablePdf": str(out / "stable.pdf"),
        "screenshot": str(out / "report.png"),
    }
    result, log = run_driver(SCRIPT, config, NODE_TIMEOUT_S)
    with capsys.disabled():
        print("\n[browser] log:\n" + log[-2000:])
        print("[browser] checks:", json.dumps(result.get("checks", {}))[:3000])
    assert not result.get("error"), result["error"]
    assert not result["console"], result["console"]

    checks = result["checks"]
    worse, calm = checks["worsening"], checks["stable"]
    assert worse["title"] == "Longitudinal report: SSC-0042"
    assert "the lungs lost volume (mean log-Jacobian -0.080" in worse["summary"]
    assert "this meets the ATS/ERS criterion" in worse["summary"]
    assert worse["worseFlags"] == ["functional worsening (ATS/ERS)"]
    assert worse["redMarkers"] == 1 and worse["charts"] == 2 and worse["chartWidth"] > 300
    assert checks["stable_status"] == 200
    assert "this does not meet the ATS/ERS criterion" in calm["summary"]
    assert calm["worseFlags"] == [] and calm["redMarkers"] == 0
    assert "no functional worsening" in calm["stableFlags"]
    assert checks["print"]["header"] == "none" and checks["print"]["actions"] == "none"
    assert checks["worsening_pdf_name"].startswith("ild-report-SSC-0042-")
    assert checks["stable_pdf_name"].startswith("ild-report-SSC-0077-")

    worse_png = _page_one(Path(config["worseningPdf"]))
    calm_png = _page_one(Path(config["stablePdf"]))
    for image in (worse_png, calm_png):
        assert image.shape[0] > 600 and image.shape[1] > 400  # A4 at 60 dpi: 496 x 702
        assert (image.min(axis=-1) < 200).mean() > 0.02, "page 1 is nearly blank"
        assert _pixels_near(image, FVC_BLUE) > 40, "no FVC line"
        assert _pixels_near(image, DLCO_GREEN) > 40, "no DLCO line"
    red_worse, red_calm = (
        _pixels_near(worse_png, WORSENING_RED),
        _pixels_near(calm_png, WORSENING_RED),
    )
    with capsys.disabled():
        print(f"[browser] red marker pixels: worsening {red_worse}, stable {red_calm}")
    assert red_worse >= 8, "the red worsening marker is missing from the worsening PDF"
    assert red_calm == 0, "the stable patient's PDF shows a worsening marker"
