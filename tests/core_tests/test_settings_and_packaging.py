"""Settings read the environment loudly; the deployment files stay valid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from webapp.settings.env import ImproperlyConfiguredEnv, env_bool, parse_database_url

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("0", False), ("Yes", True), ("", False)]
)
def test_env_bool_reads_the_usual_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("ILD_FLAG", raw)
    assert env_bool("ILD_FLAG", not expected) is expected


def test_env_bool_refuses_unknown_values(monkeypatch):
    monkeypatch.setenv("ILD_FLAG", "maybe")
    with pytest.raises(ImproperlyConfiguredEnv, match="ILD_FLAG"):
        env_bool("ILD_FLAG", False)


def test_database_urls():
    pg = parse_database_url("postgres://ild:s%40cret@db.example:6543/ild_review", base_dir=REPO)
    assert (pg["ENGINE"], pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "core.db.postgresql",
        "ild_review",
        "ild",
        "s@cret",
        "db.example",
        "6543",
    )
    # Prepared statements by default (server-side binding), switchable from the URL.
    assert pg["OPTIONS"] == {"server_side_binding": True, "prepare_threshold": 1}
    off = parse_database_url(
        "postgres://h/db?server_side_binding=false&prepare_threshold=none&sslmode=require",
        base_dir=REPO,
    )["OPTIONS"]
    assert off == {"server_side_binding": False, "prepare_threshold": None, "sslmode": "require"}
    absolute = parse_database_url("sqlite:////srv/ild/db.sqlite3", base_dir=REPO)
    assert absolute["NAME"] == "/srv/ild/db.sqlite3"
    relative = parse_database_url("sqlite:///var/db.sqlite3", base_dir=REPO)
    assert relative["NAME"] == str(REPO / "var" / "db.sqlite3")
    with pytest.raises(ImproperlyConfiguredEnv, match="mysql"):
        parse_database_url("mysql://x/y", base_dir=REPO)


def test_env_example_documents_every_variable_the_settings_read():
    import re

    read = set()
    for path in (REPO / "webapp" / "settings").glob("*.py"):
        read |= set(re.findall(r'env_\w+\(\s*"([A-Z_]+)"', path.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z_]+)=", (REPO / ".env.example").read_text(), re.M))
    assert read - documented == set()


@pytest.mark.external
def test_compose_file_validates():
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    result = subprocess.run(
        [compose, "-f", str(REPO / "docker" / "compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_compose_defines_the_web_and_worker_services():
    text = (REPO / "docker" / "compose.yml").read_text()
    for service in ("postgres:", "redis:", "web:", "cpu-worker:", "gpu-worker:"):
        assert f"\n  {service}" in text
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    for target in ("AS web", "AS cpu-worker", "AS gpu-worker"):
        assert target in dockerfile
    assert "USER ild" in dockerfile  # images run as a non-root user
