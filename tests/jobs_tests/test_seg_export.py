"""DICOM SEG export: round trip through highdicom, provenance, references, determinism."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from jobs import services
from jobs.models import Job
from jobs.seg_export import SegExportError, build_dicom_seg
from studies.services import storage

pytestmark = pytest.mark.django_db


@pytest.fixture
def segmented(baseline_series, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = services.request_segmentation(baseline_series)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    with np.load(storage.absolute(job.result["label_map_npz"])) as data:
        labels = data["labels"].copy()
        uids = [str(u) for u in data["sop_instance_uids"]]
    return job, labels, uids


def source_files(series):
    return {
        uid: storage.absolute(rel)
        for uid, rel in series.instances.values_list("sop_instance_uid", "file")
    }


def test_the_seg_reads_back_as_the_label_map(segmented):
    job, labels, uids = segmented

    seg = hd.seg.segread(storage.absolute(job.result["dicom_seg"]))
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=[1, 2],
        assert_missing_frames_are_empty=True,
    )

    assert masks.shape == (24, 64, 64, 2)
    assert np.array_equal(masks[..., 0] > 0, labels > 0)  # segment 1: the whole lung
    assert np.array_equal(masks[..., 1] > 0, labels == 2)  # segment 2: ILD
    assert np.array_equal((masks[..., 0] > 0).astype(np.uint8) + (masks[..., 1] > 0), labels)


def test_the_seg_says_what_made_it_and_what_it_segments(segmented, baseline_series):
    job, _, uids = segmented

    seg = hd.seg.segread(storage.absolute(job.result["dicom_seg"]))

    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == baseline_series.study.study_instance_uid
    assert seg.FrameOfReferenceUID == baseline_series.frame_of_reference_uid
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == baseline_series.series_instance_uid
    referenced_uids = {
        item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence
    }
    assert referenced_uids == set(uids)
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["Lung", "ILD"]
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == "classical"
        assert algorithm.AlgorithmVersion == job.engine_version
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "233703007"


def test_exporting_the_same_result_twice_gives_the_same_instance(segmented, baseline_series):
    job, labels, uids = segmented
    files = source_files(baseline_series)

    first = build_dicom_seg(labels, uids, files, engine="classical", version=job.engine_version)
    again = build_dicom_seg(labels, uids, files, engine="classical", version=job.engine_version)
    changed = labels.copy()
    changed[changed == 2] = 1
    other = build_dicom_seg(changed, uids, files, engine="classical", version=job.engine_version)

    assert first.SOPInstanceUID == again.SOPInstanceUID != other.SOPInstanceUID
    assert first.SeriesInstanceUID == other.SeriesInstanceUID
    stored = pydicom.dcmread(storage.absolute(job.result["dicom_seg"]))
    assert stored.SOPInstanceUID == first.SOPInstanceUID


def test_a_label_map_of_another_shape_is_refused(segmented, baseline_series):
    _, labels, uids = segmented

    with pytest.raises(SegExportError, match="one slice per source image"):
        build_dicom_seg(labels[:-1], uids, source_files(baseline_series), engine="x", version="1")
    with pytest.raises(SegExportError, match="Rows×Columns"):
        build_dicom_seg(
            labels[:, :32], uids, source_files(baseline_series), engine="x", version="1"
        )
