"""Who gets reports: coordinators of the project only. Readers never receive another reader's
contours through any reports endpoint (tables, slices, images, SEG)."""

from __future__ import annotations

import pytest

from tests.reports_tests.conftest import assignment_of, draw, instances_of, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def drawn(make_study, reader_a, reader_b, series):
    study = make_study(readers=[reader_a, reader_b], series_list=[series])
    s = instances_of(study.cases.get())
    a, b = assignment_of(study, reader_a), assignment_of(study, reader_b)
    draw(a, s[0], x0=-10, size=8)
    draw(b, s[0], x0=-8, size=8)
    submit(b)
    return study


def urls(study):
    return [
        "/api/v1/reports/studies/",
        f"/api/v1/reports/studies/{study.pk}/agreement/?n_resamples=100",
        f"/api/v1/reports/studies/{study.pk}/agreement/slices/?include_open=1",
        "/api/v1/reports/characteristics/",
        "/api/v1/reports/correlation/",
        "/api/v1/reports/longitudinal/",
        f"/api/v1/reports/export/agreement.zip?reading_study={study.pk}&n_resamples=100",
        f"/api/v1/reports/export/all.xlsx?reading_study={study.pk}&n_resamples=100",
    ]


def pages(study):
    case = study.cases.get()
    return [
        "/reports/",
        f"/reports/studies/{study.pk}/agreement/?n_resamples=100",
        f"/reports/studies/{study.pk}/agreement/pair/?a=x&b=y",
        f"/reports/studies/{study.pk}/compare/?case={case.pk}",
        "/reports/cohorts/",
        "/reports/longitudinal/",
    ]


def test_readers_and_clinicians_get_no_report(drawn, reader_a, clinician, api_client_for, client):
    for user in (reader_a, clinician):
        api = api_client_for(user)
        for url in urls(drawn):
            response = api.get(url)
            assert response.status_code == 403, (user, url, response.status_code)
        client.force_login(user)
        for url in pages(drawn):
            assert client.get(url).status_code == 403, (user, url)


def test_a_coordinator_of_another_project_does_not_find_the_study(drawn, outsider, api_client_for):
    client = api_client_for(outsider)
    assert client.get(f"/api/v1/reports/studies/{drawn.pk}/agreement/").status_code == 404
    assert client.get("/api/v1/reports/studies/").json()["results"] == []
    export = client.get(f"/api/v1/reports/export/agreement.csv?reading_study={drawn.pk}")
    assert export.status_code == 404


def test_the_coordinator_gets_every_report(drawn, coordinator, api_client_for, client):
    api = api_client_for(coordinator)
    for url in urls(drawn):
        assert api.get(url).status_code == 200, url
    client.force_login(coordinator)
    for url in pages(drawn)[:3] + pages(drawn)[4:]:
        response = client.get(url)
        assert response.status_code == 200, url


def compare_url(study, rater_a, rater_b):
    case = study.cases.get()
    sop = case.slice_sop_instance_uids[0]
    return (
        f"/api/v1/reports/studies/{study.pk}/compare.png?case={case.pk}&sop={sop}"
        f"&structure=ild&a={rater_a}&b={rater_b}"
    )


def test_a_reader_cannot_see_another_readers_contour_in_the_overlay(
    drawn, reader_a, reader_b, api_client_for
):
    client = api_client_for(reader_a)
    own, other = f"r:{reader_a.pk}", f"r:{reader_b.pk}"
    assert client.get(compare_url(drawn, own, other)).status_code == 404
    assert client.get(compare_url(drawn, other, own)).status_code == 404
    assert client.get(compare_url(drawn, own, "staple")).status_code == 404


def test_the_overlay_is_a_png_for_the_coordinator(
    drawn, reader_a, reader_b, coordinator, api_client_for
):
    response = api_client_for(coordinator).get(
        compare_url(drawn, f"r:{reader_a.pk}", f"r:{reader_b.pk}")
    )
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    import io

    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    assert image.shape[0] >= 512
    amber = np.all(image == (255, 191, 0), axis=-1)
    cyan = np.all(image == (0, 200, 255), axis=-1)
    assert amber.any() and cyan.any()


def test_seg_of_another_readers_read_is_not_found(drawn, reader_a, reader_b, api_client_for):
    b = assignment_of(drawn, reader_b)
    a = assignment_of(drawn, reader_a)
    client = api_client_for(reader_a)
    assert client.get(f"/api/v1/reports/assignments/{b.pk}/seg/").status_code == 404
    own = client.get(f"/api/v1/reports/assignments/{a.pk}/seg/")
    assert own.status_code == 200 and own["Content-Type"] == "application/dicom"


def test_a_repeat_read_hides_the_first_read_in_the_overlay(
    make_study, reader_a, series, api_client_for
):
    study = make_study(readers=[reader_a], series_list=[series], repeat_fraction=1.0)
    s = instances_of(study.cases.get())
    first = assignment_of(study, reader_a)
    draw(first, s[0])
    submit(first)
    url = compare_url(study, f"r:{reader_a.pk}", f"r:{reader_a.pk}:repeat")
    # the repeat read is open: the reader must not see their first read of the case
    assert api_client_for(reader_a).get(url).status_code == 404
