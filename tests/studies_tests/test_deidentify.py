"""De-identification on ingest: PS3.15 Annex E Basic Profile with modified dates, keyed and stable."""

from __future__ import annotations

import copy
import datetime as dt
import io
import re

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from studies.deidentify import (
    METHOD_VERSION,
    DeidentificationError,
    Deidentifier,
    is_well_known_uid,
)

SECRET = b"site-secret-for-tests-0123456789"
OTHER_SECRET = b"another-site-secret-987654321000"

PATIENT_ID = "MRN-4471002"
PATIENT_NAME = "Dupont^Jeanne^Marie"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1001.1"
SERIES2_UID = "1.2.826.0.1.3680043.8.498.1001.2"
FOR_UID = "1.2.826.0.1.3680043.8.498.1001.9"
SOP_UID = "1.2.826.0.1.3680043.8.498.1001.1.1"
SOP2_UID = "1.2.826.0.1.3680043.8.498.1001.2.1"
PRIVATE_SOP_CLASS = "1.3.12.2.1107.5.9.1"  # a vendor's own class UID: not in the registry

# Strings that must not survive anywhere in the written file.
IDENTIFYING = [
    PATIENT_ID,
    "Dupont",
    "Jeanne",
    "ACC77120",
    "Hopital Saint-Louis",
    "1 avenue Claude Vellefaux",
    "Dr^House",
    "Tech^Alice",
    "Radiologist^Bob",
    "CT-ROOM-3",
    "SN-558812",
    "ALT-ID-9",
    "10 rue des Lilas",
    "patient is claustrophobic",
    "SCANNER_AE",
    STUDY_UID,
    SERIES_UID,
    SOP_UID,
    FOR_UID,
]


