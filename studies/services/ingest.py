"""The one ingest service behind ``import_dicom``, the upload API and STOW-RS.

Each file is validated, optionally de-identified (:mod:`studies.services.prepare`, on every
core), written beside its final place, indexed in one transaction and only then renamed into
place: a file is either fully stored and indexed or not at all. The report says, per file,
stored / duplicate / rejected and why.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone

from core import sql as core_sql
from core.models import BaseModel, Project
from core.sql import Slots
from studies.archive import ArchiveError, RejectedInput, expand_inputs
from studies.deidentify import DeidentificationKey, Deidentifier
from studies.models import (
    Instance,
    Patient,
    PatientIdentity,
    Series,
    Study,
    UidMapping,
)
from studies.services import storage
from studies.services.prepare import (
    FileOutcome,
    Hierarchy,
    Item,
    Prepared,
    Preparer,
    Refusal,
    RejectedFile,
    SentUids,
    Status,
    parse_da,
)

logger = logging.getLogger(__name__)

# Files per transaction: one commit (and one disk flush) per batch instead of per file.
BATCH_SIZE = 64
# STOW-RS: a refusal reason for a file by the UIDs it was sent with, or "" to store it.
Admit = Callable[[SentUids], str]


@dataclass
class IngestReport:
    outcomes: list[FileOutcome] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    @property
    def stored(self) -> int:
        return self.count("stored")

    @property
    def duplicate(self) -> int:
        return self.count("duplicate")

    @property
    def rejected(self) -> int:
        return self.count("rejected")

    @property
    def series_uids(self) -> list[str]:
        return sorted({o.series_instance_uid for o in self.outcomes if o.status != "rejected"})

    def to_dict(self) -> dict[str, Any]:
        return {
            "stored": self.stored,
            "duplicate": self.duplicate,
            "rejected": self.rejected,
            "series": self.series_uids,
            "files": [o.to_dict() for o in self.outcomes],
        }


def make_deidentifier() -> Deidentifier:
    return Deidentifier(str(settings.DEIDENTIFICATION_SECRET).encode())


def ingest_paths(
    paths: Iterable[str | Path], *, project: Project, deidentify: bool = True
) -> IngestReport:
    """Ingest files, folders (recursively) and .zip archives."""

    def read_all() -> Iterator[Item | FileOutcome]:
        for item in expand_inputs([Path(p) for p in paths]):
            if isinstance(item, RejectedInput):
                yield FileOutcome(item.display_name, "rejected", item.reason)
                continue
            try:
                with item.open() as handle:
                    yield item.display_name, handle.read()
            except (ArchiveError, OSError) as exc:  # one bad member must not stop the others
                yield FileOutcome(item.display_name, "rejected", str(exc))

    return _ingest(read_all(), project=project, deidentify=deidentify)


def ingest_datasets_bytes(
    items: Iterable[Item],
    *,
    project: Project,
    deidentify: bool = True,
    admit: Admit | None = None,
    whole: bool = False,
) -> IngestReport:
    """Ingest in-memory files (upload API, STOW-RS); ``report.outcomes`` in the order given.

    ``admit``, when given, sees the UIDs each readable file was sent with and may refuse it (its
    reason becomes the file's outcome) before anything of it is written.

    ``whole``: nothing is stored before ``items`` is exhausted, so that an error ``items``
    raises part-way (an upload read as it arrives that breaks off, or turns out malformed or
    too large) stores none of its files. Their bytes are not kept meanwhile: each is on its way
    to a temporary file from the moment it is prepared.
    """
    return _ingest(items, project=project, deidentify=deidentify, admit=admit, whole=whole)


def _ingest(
    items: Iterable[Item | FileOutcome],
    *,
    project: Project,
    deidentify: bool,
    admit: Admit | None = None,
    whole: bool = False,
) -> IngestReport:
    report = IngestReport()
    preparer = Preparer(
        make_deidentifier() if deidentify else None,
        int(settings.INGEST_HELPER_PROCESSES),
        write_to=storage.storage_root(),
    )

    def to_prepare() -> Iterator[Item]:
        for item in items:
            if isinstance(item, FileOutcome):  # refused on the way in (unreadable archive member)
                report.outcomes.append(item)
            else:
                yield item

    waiting: list[Prepared | FileOutcome] = []  # prepared, not yet stored
    try:
        for item in preparer.prepare_all(to_prepare()):
            waiting.append(_start_write(_admitted(item, admit)))
            if not whole and len(waiting) >= BATCH_SIZE:
                report.outcomes.extend(_store_batch(_first(waiting), project=project))
        while waiting:
            report.outcomes.extend(_store_batch(_first(waiting), project=project))
    finally:  # files never stored (an error on the way) leave no temporary file behind
        storage.discard_temps(
            [i.write_soon for i in waiting if isinstance(i, Prepared) and i.write_soon is not None]
        )
    return report


def _first(waiting: list[Prepared | FileOutcome]) -> list[Prepared | FileOutcome]:
    """The next batch, taken off ``waiting``: from here on ``_store_batch`` answers for it."""
    batch = waiting[:BATCH_SIZE]
    del waiting[:BATCH_SIZE]
    return batch


def _admitted(item: Prepared | FileOutcome, admit: Admit | None) -> Prepared | FileOutcome:
    if admit is None or isinstance(item, FileOutcome):
        return item
    reason = admit(item.sent)
    if reason:
        item.discard_write()
        return item.outcome("rejected", reason)
    return item


def _start_write(item: Prepared | FileOutcome) -> Prepared | FileOutcome:
    """Start writing a prepared file (beside its final place, on an I/O thread) unless a helper
    process has written it already, or a file is in its place already (a resend, most likely:
    the transaction decides by digest whether it is a duplicate or a conflict, and writes the
    file then if it is to be stored after all)."""
    if (
        isinstance(item, Prepared)
        and item.write_soon is None
        and not storage.in_place(storage.absolute(item.relpath))
    ):
        item.write_soon = storage.write_durable_temp_soon(item.relpath, item.data)
        item.data = b""  # the write holds them until they are on disk
    return item


def _store_batch(prepared: list[Prepared | FileOutcome], *, project: Project) -> list[FileOutcome]:
    """Store a batch in one transaction, files renamed into place just before the commit and
    removed again if the commit fails.

    Each valid file is being written (and flushed to disk) to a temporary file beside its final
    place since it was prepared (``_start_write``, or a helper process); the rows go in while
    the last writes finish, and each file is renamed once its write is done; the renamed files'
    folders are flushed to disk before the commit. Files that turn out not to be stored
    (duplicates, refusals) have their temporary file removed.

    The rows of the batch are inserted together; when that fails on a constraint (another
    writer stored one of the same SOP Instance UIDs meanwhile), the batch is retried file by
    file, each in its own savepoint, so one conflict does not lose the others.
    """
    writes: list[Future[Path]] = [
        i.write_soon for i in prepared if isinstance(i, Prepared) and i.write_soon is not None
    ]
    used: set[Future[Path]] = set()  # writes whose file is renamed into place (or removed)
    outcomes: list[FileOutcome] = []
    moves: list[tuple[Path, Path]] = []
    renamed: list[Path] = []
    try:
        with transaction.atomic():
            hierarchy = _HierarchyCache(project)
            stored = _stored_digests([p.sop_uid for p in prepared if isinstance(p, Prepared)])
            accepted: list[_Accepted] = []
            for item in prepared:
                if isinstance(item, FileOutcome):
                    outcomes.append(item)
                    continue
                item.resolve_digest()
                if item.sop_uid in stored:  # stored before, or earlier in this batch
                    outcomes.append(_duplicate_or_conflict(item, stored[item.sop_uid]))
                    continue
                try:
                    series = hierarchy.series_for(item.hierarchy, item.key)
                except RejectedFile as exc:
                    outcomes.append(item.outcome("rejected", str(exc), exc.refusal))
                    continue
                stored[item.sop_uid] = item.digest
                write = item.write_soon
                if write is None:  # stored when the call began, removed since: write it now
                    write = storage.write_durable_temp_soon(item.relpath, item.data)
                    writes.append(write)
                accepted.append((item, series, write))
                outcomes.append(item.outcome("stored"))
            if accepted and not _insert_together(accepted):
                accepted = _insert_one_by_one(accepted, outcomes)
            # With the rows: their series' geometry summaries are remade when next read.
            Series.objects.filter(pk__in={series.pk for _, series, _ in accepted}).update(
                geometry_stale=True
            )
            for item, _, write in accepted:
                moves.append((write.result(), storage.absolute(item.relpath)))  # fsync'd
                used.add(write)
            for temp, final in moves:
                temp.replace(final)
                renamed.append(final)
            # The renames reach the disk before the rows commit: a committed row never names
            # a file that a power cut left under its temporary name.
            storage.sync_folders(renamed)
    except BaseException:
        for final in renamed:
            final.unlink(missing_ok=True)
        for temp, _ in moves:
            temp.unlink(missing_ok=True)
        raise
    finally:
        storage.discard_temps([w for w in writes if w not in used])
    return outcomes


def _stored_digests(sop_uids: list[str]) -> dict[str, str]:
    """SHA-256 of the instances already stored under these SOP Instance UIDs (its SQL compiled
    once a minute per number of UIDs: it runs for every batch an upload stores)."""
    if not sop_uids:
        return {}
    slots = Slots()
    uids = [slots(uid) for uid in sop_uids]
    found = core_sql.rows(
        ("ingest", "stored-digests", len(uids)),
        lambda: (
            Instance.objects.filter(sop_instance_uid__in=uids)
            .order_by()
            .values_list("sop_instance_uid", "sha256")
        ),
        slots,
    )
    return dict(found)


# A row to insert: values by field attribute name (``series_id``, not ``series``); the primary
# key, the time stamps and every field left out get their defaults (see ``_insert_rows``).
Row = dict[str, Any]


# A file to store: prepared, its series indexed, its write under way.
_Accepted = tuple[Prepared, "_SeriesKey", Future[Path]]


def _instance_row(item: Prepared, series: _SeriesKey) -> Row:
    return {"series_id": series.pk, **item.fields}


def _uid_mappings(item: Prepared, series: _SeriesKey) -> list[Row]:
    if item.key is None:
        return []
    key = item.key
    levels = (
        (UidMapping.Level.STUDY, key.original_study_instance_uid, key.study_instance_uid),
        (UidMapping.Level.SERIES, key.original_series_instance_uid, key.series_instance_uid),
        (UidMapping.Level.INSTANCE, key.original_sop_instance_uid, key.sop_instance_uid),
    )
    patient_id = series.patient_pk
    return [
        {"original_uid": original, "stored_uid": stored, "level": level, "patient_id": patient_id}
        for level, original, stored in levels
    ]


def _insert_together(accepted: list[_Accepted]) -> bool:
    """Insert the batch's rows in two statements; False (nothing inserted) on a conflict."""
    try:
        with transaction.atomic():
            _insert_rows(Instance, [_instance_row(i, s) for i, s, _ in accepted])
            # The files of a batch share their study's and series' mappings: each goes in once.
            mappings = {m["original_uid"]: m for i, s, _ in accepted for m in _uid_mappings(i, s)}
            _insert_rows(UidMapping, list(mappings.values()), ignore_conflicts=True)
    except IntegrityError:
        return False
    return True


# Field types whose Python values (as ``prepare`` and this module make them) every database
# driver takes as they are: ``get_db_prep_save`` would only check them again. UUIDs (and keys
# to them) are such only where the database has a UUID type.
_PLAIN_FIELDS = (
    models.CharField,
    models.TextField,
    models.IntegerField,
    models.BigIntegerField,
    models.PositiveIntegerField,
    models.BooleanField,
)
_UUID_FIELDS = (models.UUIDField, models.ForeignKey)


def _plain(field: models.Field[Any, Any]) -> bool:
    if isinstance(field, _UUID_FIELDS):
        return bool(connection.features.has_native_uuid_field) and (
            not isinstance(field, models.ForeignKey)
            or isinstance(field.target_field, models.UUIDField)
        )
    return isinstance(field, _PLAIN_FIELDS)


def _insert_rows(
    model: type[BaseModel], rows: list[Row], *, ignore_conflicts: bool = False
) -> None:
    """INSERT ``rows`` of ``model`` as ``bulk_create`` would (no signals, no validation),
    with one statement run for every row (``executemany``); ``ignore_conflicts``: a row that
    breaks a unique constraint is skipped (``ON CONFLICT DO NOTHING``). Each row gets a new
    UUID primary key, ``created`` = ``modified`` = now, and the default of every field it
    leaves out.

    ``bulk_create`` either writes one multi-row statement, which on PostgreSQL goes through
    arrays (UNNEST) and quotes each stored DICOM JSON into an array literal (about 1.5 ms a
    file), or, one row per statement, builds the SQL again for every row (about 0.5 ms); model
    instances and ``get_db_prep_save`` on every field cost another 0.08 ms a row.
    """
    if not rows:
        return
    meta = model._meta
    fields = list(meta.concrete_fields)
    quote = connection.ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({}){}".format(
        quote(meta.db_table),
        ", ".join(quote(f.column) for f in fields),
        ", ".join(["%s"] * len(fields)),
        " ON CONFLICT DO NOTHING" if ignore_conflicts else "",
    )
    now = timezone.now()
    stamps = {"created": now, "modified": now}
    plain = [_plain(f) for f in fields]
    values = []
    for row in rows:
        line = []
        for f, as_is in zip(fields, plain, strict=True):
            value: Any
            if f.primary_key:
                value = uuid.uuid4()
            elif f.attname in stamps:
                value = stamps[f.attname]
            else:
                value = row[f.attname] if f.attname in row else f.get_default()
            line.append(value if as_is else f.get_db_prep_save(value, connection))
        values.append(line)
    with connection.cursor() as cursor:
        cursor.executemany(sql, values)


