"""Server-rendered reading pages: worklist, viewer shell, study setup and progress."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from annotation import selectors
from annotation.models import Assignment, ReadingStudy
from annotation.services import reading, setup
from core.access import projects_for
from core.assets import entry_assets
from core.exceptions import ApplicationError
from core.models import Project, Role, User
from studies.models import Series

ENTRY = "src/main.ts"


@login_required
def reading_home(request: HttpRequest) -> HttpResponse:
    context: dict[str, Any] = {"is_coordinator": selectors.is_coordinator(request.user)}
    if context["is_coordinator"]:
        context["studies"] = [
            {"study": study, "progress": selectors.study_progress(study)}
            for study in selectors.managed_studies_for(request.user).select_related("project")
        ]
    items = selectors.worklist(request.user)
    context.update(
        worklist=items,
        submitted=sum(a.status == Assignment.Status.SUBMITTED for a in items),
        next_assignment=selectors.next_assignment(request.user),
    )
    return render(request, "annotation/home.html", context)


@login_required
def reading_next(request: HttpRequest) -> HttpResponse:
    upcoming = selectors.next_assignment(request.user)
    if upcoming is None:
        messages.info(request, "No case left to read.")
        return redirect("reading-home")
    return redirect("reading-viewer", assignment_id=upcoming.pk)


@login_required
def viewer(request: HttpRequest, assignment_id: str) -> HttpResponse:
    assignment = get_object_or_404(selectors.assignments_for(request.user), pk=assignment_id)
    return render(
        request,
        "annotation/viewer.html",
        {
            "assignment": assignment,
            "assets": entry_assets(ENTRY),
            "is_reader": assignment.reader_id == request.user.pk,
        },
    )


class StudyForm(forms.Form):
    project: forms.ModelChoiceField[Project] = forms.ModelChoiceField(
        queryset=Project.objects.none()
    )
    name = forms.CharField(max_length=200)
    protocol = forms.ChoiceField(choices=ReadingStudy.Protocol.choices)
    protocol_slice_count = forms.IntegerField(min_value=2, max_value=500, initial=20)
    randomize_seed = forms.IntegerField(initial=0)
    repeat_fraction = forms.FloatField(min_value=0.0, max_value=1.0, initial=0.0)
    allow_model_overlay_after_submit = forms.BooleanField(required=False)
    longitudinal = forms.BooleanField(
        required=False,
        help_text="pairs each selected patient's first and last CT series (baseline, follow-up)",
    )
    series: forms.ModelMultipleChoiceField[Series] = forms.ModelMultipleChoiceField(
        queryset=Series.objects.none(), widget=forms.CheckboxSelectMultiple
    )
    readers: forms.ModelMultipleChoiceField[User] = forms.ModelMultipleChoiceField(
        queryset=User.objects.none(), widget=forms.CheckboxSelectMultiple
    )

    def __init__(self, user: User, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        projects = projects_for(user)
        self.fields["project"].queryset = projects  # type: ignore[attr-defined]
        series = (
            Series.objects.filter(study__patient__project__in=projects, modality="CT")
            .select_related("study", "study__patient")
            .order_by("study__patient__patient_id", "study__study_date")
        )
        self.fields["series"].queryset = series  # type: ignore[attr-defined]
        self.fields["series"].label_from_instance = lambda s: (  # type: ignore[attr-defined]
            f"{s.study.patient.patient_id} · {s.study.study_date or '?'} · {s.description or s.series_instance_uid}"
        )
        self.fields["readers"].queryset = User.objects.filter(  # type: ignore[attr-defined]
            role=Role.RADIOLOGIST, memberships__project__in=projects
        ).distinct()


def _case_specs(study: ReadingStudy, chosen: list[Series]) -> list[setup.CaseSpec]:
    if not study.longitudinal:
        return [setup.CaseSpec(series=s) for s in chosen]
    by_patient: dict[Any, list[Series]] = {}
    for series in chosen:
        by_patient.setdefault(series.study.patient_id, []).append(series)
    specs = []
    for group in by_patient.values():
        group.sort(key=lambda s: (s.study.study_date is None, s.study.study_date))
        if len(group) < 2:
            raise ApplicationError(
                f"patient {group[0].study.patient.patient_id}: choose a baseline and a follow-up"
            )
        specs.append(setup.CaseSpec(series=group[-1], baseline_series=group[0]))
    return specs


@login_required
def study_new(request: HttpRequest) -> HttpResponse:
    if not selectors.is_coordinator(request.user):
        raise PermissionDenied
    form = StudyForm(request.user, request.POST or None)  # type: ignore[arg-type]
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            with transaction.atomic():
                study = setup.create_study(
                    project=data["project"],
                    name=data["name"],
                    created_by=request.user,  # type: ignore[arg-type]
                    protocol=data["protocol"],
                    protocol_slice_count=data["protocol_slice_count"],
                    randomize_seed=data["randomize_seed"],
                    repeat_fraction=data["repeat_fraction"],
                    allow_model_overlay_after_submit=data["allow_model_overlay_after_submit"],
                    longitudinal=data["longitudinal"],
                )
                setup.add_cases(study, _case_specs(study, list(data["series"])))
                setup.assign_readers(study, list(data["readers"]))
        except ApplicationError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, "Study created; protocol slices are being computed.")
            return redirect("reading-study", study_id=study.pk)
    return render(request, "annotation/study_new.html", {"form": form})


@login_required
def study_detail(request: HttpRequest, study_id: str) -> HttpResponse:
    study = get_object_or_404(selectors.managed_studies_for(request.user), pk=study_id)
    assignments = study.assignments.select_related("reader", "case").prefetch_related("reopens")
    return render(
        request,
        "annotation/study_detail.html",
        {
            "study": study,
            "progress": selectors.study_progress(study),
            "cases": study.cases.all(),
            "assignments": assignments.order_by("reader__username", "order"),
        },
    )


@login_required
@require_POST
def reopen(request: HttpRequest, assignment_id: str) -> HttpResponse:
    assignment = get_object_or_404(selectors.assignments_for(request.user), pk=assignment_id)
    try:
        reading.reopen(assignment, request.user, reason=request.POST.get("reason", ""))  # type: ignore[arg-type]
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Reopened {assignment.case.label} for {assignment.reader}.")
    return redirect("reading-study", study_id=assignment.study_id)
