"""DICOM SEG (highdicom) of a stored lung/ILD label map, referencing the source CT instances.

Two overlapping BINARY segments, both ``AUTOMATIC`` and identified by the engine's name and
version: segment 1 "Lung" (labels 1 and 2, i.e. the whole lung including ILD) and segment 2
"ILD" (label 2). Frames follow the label map's ``k`` order, one per source CT instance
(``sop_instance_uids[k]``); empty frames are omitted. UIDs are derived from the source series,
the engine, its version and the label map's content, so exporting the same result twice gives
the same SEG instance (a PACS that receives it twice keeps one copy).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.uid import generate_uid

LUNG_SEGMENT = 1
ILD_SEGMENT = 2
SEG_SERIES_NUMBER = 9001
# SNOMED CT 233703007 "Interstitial lung disease" is not in pydicom's code dictionary.
ILD_CODE = ("233703007", "SCT", "Interstitial lung disease")
# Engines that are trained networks; the rest are image-processing pipelines.
NETWORK_ENGINES = ("atlasnet", "unet")

# highdicom logs every copied module at INFO: a dozen lines per SEG in the worker log.
logging.getLogger("highdicom").setLevel(logging.WARNING)


class SegExportError(ValueError):
    """The label map cannot be exported against these source images (the message says why)."""


def _algorithm_family(engine: str) -> Any:
    from pydicom.sr.codedict import codes

    if engine in NETWORK_ENGINES:
        return codes.cid7162.ArtificialIntelligence
    return codes.cid7162.MorphologicalOperations


def build_dicom_seg(
    labels_kji: npt.NDArray[np.uint8],
    sop_instance_uids: Sequence[str],
    source_files: Mapping[str, Path],
    *,
    engine: str,
    version: str,
    parameters: Mapping[str, Any] | None = None,
) -> pydicom.Dataset:
    """A DICOM SEG of ``labels_kji`` (0 background / 1 lung / 2 ILD, ``[k, j, i]``).

    Args:
        labels_kji: the label map, one slice per source CT instance.
        sop_instance_uids: the source SOP Instance UID of each slice ``k``.
        source_files: path of the stored DICOM file of each of those UIDs.
        engine, version, parameters: what produced the label map (recorded in the SEG's
            AlgorithmIdentificationSequence and SoftwareVersions).

    Raises:
        SegExportError: a shape that does not match the source images, a missing source file,
            or a label other than 0, 1, 2.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    labels = np.asarray(labels_kji)
    if labels.ndim != 3 or labels.shape[0] != len(sop_instance_uids):
        raise SegExportError(
            f"label map shape {labels.shape} does not have one slice per source image "
            f"({len(sop_instance_uids)} SOP Instance UIDs)"
        )
    if labels.size and int(labels.max()) > ILD_SEGMENT:
        raise SegExportError(f"labels must be 0, 1 or 2; found {sorted(np.unique(labels))}")
    missing = [uid for uid in sop_instance_uids if uid not in source_files]
    if missing:
        raise SegExportError(f"no stored file for source instance {missing[0]}")
    sources = [
        pydicom.dcmread(source_files[uid], stop_before_pixels=True) for uid in sop_instance_uids
    ]
    first = sources[0]
    if (int(first.Rows), int(first.Columns)) != labels.shape[1:]:
        raise SegExportError(
            f"label map slices are {labels.shape[1]}×{labels.shape[2]} but the source images "
            f"are {first.Rows}×{first.Columns} (Rows×Columns)"
        )
    algorithm = hd.AlgorithmIdentificationSequence(
        name=engine,
        family=_algorithm_family(engine),
        version=version,
        source="ILD Review",
        parameters={str(k): str(v)[:64] for k, v in (parameters or {}).items()} or None,
    )
    series_uid = str(first.SeriesInstanceUID)
    digest = hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    tracking = {
        n: generate_uid(entropy_srcs=[series_uid, engine, "segment", str(n)])
        for n in (LUNG_SEGMENT, ILD_SEGMENT)
    }
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=LUNG_SEGMENT,
            segment_label="Lung",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=tracking[LUNG_SEGMENT],
            tracking_id=f"Lung ({engine})",
        ),
        hd.seg.SegmentDescription(
            segment_number=ILD_SEGMENT,
            segment_label="ILD",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=hd.sr.CodedConcept(*ILD_CODE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=tracking[ILD_SEGMENT],
            tracking_id=f"ILD ({engine})",
        ),
    ]
    # [frames, rows, columns, segments]: the two segments overlap (ILD lies inside the lung).
    masks = np.stack([labels > 0, labels == ILD_SEGMENT], axis=-1).astype(np.uint8)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=masks,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(entropy_srcs=[series_uid, engine, "seg-series"]),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=generate_uid(entropy_srcs=[series_uid, engine, version, digest]),
            instance_number=1,
            manufacturer="ILD Review",
            manufacturer_model_name=f"{engine} lung/ILD segmentation",
            software_versions=f"{engine} {version}"[:64],
            device_serial_number="0",
            series_description=f"Lung and ILD ({engine} {version})"[:64],
            content_label="LUNG_ILD",
            content_description=f"Automatic lung and ILD segmentation by {engine}"[:64],
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise SegExportError(f"the DICOM SEG could not be built: {error}") from error
    return seg


def write_dicom_seg(dataset: pydicom.Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path
