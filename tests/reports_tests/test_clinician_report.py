"""The clinician's longitudinal report: numbers, flags, Goh stage, summary, access, PDF; and
every write endpoint a clinician can reach refuses them."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
import shutil
import subprocess
import zlib
from xml.etree import ElementTree

import pytest

from tests.annotation_tests import conftest as annotation_conftest
from tests.reports_tests.clinician_patients import (
    add_ct,
    add_pft,
    add_registration,
    add_segmentation,
    make_patient,
    stable_patient,
    worsening_patient,
)

pytestmark = pytest.mark.django_db

NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def report_of(patient):
    from reports.services.clinician import clinician_report

    return clinician_report(patient)


def pdf_streams(data: bytes) -> list[bytes]:
    """Every content stream of the PDF, decoded (ASCII85 and Flate, as reportlab writes them)."""
    out = []
    for match in re.finditer(rb"<<(.*?)>>\s*stream\r?\n(.*?)\s*endstream", data, flags=re.S):
        header, stream = match.groups()
        if b"/ASCII85Decode" in header:
            stream = base64.a85decode(stream.strip(), adobe=True)
        if b"/FlateDecode" in header:
            stream = zlib.decompress(stream)
        out.append(stream)
    return out


def pdf_text(data: bytes) -> str:
    """The PDF's text: pdftotext (poppler-utils) when installed, else the text operators."""
    if shutil.which("pdftotext"):
        return subprocess.run(
            ["pdftotext", "-layout", "-", "-"], input=data, capture_output=True, check=True
        ).stdout.decode()
    chunks = []
    for stream in pdf_streams(data):
        chunks += re.findall(rb"\((.*?)(?<!\\)\)\s*Tj", stream, flags=re.S)
    return " ".join(c.decode("latin-1").replace("\\(", "(").replace("\\)", ")") for c in chunks)


# ------------------------------------------------------------------------------- the numbers


def test_it_reports_extent_registration_classifier_and_pft_per_ct_pair(project):
    report = report_of(worsening_patient(project))
    assert [ct.date for ct in report.cts] == [dt.date(2012, 3, 1), dt.date(2013, 4, 2)]
    assert [ct.extent_pct for ct in report.cts] == [12.3, 18.9]
    assert [ct.engine for ct in report.cts] == ["atlasnet", "atlasnet"]
    assert report.cts[0].ild_ml == pytest.approx(492.0)
    (pair,) = report.pairs
    assert pair.extent_change_points == pytest.approx(6.6)
    assert pair.mean_log_jacobian == -0.08
    assert pair.regional == {
        "superior": -0.01,
        "inferior": -0.12,
        "anterior": -0.03,
        "posterior": -0.1,
    }
    assert pair.strongest_region == "inferior"
    assert pair.folding_pct == pytest.approx(0.04)
    assert pair.worsening.functional.probability == 0.81
    assert pair.worsening.functional.predicted is True
    assert pair.worsening.morphologic.predicted is False
    assert pair.worsening.model_version == "jacs-clf 0.3.1"
    # the PFTs closest to each CT (2012-02-20, 2013-04-10): FVC 90 -> 79
    assert (pair.functional.before.date, pair.functional.after.date) == (
        dt.date(2012, 2, 20),
        dt.date(2013, 4, 10),
    )
    assert pair.functional.fvc_change == pytest.approx(-11.0)
    assert pair.functional.worsening is True
    # consecutive PFTs fell 4 and 7 points: no single step meets the criterion
    assert [s.worsening for s in report.pft_steps] == [False, False]
    assert [e.kind for e in report.timeline] == ["PFT", "CT", "PFT", "CT", "PFT"]
    assert "registration: torch torch-ffd 1.2" in report.versions
    assert "worsening classifier: jacs-clf 0.3.1" in report.versions


def test_it_prefers_the_latest_finished_segmentation_and_says_a_newer_run_failed(project):
    from django.utils import timezone

    patient = make_patient(project, "SSC-0100")
    series = add_ct(patient, dt.date(2020, 1, 1))
    add_segmentation(series, 30.0, finished=timezone.now() - dt.timedelta(days=2), version="1.0")
    add_segmentation(series, 14.5, finished=timezone.now() - dt.timedelta(days=1), version="2.1")
    add_segmentation(series, 0.0, status="failed", error="no lung found")
    (ct,) = report_of(patient).cts
    assert (ct.extent_pct, ct.engine_version) == (14.5, "2.1")
    assert ct.note == "the newest segmentation failed: no lung found"


