"""One reader's contours of one series as a DICOM Segmentation (highdicom), and back.

A SEG per read (assignment) and series: BINARY, one frame per contoured slice and segment,
segments "Lung" (SCT 39607008) and "Interstitial lung disease" (SCT 233703007) — only those the
reader drew. The masks are the contour versions' rasterized masks (the latest version of each
slice), i.e. the pixels Dice is computed on. The source images are the stored instances' headers.

Identifiers: the SEG copies the patient and study modules of its source images. De-identified
patients' files already hold pseudonyms; for a patient imported without de-identification the
patient module is overwritten with :func:`reports.selectors.export_patient_id` and the birth
date, accession number and referring physician are emptied, so only pseudonymous identifiers
leave the app. The content creator is the reader's username.

Contours come from ``annotation.selectors.contours_visible_to``: a reader can export only their
own reads, a coordinator any read of their projects.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from annotation.models import Assignment, Structure
from annotation.selectors import contours_visible_to, latest_contours
from annotation.services.geometry import unpack_mask
from core.exceptions import ApplicationError
from reports.selectors import export_patient_id
from studies.models import Instance, Series
from studies.services import storage

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import User

MANUFACTURER = "ILD Review"
SOFTWARE_VERSION = "1"
SEGMENTS: dict[str, tuple[str, Code, Code]] = {
    Structure.LUNG.value: (
        "Lung",
        Code("91723000", "SCT", "Anatomical Structure"),
        Code("39607008", "SCT", "Lung"),
    ),
    Structure.ILD.value: (
        "Interstitial lung disease",
        Code("49755003", "SCT", "Morphologically Altered Structure"),
        Code("233703007", "SCT", "Interstitial lung disease"),
    ),
}
STRUCTURE_BY_LABEL = {label: structure for structure, (label, _, _) in SEGMENTS.items()}


@dataclass(frozen=True)
class SegExport:
    filename: str
    data: bytes
    series_instance_uid: str
    n_frames_source: int
    structures: tuple[str, ...]


def _order_key(instance: Instance) -> tuple[float, int]:
    position = instance.image_position_patient or [0.0, 0.0, 0.0]
    return (-float(position[2]), instance.instance_number or 0)


def seg_series_for(user: User | AnonymousUser, assignment: Assignment) -> list[Series]:
    """Series on which the read has visible, non-empty contours (the case's series first)."""
    uids = set(
        latest_contours(contours_visible_to(user).filter(assignment=assignment))
        .filter(pixel_count__gt=0)
        .values_list("referenced_sop_instance_uid", flat=True)
    )
    series_ids = set(
        Instance.objects.filter(sop_instance_uid__in=uids).values_list("series_id", flat=True)
    )
    case = assignment.case
    order = [case.series_id, case.baseline_series_id]
    return sorted(
        Series.objects.filter(pk__in=series_ids),
        key=lambda s: order.index(s.pk) if s.pk in order else len(order),
    )


def assignment_seg(
    user: User | AnonymousUser, assignment: Assignment, series: Series | None = None
) -> SegExport:
    """The read's contours on ``series`` (default: the case's series) as a DICOM SEG.

    Raises:
        ApplicationError: 404 when the read has no visible non-empty contour on that series.
    """
    series = series or assignment.case.series
    contours = list(
        latest_contours(contours_visible_to(user).filter(assignment=assignment))
        .filter(pixel_count__gt=0)
        .order_by("referenced_sop_instance_uid", "structure")
    )
    instances = {
        i.sop_instance_uid: i
        for i in Instance.objects.filter(
            series=series,
            sop_instance_uid__in=[c.referenced_sop_instance_uid for c in contours],
        )
    }
    contours = [c for c in contours if c.referenced_sop_instance_uid in instances]
    if not contours:
        raise ApplicationError(
            "this read has no contour on that series that you may export", status_code=404
        )
    ordered = sorted(instances.values(), key=_order_key)
    index = {instance.sop_instance_uid: k for k, instance in enumerate(ordered)}
    structures = [s for s in SEGMENTS if any(c.structure == s for c in contours)]
    rows, columns = int(ordered[0].rows), int(ordered[0].columns)
    pixels = np.zeros((len(ordered), rows, columns, len(structures)), dtype=bool)
    for contour in contours:
        if (contour.mask_rows, contour.mask_columns) != (rows, columns):
            raise ApplicationError("contour masks of this series differ in size")
        mask = unpack_mask(bytes(contour.mask), contour.mask_rows, contour.mask_columns)
        pixels[
            index[contour.referenced_sop_instance_uid], :, :, structures.index(contour.structure)
        ] = mask
    sources = [
        pydicom.dcmread(storage.absolute(instance.file), stop_before_pixels=True)
        for instance in ordered
    ]
    for source in sources:
        # an empty Specific Character Set means the default repertoire; highdicom refuses ""
        if "SpecificCharacterSet" in source and not source.SpecificCharacterSet:
            del source.SpecificCharacterSet
    reader = assignment.reader.get_username()
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=SEGMENTS[structure][0],
            segmented_property_category=SEGMENTS[structure][1],
            segmented_property_type=SEGMENTS[structure][2],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, structure in enumerate(structures, start=1)
    ]
    fingerprint = hashlib.sha1("|".join(sorted(str(c.pk) for c in contours)).encode()).hexdigest()
    with warnings.catch_warnings():
        # pseudonyms and usernames are single-component person names, on purpose
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(
                entropy_srcs=["seg-series", str(assignment.pk), series.series_instance_uid]
            ),
            series_number=900 + (1 if assignment.is_repeat else 0),
            sop_instance_uid=generate_uid(
                entropy_srcs=["seg", str(assignment.pk), series.series_instance_uid, fingerprint]
            ),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="ILD Review reading workstation",
            software_versions=SOFTWARE_VERSION,
            device_serial_number="0",
            content_label="READER",
            content_description=f"{assignment.study.name}: {reader}"[:64],
            content_creator_name=f"{reader}^",  # one component: the username as family name
            omit_empty_frames=True,
        )
    seg.SeriesDescription = f"{reader}{' repeat' if assignment.is_repeat else ''} contours"[:64]
    patient = series.study.patient
    if not patient.deidentified:
        pseudonym = export_patient_id(patient)
        seg.PatientID = pseudonym
        seg.PatientName = pseudonym
        for keyword in ("PatientBirthDate", "AccessionNumber", "ReferringPhysicianName"):
            if keyword in seg:
                seg[keyword].value = ""
    buffer = io.BytesIO()
    seg.save_as(buffer)
    label = f"{assignment.case.label}_{reader}{'_repeat' if assignment.is_repeat else ''}"
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)
    return SegExport(
        filename=f"{safe}_{series.series_number or 0}_seg.dcm",
        data=buffer.getvalue(),
        series_instance_uid=series.series_instance_uid,
        n_frames_source=len(ordered),
        structures=tuple(structures),
    )


