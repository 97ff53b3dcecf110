"""Server-rendered dashboards (/reports/...): agreement (Table 2, box plots, heat map, drill-down
to the slice), cohorts (Tables 1 and 3, Figure 5) and follow-up statistics, for coordinators; and
the per-patient longitudinal report (HTML and PDF) for the patient's clinicians and coordinators
(readers are blinded to model results). Each page calls one service and renders it."""

from __future__ import annotations

import base64
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

import numpy as np
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils.safestring import mark_safe
from rest_framework.exceptions import ValidationError

from annotation.models import Assignment, Structure
from core.exceptions import ApplicationError
from reports import selectors
from reports.params import parse_query, uuid_or_404
from reports.services import (
    agreement,
    clinician,
    clinician_figures,
    dashboards,
    figures,
    template_maps,
)
from reports.services.characteristics import PFTS
from reports.services.extent import READERS, engines_available
from reports.services.report_pdf import render_report_pdf
from studies.models import Series

View = Callable[..., HttpResponse]


def _display(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-patient rows for a page: floats to 2 decimals (exports keep every digit)."""
    return [
        {k: round(v, 2) if isinstance(v, float) else v for k, v in item.items()} for item in items
    ]


def coordinator_page(view: View) -> View:
    """Login, coordinator role, and ApplicationError rendered as a readable page."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            selectors.ensure_report_access(request.user)
            return view(request, *args, **kwargs)
        except ApplicationError as error:
            return render(
                request, "reports/error.html", {"message": error.message}, status=error.status_code
            )
        except ValidationError as error:
            return render(request, "reports/error.html", {"message": str(error.detail)}, status=400)

    return wrapped


def _query_string(request: HttpRequest, **changes: Any) -> str:
    params = request.GET.copy()
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        elif isinstance(value, list | tuple):
            params.setlist(key, [str(v) for v in value])
        else:
            params[key] = str(value)
    return params.urlencode()


def _filter_context(request: HttpRequest) -> dict[str, Any]:
    patients = selectors.report_patients_for(request.user)
    series_ids = list(
        Series.objects.filter(study__patient__in=patients, modality="CT").values_list(
            "pk", flat=True
        )
    )
    return {
        "studies": selectors.report_studies_for(request.user),
        "all_cohorts": selectors.cohorts_of(patients),
        "all_engines": engines_available(series_ids),
        "selected_cohorts": request.GET.getlist("cohort"),
        "selected_engines": request.GET.getlist("engine"),
        "selected_sources": request.GET.getlist("source"),
        "query": request.GET.urlencode(),
    }


@coordinator_page
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "reports/index.html", _filter_context(request))


@coordinator_page
def agreement_page(request: HttpRequest, study_id: str) -> HttpResponse:
    study = dashboards.study_for(request.user, study_id)
    query = parse_query(request.user, request.GET, reading_study=study)
    report = dashboards.agreement_report(request.user, study, query)
    pair_url = reverse("reports-agreement-pair", args=[study.pk])

    def link(a: str, b: str) -> str:
        return f"{pair_url}?{_query_string(request, a=a, b=b)}"

    table = []
    for row, keys in zip(report.table, report.table_keys, strict=True):
        table.append(
            [
                {"text": text, "url": link(*key) if key else None}
                for text, key in zip(row, keys + [None] * (len(row) - len(keys)), strict=False)
            ]
        )
    boxes = {
        kind: mark_safe(
            figures.box_plot(
                [
                    (
                        f"{p.label_a} / {p.label_b}",
                        p.values.tolist() if p.values is not None else [],
                        link(p.rater_a, p.rater_b),
                    )
                    for p in report.of_kind(kind)
                ],
                title=f"Dice per slice, {title}",
            )
        )
        for kind, title in (
            ("inter", "reader vs reader"),
            ("engine", "reader vs engine"),
            ("intra", "intra-observer"),
            ("consensus", "vs STAPLE consensus"),
        )
        if report.of_kind(kind)
    }
    heat = None
    if len(report.raters) >= 2:
        labels = [agreement.label_of(r, report.labels) for r in report.raters]
        medians = np.full((len(report.raters), len(report.raters)), np.nan)
        links: dict[tuple[int, int], str] = {}
        for p in report.pairs:
            if p.rater_a in report.raters and p.rater_b in report.raters and p.summary.n:
                i, j = report.raters.index(p.rater_a), report.raters.index(p.rater_b)
                medians[i, j] = medians[j, i] = p.summary.median
                links[(i, j)] = links[(j, i)] = link(p.rater_a, p.rater_b)
        heat = mark_safe(
            figures.heat_map(labels, medians, title="Median Dice per pair", links=links)
        )
    export_query = _query_string(request, reading_study=study.pk)
    context = {
        **_filter_context(request),
        "study": study,
        "report": report,
        "table": table,
        "boxes": boxes,
        "heat": heat,
        "structures": Structure.choices,
        "structure": query.structure,
        "include_open": query.include_open,
        "export_query": export_query,
    }
    return render(request, "reports/agreement.html", context)


