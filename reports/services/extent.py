"""ILD extent of one CT series (% of lung), and where the number came from.

Two sources, named on every number:

* ``engine:<name>`` — a SUCCEEDED segmentation job of that engine on the series: ILD volume /
  lung volume × 100 over the whole CT (the papers' "normalized volume of diseased lung");
* ``readers`` — the readers' contours on the protocol slices: for each submitted first read,
  Σ ILD area / Σ lung area × 100 over the slices where that reader drew the lung; the series'
  extent is the mean over its reads. A read without any lung contour gives no extent. This is
  an estimate from sampled slices, not a volume.

``source="auto"`` takes the engine where its job exists and falls back to the readers otherwise;
``"engine"`` and ``"readers"`` use only one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from annotation.models import Assignment, ContourVersion, ReadingCase, Structure
from annotation.selectors import latest_contours
from inference.stats import goh_stage
from inference.stats.tables import GOH_THRESHOLD_PCT
from reports.services import engines as engine_io

SourceMode = Literal["auto", "engine", "readers"]
READERS = "readers"


@dataclass(frozen=True)
class Extent:
    extent_pct: float | None
    source: str  # "engine:<name>", "readers" or "" (none)
    detail: str

    @property
    def known(self) -> bool:
        return self.extent_pct is not None


NO_EXTENT = Extent(None, "", "no segmentation job and no reader contours")


def reader_extents(series_ids: Iterable[Any]) -> dict[Any, Extent]:
    """Extent from the readers' submitted first reads, per series id (absent: no lung drawn)."""
    wanted = set(series_ids)
    sop_series: dict[str, Any] = {}
    cases = ReadingCase.objects.filter(series_id__in=wanted) | ReadingCase.objects.filter(
        baseline_series_id__in=wanted
    )
    for main_id, baseline_id, uids, baseline_uids in cases.values_list(
        "series_id",
        "baseline_series_id",
        "slice_sop_instance_uids",
        "baseline_slice_sop_instance_uids",
    ):
        for uid in uids or []:
            sop_series[uid] = main_id
        for uid in baseline_uids or []:
            sop_series[uid] = baseline_id
    case_ids = list(cases.values_list("pk", flat=True))
    contours = latest_contours(
        ContourVersion.objects.filter(
            assignment__case_id__in=case_ids,
            assignment__is_repeat=False,
            assignment__status=Assignment.Status.SUBMITTED,
        )
    ).values_list("assignment_id", "structure", "referenced_sop_instance_uid", "area_mm2")
    # (series, assignment) -> slice -> {structure: area}
    areas: dict[tuple[Any, Any], dict[str, dict[str, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for assignment_id, structure, uid, area in contours:
        owner = sop_series.get(uid)
        if owner in wanted:
            areas[(owner, assignment_id)][uid][structure] = float(area)
    per_series: dict[Any, list[tuple[float, int]]] = defaultdict(list)
    for (series_id, _), slices in areas.items():
        annotated = {uid: s for uid, s in slices.items() if s.get(Structure.LUNG, 0.0) > 0}
        lung = sum(s[Structure.LUNG] for s in annotated.values())
        if lung <= 0:
            continue
        ild = sum(s.get(Structure.ILD, 0.0) for s in annotated.values())
        per_series[series_id].append((100.0 * ild / lung, len(annotated)))
    return {
        series_id: Extent(
            sum(v for v, _ in reads) / len(reads),
            READERS,
            f"mean of {len(reads)} read(s), {max(n for _, n in reads)} slice(s) with lung drawn",
        )
        for series_id, reads in per_series.items()
    }


def engine_extents(series_ids: Iterable[Any], engine: str) -> dict[Any, Extent]:
    jobs = engine_io.segmentation_jobs(list(series_ids))
    out: dict[Any, Extent] = {}
    for series_id, by_engine in jobs.items():
        job = by_engine.get(engine)
        if job is None:
            continue
        value = engine_io.job_extent_pct(job)
        if value is not None:
            version = f" {job.engine_version}" if job.engine_version else ""
            out[series_id] = Extent(value, f"engine:{engine}", f"job {job.pk}{version}")
    return out


def engines_available(series_ids: Iterable[Any]) -> list[str]:
    names = {
        name for jobs in engine_io.segmentation_jobs(list(series_ids)).values() for name in jobs
    }
    return sorted(names)


def series_extents(
    series_ids: Iterable[Any], *, source: str, mode: SourceMode = "auto"
) -> dict[Any, Extent]:
    """Extent per series for one source column: an engine name or ``"readers"``."""
    ids = list(series_ids)
    if source == READERS:
        found = reader_extents(ids)
        return {sid: found.get(sid, NO_EXTENT) for sid in ids}
    engine = engine_extents(ids, source)
    fallback = reader_extents(ids) if mode == "auto" else {}
    return {sid: engine.get(sid) or fallback.get(sid) or NO_EXTENT for sid in ids}


GOH_EXTENSIVE_ABOVE_PCT = GOH_THRESHOLD_PCT


def goh_of(extent_pct: float | None) -> str | None:
    """Goh stage of a measured extent (``inference.stats.goh_stage``), ``None`` when unknown;
    an engine's rounding just outside 0-100 % is clamped rather than refused."""
    return None if extent_pct is None else goh_stage(min(max(extent_pct, 0.0), 100.0))
