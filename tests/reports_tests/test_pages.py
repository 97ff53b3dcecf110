"""The dashboards render the tables, the plots and the drill-down links for a coordinator."""

from __future__ import annotations

import re
from xml.etree import ElementTree

import pytest

from tests.reports_tests.conftest import assignment_of, draw, instances_of, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def page_study(make_study, reader_a, reader_b, series):
    from studies.models import Patient

    Patient.objects.filter(pk=series.study.patient_id).update(cohort="test")
    study = make_study(readers=[reader_a, reader_b], series_list=[series])
    s = instances_of(study.cases.get())
    for reader, shift in ((reader_a, 0), (reader_b, 2)):
        assignment = assignment_of(study, reader)
        draw(assignment, s[0], x0=-10 + shift, size=8)
        draw(assignment, s[1], size=6)
        submit(assignment)
    return study


def test_agreement_dashboard_links_each_number_to_its_slices(page_study, coordinator, client):
    client.force_login(coordinator)
    html = client.get(
        f"/reports/studies/{page_study.pk}/agreement/?n_resamples=200"
    ).content.decode()
    assert "Median Dice (IQR), ILD" in html and "<svg" in html
    for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S):
        ElementTree.fromstring(svg)  # well-formed: every label escaped
    assert "0.75 (" in html or "0.88 (" in html
    pair_links = re.findall(r'href="(/reports/studies/[^"]+/agreement/pair/\?[^"]+)"', html)
    assert pair_links
    pair = client.get(pair_links[0].replace("&amp;", "&")).content.decode()
    assert "both empty (excluded)" in pair
    compare_links = re.findall(r'href="(/reports/studies/[^"]+/compare/\?[^"]+)"', pair)
    assert compare_links
    compare = client.get(compare_links[0].replace("&amp;", "&"))
    assert compare.status_code == 200
    image = re.search(
        r'src="(/api/v1/reports/studies/[^"]+compare\.png\?[^"]+)"', compare.content.decode()
    )
    png = client.get(image.group(1).replace("&amp;", "&"))
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_cohort_and_follow_up_pages_render(page_study, coordinator, client):
    client.force_login(coordinator)
    html = client.get(f"/reports/cohorts/?reading_study={page_study.pk}").content.decode()
    assert "Table 1" in html and "Table 3" in html and "Figure 5" in html
    assert "readers" in html  # no engine: the extent comes from the readers' contours
    assert client.get("/reports/longitudinal/").status_code == 200
    assert client.get("/reports/").status_code == 200


def test_a_bad_filter_is_a_readable_error(page_study, coordinator, client):
    client.force_login(coordinator)
    response = client.get(f"/reports/studies/{page_study.pk}/agreement/?include_open=maybe")
    assert response.status_code == 400 and b"include_open" in response.content
