"""The ingest service: validation, de-identification, idempotence, atomicity."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from unittest import mock

import pydicom
import pytest
from pydicom.uid import generate_uid

from studies import selectors
from studies.models import Instance, Patient, PatientIdentity, Series, Study, UidMapping
from studies.services import ingest as ingest_module
from studies.services import storage
from studies.services.geometry import refresh_series_geometry
from studies.services.ingest import ingest_datasets_bytes, ingest_paths
from studies.services.prepare import Refusal, prepare
from tests.dicom_builders import ct_series_bytes, ct_slice, to_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("helper_processes")]


def geometry_of(series: Series) -> dict:
    """The series' geometry summary as the study page and API read it."""
    return selectors.series_for_study(series.study).get(pk=series.pk).geometry


def test_it_stores_a_series_once_with_geometry(project):
    files = ct_series_bytes(4)
    report = ingest_datasets_bytes(enumerate_names(files), project=project, deidentify=False)
    assert (report.stored, report.duplicate, report.rejected) == (4, 0, 0)
    series = Series.objects.get()
    assert series.instances.count() == 4
    geometry = geometry_of(series)
    assert geometry["n_slices"] == 4
    assert geometry["slice_spacing_mm"] == pytest.approx(2.0)
    for instance in Instance.objects.all():
        stored = storage.absolute(instance.file).read_bytes()
        assert storage.sha256_hex(stored) == instance.sha256


def test_resending_an_identical_instance_is_a_no_op(project):
    files = ct_series_bytes(2)
    ingest_datasets_bytes(enumerate_names(files), project=project)
    again = ingest_datasets_bytes(enumerate_names(files), project=project)
    assert (again.stored, again.duplicate, again.rejected) == (0, 2, 0)
    assert Instance.objects.count() == 2


def test_a_resent_series_is_not_written_to_disk_again(project):
    files = ct_series_bytes(3)
    ingest_datasets_bytes(enumerate_names(files), project=project)
    (folder,) = {storage.absolute(i.file).parent for i in Instance.objects.all()}
    # A file made in the series' folder (even one removed again) changes its modification time.
    before = folder.stat().st_mtime_ns
    real_write = storage.write_durable_temp_soon
    with mock.patch.object(storage, "write_durable_temp_soon", side_effect=real_write) as write:
        again = ingest_datasets_bytes(enumerate_names(files), project=project)
    assert (again.stored, again.duplicate) == (0, 3)
    assert write.call_count == 0
    assert folder.stat().st_mtime_ns == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        storage.absolute(i.file).name for i in Instance.objects.all()
    )


def test_a_file_whose_uid_was_stored_when_the_upload_began_but_is_gone_is_still_written(
    project,
):
    files = ct_series_bytes(2)
    # A file found in its place is not written ahead; if its instance turns out not to be
    # stored (deleted since), it is written when its row is inserted.
    with mock.patch.object(storage, "in_place", return_value=True):
        report = ingest_datasets_bytes(enumerate_names(files), project=project, deidentify=False)
    assert report.stored == 2
    for instance in Instance.objects.all():
        stored = storage.absolute(instance.file).read_bytes()
        assert storage.sha256_hex(stored) == instance.sha256
    assert [p.name for p in storage.storage_root().rglob("*.part")] == []


def test_a_different_file_under_a_known_sop_instance_uid_is_refused(project):
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    first = to_bytes(ct_slice(study_uid=study, series_uid=series, index=0, sop_uid=sop))
    changed = to_bytes(ct_slice(study_uid=study, series_uid=series, index=0, sop_uid=sop, fill=7))
    ingest_datasets_bytes([("a.dcm", first)], project=project, deidentify=False)
    stored_before = storage.absolute(Instance.objects.get().file).read_bytes()

    report = ingest_datasets_bytes([("b.dcm", changed)], project=project, deidentify=False)

    assert report.rejected == 1
    assert "different file is already stored" in report.outcomes[0].reason
    assert storage.absolute(Instance.objects.get().file).read_bytes() == stored_before