@coordinator_page
def agreement_pair(request: HttpRequest, study_id: str) -> HttpResponse:
    study = dashboards.study_for(request.user, study_id)
    query = parse_query(request.user, request.GET, reading_study=study)
    rater_a, rater_b = request.GET.get("a", ""), request.GET.get("b", "")
    agreement.sync_study(study)
    rows = agreement.slice_rows(study, query.agreement_filters(), rater_a, rater_b)
    compare_url = reverse("reports-compare", args=[study.pk])
    for row in rows:
        row["compare_url"] = (
            compare_url
            + "?"
            + urlencode(
                {
                    "case": row["case_id"],
                    "sop": row["sop_instance_uid"],
                    "structure": row["structure"],
                    "a": row["rater_a"],
                    "b": row["rater_b"],
                }
            )
        )
    rows.sort(key=lambda r: (r["dice"] is None, r["dice"] if r["dice"] is not None else 0.0))
    labels = agreement.rater_labels(study)
    context = {
        "study": study,
        "rows": rows,
        "label_a": agreement.label_of(rater_a, labels),
        "label_b": agreement.label_of(rater_b, labels),
        "structure": query.structure,
        "empty_rule": agreement.EMPTY_RULE_TEXT,
        "back": reverse("reports-agreement", args=[study.pk])
        + "?"
        + _query_string(request, a=None, b=None),
        "export_query": _query_string(
            request, reading_study=study.pk, table=f"dice_slices_{query.structure}"
        ),
    }
    return render(request, "reports/agreement_pair.html", context)


@coordinator_page
def compare(request: HttpRequest, study_id: str) -> HttpResponse:
    study = dashboards.study_for(request.user, study_id)
    case = study.cases.filter(pk=uuid_or_404(request.GET.get("case"), "case")).first()
    if case is None:
        raise ApplicationError("case not found", status_code=404)
    labels = agreement.rater_labels(study)
    raters = [request.GET.get("a", ""), request.GET.get("b", "")]
    viewers = []
    for rater in raters:
        parts = rater.split(":")
        if parts[0] == "r" and len(parts) in (2, 3) and parts[1].isdigit():
            assignment = Assignment.objects.filter(
                case=case, reader_id=int(parts[1]), is_repeat=len(parts) == 3
            ).first()
            if assignment is not None:
                viewers.append(
                    (
                        agreement.label_of(rater, labels),
                        reverse("reading-viewer", args=[assignment.pk]),
                    )
                )
    uids = list(case.slice_sop_instance_uids or []) + list(
        case.baseline_slice_sop_instance_uids or []
    )
    sop = request.GET.get("sop", "")
    position = uids.index(sop) if sop in uids else -1
    neighbours = {
        name: _query_string(request, sop=uids[position + step])
        for name, step in (("previous", -1), ("next", 1))
        if position >= 0 and 0 <= position + step < len(uids)
    }
    row = agreement.SliceAgreement.objects.filter(
        case=case,
        sop_instance_uid=sop,
        structure=request.GET.get("structure", "ild"),
        rater_a__in=raters,
        rater_b__in=raters,
    ).first()
    context = {
        "study": study,
        "case": case,
        "label_a": agreement.label_of(raters[0], labels),
        "label_b": agreement.label_of(raters[1], labels),
        "image_url": reverse("api-reports-compare", args=[study.pk])
        + "?"
        + request.GET.urlencode(),
        "viewers": viewers,
        "position": position + 1,
        "n_slices": len(uids),
        "neighbours": neighbours,
        "row": row,
        "structure": request.GET.get("structure", "ild"),
    }
    return render(request, "reports/compare.html", context)