def make_ct(
    *,
    patient_id: str = PATIENT_ID,
    patient_name: str = PATIENT_NAME,
    study_uid: str = STUDY_UID,
    series_uid: str = SERIES_UID,
    sop_uid: str = SOP_UID,
    study_date: str = "20230314",
) -> Dataset:
    """A small but complete CT image with the identifying attributes a scanner writes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = "SCANNER_AE"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = "101530.250"
    ds.AcquisitionDateTime = f"{study_date}101612.125000+0100"
    ds.AccessionNumber = "ACC77120"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.InstitutionName = "Hopital Saint-Louis"
    ds.InstitutionAddress = "1 avenue Claude Vellefaux"
    ds.ReferringPhysicianName = "Dr^House"
    ds.StationName = "CT-ROOM-3"
    ds.StudyDescription = "CT THORAX HR"
    ds.SeriesDescription = "LUNG 1.0 B70f"
    ds.OperatorsName = "Tech^Alice"
    ds.PerformingPhysicianName = "Radiologist^Bob"
    ds.ManufacturerModelName = "Model 64"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = "HSL"
    ds.PatientBirthDate = "19580702"
    ds.PatientSex = "F"
    ds.PatientAge = "064Y"
    ds.PatientSize = 1.62
    ds.PatientWeight = 58
    ds.OtherPatientIDs = "ALT-ID-9"
    ds.PatientAddress = "10 rue des Lilas"
    ds.PatientComments = "patient is claustrophobic"
    ds.DeviceSerialNumber = "SN-558812"
    ds.ProtocolName = "ILD protocol"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "S1234"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = FOR_UID
    ds.ImagePositionPatient = [-150.0, -150.0, -80.0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = bytes(range(32))

    source = Dataset()
    source.ReferencedSOPClassUID = CTImageStorage
    source.ReferencedSOPInstanceUID = SOP2_UID
    ds.SourceImageSequence = Sequence([source])

    # Private block, a curve and an overlay: all must go.
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "Dupont Jeanne private copy")
    ds.add_new(0x50000010, "US", 1)
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60003000, "OW", b"\x00" * 2)
    return ds


def written(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def reread(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(written(ds)))


def shifted(date: str, days: int) -> str:
    return (dt.datetime.strptime(date, "%Y%m%d").date() + dt.timedelta(days=days)).strftime(
        "%Y%m%d"
    )


@pytest.fixture
def deid() -> Deidentifier:
    return Deidentifier(SECRET)


def test_names_and_ids_become_the_pseudonym(deid: Deidentifier) -> None:
    out = deid.apply(make_ct()).dataset

    assert re.fullmatch(r"ILD-[0-9A-F]{12}", str(out.PatientID))
    assert str(out.PatientName) == out.PatientID == deid.pseudonym(PATIENT_ID)
    assert out.ReferringPhysicianName == ""
    assert out.StudyID == ""
    assert out.AccessionNumber == deid.accession_hash("ACC77120") != "ACC77120"
    assert out.DeviceSerialNumber == "DEIDENTIFIED"
    for keyword in [
        "OperatorsName",
        "PerformingPhysicianName",
        "InstitutionName",
        "InstitutionAddress",
        "StationName",
        "OtherPatientIDs",
        "IssuerOfPatientID",
        "PatientAddress",
        "PatientComments",
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
    ]:
        assert keyword not in out, keyword


def test_no_identifying_string_survives_in_the_written_file(deid: Deidentifier) -> None:
    data = written(deid.apply(make_ct()).dataset)

    leaked = [text for text in IDENTIFYING if text.encode() in data]
    assert leaked == []


def test_same_secret_in_separate_instances_gives_the_same_mapping() -> None:
    first = Deidentifier(SECRET).apply(make_ct())
    second = Deidentifier(SECRET).apply(make_ct())

    assert first.key.pseudonym == second.key.pseudonym
    assert first.key.date_shift_days == second.key.date_shift_days
    assert first.key.uid_map == second.key.uid_map
    assert first.dataset.StudyDate == second.dataset.StudyDate


def test_a_follow_up_study_lands_on_the_same_pseudonymous_patient(deid: Deidentifier) -> None:
    baseline = deid.apply(make_ct())
    follow_up = Deidentifier(SECRET).apply(
        make_ct(study_uid="1.2.3.77", series_uid="1.2.3.77.1", sop_uid="1.2.3.77.1.1")
    )

    assert follow_up.dataset.PatientID == baseline.dataset.PatientID
    assert follow_up.dataset.StudyInstanceUID != baseline.dataset.StudyInstanceUID


def test_a_different_secret_gives_a_different_mapping() -> None:
    first = Deidentifier(SECRET)
    other = Deidentifier(OTHER_SECRET)

    assert first.pseudonym(PATIENT_ID) != other.pseudonym(PATIENT_ID)
    assert first.remap_uid(STUDY_UID) != other.remap_uid(STUDY_UID)
    patients = [f"{PATIENT_ID}-{i}" for i in range(20)]
    assert [first.date_shift_days(p) for p in patients] != [
        other.date_shift_days(p) for p in patients
    ]


def test_two_series_keep_one_study_and_share_the_frame_of_reference(deid: Deidentifier) -> None:
    one = deid.apply(make_ct()).dataset
    two = deid.apply(make_ct(series_uid=SERIES2_UID, sop_uid=SOP2_UID)).dataset

    assert one.StudyInstanceUID == two.StudyInstanceUID != STUDY_UID
    assert one.SeriesInstanceUID != two.SeriesInstanceUID
    assert one.FrameOfReferenceUID == two.FrameOfReferenceUID != FOR_UID


def test_nested_reference_follows_the_referenced_instance(deid: Deidentifier) -> None:
    referencing = deid.apply(make_ct()).dataset
    referenced = deid.apply(make_ct(series_uid=SERIES2_UID, sop_uid=SOP2_UID)).dataset

    item = referencing.SourceImageSequence[0]
    assert item.ReferencedSOPInstanceUID == referenced.SOPInstanceUID
    assert item.ReferencedSOPInstanceUID != SOP2_UID


def test_class_uids_and_transfer_syntax_are_unchanged(deid: Deidentifier) -> None:
    ds = make_ct()
    ds.SourceImageSequence[0].ReferencedSOPClassUID = PRIVATE_SOP_CLASS
    out = deid.apply(ds).dataset

    assert out.SOPClassUID == CTImageStorage
    assert out.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.SourceImageSequence[0].ReferencedSOPClassUID == PRIVATE_SOP_CLASS


def test_well_known_frame_of_reference_is_not_remapped(deid: Deidentifier) -> None:
    talairach = "1.2.840.10008.1.4.1.1"
    ds = make_ct()
    ds.FrameOfReferenceUID = talairach

    assert is_well_known_uid(talairach)
    assert deid.apply(ds).dataset.FrameOfReferenceUID == talairach


def test_file_meta_follows_the_new_sop_instance_uid(deid: Deidentifier) -> None:
    out = deid.apply(make_ct()).dataset

    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != SOP_UID
    assert "SourceApplicationEntityTitle" not in out.file_meta


def test_dates_move_by_exactly_the_patient_shift(deid: Deidentifier) -> None:
    result = deid.apply(make_ct(study_date="20230314"))
    out, days = result.dataset, result.key.date_shift_days

    assert days == deid.date_shift_days(PATIENT_ID)
    assert out.StudyDate == out.SeriesDate == out.ContentDate == shifted("20230314", days)
    assert out.PatientBirthDate == shifted("19580702", days)
    assert out.AcquisitionDateTime == f"{shifted('20230314', days)}101612.125000+0100"
    assert out.StudyTime == "101530.250"
    assert out.PatientAge == "064Y"


def test_interval_between_two_studies_is_preserved(deid: Deidentifier) -> None:
    baseline = deid.apply(make_ct(study_date="20230314")).dataset
    follow_up = deid.apply(make_ct(study_uid="1.2.3.9", study_date="20240110")).dataset

    def day(value: str) -> dt.date:
        return dt.datetime.strptime(value, "%Y%m%d").date()

    interval = day(follow_up.StudyDate) - day(baseline.StudyDate)
    assert interval == day("20240110") - day("20230314")
    assert baseline.StudyDate != "20230314"


@pytest.mark.parametrize("patient_id", ["a", "b", "MRN-1", "MRN-2", "x" * 64, "ü-1"])
def test_date_shift_stays_in_the_configured_range(patient_id: str) -> None:
    assert -730 <= Deidentifier(SECRET).date_shift_days(patient_id) <= -30


def test_unparseable_dates_are_emptied_not_kept(deid: Deidentifier) -> None:
    ds = make_ct()
    ds.SeriesDate = "03/14/2023"

    assert deid.apply(ds).dataset.SeriesDate == ""


def test_private_curve_and_overlay_elements_are_removed(deid: Deidentifier) -> None:
    out = deid.apply(make_ct()).dataset

    groups = {elem.tag.group for elem in out}
    assert not any(group % 2 for group in groups)
    assert 0x5000 not in groups
    assert 0x6000 not in groups


def test_input_dataset_is_not_mutated(deid: Deidentifier) -> None:
    ds = make_ct()
    before = copy.deepcopy(ds)

    deid.apply(ds)

    assert ds == before
    assert ds.file_meta == before.file_meta
    assert ds.PatientName == PATIENT_NAME


def test_output_writes_and_rereads_as_valid_dicom(deid: Deidentifier) -> None:
    out = deid.apply(make_ct()).dataset

    again = reread(out)

    assert again.SOPInstanceUID == out.SOPInstanceUID
    assert again.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert again.PatientID == out.PatientID
    assert again.PixelData == bytes(range(32))


def test_the_profile_is_recorded_in_the_header(deid: Deidentifier) -> None:
    out = deid.apply(make_ct()).dataset

    codes = [
        (item.CodeValue, item.CodingSchemeDesignator)
        for item in out.DeidentificationMethodCodeSequence
    ]
    assert ("113100", "DCM") in codes
    assert ("113107", "DCM") in codes
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert METHOD_VERSION in out.DeidentificationMethod[0]


def test_an_earlier_deidentification_record_is_kept(deid: Deidentifier) -> None:
    ds = make_ct()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "CTP: TCIA default"
    ds.ClinicalTrialSponsorName = "Sponsor Corp"

    out = deid.apply(ds).dataset

    assert out.DeidentificationMethod[0] == "CTP: TCIA default"
    assert "ClinicalTrialSponsorName" not in out


def test_key_record_holds_the_originals_for_the_admin_table(deid: Deidentifier) -> None:
    result = deid.apply(make_ct())
    key, out = result.key, result.dataset

    assert (key.original_patient_id, key.original_patient_name) == (PATIENT_ID, PATIENT_NAME)
    assert key.original_patient_birth_date == "19580702"
    assert key.original_accession_number == "ACC77120"
    assert key.pseudonym == out.PatientID
    assert key.pseudonym_source == "PatientID"
    assert (key.original_study_instance_uid, key.study_instance_uid) == (
        STUDY_UID,
        out.StudyInstanceUID,
    )
    assert (key.original_series_instance_uid, key.series_instance_uid) == (
        SERIES_UID,
        out.SeriesInstanceUID,
    )
    assert (key.original_sop_instance_uid, key.sop_instance_uid) == (SOP_UID, out.SOPInstanceUID)
    assert key.uid_map[FOR_UID] == out.FrameOfReferenceUID


def test_remapped_uids_are_valid_and_short(deid: Deidentifier) -> None:
    uid = deid.remap_uid("1." + "2" * 62)

    assert uid.startswith("2.25.")
    assert len(uid) <= 64
    assert UID(uid).is_valid
    assert deid.remap_uid(STUDY_UID + "\x00") == deid.remap_uid(STUDY_UID)


@pytest.mark.parametrize("placeholder", ["", "ANONYMOUS", "anonymized", "0"])
def test_patients_without_an_id_get_one_stable_pseudonym_per_study(
    deid: Deidentifier, placeholder: str
) -> None:
    one = deid.apply(make_ct(patient_id=placeholder, patient_name="ANONYMOUS"))
    same_study = deid.apply(make_ct(patient_id=placeholder, sop_uid=SOP2_UID))
    other_study = deid.apply(make_ct(patient_id=placeholder, study_uid="1.2.3.4.99"))

    assert one.key.pseudonym_source == "StudyInstanceUID"
    assert one.dataset.PatientID == same_study.dataset.PatientID
    assert one.dataset.PatientID != other_study.dataset.PatientID


def test_nothing_to_derive_a_pseudonym_from_is_an_error(deid: Deidentifier) -> None:
    ds = make_ct(patient_id="", patient_name="")
    del ds.StudyInstanceUID

    with pytest.raises(DeidentificationError, match="PatientID, StudyInstanceUID and PatientName"):
        deid.apply(ds)


def test_keep_descriptors_keeps_study_and_series_descriptions() -> None:
    out = Deidentifier(SECRET, keep_descriptors=True).apply(make_ct()).dataset

    assert out.SeriesDescription == "LUNG 1.0 B70f"
    assert out.StudyDescription == "CT THORAX HR"
    assert "113105" not in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]


def test_without_modified_dates_option_dates_and_times_are_emptied() -> None:
    out = (
        Deidentifier(SECRET, retain_longitudinal_temporal_information_with_modified_dates=False)
        .apply(make_ct())
        .dataset
    )

    assert out.StudyDate == out.PatientBirthDate == out.StudyTime == ""
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert "113107" not in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]


def test_without_patient_characteristics_option_age_and_size_go() -> None:
    out = Deidentifier(SECRET, retain_patient_characteristics=False).apply(make_ct()).dataset

    assert "PatientAge" not in out
    assert "PatientSize" not in out
    assert out.PatientSex == ""


def test_burned_in_annotation_is_reported_not_cleaned(deid: Deidentifier) -> None:
    ds = make_ct()
    ds.BurnedInAnnotation = "YES"

    result = deid.apply(ds)

    assert any("BurnedInAnnotation" in warning for warning in result.warnings)
    assert result.dataset.PixelData == ds.PixelData


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"secret": b"short"}, "secret"),
        ({"secret": SECRET, "date_shift_range_days": (-10, 10)}, "exclude 0"),
        ({"secret": SECRET, "pseudonym_prefix": "ild review"}, "pseudonym_prefix"),
    ],
)
def test_bad_options_fail_fast(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Deidentifier(**options)  # type: ignore[arg-type]


@pytest.mark.real_data
def test_real_seg_still_points_at_its_real_ct_after_deidentification(real_data) -> None:
    folder = real_data("dcmqi-ct3slice-seg")
    deid = Deidentifier(SECRET)
    cts = [
        deid.apply(pydicom.dcmread(path)).dataset for path in sorted((folder / "ct").glob("*.dcm"))
    ]
    seg_original = pydicom.dcmread(folder / "liver.dcm")
    seg = reread(deid.apply(seg_original).dataset)

    ct_sops = {ct.SOPInstanceUID for ct in cts}
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == cts[0].SeriesInstanceUID
    assert {
        item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence
    } == ct_sops
    assert seg.StudyInstanceUID == cts[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == cts[0].FrameOfReferenceUID
    assert seg.PatientID == cts[0].PatientID
    assert seg_original.SOPInstanceUID.encode() not in written(seg)
    assert b"JANCT000" not in written(seg)


def test_in_place_gives_the_same_result_as_a_copy():
    ds = _in_place_sample()
    secret = b"0123456789abcdef-in-place"
    copied = Deidentifier(secret).apply(ds)
    in_place = Deidentifier(secret).apply(_in_place_sample(), in_place=True)
    assert in_place.key == copied.key
    assert in_place.dataset == copied.dataset


def _in_place_sample():
    from tests.dicom_builders import ct_slice

    return ct_slice(study_uid="1.2.3.4", series_uid="1.2.3.4.5", index=0)
