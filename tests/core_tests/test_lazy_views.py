"""Views imported on first use: a web worker loads the report stack (scipy, SimpleITK,
highdicom) only when a report URL is requested, and the views behave as if imported up front."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from django.urls import resolve
from rest_framework.authtoken.models import Token

from core.lazy_views import LazyView

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("scipy", "SimpleITK", "highdicom", "torch", "matplotlib")

PROBE = f"""
import json, sys
import webapp.wsgi
from django.urls import resolve
heavy = {HEAVY!r}
at_start = [m for m in heavy if m in sys.modules]
view = resolve("/api/v1/reports/studies/").func
before = "reports.apis" in sys.modules
exempt = view.csrf_exempt  # what the CSRF middleware asks first: the view is imported now
print(json.dumps({{"at_start": at_start, "before": before, "exempt": exempt,
                  "after": [m for m in heavy if m in sys.modules]}}))
"""


def test_a_web_worker_starts_without_the_report_stack():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings.base",
        "DJANGO_SECRET_KEY": "lazy-views-test-secret",
    }
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["at_start"] == []
    assert probe["before"] is False
    assert probe["exempt"] is True  # a DRF view: DRF checks CSRF itself for session logins
    assert "scipy" in probe["after"] and "highdicom" in probe["after"]


def test_a_lazy_view_answers_for_the_view_it_names():
    function_view = LazyView("reports.views.index")
    api_view = LazyView("reports.apis.StudyListApi")
    assert function_view.csrf_exempt is False
    assert api_view.csrf_exempt is True
    assert function_view.view is function_view.view  # imported once
    assert api_view.view.view_class.__name__ == "StudyListApi"
    assert isinstance(resolve("/reports/").func, LazyView)


@pytest.mark.django_db
def test_the_csrf_middleware_treats_lazy_views_as_their_own(coordinator):
    client = Client(enforce_csrf_checks=True)
    token = Token.objects.create(user=coordinator)
    # A DRF view with a token: no CSRF token needed (the middleware lets it through).
    response = client.post(
        "/api/v1/reports/studies/00000000-0000-0000-0000-000000000000/agreement/refresh/",
        HTTP_AUTHORIZATION=f"Token {token.key}",
    )
    assert response.status_code == 404  # reached the view: no such reader study
    # A session login posting to a DRF view without the CSRF token is refused by DRF.
    client.force_login(coordinator)
    response = client.post(
        "/api/v1/reports/studies/00000000-0000-0000-0000-000000000000/agreement/refresh/"
    )
    assert response.status_code == 403
    assert "CSRF" in response.content.decode()
