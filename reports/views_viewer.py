"""The longitudinal viewer page (/reports/registrations/<job_id>/viewer/): baseline and follow-up
CT side by side, the registration's log-Jacobian over the baseline, scrolling linked through the
registration. Read-only; the viewer itself is the ``src/longitudinal.ts`` Vite entry.

Access is the job API's rule for model output (``jobs.apis._visible_output``): the job must be
on a patient of the user's projects (else 404) and its output not withheld from the user by an
open read of either series (else 403); only a succeeded registration has a viewer (else 404).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from core.assets import entry_assets
from jobs import selectors as job_selectors
from jobs.apis import DEFAULT_LOG_JACOBIAN_RANGE
from jobs.models import Job
from jobs.slices import npz_small
from studies.services import storage

ENTRY = "src/longitudinal.ts"


def visible_registration(request: HttpRequest, job_id: Any) -> Job:
    """A succeeded registration job whose output the user may receive (404 / 403 otherwise)."""
    job = get_object_or_404(job_selectors.jobs_for(request.user), pk=job_id)
    if job.kind != Job.Kind.REGISTRATION or job.baseline_series is None:
        raise Http404("not a registration job")
    if not job_selectors.model_output_visible(request.user, job):
        raise PermissionDenied("model output for this series is hidden while you have an open read")
    if job.status != Job.Status.SUCCEEDED:
        raise Http404(f"the registration has no output (status: {job.status})")
    return job


def slice_correspondence(job: Job) -> dict[str, Any]:
    """Per baseline volume slice ``k``: its image and the follow-up image the job matches it with.

    The job result lists the follow-up side per ``k``; the baseline side is the
    ``sop_instance_uids`` of the stored viewer map (``jobs.registration``).
    """
    relpath = job.result.get("log_jacobian")
    path = storage.absolute(relpath) if relpath else None
    if path is None or not path.is_file():
        raise Http404("the registration's output is no longer stored; run it again")
    baseline_sops = [str(uid) for uid in npz_small(path, "sop_instance_uids")]
    followup_k = [int(k) for k in job.result.get("followup_slice_for_baseline_slice") or []]
    followup_sops = [str(uid) for uid in job.result.get("followup_sop_for_baseline_slice") or []]
    if not (len(baseline_sops) == len(followup_k) == len(followup_sops)):
        raise Http404("the registration's slice correspondence is incomplete; run it again")
    return {
        "baseline_sops": baseline_sops,
        "followup_slice_for_baseline_slice": followup_k,
        "followup_sop_for_baseline_slice": followup_sops,
    }


def _series_ref(series: Any) -> dict[str, str]:
    return {
        "study_instance_uid": series.study.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
    }


@login_required
def longitudinal_viewer(request: HttpRequest, job_id: Any) -> HttpResponse:
    job = visible_registration(request, job_id)
    baseline, followup = job.baseline_series, job.series
    assert baseline is not None and followup is not None
    result = job.result
    before, after = baseline.study.study_date, followup.study.study_date
    data = {
        "job_id": str(job.pk),
        "baseline": _series_ref(baseline),
        "followup": _series_ref(followup),
        **slice_correspondence(job),
        "range": DEFAULT_LOG_JACOBIAN_RANGE,
    }
    mean = result.get("mean_log_jacobian")
    return render(
        request,
        "reports/longitudinal_viewer.html",
        {
            "job": job,
            "patient_id": followup.study.patient.patient_id,
            "baseline": baseline,
            "followup": followup,
            "interval_days": (after - before).days if before and after else None,
            "backend": result.get("backend") or job.engine,
            "version": result.get("version") or job.engine_version,
            "mean_log_jacobian": mean,
            "volume_change_pct": None if mean is None else 100.0 * float(np.expm1(mean)),
            "range": DEFAULT_LOG_JACOBIAN_RANGE,
            "viewer_data": data,
            "assets": entry_assets(ENTRY),
        },
    )
