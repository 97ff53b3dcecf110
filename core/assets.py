"""The built front end's files for a Vite entry (``make frontend`` builds ``frontend/dist``)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.templatetags.static import static

MANIFEST = Path(settings.BASE_DIR) / "frontend" / "dist" / ".vite" / "manifest.json"


@cache
def _manifest(path: Path, mtime: float) -> dict[str, Any]:
    return json.loads(path.read_text())


def entry_assets(entry: str) -> dict[str, Any]:
    """The entry's script and the stylesheets of it and of the chunks it imports (Vite may move
    a shared stylesheet into a common chunk); ``{"script": None, "styles": []}`` when unbuilt."""
    manifest_path = MANIFEST
    if not manifest_path.exists():
        return {"script": None, "styles": []}
    manifest = _manifest(manifest_path, manifest_path.stat().st_mtime)
    styles: list[str] = []
    seen: set[str] = set()

    def collect(key: str) -> None:
        if key in seen or key not in manifest:
            return
        seen.add(key)
        chunk = manifest[key]
        styles.extend(css for css in chunk.get("css", []) if css not in styles)
        for imported in chunk.get("imports", []):
            collect(imported)

    collect(entry)
    first = manifest.get(entry, {})
    return {
        "script": static(first["file"]) if "file" in first else None,
        "styles": [static(css) for css in styles],
    }