def read_seg(data: bytes) -> dict[tuple[str, str], npt.NDArray[np.bool_]]:
    """``(referenced SOP Instance UID, structure)`` → mask, for every non-empty frame of a SEG
    (ours or another tool's; segments we do not know keep their label as the structure)."""
    seg = hd.seg.segread(io.BytesIO(data))
    uids = [sop for _, _, sop in seg.get_source_image_uids()]
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    labels = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    out: dict[tuple[str, str], npt.NDArray[np.bool_]] = {}
    # Frames are indexed by the source instance they were derived from; other tools (dcmqi)
    # do not always state that spatial locations were preserved, which holds for a SEG drawn
    # on its CT's own grid.
    wanted = uids
    array = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=wanted,
        segment_numbers=numbers,
        combine_segments=False,
        ignore_spatial_locations=True,
    )
    for k, uid in enumerate(wanted):
        for s, number in enumerate(numbers):
            mask = np.asarray(array[k, :, :, s] > 0)
            if mask.any():
                label = labels[number]
                out[(uid, STRUCTURE_BY_LABEL.get(label, label))] = mask
    return out


def describe(data: bytes) -> dict[str, Any]:
    """Header facts of a SEG for checks and the UI (no pixel data)."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return {
        "sop_class_uid": str(ds.SOPClassUID),
        "patient_id": str(ds.get("PatientID", "")),
        "patient_name": str(ds.get("PatientName", "")),
        "segments": [str(item.SegmentLabel) for item in ds.SegmentSequence],
        "frames": int(ds.NumberOfFrames),
        "content_creator": str(ds.get("ContentCreatorName", "")),
    }