@pytest.mark.parametrize(
    ("mutate", "reason", "refusal"),
    [
        (
            lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.4"),
            "is not CT Image Storage",
            Refusal.SOP_CLASS,
        ),
        (lambda ds: delattr(ds, "ImagePositionPatient"), "ImagePositionPatient", Refusal.INVALID),
        (lambda ds: delattr(ds, "PixelData"), "Pixel Data", Refusal.INVALID),
        (
            lambda ds: setattr(ds, "PixelData", b"\x00" * 10),
            "truncated Pixel Data",
            Refusal.INVALID,
        ),
        (lambda ds: setattr(ds, "Modality", "MR"), "Modality is 'MR'", Refusal.INVALID),
    ],
)
def test_it_rejects_what_is_not_a_usable_ct_image_with_a_reason(project, mutate, reason, refusal):
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    mutate(ds)
    report = ingest_datasets_bytes([("x.dcm", to_bytes(ds))], project=project)
    assert report.rejected == 1
    assert reason in report.outcomes[0].reason
    assert report.to_dict()["files"][0]["refusal"] == refusal
    assert not Instance.objects.exists() and not Patient.objects.exists()


def test_it_rejects_files_that_are_not_dicom(project):
    report = ingest_datasets_bytes([("notes.txt", b"hello world" * 20)], project=project)
    assert report.rejected == 1
    assert "not a DICOM file" in report.outcomes[0].reason
    assert report.outcomes[0].refusal == Refusal.UNREADABLE


def test_deidentification_replaces_identity_and_keeps_structure(project):
    study, series = generate_uid(), generate_uid()
    files = ct_series_bytes(3, study_uid=study, series_uid=series, patient_id="HOSP-42")
    ingest_datasets_bytes(enumerate_names(files), project=project, deidentify=True)

    patient = Patient.objects.get()
    assert patient.patient_id != "HOSP-42" and patient.deidentified
    assert PatientIdentity.objects.get().original_patient_id == "HOSP-42"
    stored_study = Study.objects.get()
    assert stored_study.study_instance_uid != study
    assert Series.objects.get().instances.count() == 3
    assert UidMapping.objects.get(original_uid=study).stored_uid == stored_study.study_instance_uid
    first = pydicom.dcmread(storage.absolute(Instance.objects.first().file))
    assert "DOE" not in str(first.PatientName)
    assert first.PatientIdentityRemoved == "YES"
    assert not first.get("InstitutionName")
    assert not first.get("ReferringPhysicianName")


def test_a_series_sent_in_two_parts_keeps_one_mapping_per_original_uid(project):
    files = ct_series_bytes(5, study_uid=generate_uid(), series_uid=generate_uid())
    first = ingest_datasets_bytes(enumerate_names(files[:3]), project=project)
    second = ingest_datasets_bytes(enumerate_names(files[3:]), project=project)
    assert (first.stored, second.stored) == (3, 2)
    levels = sorted(UidMapping.objects.values_list("level", flat=True))
    assert levels == ["instance"] * 5 + ["series", "study"]
    stored = Instance.objects.values_list("sop_instance_uid", flat=True)
    mapped = UidMapping.objects.filter(level="instance").values_list("stored_uid", flat=True)
    assert set(stored) == set(mapped)
    assert (
        UidMapping.objects.get(level="series").stored_uid
        == Series.objects.get().series_instance_uid
    )


def test_a_follow_up_imported_later_lands_on_the_same_pseudonymous_patient(project):
    ingest_datasets_bytes(enumerate_names(ct_series_bytes(2, patient_id="P-7")), project=project)
    ingest_datasets_bytes(
        enumerate_names(ct_series_bytes(2, patient_id="P-7", study_date="20250115")),
        project=project,
    )
    assert Patient.objects.count() == 1
    assert Study.objects.count() == 2
    dates = sorted(Study.objects.values_list("study_date", flat=True))
    assert (dates[1] - dates[0]).days == 366  # the interval survives the date shift


