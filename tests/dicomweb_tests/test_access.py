"""Authentication (session, token, HTTP Basic) and per-project access on every endpoint."""

from __future__ import annotations

import base64

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token

from tests.dicomweb_tests.conftest import path_of

pytestmark = pytest.mark.django_db


def endpoints(series) -> list[str]:
    sop = series.instances.first().sop_instance_uid
    study = series.study.study_instance_uid
    return [
        f"/dicomweb/studies/{study}",
        f"/dicomweb/studies/{study}/metadata",
        f"/dicomweb/studies/{study}/series",
        f"/dicomweb/studies/{study}/instances",
        f"/dicomweb/studies/{study}/thumbnail",
        path_of(series),
        path_of(series, "metadata"),
        path_of(series, "instances"),
        path_of(series, "rendered"),
        path_of(series, "instances", sop),
        path_of(series, "instances", sop, "metadata"),
        path_of(series, "instances", sop, "frames", "1"),
        path_of(series, "instances", sop, "frames", "1", "rendered"),
        path_of(series, "instances", sop, "rendered"),
        path_of(series, "instances", sop, "thumbnail"),
        path_of(series, "instances", sop, "bulkdata", "7FE00010"),
    ]


def test_anonymous_requests_are_401(series):
    client = Client()
    for url in [*endpoints(series), "/dicomweb/studies", "/dicomweb/series"]:
        response = client.get(url)
        assert response.status_code == 401, url
        assert response["WWW-Authenticate"].startswith("Token")


def test_other_projects_instances_are_404_everywhere(api_client_for, outsider, series):
    client = api_client_for(outsider)
    for url in endpoints(series):
        assert client.get(url).status_code == 404, url
    assert client.get("/dicomweb/studies", HTTP_ACCEPT="application/dicom+json").json() == []
    assert client.get("/dicomweb/instances").json() == []


def test_members_reach_every_endpoint(api_client_for, reader_a, series):
    client = api_client_for(reader_a)
    for url in endpoints(series):
        response = client.get(url, HTTP_ACCEPT="*/*")
        assert response.status_code == 200, (url, response.content[:200])


def test_a_project_url_shows_only_that_project(api_client_for, site_admin, series, other_series):
    client = api_client_for(site_admin)
    everything = client.get("/dicomweb/studies").json()
    scoped = client.get("/dicomweb/projects/other/studies").json()
    assert len(everything) == 2
    assert [s["00100020"]["Value"][0] for s in scoped] == ["OTHER-9"]
    assert scoped[0]["00081190"]["Value"][0].startswith(
        "http://testserver/dicomweb/projects/other/"
    )
    assert (
        client.get(
            path_of(series, "metadata").replace("/dicomweb/", "/dicomweb/projects/other/")
        ).status_code
        == 404
    )


def test_a_project_url_of_a_project_one_is_not_in_is_404(api_client_for, reader_a, other_series):
    response = api_client_for(reader_a).get("/dicomweb/projects/other/studies")
    assert response.status_code == 404


def test_token_and_basic_authentication(reader_a, series):
    token = Token.objects.create(user=reader_a)
    by_token = Client().get("/dicomweb/studies", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert len(by_token.json()) == 1
    basic = base64.b64encode(b"reader-a:pw").decode()
    by_basic = Client().get("/dicomweb/studies", HTTP_AUTHORIZATION=f"Basic {basic}")
    assert len(by_basic.json()) == 1
    wrong = base64.b64encode(b"reader-a:nope").decode()
    assert Client().get("/dicomweb/studies", HTTP_AUTHORIZATION=f"Basic {wrong}").status_code == 401


def test_session_authentication(reader_a, series):
    client = Client()
    client.force_login(reader_a)
    assert len(client.get("/dicomweb/studies").json()) == 1