@coordinator_page
def cohorts(request: HttpRequest) -> HttpResponse:
    query = parse_query(request.user, request.GET)
    report = dashboards.cohort_reports(request.user, query)
    source = report.sources[0] if report.sources else READERS
    scatters = [
        mark_safe(
            figures.scatter_plot(
                [
                    (
                        p["x"],
                        p["y"],
                        p["cohort"],
                        f"{p['patient']} ({p['cohort']}): extent {p['x']:.1f} %, "
                        f"{label} {p['y']:.0f} % [{p['source']}]",
                    )
                    for p in report.correlation.scatter(source, name)
                ],
                title=f"ILD extent vs {label}",
                x_label=f"ILD extent (% of lung), {source}",
                y_label=label,
            )
        )
        for name, label in PFTS
    ]
    patients_url = reverse("reports-cohorts") + "?" + request.GET.urlencode() + "#patients"
    context = {
        **_filter_context(request),
        "report": report,
        "table1": report.characteristics.cells(),
        "table3": report.correlation.cells(),
        "columns": report.correlation.columns,
        "scatters": scatters,
        "scatter_source": source,
        "patients": _display([r.to_dict(report.sources) for r in report.characteristics.patients]),
        "patients_url": patients_url,
        "mode": query.mode,
        "compare": request.GET.get("compare", ""),
    }
    return render(request, "reports/cohorts.html", context)


@coordinator_page
def longitudinal(request: HttpRequest) -> HttpResponse:
    query = parse_query(request.user, request.GET)
    report = dashboards.longitudinal_report(request.user, query)
    boxes = []
    for grouping, row in zip(("functional", "morphologic"), report.jacobian_by_group, strict=True):
        groups = []
        for group in row.summaries:
            values = [
                r.mean_log_jacobian
                for r in report.rows
                if r.mean_log_jacobian is not None
                and (r.functional_group if grouping == "functional" else r.visual) == group
            ]
            groups.append((group, values, None))
        boxes.append(
            mark_safe(
                figures.box_plot(
                    groups,
                    title=f"Mean log-Jacobian by {grouping} change",
                    y_label="mean log-Jacobian",
                    y_range=None,
                )
            )
        )
    template = template_maps.template_figure(report.rows)
    context = {
        **_filter_context(request),
        "report": report,
        "template_figure": template,
        "figure5": {
            panel: base64.b64encode(png).decode("ascii") for panel, png in template.png.items()
        },
        "functional": report.functional.cells(),
        "morphologic": report.morphologic.cells(),
        "jacobian": report.jacobian_cells(),
        "correlations": report.correlation_cells(),
        "classifiers": report.classifier_cells(),
        "patients": _display([r.to_dict() for r in report.rows]),
        "boxes": boxes,
        "train": request.GET.get("train", ",".join(query.train_cohorts)),
        "test": request.GET.get("test", ",".join(query.test_cohorts)),
        "mode": query.mode,
    }
    return render(request, "reports/longitudinal.html", context)


# ------------------------------------------------------------- the clinician's patient report


def _viewer_url(job_id: Any) -> str | None:
    """The longitudinal viewer of a registration job, once that page exists."""
    try:
        return reverse("reports-longitudinal-viewer", args=[job_id])
    except NoReverseMatch:
        return None


def clinician_page(view: View) -> View:
    """Login; a patient outside the user's projects is a 404, a refused role a readable 403."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, patient_id: str) -> HttpResponse:
        try:
            patient = clinician.patient_for_report(request.user, patient_id)
        except ApplicationError as error:
            return render(
                request, "reports/error.html", {"message": error.message}, status=error.status_code
            )
        return view(request, clinician.clinician_report(patient))

    return wrapped


@clinician_page
def patient_report(request: HttpRequest, report: clinician.ClinicianReport) -> HttpResponse:
    context = {
        "report": report,
        "pft_chart": mark_safe(clinician_figures.trend_svg(clinician_figures.pft_chart(report))),
        "extent_chart": mark_safe(
            clinician_figures.trend_svg(clinician_figures.extent_chart(report))
        ),
        "pft_rows": [{"pft": pft, "step": report.step_after(pft)} for pft in report.pfts],
        "pair_rows": [
            {
                "pair": pair,
                "regional": [pair.regional[name] for name in clinician.REGIONS],
                "extent_change": clinician.fmt_signed(pair.extent_change_points),
                "viewer_url": _viewer_url(pair.job_id) if pair.job_id else None,
            }
            for pair in report.pairs
        ],
    }
    return render(request, "reports/patient_report.html", context)


@clinician_page
def patient_report_pdf(request: HttpRequest, report: clinician.ClinicianReport) -> HttpResponse:
    response = HttpResponse(render_report_pdf(report), content_type="application/pdf")
    name = f"ild-report-{report.patient}-{report.generated:%Y%m%d}.pdf"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response