@pytest.mark.parametrize("n", [1, 3])
def test_a_failed_index_write_leaves_no_file_and_no_row(project, n):
    files = ct_series_bytes(n)
    insert_rows = ingest_module._insert_rows

    def mappings_fail(model, rows, **kwargs):  # the instance rows are in when the mappings fail
        if model is UidMapping:
            raise RuntimeError("disk full")
        return insert_rows(model, rows, **kwargs)

    with mock.patch.object(ingest_module, "_insert_rows", side_effect=mappings_fail):
        with pytest.raises(RuntimeError):
            ingest_datasets_bytes(enumerate_names(files), project=project, deidentify=True)
    assert not Instance.objects.exists()
    assert not Study.objects.exists()
    leftovers = [p for p in storage.storage_root().rglob("*") if p.is_file()]
    assert leftovers == []


def test_a_failed_file_write_leaves_no_row_and_no_file(project, settings):
    # A helper whose write fails answers with an error and the file is prepared and written
    # here (test_prepare.py): either way the write that fails is this process's.
    settings.INGEST_HELPER_PROCESSES = 0
    files = ct_series_bytes(4)
    real_write = storage.write_temp_next_to
    calls = []

    def full_disk(final, data):
        calls.append(final)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(final, data)

    with mock.patch.object(storage, "write_temp_next_to", side_effect=full_disk):
        with pytest.raises(OSError, match="No space left"):
            ingest_datasets_bytes(enumerate_names(files), project=project)
    assert len(calls) == 4  # every write had started
    assert not Instance.objects.exists() and not Study.objects.exists()
    assert [p for p in storage.storage_root().rglob("*") if p.is_file()] == []


def test_the_renamed_files_folders_reach_the_disk_before_the_rows_commit(project):
    files = ct_series_bytes(3)
    seen: list[tuple[list[Path], bool, int]] = []
    real_sync = storage.sync_folders

    def recording_sync(renamed):
        renamed = list(renamed)
        in_place = all(path.exists() for path in renamed)
        seen.append((renamed, in_place, Instance.objects.count()))  # rows not committed yet:
        real_sync(renamed)  # this connection sees them, another would not

    with mock.patch.object(storage, "sync_folders", side_effect=recording_sync):
        ingest_datasets_bytes(enumerate_names(files), project=project, deidentify=False)
    stored = sorted(storage.absolute(i.file) for i in Instance.objects.all())
    assert len(seen) == 1
    renamed, in_place, rows = seen[0]
    assert sorted(renamed) == stored and in_place and rows == 3


def test_the_folders_synced_are_each_files_folder_and_the_two_above(tmp_path, fsynced_paths):
    series_a = tmp_path / "dicom" / "1.2.3" / "1.2.3.4"
    series_b = tmp_path / "dicom" / "1.2.3" / "1.2.3.5"
    for folder in (series_a, series_b):
        folder.mkdir(parents=True)
        (folder / "x.dcm").write_bytes(b"x")
    storage.sync_folders([series_a / "x.dcm", series_b / "x.dcm"])
    assert sorted(fsynced_paths) == sorted(
        str(p) for p in (series_a, series_b, series_a.parent, tmp_path / "dicom")
    )


def test_a_failed_folder_sync_leaves_no_row_and_no_file(project):
    files = ct_series_bytes(3)
    with mock.patch.object(storage, "sync_folders", side_effect=OSError(5, "Input/output error")):
        with pytest.raises(OSError, match="Input/output error"):
            ingest_datasets_bytes(enumerate_names(files), project=project)
    assert not Instance.objects.exists() and not Study.objects.exists()
    assert [p for p in storage.storage_root().rglob("*") if p.is_file()] == []


def test_it_reads_folders_and_zips(project, tmp_path):
    files = ct_series_bytes(3)
    folder = tmp_path / "series"
    folder.mkdir()
    for i, data in enumerate(files[:2]):
        (folder / f"{i}.dcm").write_bytes(data)
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("deep/dir/2.dcm", files[2])
    report = ingest_paths([folder, archive], project=project, deidentify=False)
    assert (report.stored, report.rejected) == (3, 0)