@pytest.mark.parametrize(
    ("fvc_after", "dlco_after", "flagged"),
    [
        (70.0, 60.0, True),  # FVC -10 points
        (70.1, 60.0, False),  # FVC -9.9
        (80.0, 45.0, True),  # DLCO -15
        (80.0, 45.1, False),  # DLCO -14.9
    ],
)
def test_functional_worsening_flags_at_the_ats_ers_thresholds(
    project, clinician, client, fvc_after, dlco_after, flagged
):
    patient = make_patient(project, "SSC-0200")
    add_pft(patient, dt.date(2019, 1, 1), fvc=80.0, dlco=60.0)
    add_pft(patient, dt.date(2020, 1, 1), fvc=fvc_after, dlco=dlco_after)
    (step,) = report_of(patient).pft_steps
    assert step.worsening is flagged
    client.force_login(clinician)
    html = client.get(f"/reports/patients/{patient.patient_id}/").content.decode()
    assert ('class="flag-worse"' in html) is flagged
    assert ("functional worsening (ATS/ERS)</span>" in html) is flagged
    assert ('class="worsening"' in html) is flagged  # the red marker on the PFT chart


@pytest.mark.parametrize(
    ("extent", "stage"), [(0.0, "limited"), (20.0, "limited"), (20.01, "extensive")]
)
def test_goh_stage_is_extensive_only_above_20_percent(project, extent, stage):
    patient = make_patient(project, "SSC-0300")
    add_segmentation(add_ct(patient, dt.date(2021, 5, 5)), extent)
    report = report_of(patient)
    assert report.cts[0].goh_stage == stage
    assert f"Goh stage {stage}" in report.summary_text


def test_every_number_of_the_summary_comes_from_the_report(project):
    from reports.services.clinician import fmt, fmt_signed

    report = report_of(worsening_patient(project))
    (pair,) = report.pairs
    summary = report.summary_text
    assert 3 <= len(report.summary) <= 5
    for text in (
        "Between 2012-03-01 and 2013-04-02 the lungs lost volume "
        "(mean log-Jacobian -0.080, strongest in the lower lungs).",
        "ILD extent rose from 12.3 % to 18.9 % (+6.6 points;",
        "FVC fell 11.0 points and DLCO fell 5.0 points",
        "this meets the ATS/ERS criterion of functional worsening",
        "functional worsening 0.81 (threshold 0.50, predicted worsening)",
        "morphologic worsening 0.35 (threshold 0.50, not predicted)",
    ):
        assert text in summary
    allowed = {"2", "3"}  # the counts of CTs and PFTs
    for ct in report.cts:
        allowed |= {fmt(ct.extent_pct), *ct.date.isoformat().split("-")}
    for pft in (pair.functional.before, pair.functional.after):
        allowed |= set(pft.date.isoformat().split("-"))
    allowed |= {
        fmt(pair.mean_log_jacobian, 3),
        fmt_signed(pair.extent_change_points),
        fmt(-pair.functional.fvc_change),
        fmt(-pair.functional.dlco_change),
        fmt(pair.worsening.functional.probability, 2),
        fmt(pair.worsening.functional.threshold, 2),
        fmt(pair.worsening.morphologic.probability, 2),
        fmt(pair.worsening.morphologic.threshold, 2),
        "10",  # the criterion's thresholds, named in the sentence
        "15",
        "0.3.1",  # the model version
        "0042",  # the pseudonym SSC-0042
    }
    numbers = set(NUMBER.findall(summary.replace("SSC-", "SSC ").replace(" 0.3.1", " ")))
    unexplained = {n for n in numbers if n.lstrip("+-") not in allowed and n not in allowed}
    assert not unexplained, f"numbers not taken from the report: {unexplained}\n{summary}"


