"""The longitudinal viewer page (/reports/registrations/<job_id>/viewer/): who gets it, for which
jobs, and what it embeds for the viewer (job, series, slice correspondence, built asset)."""

from __future__ import annotations

import json
import re
import uuid

import numpy as np
import pytest
from django.urls import reverse

from core import assets as core_assets
from tests.annotation_tests.conftest import ingest_series

pytestmark = pytest.mark.django_db


@pytest.fixture
def pair(project):
    """Baseline (2020) and follow-up (2023) CT series of one patient, 5 slices each."""
    baseline = ingest_series(project, patient_id="HOSP-LONG", study_date="20200115")
    followup = ingest_series(project, patient_id="HOSP-LONG", study_date="20230120")
    return baseline, followup


def _sops(series):
    return list(
        series.instances.order_by("instance_number").values_list("sop_instance_uid", flat=True)
    )


def make_registration(baseline, followup, *, status="succeeded", write_npz=True):
    """A registration job as ``jobs.registration`` leaves it: result plus the viewer npz."""
    from django.conf import settings

    from jobs.models import Job

    relpath = (
        f"jobs/registration/{baseline.series_instance_uid}/{followup.series_instance_uid}/torch/"
        "log_jacobian_baseline.npz"
    )
    baseline_sops = _sops(baseline)
    followup_sops = _sops(followup)
    # Baseline slice k matches follow-up slice k + 1 (the last two both match the last one).
    followup_k = [min(k + 1, len(followup_sops) - 1) for k in range(len(baseline_sops))]
    if write_npz:
        path = settings.STORAGE_ROOT / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (len(baseline_sops), 16, 16)
        np.savez_compressed(
            path,
            log_jacobian=np.full(shape, -0.1, dtype=np.float16),
            lung=np.ones(shape, dtype=np.uint8),
            sop_instance_uids=np.asarray(baseline_sops),
            followup_slice_index=np.asarray(followup_k, dtype=np.int32),
            followup_sop_instance_uids=np.asarray([followup_sops[k] for k in followup_k]),
        )
    return Job.objects.create(
        kind=Job.Kind.REGISTRATION,
        status=status,
        series=followup,
        baseline_series=baseline,
        engine="torch",
        engine_version="ild-torch-svf 1.0.0",
        # Whatever the status, the result and the files are there (e.g. a rerun under way):
        # only the status keeps an unfinished job out of the viewer.
        result={
            "backend": "torch",
            "version": "ild-torch-svf 1.0.0 (torch 2.x)",
            "mean_log_jacobian": -0.1234,
            "log_jacobian": relpath,
            "followup_slice_for_baseline_slice": followup_k,
            "followup_sop_for_baseline_slice": [followup_sops[k] for k in followup_k],
        },
    )


@pytest.fixture
def registration(pair):
    return make_registration(*pair)


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    """A built frontend whose longitudinal entry imports a chunk with the shared stylesheet."""

    path = tmp_path / "manifest.json"
    path.write_text(
        json.dumps(
            {
                "src/longitudinal.ts": {
                    "file": "assets/longitudinal-abc123.js",
                    "isEntry": True,
                    "imports": ["_shared-x.js"],
                },
                "_shared-x.js": {"file": "assets/shared-x.js", "css": ["assets/shared-x.css"]},
                "src/main.ts": {"file": "assets/main-def.js", "isEntry": True},
            }
        )
    )
    monkeypatch.setattr(core_assets, "MANIFEST", path)
    return path


def url_of(job_id):
    return reverse("reports-longitudinal-viewer", args=[job_id])


