from __future__ import annotations

from django.contrib import admin

from annotation.models import (
    Assignment,
    AssignmentReopen,
    ContourVersion,
    ReadingCase,
    ReadingStudy,
    VisualAssessment,
)


@admin.register(ReadingStudy)
class ReadingStudyAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "protocol", "protocol_slice_count", "longitudinal"]


@admin.register(ReadingCase)
class ReadingCaseAdmin(admin.ModelAdmin):
    list_display = ["label", "study", "protocol_status"]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["study", "reader", "order", "case", "is_repeat", "status"]
    list_filter = ["status", "study"]


@admin.register(AssignmentReopen)
class AssignmentReopenAdmin(admin.ModelAdmin):
    list_display = ["assignment", "reopened_by", "created", "reason"]


# Contours are append-only: the admin may look, never edit.
@admin.register(ContourVersion)
class ContourVersionAdmin(admin.ModelAdmin):
    list_display = ["assignment", "structure", "referenced_sop_instance_uid", "version", "author"]
    exclude = ["mask"]

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


admin.site.register(VisualAssessment)
