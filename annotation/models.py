"""Reading studies, assignments, contour versions, visual assessments and reading times.

A coordinator sets up a :class:`ReadingStudy` (cases × readers, a slice protocol); each reader gets
:class:`Assignment` rows in a per-reader random order, some of them repeats for intra-observer
agreement. Contours are append-only :class:`ContourVersion` rows: points in patient LPS mm on one
referenced SOP instance, checked by a versioned JSON Schema, plus the rasterized mask used for Dice.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from core.models import BaseModel, Project
from studies.models import Series


class ReadingStudy(BaseModel):
    class Protocol(models.TextChoices):
        EQUALLY_SPACED = "equally_spaced", "N slices equally spaced from lung apex to right dome"
        ALL_SLICES = "all_slices", "All slices"

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="reading_studies")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    protocol = models.CharField(
        max_length=32, choices=Protocol.choices, default=Protocol.EQUALLY_SPACED
    )
    protocol_slice_count = models.PositiveSmallIntegerField(default=20)
    # Seeds the per-reader case order and the choice of repeated cases: a study set up twice
    # with the same seed gives the same worklists.
    randomize_seed = models.IntegerField(default=0)
    repeat_fraction = models.FloatField(default=0.0)
    allow_model_overlay_after_submit = models.BooleanField(default=False)
    longitudinal = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )

    class Meta:
        ordering = ["-created"]
        verbose_name_plural = "reading studies"
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="unique_reading_study_name"),
            models.CheckConstraint(
                condition=models.Q(protocol_slice_count__gte=2)
                & models.Q(protocol_slice_count__lte=500),
                name="protocol_slice_count_range",
            ),
            models.CheckConstraint(
                condition=models.Q(repeat_fraction__gte=0.0) & models.Q(repeat_fraction__lte=1.0),
                name="repeat_fraction_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ReadingCase(BaseModel):
    """One series to read (or, in a longitudinal study, a baseline + follow-up pair)."""

    class ProtocolStatus(models.TextChoices):
        PENDING = "pending"
        READY = "ready"
        FAILED = "failed"

    study = models.ForeignKey(ReadingStudy, on_delete=models.PROTECT, related_name="cases")
    # The series the reader contours: the follow-up in a longitudinal case.
    series = models.ForeignKey(Series, on_delete=models.PROTECT, related_name="reading_cases")
    baseline_series = models.ForeignKey(
        Series,
        on_delete=models.PROTECT,
        related_name="baseline_reading_cases",
        null=True,
        blank=True,
    )
    # What readers see instead of patient identifiers ("Case 7").
    label = models.CharField(max_length=64)
    protocol_status = models.CharField(
        max_length=16, choices=ProtocolStatus.choices, default=ProtocolStatus.PENDING
    )
    protocol_error = models.TextField(blank=True)
    # SOP Instance UIDs of the protocol slices, apex first, computed once at setup.
    slice_sop_instance_uids = models.JSONField(default=list, blank=True)
    baseline_slice_sop_instance_uids = models.JSONField(default=list, blank=True)
    # Apex / dome positions (LPS z mm) and the method that found them, per series.
    protocol_details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["study", "label"]
        constraints = [
            models.UniqueConstraint(fields=["study", "series"], name="unique_case_series"),
            models.UniqueConstraint(fields=["study", "label"], name="unique_case_label"),
        ]

    def __str__(self) -> str:
        return f"{self.study} · {self.label}"


class Assignment(BaseModel):
    class Status(models.TextChoices):
        ASSIGNED = "assigned"
        IN_PROGRESS = "in_progress"
        SUBMITTED = "submitted"

    study = models.ForeignKey(ReadingStudy, on_delete=models.PROTECT, related_name="assignments")
    case = models.ForeignKey(ReadingCase, on_delete=models.PROTECT, related_name="assignments")
    reader = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="assignments"
    )
    order = models.PositiveIntegerField()
    is_repeat = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ASSIGNED)
    started_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "reader", "order"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "reader", "order"], name="unique_assignment_order"
            ),
            models.UniqueConstraint(
                fields=["case", "reader", "is_repeat"], name="unique_assignment_read"
            ),
            models.CheckConstraint(
                condition=models.Q(status="submitted", submitted_at__isnull=False)
                | ~models.Q(status="submitted"),
                name="submitted_has_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reader} #{self.order} {self.case}"

    @property
    def is_locked(self) -> bool:
        return self.status == self.Status.SUBMITTED


class AssignmentReopen(BaseModel):
    """A coordinator unlocked a submitted read; the reason is kept for the audit trail."""

    assignment = models.ForeignKey(Assignment, on_delete=models.PROTECT, related_name="reopens")
    reopened_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    reason = models.TextField()
    previous_submitted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(reason=""), name="reopen_has_reason"),
        ]


class Structure(models.TextChoices):
    ILD = "ild", "ILD"
    LUNG = "lung", "Lung"


class ContourVersion(BaseModel):
    """One immutable state of one structure on one slice of one read.

    ``geometry`` follows ``annotation/schemas/contour-geometry-v<schema_version>.json``: closed
    rings of ``[x, y, z]`` patient LPS mm, filled with the even-odd rule. An empty ``polygons``
    list is a deletion. The mask is that fill on the referenced slice's pixel grid, bit-packed
    (row-major, ``numpy.packbits``) then zlib-compressed.
    """

    assignment = models.ForeignKey(Assignment, on_delete=models.PROTECT, related_name="contours")
    structure = models.CharField(max_length=8, choices=Structure.choices)
    referenced_sop_instance_uid = models.CharField(max_length=64)
    frame_of_reference_uid = models.CharField(max_length=64, blank=True)
    version = models.PositiveIntegerField()
    parent = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="children"
    )
    schema_version = models.PositiveSmallIntegerField()
    geometry = models.JSONField()
    mask = models.BinaryField()
    mask_rows = models.PositiveIntegerField()
    mask_columns = models.PositiveIntegerField()
    pixel_count = models.PositiveIntegerField()
    area_mm2 = models.FloatField()
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    # The client's id for the edit: a save retried after a lost response returns the stored
    # version instead of a conflict with itself.
    client_edit_id = models.UUIDField(null=True, blank=True)

    class Meta:
        ordering = ["assignment", "structure", "referenced_sop_instance_uid", "version"]
        indexes = [
            models.Index(
                fields=["assignment", "structure", "referenced_sop_instance_uid", "-version"],
                name="contour_latest_idx",
            )
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["assignment", "structure", "referenced_sop_instance_uid", "version"],
                name="unique_contour_version",
            ),
            models.UniqueConstraint(
                fields=["assignment", "client_edit_id"], name="unique_contour_client_edit"
            ),
            models.CheckConstraint(condition=models.Q(version__gte=1), name="version_from_1"),
        ]

    def __str__(self) -> str:
        return f"{self.structure} v{self.version} {self.referenced_sop_instance_uid}"


class VisualAssessment(BaseModel):
    """A longitudinal read's call: baseline → follow-up improved, stable or worse."""

    class Call(models.TextChoices):
        IMPROVED = "improved"
        STABLE = "stable"
        WORSE = "worse"

    assignment = models.OneToOneField(
        Assignment, on_delete=models.PROTECT, related_name="assessment"
    )
    call = models.CharField(max_length=16, choices=Call.choices)
    comment = models.TextField(blank=True)


class ReadingTimeEvent(BaseModel):
    """Time spent: on one slice (``sop_instance_uid`` set) or on the case page as a whole."""

    class Kind(models.TextChoices):
        SLICE = "slice"
        CASE = "case"

    assignment = models.ForeignKey(
        Assignment, on_delete=models.PROTECT, related_name="reading_times"
    )
    kind = models.CharField(max_length=8, choices=Kind.choices)
    sop_instance_uid = models.CharField(max_length=64, blank=True)
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()

    class Meta:
        ordering = ["assignment", "started_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind="case") | ~models.Q(sop_instance_uid=""),
                name="slice_time_has_sop",
            ),
        ]