def _insert_one_by_one(accepted: list[_Accepted], outcomes: list[FileOutcome]) -> list[_Accepted]:
    """Each row in its own savepoint; a SOP Instance UID stored meanwhile by another writer
    becomes a duplicate (or a conflict) and its file is dropped. Returns the files inserted."""
    by_sop = {o.sop_instance_uid: n for n, o in enumerate(outcomes) if o.status == "stored"}
    inserted = []
    for item, series, write in accepted:
        try:
            with transaction.atomic():
                _insert_rows(Instance, [_instance_row(item, series)])
                _insert_rows(UidMapping, _uid_mappings(item, series), ignore_conflicts=True)
        except IntegrityError:
            existing = Instance.objects.filter(sop_instance_uid=item.sop_uid).only("sha256").first()
            if existing is None:
                raise
            outcomes[by_sop[item.sop_uid]] = _duplicate_or_conflict(item, existing.sha256)
            continue
        inserted.append((item, series, write))
    return inserted


@dataclass(frozen=True)
class _SeriesKey:
    """What storing an instance needs of its indexed series (and that series' study and
    patient)."""

    pk: Any
    series_instance_uid: str
    study_instance_uid: str
    patient_pk: Any
    patient_id: str
    project_pk: Any

    @classmethod
    def of(cls, series: Series) -> _SeriesKey:
        study, patient = series.study, series.study.patient
        return cls(
            series.pk,
            series.series_instance_uid,
            study.study_instance_uid,
            patient.pk,
            patient.patient_id,
            patient.project_id,
        )