def test_a_stable_patient_reads_differently_from_a_worsening_one(project, clinician, client):
    worse, stable = worsening_patient(project), stable_patient(project)
    client.force_login(clinician)
    worse_html = client.get(f"/reports/patients/{worse.patient_id}/").content.decode()
    stable_html = client.get(f"/reports/patients/{stable.patient_id}/").content.decode()
    assert "this meets the ATS/ERS criterion" in worse_html
    assert "the lungs lost volume" in worse_html
    assert "this does not meet the ATS/ERS criterion" in stable_html
    assert "the lungs gained volume (mean log-Jacobian 0.010, strongest in the upper lungs)" in (
        stable_html
    )
    assert "ILD extent rose from 5.0 % to 5.2 % (+0.2 points;" in stable_html
    assert 'class="flag-worse"' in worse_html and 'class="flag-worse"' not in stable_html
    assert 'class="worsening"' in worse_html and 'class="worsening"' not in stable_html
    assert "worsening classifier output not available" in stable_html
    for html in (worse_html, stable_html):
        for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S):
            ElementTree.fromstring(svg)  # well-formed


def test_it_says_what_is_missing(project):
    patient = make_patient(project, "SSC-0400")
    baseline = add_ct(patient, dt.date(2018, 1, 10))
    followup = add_ct(patient, dt.date(2019, 1, 10))
    add_segmentation(baseline, 0.0, status="failed", error="series has a gap")
    add_segmentation(followup, 0.0, status="queued")
    report = report_of(patient)
    missing = "\n".join(report.missing)
    assert "No PFT recorded: functional worsening cannot be assessed." in missing
    assert "CT 2018-01-10: segmentation failed: series has a gap." in missing
    assert "CT 2019-01-10: segmentation queued." in missing
    assert "CTs 2018-01-10 to 2019-01-10: no registration yet." in missing
    assert "no registration result is available (no registration yet)" in report.summary_text
    assert "The change in ILD extent is not available" in report.summary_text
    assert "needs a PFT within 3 months of each CT" in report.summary_text

    add_registration(baseline, followup, 0.0, status="running")
    (pair,) = report_of(patient).pairs
    assert pair.registration_note == "registration running (0 %)"
    assert pair.worsening is None


def test_a_single_ct_and_no_ct(project):
    patient = make_patient(project, "SSC-0500")
    add_pft(patient, dt.date(2022, 2, 2), fvc=88.0)
    assert "No CT scan is stored for SSC-0500" in report_of(patient).summary_text
    add_segmentation(add_ct(patient, dt.date(2022, 2, 1)), 8.4)
    report = report_of(patient)
    assert "ILD extent on 2022-02-01 was 8.4 % of the lung (Goh stage limited" in (
        report.summary_text
    )
    assert "Only one CT: no change between CTs can be measured yet." in report.missing
    assert report.pairs == []


def test_extents_of_different_engines_are_not_subtracted(project):
    patient = make_patient(project, "SSC-0600")
    baseline = add_ct(patient, dt.date(2018, 1, 10))
    followup = add_ct(patient, dt.date(2019, 1, 10))
    add_segmentation(baseline, 10.0, engine="classical")
    add_segmentation(followup, 15.0, engine="atlasnet")
    (pair,) = report_of(patient).pairs
    assert pair.extent_change_points is None
    assert "different engines (classical and atlasnet)" in pair.extent_note


# ------------------------------------------------------------------------------------ access


@pytest.mark.parametrize("suffix", ["", "report.pdf"])
def test_access_members_with_clinical_roles_only(
    project, clinician, coordinator, site_admin, reader_a, outsider, client, suffix
):
    patient = worsening_patient(project)
    url = f"/reports/patients/{patient.patient_id}/{suffix}"
    assert client.get(url).status_code == 302  # to the login page
    for user, expected in (
        (clinician, 200),
        (coordinator, 200),
        (site_admin, 200),
        (reader_a, 403),  # blinded to model results
        (outsider, 404),  # a coordinator of another project
    ):
        client.force_login(user)
        response = client.get(url)
        assert response.status_code == expected, user.username
    client.force_login(clinician)
    assert client.get(f"/reports/patients/NOBODY/{suffix}").status_code == 404


def test_the_patient_page_links_the_report_for_clinicians_only(
    project, clinician, reader_a, client
):
    patient = worsening_patient(project)
    client.force_login(clinician)
    html = client.get(f"/patients/{patient.patient_id}/").content.decode()
    assert f'href="/reports/patients/{patient.patient_id}/"' in html
    client.force_login(reader_a)
    html = client.get(f"/patients/{patient.patient_id}/").content.decode()
    assert "/reports/patients/" not in html


