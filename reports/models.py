"""Caches behind the reports: per-slice Dice rows, bootstrap intervals and model extents.

Nothing here is clinical data: every row can be rebuilt from contour versions and job results,
so the foreign keys to what they were computed from cascade (a cache never blocks a deletion).
"""

from __future__ import annotations

from django.db import models

from annotation.models import Assignment, ContourVersion, ReadingCase, ReadingStudy
from core.models import BaseModel


class SliceAgreement(BaseModel):
    """Dice of two raters on one slice of one case, for one structure.

    A rater is a reader's first read (``r:<user id>``), a reader's repeat read
    (``r:<user id>:repeat``), a segmentation engine (``e:<engine>``) or the STAPLE consensus of
    the readers' submitted first reads (``staple``). ``inputs_digest`` fingerprints exactly what
    the row was computed from (contour version ids, the engine job, for consensus rows every
    reader contour of the case): a row whose digest no longer matches is stale and is recomputed,
    the others are kept. ``dice`` is NULL when both masks are empty (the slice is excluded from
    the statistics and counted, see ``inference.stats.agreement``).
    """

    class Kind(models.TextChoices):
        INTER = "inter", "Reader vs reader"
        INTRA = "intra", "Reader vs own repeat read"
        ENGINE = "engine", "Reader vs engine"
        CONSENSUS = "consensus", "vs STAPLE consensus"

    study = models.ForeignKey(ReadingStudy, on_delete=models.CASCADE, related_name="+")
    case = models.ForeignKey(ReadingCase, on_delete=models.CASCADE, related_name="+")
    structure = models.CharField(max_length=8)
    sop_instance_uid = models.CharField(max_length=64)
    # Position of the slice in the case's protocol (apex first), for display and ordering.
    slice_index = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    rater_a = models.CharField(max_length=80)
    rater_b = models.CharField(max_length=80)
    assignment_a = models.ForeignKey(
        Assignment, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    assignment_b = models.ForeignKey(
        Assignment, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    # The contour versions used; NULL where the rater drew nothing on the slice (an empty mask).
    contour_a = models.ForeignKey(
        ContourVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    contour_b = models.ForeignKey(
        ContourVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    engine_job = models.ForeignKey(
        "jobs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    inputs_digest = models.CharField(max_length=40)
    size_a = models.PositiveIntegerField(default=0)
    size_b = models.PositiveIntegerField(default=0)
    overlap = models.PositiveIntegerField(default=0)
    dice = models.FloatField(null=True, blank=True)
    # Why a pair could not be compared (e.g. the engine's grid differs from the slice's).
    error = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["case", "structure", "rater_a", "rater_b", "slice_index"]
        constraints = [
            models.UniqueConstraint(
                fields=["case", "structure", "sop_instance_uid", "rater_a", "rater_b"],
                name="unique_slice_agreement",
            ),
            models.CheckConstraint(
                condition=models.Q(overlap__lte=models.F("size_a"))
                & models.Q(overlap__lte=models.F("size_b")),
                name="overlap_within_sizes",
            ),
        ]
        indexes = [
            models.Index(fields=["study", "structure", "kind"], name="slice_agreement_study_idx"),
            models.Index(fields=["assignment_a", "sop_instance_uid"], name="slice_agreement_a_idx"),
            models.Index(fields=["assignment_b", "sop_instance_uid"], name="slice_agreement_b_idx"),
        ]


class AgreementState(BaseModel):
    """When a study's rows were last brought up to date, and what the study looked like then
    (a cheap fingerprint: contour count and latest id, read statuses, engine jobs)."""

    study = models.OneToOneField(ReadingStudy, on_delete=models.CASCADE, related_name="+")
    fingerprint = models.JSONField(default=dict, blank=True)
    synced_at = models.DateTimeField()
    last_sync_s = models.FloatField(default=0.0)
    rows_computed = models.PositiveIntegerField(default=0)


class BootstrapCache(BaseModel):
    """A bootstrap interval keyed by the SHA-1 of its inputs (values, clusters, settings): a
    cell whose slices did not change is never resampled again."""

    digest = models.CharField(max_length=40, unique=True)
    result = models.JSONField()


class JobExtent(BaseModel):
    """ILD extent of a segmentation job's label map, when its result did not state it."""

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="+")
    extent_pct = models.FloatField()
    ild_voxels = models.BigIntegerField()
    lung_voxels = models.BigIntegerField()
