"""Admin pages. The identity key (original → pseudonym) is visible to site admins only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from core.access import is_site_admin
from studies.models import Instance, Patient, PatientIdentity, PftResult, Series, Study, UidMapping


class SiteAdminOnly(admin.ModelAdmin):
    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_site_admin(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_site_admin(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_site_admin(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(PatientIdentity)
class PatientIdentityAdmin(SiteAdminOnly):
    list_display = ("patient", "original_patient_id", "original_patient_name", "date_shift_days")
    search_fields = ("original_patient_id", "patient__patient_id")


@admin.register(UidMapping)
class UidMappingAdmin(SiteAdminOnly):
    list_display = ("level", "original_uid", "stored_uid", "patient")
    search_fields = ("original_uid", "stored_uid")


@admin.register(Patient)
class PatientAdmin(SiteAdminOnly):
    list_display = ("patient_id", "project", "cohort", "deidentified")
    list_filter = ("project", "cohort")
    search_fields = ("patient_id",)


@admin.register(Study)
class StudyAdmin(SiteAdminOnly):
    list_display = ("study_instance_uid", "patient", "study_date", "description")
    search_fields = ("study_instance_uid", "patient__patient_id", "accession_number")


@admin.register(Series)
class SeriesAdmin(SiteAdminOnly):
    list_display = ("series_instance_uid", "study", "modality", "description")


@admin.register(Instance)
class InstanceAdmin(SiteAdminOnly):
    list_display = ("sop_instance_uid", "series", "instance_number")


@admin.register(PftResult)
class PftResultAdmin(SiteAdminOnly):
    list_display = ("patient", "date", "fvc_pct_predicted", "dlco_pct_predicted")