def test_zip_path_traversal_is_refused(project, tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../etc/evil.dcm", ct_series_bytes(1)[0])
    report = ingest_paths([archive], project=project)
    assert report.stored == 0 and report.rejected >= 1
    assert not Instance.objects.exists()


def test_a_patient_of_another_project_is_not_moved(project, other_project):
    files = ct_series_bytes(1, patient_id="SAME")
    ingest_datasets_bytes(enumerate_names(files), project=project, deidentify=False)
    more = ct_series_bytes(1, patient_id="SAME")
    report = ingest_datasets_bytes(enumerate_names(more), project=other_project, deidentify=False)
    assert report.rejected == 1
    assert "belongs to project 'ssc'" in report.outcomes[0].reason


def enumerate_names(files: list[bytes]) -> list[tuple[str, bytes]]:
    return [(f"{i}.dcm", data) for i, data in enumerate(files)]


@pytest.mark.parametrize("compressed", [False, True])
def test_the_pixel_data_location_points_at_the_pixel_bytes(project, compressed):
    from pydicom.uid import RLELossless

    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    if compressed:
        ds.compress(RLELossless)
    ingest_datasets_bytes([("a.dcm", to_bytes(ds))], project=project, deidentify=True)
    instance = Instance.objects.get()
    stored = storage.absolute(instance.file).read_bytes()
    reread = pydicom.dcmread(storage.absolute(instance.file))
    assert instance.pixel_data_offset == reread["PixelData"].file_tell
    if compressed:
        assert instance.pixel_data_length is None
    else:
        start, length = instance.pixel_data_offset, instance.pixel_data_length
        assert stored[start : start + length] == reread.PixelData


def test_the_same_instance_twice_in_one_upload_is_stored_once(project):
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    first = to_bytes(ct_slice(study_uid=study, series_uid=series, index=0, sop_uid=sop))
    changed = to_bytes(ct_slice(study_uid=study, series_uid=series, index=0, sop_uid=sop, fill=7))
    report = ingest_datasets_bytes(
        [("a.dcm", first), ("again.dcm", first), ("changed.dcm", changed)],
        project=project,
        deidentify=False,
    )
    assert [o.status for o in report.outcomes] == ["stored", "duplicate", "rejected"]
    assert storage.absolute(Instance.objects.get().file).read_bytes() == first


def test_an_instance_stored_meanwhile_by_another_writer_is_a_duplicate(project):
    files = ct_series_bytes(2)
    ingest_datasets_bytes([("0.dcm", files[0])], project=project, deidentify=False)
    # The other writer's row is not seen by the batch's lookup, only by the database's
    # unique constraint: the batch is retried file by file.
    with mock.patch("studies.services.ingest._stored_digests", return_value={}):
        report = ingest_datasets_bytes(enumerate_names(files), project=project, deidentify=False)
    assert [o.status for o in report.outcomes] == ["duplicate", "stored"]
    assert Instance.objects.count() == 2
    assert geometry_of(Series.objects.get())["n_slices"] == 2
    leftovers = [p.name for p in storage.storage_root().rglob("*.part")]
    assert leftovers == []


def test_a_study_of_another_patient_is_refused_without_creating_the_patient(project):
    study = generate_uid()
    ingest_datasets_bytes(
        enumerate_names(ct_series_bytes(1, study_uid=study, patient_id="A-1")),
        project=project,
        deidentify=False,
    )
    report = ingest_datasets_bytes(
        enumerate_names(ct_series_bytes(1, study_uid=study, patient_id="B-2")),
        project=project,
        deidentify=False,
    )
    assert report.rejected == 1
    assert "another patient" in report.outcomes[0].reason
    assert list(Patient.objects.values_list("patient_id", flat=True)) == ["A-1"]


def test_the_geometry_summary_reports_a_missing_slice(project):
    study, series = generate_uid(), generate_uid()
    files = [to_bytes(ct_slice(study_uid=study, series_uid=series, index=i)) for i in (0, 1, 2, 4)]
    ingest_datasets_bytes(enumerate_names(files), project=project, deidentify=False)
    geometry = geometry_of(Series.objects.get())
    assert geometry["n_slices"] == 4
    assert geometry["max_slice_spacing_mm"] == pytest.approx(4.0)
    assert geometry["gaps"], geometry


def test_ingest_marks_the_geometry_stale_and_the_first_read_remakes_it_once(project):
    study, series_uid = generate_uid(), generate_uid()
    files = [to_bytes(ct_slice(study_uid=study, series_uid=series_uid, index=i)) for i in range(5)]
    ingest_datasets_bytes(enumerate_names(files[:2]), project=project, deidentify=False)
    series = Series.objects.get()
    assert series.geometry_stale and series.geometry == {}  # not made at ingest
    assert geometry_of(series)["n_slices"] == 2
    ingest_datasets_bytes(enumerate_names(files[2:]), project=project, deidentify=False)
    assert Series.objects.get().geometry_stale
    with mock.patch(
        "studies.selectors.refresh_series_geometry", wraps=refresh_series_geometry
    ) as refresh:
        assert geometry_of(series)["n_slices"] == 5
        assert geometry_of(series)["n_slices"] == 5
    assert refresh.call_count == 1
    assert not Series.objects.get().geometry_stale


def test_a_whole_upload_stores_nothing_when_its_source_fails(project, monkeypatch):
    """``whole``: an upload read as it arrives that breaks off (here after 7 files, in batches
    of 2) stores none of its files, and leaves no temporary file behind."""
    monkeypatch.setattr(ingest_module, "BATCH_SIZE", 2)

    def breaking_off():
        yield from enumerate_names(ct_series_bytes(7))
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        ingest_datasets_bytes(breaking_off(), project=project, whole=True)
    assert not Instance.objects.exists()
    assert [p for p in storage.storage_root().rglob("*") if p.is_file()] == []


def test_each_row_holds_what_the_file_was_prepared_into(project):
    # The rows go in as SQL, not through model instances: every field, the key, the time
    # stamps and the mappings must read back as the ORM would have written them.
    files = ct_series_bytes(3)
    report = ingest_datasets_bytes(enumerate_names(files), project=project, deidentify=True)
    assert report.stored == 3
    deidentifier = ingest_module.make_deidentifier()
    series = Series.objects.get()
    for data in files:
        prepared = prepare("x", data, deidentifier)
        row = Instance.objects.get(sop_instance_uid=prepared.sop_uid)
        assert row.series_id == series.pk
        expected = {**prepared.fields, "sha256": hashlib.sha256(prepared.data).hexdigest()}
        for name, value in expected.items():
            assert getattr(row, name) == value, name
        assert row.created is not None and row.created == row.modified
    assert len({row.pk for row in Instance.objects.all()}) == 3
    patient = Patient.objects.get()
    levels = sorted(UidMapping.objects.filter(patient=patient).values_list("level", flat=True))
    assert levels == ["instance"] * 3 + ["series", "study"]
    assert series.geometry_stale is True  # its summary is remade when next read


def test_more_of_a_series_stored_in_another_project_is_refused(project, other_project):
    study, series = generate_uid(), generate_uid()
    first = ct_series_bytes(2, study_uid=study, series_uid=series, patient_id="Q-1")
    ingest_datasets_bytes(enumerate_names(first), project=project, deidentify=False)
    more = [to_bytes(ct_slice(study_uid=study, series_uid=series, index=5, patient_id="Q-1"))]
    report = ingest_datasets_bytes(enumerate_names(more), project=other_project, deidentify=False)
    [outcome] = report.outcomes
    assert outcome.status == "rejected"
    assert "belongs to project" in outcome.reason
    assert Instance.objects.count() == 2
    assert not Patient.objects.filter(project=other_project).exists()