def test_the_page_has_a_print_stylesheet_and_the_pdf_link(project, clinician, client):
    patient = worsening_patient(project)
    client.force_login(clinician)
    html = client.get(f"/reports/patients/{patient.patient_id}/").content.decode()
    assert "@media print" in html
    assert f'href="/reports/patients/{patient.patient_id}/report.pdf"' in html
    assert html.count("<svg") == 2


@pytest.fixture
def viewer_route(settings):
    """The longitudinal viewer's URL name, as that page will route it."""
    import sys
    import types

    from django.http import HttpResponse
    from django.urls import clear_url_caches, include, path

    module = types.ModuleType("clinician_report_test_urls")
    module.urlpatterns = [  # type: ignore[attr-defined]
        path(
            "reports/longitudinal/jobs/<uuid:job_id>/",
            lambda request, job_id: HttpResponse(),
            name="reports-longitudinal-viewer",
        ),
        path("", include("webapp.urls")),
    ]
    sys.modules[module.__name__] = module
    settings.ROOT_URLCONF = module.__name__
    clear_url_caches()
    yield
    clear_url_caches()
    del sys.modules[module.__name__]


def test_each_registered_pair_links_the_longitudinal_viewer(
    project, clinician, client, viewer_route
):
    from django.urls import reverse

    from jobs.models import Job

    patient = worsening_patient(project)
    job = Job.objects.get(kind="registration", series__study__patient=patient)
    client.force_login(clinician)
    html = client.get(f"/reports/patients/{patient.patient_id}/").content.decode()
    url = reverse("reports-longitudinal-viewer", args=[job.pk])  # the real page's, once routed
    assert f'<a class="no-print" href="{url}">Open in the longitudinal viewer</a>' in html


# --------------------------------------------------------------------------------------- PDF


def test_the_pdf_has_the_summary_and_only_the_pseudonym(project, clinician, client):
    from reports.selectors import export_patient_id

    patient = worsening_patient(project, "HOSP-778899", deidentified=False)
    pseudonym = export_patient_id(patient)
    client.force_login(clinician)
    response = client.get(f"/reports/patients/{patient.patient_id}/report.pdf")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert f'filename="ild-report-{pseudonym}-' in response["Content-Disposition"]
    data = response.content
    assert data.startswith(b"%PDF")
    text = " ".join(pdf_text(data).split())
    assert pseudonym in text
    assert "HOSP-778899" not in text and b"HOSP-778899" not in data
    for number in ("-0.080", "12.3", "18.9", "+6.6", "11.0", "0.81", "0.35"):
        assert number in text, number
    assert "lower lungs" in text
    assert "atlasnet 2.0" in text and "torch torch-ffd 1.2" in text and "jacs-clf 0.3.1" in text
    assert "generated" in text and str(dt.date.today().year) in text
    assert "Lung function (% predicted)" in text and "ILD extent per CT" in text  # the charts


def test_the_pdf_draws_the_charts_as_vector_graphics(project):
    from reports.services import report_pdf

    data = report_pdf.render_report_pdf(report_of(worsening_patient(project)))
    content = b"\n".join(pdf_streams(data))
    # the worsening marker's red #dc2626 as a fill colour, and the FVC line's blue #1f77b4
    assert re.search(rb"\.862745 \.14902 \.14902 rg", content), "no red worsening marker"
    assert re.search(rb"\.121569 \.466667 \.705882 RG", content), "no FVC line"
    assert len(re.findall(rb" l\b", content)) > 30  # lines drawn, not an embedded picture
    assert b"/Subtype /Image" not in data


# ------------------------------------------------ a clinician cannot change contours or results


study = annotation_conftest.study  # a reading study of reader A and B, from the annotation tests


@pytest.fixture
def reading_setup(study, reader_a):
    from tests.annotation_tests.conftest import assignment_of

    return assignment_of(study, reader_a)


