"""What the browser tests share: the Debian chromium + playwright-core prerequisites and the
Node driver each test runs (it prints one ``ILD_E2E_RESULT <json>`` line)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FRONTEND = REPO / "frontend"
CHROMIUM = os.environ.get("ILD_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "browser-pw-2026"
RESULT_PREFIX = "ILD_E2E_RESULT "


def missing(*, entry: str | None = None, tools: tuple[str, ...] = ()) -> str | None:
    """Why the browser test cannot run here, or None. ``entry``: a Vite entry the build must
    hold (None: no build needed); ``tools``: further programs needed on PATH."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    if not (FRONTEND / "node_modules" / "playwright-core").exists():
        return "frontend/node_modules missing (cd frontend && npm ci)"
    if entry is not None:
        manifest = FRONTEND / "dist" / ".vite" / "manifest.json"
        if not manifest.exists():
            return "frontend not built (make frontend)"
        if entry not in json.loads(manifest.read_text()):
            return f"frontend built without the {entry} entry (make frontend)"
    for tool in ("node", *tools):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


def require(reason: str | None) -> None:
    """Skip when a prerequisite is missing; in CI that is a failure, not a skip."""
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(reason)


def run_driver(script: Path, config: dict[str, Any], timeout_s: int) -> tuple[dict[str, Any], str]:
    """Run the Node driver with ``config`` (``ILD_E2E_CONFIG``); return its result and log."""
    try:
        completed = subprocess.run(
            ["node", str(script)],
            env={**os.environ, "ILD_E2E_CONFIG": json.dumps(config)},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        log = exc.stderr.decode() if isinstance(exc.stderr, bytes) else str(exc.stderr)
        pytest.fail(f"browser script timed out; its log:\n{log[-6000:]}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert lines, (
        f"no result from the browser script\nstdout:\n{completed.stdout[-4000:]}"
        f"\nstderr:\n{completed.stderr[-4000:]}"
    )
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX)), completed.stderr
