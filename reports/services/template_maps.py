"""Figure 5 of the longitudinal paper from the app's own registration jobs.

Each registration job whose worsening classifier ran keeps its log-Jacobian map carried onto the
classifier's lung template (``Job.result["worsening"]["template_map"]``, written by
``jobs.registration.save_template_map``). For the pairs of a longitudinal report, the maps on the
most common template are averaged voxelwise per group — functional worsening vs stability
(ATS/ERS, from the PFTs) and the readers' morphologic call (improved / stable / worse) — and
projected sagittally inside the template lung (``inference.worsening.figures.figure5``). Pairs
without a map, or mapped onto another template, are counted as left out.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from jobs.models import Job
from reports.services.longitudinal import LongitudinalRow
from studies.services import storage

PANELS = {"functional": "figure5a_functional.png", "morphologic": "figure5b_morphologic.png"}


@dataclass
class TemplateFigure:
    png: dict[str, bytes] = field(default_factory=dict)  # "functional" / "morphologic"
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    template_digest: str = ""
    limit: float | None = None
    used: int = 0
    left_out: int = 0


def _load(relpath: str) -> tuple[str, npt.NDArray[np.float32], Any] | None:
    from inference.volume import Volume

    path = storage.absolute(relpath)
    if not path.is_file():
        return None
    with np.load(path) as data:
        sx, sy, sz = (float(v) for v in data["spacing_mm"])
        ox, oy, oz = (float(v) for v in data["origin_lps_mm"])
        lung = Volume(
            np.asarray(data["lung"], dtype=np.uint8),
            spacing_mm=(sx, sy, sz),
            origin_lps_mm=(ox, oy, oz),
            direction=np.asarray(data["direction"], dtype=np.float64),
        )
        return str(data["template_digest"]), np.asarray(data["log_jacobian"], np.float32), lung


def template_figure(rows: Sequence[LongitudinalRow]) -> TemplateFigure:
    """Both Figure 5 panels (PNG bytes) for ``rows``; empty ``png`` when no pair has a map."""
    from inference.worsening import figure5

    job_ids = [r.registration.job_id for r in rows if r.registration is not None]
    results = dict(Job.objects.filter(pk__in=job_ids).values_list("pk", "result"))
    loaded: list[tuple[LongitudinalRow, str, npt.NDArray[np.float32], Any]] = []
    figure = TemplateFigure()
    for row in rows:
        result = results.get(row.registration.job_id) if row.registration else None
        worsening = (result or {}).get("worsening")
        relpath = worsening.get("template_map") if isinstance(worsening, dict) else None
        found = _load(relpath) if isinstance(relpath, str) else None
        if found is None:
            figure.left_out += 1
            continue
        loaded.append((row, *found))
    if not loaded:
        return figure
    digest = Counter(item[1] for item in loaded).most_common(1)[0][0]
    chosen = [item for item in loaded if item[1] == digest]
    figure.left_out += len(loaded) - len(chosen)
    figure.used = len(chosen)
    figure.template_digest = digest
    with tempfile.TemporaryDirectory(prefix="ild-figure5-") as scratch:
        made = figure5(
            [m for _, _, m, _ in chosen],
            [row.change.worsening for row, *_ in chosen],
            [row.visual for row, *_ in chosen],
            chosen[0][3],
            scratch,
        )
        for panel, name in PANELS.items():
            png = Path(scratch) / name
            if png.is_file():
                figure.png[panel] = png.read_bytes()
    figure.groups = made["groups"]
    figure.limit = made["limit"]
    return figure
