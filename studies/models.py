"""The study store: patients, studies, series and instances identified by DICOM UIDs, plus PFTs.

Instance files live once under ``settings.STORAGE_ROOT``; rows hold the attributes we search and
the geometry we need without opening files. Clinical foreign keys protect their children.
"""

from __future__ import annotations

from django.db import models

from core.models import BaseModel, Project

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class Patient(BaseModel):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="patients")
    # PatientID as stored: the pseudonym when the import was de-identified.
    patient_id = models.CharField(max_length=64, unique=True)
    patient_name = models.CharField(max_length=200, blank=True)
    sex = models.CharField(max_length=1, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    deidentified = models.BooleanField(default=True)
    # Coordinators tag patients into cohorts (training, test, correlation, external, ...).
    cohort = models.CharField(max_length=64, blank=True, db_index=True)
    # Clinical characteristics (Table 1), imported by ``studies.services.clinical``; None/"" =
    # not recorded.
    ssc_subtype = models.CharField(
        max_length=8, blank=True, choices=[("diffuse", "diffuse"), ("limited", "limited")]
    )
    mrss = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="modified Rodnan skin score, 0-51"
    )
    anticentromere = models.BooleanField(null=True, blank=True)
    anti_scl70 = models.BooleanField(null=True, blank=True)
    other_autoantibodies = models.BooleanField(null=True, blank=True)

    class Meta:
        ordering = ["patient_id"]

    def __str__(self) -> str:
        return self.patient_id


class PatientIdentity(BaseModel):
    """The key from original identity to pseudonym. Only site admins may read it."""

    patient = models.OneToOneField(Patient, on_delete=models.CASCADE, related_name="identity")
    original_patient_id = models.CharField(max_length=64, db_index=True)
    original_patient_name = models.CharField(max_length=200, blank=True)
    original_birth_date = models.DateField(null=True, blank=True)
    date_shift_days = models.IntegerField()


class UidMapping(BaseModel):
    """Original DICOM UID → the UID we store, for studies, series and instances."""

    class Level(models.TextChoices):
        STUDY = "study"
        SERIES = "series"
        INSTANCE = "instance"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="uid_mappings")
    level = models.CharField(max_length=8, choices=Level.choices)
    original_uid = models.CharField(max_length=64, unique=True)
    stored_uid = models.CharField(max_length=64, unique=True)


class Study(BaseModel):
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    study_instance_uid = models.CharField(max_length=64, unique=True)
    study_date = models.DateField(null=True, blank=True, db_index=True)
    study_time = models.CharField(max_length=16, blank=True)
    accession_number = models.CharField(max_length=64, blank=True, db_index=True)
    study_id = models.CharField(max_length=16, blank=True)
    description = models.CharField(max_length=200, blank=True)
    referring_physician_name = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["patient__patient_id", "study_date"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return f"{self.patient} {self.study_date or ''} {self.study_instance_uid}"


class Series(BaseModel):
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="series")
    series_instance_uid = models.CharField(max_length=64, unique=True)
    modality = models.CharField(max_length=16, db_index=True)
    series_number = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=200, blank=True)
    frame_of_reference_uid = models.CharField(max_length=64, blank=True)
    body_part_examined = models.CharField(max_length=64, blank=True)
    convolution_kernel = models.CharField(max_length=64, blank=True)
    # summarize_geometry(...).to_dict(): slices, spacing, orientation, gaps, problems. Ingest
    # only marks it stale (instances added since it was made); the first read after that
    # (selectors.series_for_study) makes it again, once for however many uploads.
    geometry = models.JSONField(default=dict, blank=True)
    geometry_stale = models.BooleanField(default=False)

    class Meta:
        ordering = ["study", "series_number"]
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return f"{self.modality} {self.description} {self.series_instance_uid}"


class Instance(BaseModel):
    # Indexed by ``instance_in_series_order``, which starts with it.
    series = models.ForeignKey(
        Series, on_delete=models.PROTECT, related_name="instances", db_index=False
    )
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    sop_class_uid = models.CharField(max_length=64)
    transfer_syntax_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    rows = models.PositiveIntegerField()
    columns = models.PositiveIntegerField()
    number_of_frames = models.PositiveIntegerField(default=1)
    image_position_patient = models.JSONField(null=True, blank=True)
    image_orientation_patient = models.JSONField(null=True, blank=True)
    pixel_spacing = models.JSONField(null=True, blank=True)
    # Path relative to STORAGE_ROOT; derived from UIDs, so a file is never stored twice.
    file = models.CharField(max_length=300, unique=True)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    # Where the Pixel Data value starts in the file and how long it is (None: undefined
    # length, i.e. encapsulated), so frames can be served without parsing the file.
    pixel_data_offset = models.BigIntegerField(null=True, blank=True)
    pixel_data_length = models.BigIntegerField(null=True, blank=True)
    # The instance as DICOM JSON (PS3.18 F.2), bulk data as BulkDataURI templates, written at
    # ingest: DICOMweb metadata is then a string join instead of parsing every file per request.
    # Empty for rows stored before it existed; DICOMweb fills it on first use.
    dicom_json = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["series", "instance_number"]
        indexes = [
            # A series' instances in order: its first instance (QIDO's attributes that only the
            # stored instances hold) is one index entry, not a sort of the whole series.
            models.Index(
                fields=["series", "instance_number", "id"], name="instance_in_series_order"
            ),
        ]

    def __str__(self) -> str:
        return self.sop_instance_uid


class PftResult(BaseModel):
    """Pulmonary function test on one date. Percentages are of predicted; DLCO/KCO Hb-corrected."""

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="pfts")
    date = models.DateField()
    fvc_pct_predicted = models.FloatField(null=True, blank=True)
    tlc_pct_predicted = models.FloatField(null=True, blank=True)
    dlco_pct_predicted = models.FloatField(null=True, blank=True)
    kco_pct_predicted = models.FloatField(null=True, blank=True)
    fvc_l = models.FloatField(null=True, blank=True)
    tlc_l = models.FloatField(null=True, blank=True)
    dlco_mmol_min_kpa = models.FloatField(null=True, blank=True)
    kco_mmol_min_kpa_l = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["patient", "date"]
        constraints = [
            models.UniqueConstraint(fields=["patient", "date"], name="one_pft_per_patient_per_day"),
            models.CheckConstraint(
                condition=models.Q(fvc_pct_predicted__isnull=False)
                | models.Q(tlc_pct_predicted__isnull=False)
                | models.Q(dlco_pct_predicted__isnull=False)
                | models.Q(kco_pct_predicted__isnull=False),
                name="pft_has_a_value",
            ),
        ]