def page_data(response):
    match = re.search(
        r'<script id="longitudinal-data" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert match, "the page embeds no viewer data"
    return json.loads(match.group(1))


def test_the_url_has_the_name_the_report_page_links_to(registration):
    assert url_of(registration.pk) == f"/reports/registrations/{registration.pk}/viewer/"


def test_a_clinician_of_the_project_gets_the_viewer(client, clinician, registration, manifest):
    client.force_login(clinician)

    response = client.get(url_of(registration.pk))

    assert response.status_code == 200
    html = response.content.decode()
    assert f'data-job-id="{registration.pk}"' in html
    assert '<script type="module" src="/static/assets/longitudinal-abc123.js">' in html
    # the stylesheet of the chunk the entry imports, not the reading viewer's entry
    assert '<link rel="stylesheet" href="/static/assets/shared-x.css">' in html
    assert "main-def.js" not in html


def test_the_page_shows_the_pair_and_the_jobs_numbers(client, clinician, registration, pair):
    client.force_login(clinician)

    html = client.get(url_of(registration.pk)).content.decode()

    baseline = pair[0]
    assert baseline.study.patient.patient_id in html
    assert "2020-01-15" in html and "2023-01-20" in html
    assert "ild-torch-svf 1.0.0 (torch 2.x)" in html
    assert "-0.123" in html  # mean log-Jacobian, 3 decimals
    assert "-11.6 % volume" in html  # exp(-0.1234) - 1
    # the colour bar and its value range (the API's default ±0.25)
    assert 'id="colour-bar" data-range="0.25"' in html
    assert "−0.25" in html and "+0.25" in html
    # read-only: no drawing tool, no save or submit endpoint on the page
    for word in ("Freehand", "Brush", "contours/", "submit"):
        assert word not in html


def test_the_page_embeds_the_slice_correspondence_by_sop(client, clinician, registration, pair):
    client.force_login(clinician)

    data = page_data(client.get(url_of(registration.pk)))

    baseline, followup = pair
    assert data["job_id"] == str(registration.pk)
    assert data["baseline"] == {
        "study_instance_uid": baseline.study.study_instance_uid,
        "series_instance_uid": baseline.series_instance_uid,
    }
    assert data["followup"]["series_instance_uid"] == followup.series_instance_uid
    # baseline side from the stored map, follow-up side from the job result
    assert data["baseline_sops"] == _sops(baseline)
    assert data["followup_slice_for_baseline_slice"] == [1, 2, 3, 4, 4]
    followup_sops = _sops(followup)
    assert data["followup_sop_for_baseline_slice"] == [followup_sops[k] for k in [1, 2, 3, 4, 4]]
    assert data["range"] == 0.25


def test_another_projects_user_gets_404(client, outsider, registration):
    client.force_login(outsider)

    assert client.get(url_of(registration.pk)).status_code == 404


def test_an_unknown_job_is_404(client, clinician, registration):
    client.force_login(clinician)

    assert client.get(url_of(uuid.uuid4())).status_code == 404


def test_a_segmentation_job_has_no_longitudinal_viewer(client, clinician, pair):
    from jobs.models import Job

    job = Job.objects.create(
        kind=Job.Kind.SEGMENTATION, status=Job.Status.SUCCEEDED, series=pair[1], engine="classical"
    )
    client.force_login(clinician)

    assert client.get(url_of(job.pk)).status_code == 404


@pytest.mark.parametrize("status", ["queued", "running", "failed"])
def test_an_unfinished_registration_is_404(client, clinician, pair, status):
    job = make_registration(*pair, status=status)
    client.force_login(clinician)

    assert client.get(url_of(job.pk)).status_code == 404


def test_a_registration_whose_output_is_gone_is_404(client, clinician, pair):
    job = make_registration(*pair, write_npz=False)
    client.force_login(clinician)

    assert client.get(url_of(job.pk)).status_code == 404


def test_a_reader_with_an_open_read_of_the_pair_gets_no_page(
    client, reader_a, make_study, pair, registration
):
    make_study(readers=[reader_a], series_list=[pair], longitudinal=True)
    client.force_login(reader_a)

    response = client.get(url_of(registration.pk))

    assert response.status_code == 403
    assert str(registration.pk) not in response.content.decode()


def test_the_page_needs_a_login(client, registration):
    response = client.get(url_of(registration.pk))

    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]
