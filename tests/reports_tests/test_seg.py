"""DICOM SEG per reader per series: round trips, and against dcmqi's real CT + SEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from annotation.models import ContourVersion
from annotation.services.geometry import pack_mask
from reports.services import seg
from tests.reports_tests.conftest import assignment_of, draw, instances_of, mask_of

pytestmark = pytest.mark.django_db


def test_a_read_round_trips_through_dicom_seg(make_study, reader_a, coordinator, series):
    study = make_study(readers=[reader_a], series_list=[series])
    s = instances_of(study.cases.get())
    a = assignment_of(study, reader_a)
    contours = [
        draw(a, s[0], x0=-10, size=8),
        draw(a, s[0], structure="lung", x0=-14, y0=-14, size=24),
        draw(a, s[2], x0=-4, y0=-6, size=6),
        draw(a, s[3], rings=[]),  # a deletion is no frame
    ]
    contours.append(draw(a, s[2], x0=-6, y0=-6, size=8))  # a later version wins
    result = seg.assignment_seg(coordinator, a)
    ds = pydicom.dcmread(__import__("io").BytesIO(result.data))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert [item.SegmentLabel for item in ds.SegmentSequence] == [
        "Lung",
        "Interstitial lung disease",
    ]
    assert str(ds.ContentCreatorName).rstrip("^") == "reader-a"
    masks = seg.read_seg(result.data)
    expected = {
        (s[0].sop_instance_uid, "ild"): mask_of(contours[0]),
        (s[0].sop_instance_uid, "lung"): mask_of(contours[1]),
        (s[2].sop_instance_uid, "ild"): mask_of(contours[4]),
    }
    assert set(masks) == set(expected)
    for key, mask in expected.items():
        assert np.array_equal(masks[key], mask), key


def test_the_seg_carries_only_pseudonyms(make_study, reader_a, coordinator, series):
    study = make_study(readers=[reader_a], series_list=[series])
    a = assignment_of(study, reader_a)
    draw(a, instances_of(study.cases.get())[0])
    data = seg.assignment_seg(coordinator, a).data
    # tests.dicom_builders' originals: imported here without de-identification
    for original in (b"HOSP-001", b"DOE^JANE", b"19600101", b"ACC123", b"WHO^DR"):
        assert original not in data
    assert seg.describe(data)["patient_id"].startswith("X-")


def test_a_read_without_contours_is_not_found(make_study, reader_a, coordinator, series):
    from core.exceptions import ApplicationError

    study = make_study(readers=[reader_a], series_list=[series])
    with pytest.raises(ApplicationError) as error:
        seg.assignment_seg(coordinator, assignment_of(study, reader_a))
    assert error.value.status_code == 404


@pytest.mark.real_data
def test_dcmqi_liver_seg_round_trips_through_our_export(
    real_data, project, make_study, reader_a, coordinator
):
    """dcmqi's 3-slice CT (de-identified on import) and its liver SEG: the liver masks, stored
    as one reader's contours, come back from our SEG identical and on the same slices."""
    from studies.models import Series, UidMapping
    from studies.services.ingest import ingest_datasets_bytes

    folder: Path = real_data("dcmqi-ct3slice-seg")
    files = sorted((folder / "ct").glob("*.dcm"))
    report = ingest_datasets_bytes(
        [(p.name, p.read_bytes()) for p in files], project=project, deidentify=True
    )
    assert report.stored == 3, report.to_dict()
    reference = seg.read_seg((folder / "liver.dcm").read_bytes())
    assert reference and {structure for _, structure in reference} == {"Liver"}
    stored_uid = dict(
        UidMapping.objects.filter(level="instance").values_list("original_uid", "stored_uid")
    )
    series = Series.objects.get()
    study = make_study(readers=[reader_a], series_list=[series])
    a = assignment_of(study, reader_a)
    for (original_uid, _), mask in reference.items():
        ContourVersion.objects.create(
            assignment=a,
            structure="ild",
            referenced_sop_instance_uid=stored_uid[original_uid],
            version=1,
            schema_version=1,
            geometry={"schema_version": 1, "polygons": []},
            mask=pack_mask(mask),
            mask_rows=mask.shape[0],
            mask_columns=mask.shape[1],
            pixel_count=int(mask.sum()),
            area_mm2=0.0,
            author=reader_a,
        )
    data = seg.assignment_seg(coordinator, a).data
    ours = seg.read_seg(data)
    assert len(ours) == len(reference)
    for (original_uid, _), mask in reference.items():
        assert np.array_equal(ours[(stored_uid[original_uid], "ild")], mask)
    source_patient = pydicom.dcmread(files[0], stop_before_pixels=True)
    for original in (str(source_patient.PatientID), str(source_patient.PatientName)):
        assert original.encode() not in data
    ds = pydicom.dcmread(__import__("io").BytesIO(data), stop_before_pixels=True)
    referenced = {
        item.ReferencedSOPInstanceUID
        for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced <= set(stored_uid.values())
    assert ds.PixelSpacing if "PixelSpacing" in ds else True
