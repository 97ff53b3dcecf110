"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def real_data_root() -> Path:
    """Where the real CT folders live: $ILD_REAL_DATA, else ../shared/data/real beside the repo."""
    return Path(os.environ.get("ILD_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture
def real_data():
    """Return a function that gives a real-data folder, or skips the test when it is absent."""

    def get(name: str) -> Path:
        path = real_data_root() / name
        if not path.exists():
            pytest.skip(
                f"real data folder {path} not found (set ILD_REAL_DATA to ../shared/data/real)"
            )
        return path

    return get


@pytest.fixture
def project(db):
    from core.models import Project

    return Project.objects.create(slug="ssc", name="SSc cohort")


@pytest.fixture
def other_project(db):
    from core.models import Project

    return Project.objects.create(slug="other", name="Another cohort")


def _member(username: str, role: str, *projects):
    from core.models import Membership, User

    user = User.objects.create_user(username=username, password="pw", role=role)
    for project in projects:
        Membership.objects.create(user=user, project=project)
    return user


@pytest.fixture
def coordinator(project):
    return _member("coordinator", "coordinator", project)


@pytest.fixture
def reader_a(project):
    return _member("reader-a", "radiologist", project)


@pytest.fixture
def reader_b(project):
    return _member("reader-b", "radiologist", project)


@pytest.fixture
def clinician(project):
    return _member("clinician", "clinician", project)


@pytest.fixture
def outsider(other_project):
    return _member("outsider", "coordinator", other_project)


@pytest.fixture
def site_admin(db):
    return _member("admin", "admin")


@pytest.fixture
def api_client_for():
    from rest_framework.test import APIClient

    def make(user):
        client = APIClient()
        client.force_authenticate(user=user)
        return client

    return make


@pytest.fixture(autouse=True)
def isolated_storage(settings, tmp_path):
    """Each test stores DICOM files under its own folder."""
    settings.STORAGE_ROOT = tmp_path / "storage"
    return settings.STORAGE_ROOT


@pytest.fixture
def fsynced_paths(monkeypatch) -> list[str]:
    """The paths this process flushes to disk (``os.fsync``) during the test, in order."""
    paths: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return paths


@pytest.fixture(params=[0, 1], ids=["one-process", "helper-process"])
def helper_processes(request, settings, isolated_storage):
    """The test twice: ingest prepares files in the test's process, and on a helper process.

    Either way, no temporary file is left in the store afterwards: every file written beside
    its place (by an I/O thread or a helper) is renamed into place or removed."""
    settings.INGEST_HELPER_PROCESSES = request.param
    yield request.param
    assert [p for p in isolated_storage.rglob("*.part")] == []