class _HierarchyCache:
    """Series rows already indexed in this transaction, so a series costs one lookup per batch."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.series: dict[str, _SeriesKey] = {}

    def series_for(self, hierarchy: Hierarchy, key: DeidentificationKey | None) -> _SeriesKey:
        cached = self.series.get(hierarchy.series_instance_uid)
        if cached is not None:
            if cached.study_instance_uid != hierarchy.study_instance_uid:
                raise RejectedFile(
                    f"SeriesInstanceUID {hierarchy.series_instance_uid} is already stored under "
                    "another study"
                )
            if cached.patient_id != hierarchy.patient_id:
                raise RejectedFile(
                    f"StudyInstanceUID {hierarchy.study_instance_uid} belongs to another patient"
                )
            return cached
        series = _indexed_series(hierarchy, self.project)
        if series is None:
            # In a savepoint: a refusal half-way (a study of another patient) creates nothing.
            with transaction.atomic():
                series = _SeriesKey.of(
                    _index_hierarchy(hierarchy, project=self.project, identity=key)
                )
        self.series[series.series_instance_uid] = series
        return series


def _indexed_series(hierarchy: Hierarchy, project: Project) -> _SeriesKey | None:
    """The series with its study and patient, in one query, when all three are indexed as
    ``hierarchy`` says (the usual case after a series' first upload); None otherwise, and
    ``_index_hierarchy`` creates what is missing or says what does not match. (Compiled once a
    minute, as ``_stored_digests``.)"""
    slots = Slots()
    uid = slots(hierarchy.series_instance_uid)
    rows = core_sql.rows(
        ("ingest", "indexed-series"),
        lambda: (
            Series.objects.filter(series_instance_uid=uid)
            .order_by()
            .values_list(
                "pk",
                "study__study_instance_uid",
                "study__patient_id",
                "study__patient__patient_id",
                "study__patient__project_id",
            )
        ),
        slots,
    )
    if not rows:
        return None
    pk, study_uid, patient_pk, patient_id, project_pk = rows[0]
    # Keys as the models hold them (a UUID, where the database returns its text).
    pk, patient_pk, project_pk = (
        m._meta.pk.to_python(v)
        for m, v in ((Series, pk), (Patient, patient_pk), (Project, project_pk))
    )
    if (
        study_uid != hierarchy.study_instance_uid
        or patient_id != hierarchy.patient_id
        or project_pk != project.pk
    ):
        return None
    return _SeriesKey(
        pk, hierarchy.series_instance_uid, study_uid, patient_pk, patient_id, project_pk
    )


def _duplicate_or_conflict(item: Prepared, stored_digest: str) -> FileOutcome:
    if stored_digest == item.digest:
        return item.outcome("duplicate", "identical instance already stored")
    return item.outcome(
        "rejected",
        f"a different file is already stored under SOPInstanceUID {item.sop_uid}; "
        "the stored instance was kept (send a new SOPInstanceUID for a corrected image)",
        Refusal.CONFLICT,
    )


def _index_hierarchy(
    hierarchy: Hierarchy, *, project: Project, identity: DeidentificationKey | None
) -> Series:
    patient_id = hierarchy.patient_id
    patient, created = Patient.objects.get_or_create(
        patient_id=patient_id,
        defaults={"project": project, "deidentified": identity is not None, **hierarchy.patient},
    )
    if patient.project_id != project.pk:
        raise RejectedFile(
            f"patient {patient_id} belongs to project '{patient.project.slug}', not '{project.slug}'; "
            "import into that project"
        )
    if identity is not None and created:
        PatientIdentity.objects.create(
            patient=patient,
            original_patient_id=identity.original_patient_id,
            original_patient_name=identity.original_patient_name,
            original_birth_date=parse_da(identity.original_patient_birth_date),
            date_shift_days=identity.date_shift_days,
        )

    study_uid = hierarchy.study_instance_uid
    study, _ = Study.objects.get_or_create(
        study_instance_uid=study_uid, defaults={"patient": patient, **hierarchy.study}
    )
    if study.patient_id != patient.pk:
        raise RejectedFile(f"StudyInstanceUID {study_uid} is already stored for another patient")

    series_uid = hierarchy.series_instance_uid
    series, _ = Series.objects.get_or_create(
        series_instance_uid=series_uid, defaults={"study": study, **hierarchy.series}
    )
    if series.study_id != study.pk:
        raise RejectedFile(f"SeriesInstanceUID {series_uid} is already stored under another study")
    return series