def test_every_write_endpoint_a_clinician_reaches_refuses_them(
    project, clinician, reading_setup, api_client_for, client
):
    from django.urls import resolve

    from annotation.models import Assignment, ContourVersion, ReadingStudy, VisualAssessment
    from jobs.models import Job
    from studies.models import Instance, PftResult

    assignment = reading_setup
    series = assignment.case.series
    api = api_client_for(clinician)
    uid = series.series_instance_uid
    instance = series.instances.first()
    before = (
        ContourVersion.objects.count(),
        Job.objects.count(),
        PftResult.objects.count(),
        Instance.objects.count(),
        ReadingStudy.objects.count(),
        VisualAssessment.objects.count(),
    )
    base = f"/api/v1/reading/assignments/{assignment.pk}"
    geometry = {"schema_version": 1, "polygons": [[[0, 0, 0], [5, 0, 0], [5, 5, 0]]]}
    refused = {
        "contour save": api.post(
            f"{base}/contours/",
            {
                "structure": "ild",
                "referenced_sop_instance_uid": instance.sop_instance_uid,
                "base_version": 0,
                "geometry": geometry,
            },
            format="json",
        ),
        "submit": api.post(f"{base}/submit/", {}, format="json"),
        "reopen": api.post(f"{base}/reopen/", {"reason": "x"}, format="json"),
        "assessment": api.post(f"{base}/assessment/", {"call": "worse"}, format="json"),
        "timing": api.post(f"{base}/timing/", {"events": []}, format="json"),
        "segmentation request": api.post(
            "/api/v1/jobs/segmentation/", {"series_instance_uid": uid}, format="json"
        ),
        "registration request": api.post(
            "/api/v1/jobs/registration/",
            {"baseline_series_instance_uid": uid, "followup_series_instance_uid": uid},
            format="json",
        ),
        "PFT import": api.post(
            "/api/v1/pfts/",
            {
                "project": project.slug,
                "records": [
                    {"patient_id": "HOSP-001", "date": "2024-01-01", "fvc_pct_predicted": 80}
                ],
            },
            format="json",
        ),
        "upload": api.post(
            "/api/v1/uploads/", {"files": [io.BytesIO(b"DICM")]}, format="multipart"
        ),
        "STOW-RS": api.post(
            "/dicomweb/studies",
            b"--x--",
            content_type='multipart/related; type="application/dicom"; boundary=x',
        ),
        "reading study create": api.post(
            "/api/v1/reading/studies/", {"project": project.slug, "name": "x"}, format="json"
        ),
        "reading study cases": api.post(
            f"/api/v1/reading/studies/{assignment.study_id}/cases/",
            {"cases": [{"series_instance_uid": uid}]},
            format="json",
        ),
        "reading study readers": api.post(
            f"/api/v1/reading/studies/{assignment.study_id}/readers/",
            {"usernames": ["clinician"]},
            format="json",
        ),
    }
    client.force_login(clinician)
    refused["reading study page (new)"] = client.post("/reading/studies/new/", {"name": "x"})
    refused["reading study page"] = client.post(f"/reading/studies/{assignment.study_id}/", {})
    refused["reopen page"] = client.post(f"/reading/assignments/{assignment.pk}/reopen/", {})
    statuses = {name: response.status_code for name, response in refused.items()}
    # 403: the role may not; 404: the object is not theirs (a reader's assignment, a study
    # they do not manage). Each 404 is the view's own answer, not an unknown URL:
    assert statuses == {
        "contour save": 404,
        "submit": 404,
        "reopen": 404,
        "assessment": 404,
        "timing": 404,
        "segmentation request": 403,
        "registration request": 403,
        "PFT import": 403,
        "upload": 403,
        "STOW-RS": 403,
        "reading study create": 403,
        "reading study cases": 403,
        "reading study readers": 403,
        "reading study page (new)": 403,
        "reading study page": 404,
        "reopen page": 404,
    }
    for name, response in refused.items():
        resolve(response.wsgi_request.path)  # raises Resolver404 for a mistyped URL
        if response.status_code == 404:
            assert response.resolver_match is not None, name
    admin = client.get("/admin/studies/pftresult/add/")
    assert admin.status_code == 302 and "/admin/login/" in admin["Location"]
    after = (
        ContourVersion.objects.count(),
        Job.objects.count(),
        PftResult.objects.count(),
        Instance.objects.count(),
        ReadingStudy.objects.count(),
        VisualAssessment.objects.count(),
    )
    assert after == before
    assert Assignment.objects.get(pk=assignment.pk).status == "assigned"
