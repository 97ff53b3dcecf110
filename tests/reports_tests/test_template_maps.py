"""Figure 5 from the app's registration jobs: template-space maps averaged per group."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jobs.models import Job
from reports.services.longitudinal import longitudinal_rows
from reports.services.template_maps import template_figure
from studies.models import Patient
from studies.services import storage
from tests.reports_tests.test_longitudinal import follow_up  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db

SHAPE = (14, 12, 16)  # [k (S-I), j (A-P), i (L-R)]


def template_lung() -> np.ndarray:
    lung = np.zeros(SHAPE, np.uint8)
    lung[2:12, 2:10, 2:14] = 1
    return lung


def write_map(job: Job, value: float, *, digest: str = "sha256:template-a") -> None:
    """A map of ``value`` in the lung, with more shrinkage posteriorly when ``value`` < 0."""
    values = np.zeros(SHAPE, np.float32)
    lung = template_lung() > 0
    values[lung] = value
    if value < 0:
        values[:, 6:, :][lung[:, 6:, :]] = 2 * value
    relpath = f"jobs/test-template/{job.pk}.npz"
    path = storage.absolute(relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        log_jacobian=values,
        lung=template_lung(),
        spacing_mm=np.array([6.0, 6.0, 6.0]),
        origin_lps_mm=np.array([-45.0, -36.0, -42.0]),
        direction=np.eye(3),
        template_digest=np.asarray(digest),
    )
    job.result = {
        **job.result,
        "worsening": {**job.result.get("worsening", {}), "template_map": relpath},
    }
    job.save(update_fields=["result"])


def rows_with_maps(project, *, skip=(), other_template=()):
    rows = longitudinal_rows(Patient.objects.all())
    for row in rows:
        if row.patient in skip:
            continue
        job = Job.objects.get(pk=row.registration.job_id)
        value = -0.08 if row.change.worsening else 0.01
        digest = "sha256:template-b" if row.patient in other_template else "sha256:template-a"
        write_map(job, value, digest=digest)
    return longitudinal_rows(Patient.objects.all())


def test_group_maps_follow_the_functional_and_visual_groups(project, follow_up):  # noqa: F811
    rows = rows_with_maps(project)
    figure = template_figure(rows)

    assert set(figure.png) == {"functional", "morphologic"}
    for png in figure.png.values():
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.width > 100
    worse = [r for r in rows if r.change.worsening]
    stable = [r for r in rows if r.change.worsening is False]
    groups = figure.groups
    assert groups["Functional worsening"]["count"] == len(worse)
    assert groups["Functional stability"]["count"] == len(stable)
    assert (
        groups["Functional worsening"]["mean_in_lung"]
        < 0
        < groups["Functional stability"]["mean_in_lung"]
    )
    visual_worse = [r for r in rows if r.visual == "worse"]
    assert groups["Morphologic worsening"]["count"] == len(visual_worse)
    assert (figure.used, figure.left_out) == (len(rows), 0)
    assert figure.template_digest == "sha256:template-a"


def test_pairs_without_a_map_or_on_another_template_are_left_out(project, follow_up):  # noqa: F811
    every = longitudinal_rows(Patient.objects.all())
    skip = {every[0].patient}
    other = {every[1].patient, every[2].patient}
    figure = template_figure(rows_with_maps(project, skip=skip, other_template=other))
    assert figure.used == len(every) - 3
    assert figure.left_out == 3
    assert figure.template_digest == "sha256:template-a"


def test_no_map_means_no_figure(project, follow_up):  # noqa: F811
    figure = template_figure(longitudinal_rows(Patient.objects.all()))
    assert figure.png == {} and figure.used == 0 and figure.left_out == 20


def test_the_dashboard_shows_both_panels(project, follow_up, coordinator, client):  # noqa: F811
    rows_with_maps(project)
    client.force_login(coordinator)
    page = client.get("/reports/longitudinal/").content.decode()
    assert 'data-panel="functional"' in page and 'data-panel="morphologic"' in page
    assert "20 pairs; 0 left out" in page
