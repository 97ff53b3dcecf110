"""Background refreshes of the per-slice Dice rows (call sites: see ``reports.services.agreement``).

Each task takes primary keys, recomputes only stale rows, and is safe to run twice (a second run
finds every row's inputs unchanged and computes nothing).
"""

from __future__ import annotations

from django.db.models import Q

from annotation.models import ContourVersion, ReadingCase, ReadingStudy
from core.tasks import task
from reports.services import agreement


@task(queue="cpu", soft_time_limit=600)
def refresh_agreement_for_contour(*, contour_pk: str) -> int:
    """After a contour save: its slice's pairs and its case's consensus."""
    contour = ContourVersion.objects.filter(pk=contour_pk).first()
    if contour is None:
        return 0
    return agreement.refresh_for_contour(contour).rows_computed


@task(queue="cpu", soft_time_limit=1800)
def refresh_agreement_for_series(*, series_pk: str) -> int:
    """After a segmentation job of the series succeeded: the engine rows of its cases."""
    computed = 0
    cases = ReadingCase.objects.filter(Q(series__pk=series_pk) | Q(baseline_series__pk=series_pk))
    for case in cases.select_related("study"):
        computed += agreement.refresh_case(case).rows_computed
    return computed


@task(queue="cpu", soft_time_limit=3600)
def sync_agreement(*, study_pk: str) -> int:
    """Bring a whole study up to date (e.g. nightly, or after bulk imports of contours)."""
    study = ReadingStudy.objects.filter(pk=study_pk).first()
    if study is None:
        return 0
    return agreement.sync_study(study).rows_computed
