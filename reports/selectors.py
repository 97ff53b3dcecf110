"""Who may see reports, and the identifiers that may leave the app.

Reports are for coordinators (and site admins) of a project: every number in them is built from
every reader's contours, which readers must never receive (see ``annotation.selectors``). Readers
and clinicians get no dashboard, no table, no export; a reader may download the DICOM SEG of
their own read, through ``contours_visible_to``.

Exports carry only pseudonymous patient identifiers (:func:`export_patient_id`) and readers'
usernames: never names, birth dates, study dates or accession numbers.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import QuerySet

from annotation.models import ReadingStudy
from annotation.selectors import is_coordinator, managed_studies_for
from core.access import projects_for
from core.exceptions import ApplicationError
from studies.models import Patient

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import User

    AnyUser = User | AnonymousUser

# Cohort tags in the papers' column order; any other tag follows, alphabetically.
COHORT_ORDER = ("training", "validation", "test", "correlation", "external")


def can_see_reports(user: AnyUser) -> bool:
    return is_coordinator(user)


def ensure_report_access(user: AnyUser) -> None:
    if not can_see_reports(user):
        raise ApplicationError("reports are for study coordinators", status_code=403)


def report_studies_for(user: AnyUser) -> QuerySet[ReadingStudy]:
    return managed_studies_for(user).select_related("project")


def report_patients_for(user: AnyUser) -> QuerySet[Patient]:
    if not can_see_reports(user):
        return Patient.objects.none()
    return Patient.objects.filter(project__in=projects_for(user))


def cohort_sort_key(cohort: str) -> tuple[int, str]:
    return (COHORT_ORDER.index(cohort) if cohort in COHORT_ORDER else len(COHORT_ORDER), cohort)


def cohorts_of(patients: QuerySet[Patient]) -> list[str]:
    values = set(patients.exclude(cohort="").values_list("cohort", flat=True).distinct())
    return sorted(values, key=cohort_sort_key)


def export_patient_id(patient: Patient) -> str:
    """The identifier a patient has outside the app.

    De-identified patients keep their stored pseudonym (``Patient.patient_id``). A patient
    imported without de-identification still has the hospital's PatientID in that field, so it
    gets a stable keyed pseudonym instead (HMAC-SHA256 of the row id with the site's
    de-identification secret): the same patient has the same export id in every export.
    """
    if patient.deidentified:
        return patient.patient_id
    key = str(settings.DEIDENTIFICATION_SECRET).encode()
    mac = hmac.new(key, f"export:{patient.pk}".encode(), hashlib.sha256).hexdigest()
    return f"X-{mac[:12].upper()}"
