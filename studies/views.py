"""Server-rendered pages: the patient list and the patient page."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from jobs import selectors as job_selectors
from studies import selectors


@login_required
def home(request: HttpRequest) -> HttpResponse:
    patients = selectors.patients_for(request.user).select_related("project").order_by("patient_id")
    rows = []
    for patient in patients:
        studies = list(patient.studies.order_by("study_date"))
        rows.append({"patient": patient, "studies": studies, "pft_count": patient.pfts.count()})
    return render(request, "studies/home.html", {"rows": rows})


@login_required
def patient_detail(request: HttpRequest, patient_id: str) -> HttpResponse:
    patient = get_object_or_404(selectors.patients_for(request.user), patient_id=patient_id)
    studies = []
    for study in selectors.studies_for(request.user).filter(patient=patient).order_by("study_date"):
        studies.append(
            {
                "study": study,
                "series": list(selectors.series_for_study(study)),
                "pft": selectors.closest_pft(study),
            }
        )
    return render(
        request,
        "studies/patient.html",
        {
            "patient": patient,
            "studies": studies,
            "pfts": patient.pfts.order_by("date"),
            "quantification": job_selectors.patient_quantification(request.user, patient),
        },
    )


def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok", "database": connection.vendor})
