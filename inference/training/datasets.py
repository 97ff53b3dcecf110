"""Training data for the segmentation networks: phantom cohorts and reader-contour exports.

Two folder kinds are read by :func:`load_dataset` (detected by the manifest they hold):

1. **A phantom cohort** (``cohort.json``, written by ``python -m inference.phantoms``): every
   patient's baseline CT (``ct.nii.gz``, else its DICOM folder) with ``labels.nii.gz``. Fully
   annotated. ``timepoints=("baseline", "followup")`` adds the follow-ups (same patient group).

2. **A reader-contour export** (``dataset.json``), the format the app writes from its contours
   (see :func:`write_contour_export`, which writes it from volumes)::

       EXPORT/
         dataset.json
         cases/<case_id>/ct.nii.gz          CT in HU (or a DICOM series folder; see "ct")
         cases/<case_id>/labels.nii.gz      uint8 label map on the CT's grid

   ``dataset.json``::

       {
         "format": "ild-review-segmentation-dataset",
         "format_version": 1,
         "created": "2026-01-31T12:00:00Z",
         "source": "free text (project, export job, app version)",
         "labels": {"0": "background", "1": "lung without ILD", "2": "ILD"},
         "cases": [
           {
             "case_id": "RS1-C004-reader-a",      unique; letters, digits, "._-" only
             "group": "PAT-0042",                 optional: cases sharing a group (same patient)
                                                  stay on the same side of the train/validation
                                                  split; default: the case_id
             "ct": "cases/RS1-C004-reader-a/ct.nii.gz",   NIfTI/NRRD/MHA file or DICOM folder,
                                                  relative to dataset.json
             "labels": "cases/RS1-C004-reader-a/labels.nii.gz",
             "annotated_slices": [12, 13, 40],    k indices (axis 0 of the CT array as
                                                  inference.imageio.read_image returns it) whose
                                                  label map is complete; null = every slice
             "lung": "contours",                  "contours": label 1 was drawn by the reader;
                                                  "classical": only ILD was drawn, the lung is
                                                  filled in by the classical engine at load
             "study_instance_uid": "...", "series_instance_uid": "...",
             "frame_of_reference_uid": "...", "reader": "reader-a", "contour_version": 3
           }
         ]
       }

   Label map: ``uint8`` on exactly the CT's grid (same shape, spacing, origin, direction),
   0 background, 1 lung without ILD, 2 ILD; on annotated slices every lung pixel is 1 or 2
   (ILD is part of the lung). Pixels of slices not listed in ``annotated_slices`` are ignored
   by the losses (their labels may be anything in 0..2). The UID and reader fields are
   provenance: they are kept in the model's ``metadata.json``, never used to read images.

Every case is checked when loaded (:class:`DatasetError` names the case and the field), and the
whole dataset gets a content digest (:func:`dataset_digest`) recorded with the trained model.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.records import check_format, read_json_object
from inference.volume import Volume

DATASET_FORMAT = "ild-review-segmentation-dataset"
DATASET_FORMAT_VERSION = 1
DATASET_FILE = "dataset.json"
COHORT_FILE = "cohort.json"
LABELS: dict[str, str] = {"0": "background", "1": "lung without ILD", "2": "ILD"}
_CASE_ID = re.compile(r"^[A-Za-z0-9._-]+$")


class DatasetError(ValueError):
    """A training folder or one of its cases cannot be used (the message names it)."""


@dataclass(frozen=True)
class CaseRef:
    """Where one training case lies, before it is read.

    Attributes:
        case_id: unique name in the dataset.
        group: split key (a patient): cases of one group are never split apart.
        ct_path: CT file or DICOM folder.
        labels_path: label map file (0/1/2, the CT's grid).
        annotated_slices: ``k`` indices with a complete label map, or ``None`` (all).
        lung_from: ``"contours"`` or ``"classical"`` (see the module docstring).
        provenance: UIDs, reader, contour version (kept for the model's metadata).
    """

    case_id: str
    group: str
    ct_path: Path
    labels_path: Path
    annotated_slices: tuple[int, ...] | None = None
    lung_from: str = "contours"
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class SegmentationCase:
    """One training image: CT (HU) and label map on the same grid, plus annotated slices.

    Attributes:
        case_id: unique name.
        group: split key (patient).
        ct: ``int16`` HU volume ``[k, j, i]``.
        labels: ``uint8`` 0/1/2 volume on the CT's grid.
        annotated: ``bool`` ``[k]``: slices whose labels count in the loss.
        provenance: metadata kept for the model.
    """

    case_id: str
    group: str
    ct: Volume
    labels: Volume
    annotated: npt.NDArray[np.bool_]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ct.same_grid(self.labels):
            raise DatasetError(f"case {self.case_id}: labels are not on the CT's grid")
        if self.annotated.shape != (self.ct.shape_kji[0],):
            raise DatasetError(f"case {self.case_id}: annotated must be one flag per slice")

    @property
    def lung_ml(self) -> float:
        """Lung volume (labels 1 and 2) over annotated slices, millilitres."""
        lung = np.count_nonzero(self.labels.array[self.annotated] > 0)
        return float(lung) * self.ct.voxel_volume_ml


@dataclass(frozen=True, eq=False)
class Dataset:
    """Loaded cases with the dataset's kind, source folder and content digest."""

    cases: list[SegmentationCase]
    kind: str
    source: Path
    digest: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for a model's metadata (no voxels)."""
        return {
            "kind": self.kind,
            "source": str(self.source),
            "dataset_digest": self.digest,
            "cases": [{"case_id": c.case_id, "group": c.group, **c.provenance} for c in self.cases],
        }


def find_cases(
    folder: Path, *, timepoints: Sequence[str] = ("baseline",)
) -> tuple[str, list[CaseRef]]:
    """List the cases of a dataset folder without reading images.

    Args:
        folder: a phantom cohort (with ``cohort.json``) or an export (with ``dataset.json``).
        timepoints: phantom time points to use (``"baseline"``, ``"followup"``).

    Returns:
        ``("phantom-cohort" | "contour-export", cases)``.

    Raises:
        DatasetError: no manifest, a malformed one, or no cases.
        FileNotFoundError: if ``folder`` does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    if (folder / DATASET_FILE).is_file():
        return "contour-export", _export_cases(folder)
    if (folder / COHORT_FILE).is_file():
        return "phantom-cohort", _cohort_cases(folder, timepoints)
    raise DatasetError(
        f"{folder} holds neither {DATASET_FILE} (reader-contour export) nor {COHORT_FILE} "
        "(phantom cohort)"
    )


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, DatasetError, "the dataset description")


def _cohort_cases(folder: Path, timepoints: Sequence[str]) -> list[CaseRef]:
    manifest = _read_json(folder / COHORT_FILE)
    patients = manifest.get("patients")
    if not isinstance(patients, list) or not patients:
        raise DatasetError(f"{folder / COHORT_FILE}: no patients")
    refs: list[CaseRef] = []
    for patient in patients:
        pid = str(patient.get("patient_id"))
        for name in timepoints:
            tp = (patient.get("timepoints") or {}).get(name)
            if tp is None:
                continue
            ct_rel = tp.get("ct_nifti") or tp.get("dicom_dir")
            if not ct_rel or not tp.get("labels"):
                raise DatasetError(f"{folder / COHORT_FILE}: {pid}/{name} has no CT or labels")
            refs.append(
                CaseRef(
                    case_id=f"{pid}-{name}",
                    group=pid,
                    ct_path=folder / ct_rel,
                    labels_path=folder / tp["labels"],
                    provenance={
                        "study_instance_uid": tp.get("study_instance_uid"),
                        "series_instance_uid": tp.get("series_instance_uid"),
                        "phantom_seed": patient.get("seed"),
                        "cohort_seed": manifest.get("seed"),
                    },
                )
            )
    if not refs:
        raise DatasetError(f"{folder / COHORT_FILE}: no time point among {list(timepoints)}")
    return refs


def _export_cases(folder: Path) -> list[CaseRef]:
    path = folder / DATASET_FILE
    data = _read_json(path)
    check_format(
        data,
        str(path),
        expected=DATASET_FORMAT,
        version=DATASET_FORMAT_VERSION,
        error=DatasetError,
    )
    labels = {str(k): str(v) for k, v in dict(data.get("labels") or {}).items()}
    if labels != LABELS:
        raise DatasetError(f"{path}: 'labels' must be {LABELS}, got {labels}")
    cases = data.get("cases")
    if not isinstance(cases, list) or not cases:
        raise DatasetError(f"{path}: 'cases' must be a non-empty list")
    refs: list[CaseRef] = []
    seen: set[str] = set()
    for n, case in enumerate(cases):
        where = f"{path}: cases[{n}]"
        if not isinstance(case, dict):
            raise DatasetError(f"{where} must be an object")
        case_id = case.get("case_id")
        if not isinstance(case_id, str) or not _CASE_ID.match(case_id):
            raise DatasetError(
                f"{where}: 'case_id' must be letters, digits, '._-', got {case_id!r}"
            )
        if case_id in seen:
            raise DatasetError(f"{where}: duplicate case_id {case_id!r}")
        seen.add(case_id)
        for key in ("ct", "labels"):
            if not isinstance(case.get(key), str):
                raise DatasetError(f"{where} ({case_id}): '{key}' must be a relative path")
        annotated = case.get("annotated_slices")
        if annotated is not None and (
            not isinstance(annotated, list)
            or not all(isinstance(k, int) and k >= 0 for k in annotated)
        ):
            raise DatasetError(
                f"{where} ({case_id}): 'annotated_slices' must be null or a list of slice indices"
            )
        lung_from = case.get("lung", "contours")
        if lung_from not in ("contours", "classical"):
            raise DatasetError(f"{where} ({case_id}): 'lung' must be 'contours' or 'classical'")
        provenance = {
            key: case[key]
            for key in (
                "study_instance_uid",
                "series_instance_uid",
                "frame_of_reference_uid",
                "reader",
                "contour_version",
            )
            if key in case
        }
        refs.append(
            CaseRef(
                case_id=case_id,
                group=str(case.get("group") or case_id),
                ct_path=folder / case["ct"],
                labels_path=folder / case["labels"],
                annotated_slices=None if annotated is None else tuple(sorted(set(annotated))),
                lung_from=str(lung_from),
                provenance=provenance,
            )
        )
    return refs


def load_case(ref: CaseRef) -> SegmentationCase:
    """Read and check one case.

    Raises:
        DatasetError: unreadable files, labels off the CT's grid or outside 0..2, annotated
            slice indices outside the volume, or no annotated lung at all.
    """
    from inference.imageio import read_image

    try:
        ct = read_image(ref.ct_path)
        labels = read_image(ref.labels_path)
    except (OSError, ValueError) as error:
        raise DatasetError(f"case {ref.case_id}: cannot read its images: {error}") from error
    if not labels.same_grid(ct):
        raise DatasetError(
            f"case {ref.case_id}: labels {ref.labels_path.name} are not on the CT's grid "
            f"(shape {labels.shape_kji} vs {ct.shape_kji}, or spacing/origin/direction)"
        )
    values = np.asarray(labels.array)
    if values.size and (values.min() < 0 or values.max() > 2):
        raise DatasetError(
            f"case {ref.case_id}: label values must be 0, 1, 2; got {np.unique(values).tolist()}"
        )
    n_k = ct.shape_kji[0]
    annotated = np.ones(n_k, dtype=bool)
    if ref.annotated_slices is not None:
        if any(k >= n_k for k in ref.annotated_slices):
            raise DatasetError(
                f"case {ref.case_id}: annotated_slices go beyond the {n_k} slices of the CT"
            )
        annotated[:] = False
        annotated[list(ref.annotated_slices)] = True
    hu = np.clip(np.rint(np.asarray(ct.array, dtype=np.float32)), -1024, 3071).astype(np.int16)
    label_array = values.astype(np.uint8)
    if ref.lung_from == "classical":
        from inference.segmentation.classical import lung_mask

        lung = np.asarray(lung_mask(ct.with_array(hu)).array) > 0
        label_array = np.where(label_array == 2, 2, np.where(lung, 1, 0)).astype(np.uint8)
    if not np.any(label_array[annotated] > 0):
        raise DatasetError(f"case {ref.case_id}: no lung in its annotated slices")
    return SegmentationCase(
        case_id=ref.case_id,
        group=ref.group,
        ct=ct.with_array(hu),
        labels=ct.with_array(label_array),
        annotated=annotated,
        provenance=dict(ref.provenance),
    )


def dataset_digest(cases: Iterable[SegmentationCase]) -> str:
    """``"sha256:<hex>"`` over every case's id, geometry, HU voxels, labels and annotated slices.

    Computed from the voxels (not the files), so the same data gives the same digest whether it
    came as DICOM or NIfTI; the order of cases does not matter.
    """
    parts: list[tuple[str, str]] = []
    for case in cases:
        h = hashlib.sha256()
        h.update(case.case_id.encode())
        geometry = np.concatenate(
            [
                np.asarray(case.ct.shape_kji, dtype=np.float64),
                np.round(np.asarray(case.ct.spacing_mm), 4),
                np.round(np.asarray(case.ct.origin_lps_mm), 3),
                np.round(case.ct.direction.ravel(), 6),
            ]
        )
        h.update(geometry.tobytes())
        h.update(np.ascontiguousarray(case.ct.array, dtype=np.int16).tobytes())
        h.update(np.ascontiguousarray(case.labels.array, dtype=np.uint8).tobytes())
        h.update(case.annotated.astype(np.uint8).tobytes())
        parts.append((case.case_id, h.hexdigest()))
    total = hashlib.sha256()
    for case_id, digest in sorted(parts):
        total.update(f"{case_id}:{digest}\n".encode())
    return f"sha256:{total.hexdigest()}"


def load_dataset(folder: Path, *, timepoints: Sequence[str] = ("baseline",)) -> Dataset:
    """Read every case of a phantom cohort or a reader-contour export (see module docs).

    Raises:
        DatasetError, FileNotFoundError: see :func:`find_cases` and :func:`load_case`.
    """
    kind, refs = find_cases(folder, timepoints=timepoints)
    cases = [load_case(ref) for ref in refs]
    return Dataset(cases=cases, kind=kind, source=Path(folder), digest=dataset_digest(cases))


@dataclass(frozen=True, eq=False)
class ExportCase:
    """One case for :func:`write_contour_export` (what the app gathers from a read).

    Attributes:
        case_id: unique; letters, digits, ``._-``.
        ct: CT in HU, array ``[k, j, i]``, LPS geometry (e.g. from ``inference.imageio``).
        labels: uint8 0/1/2 on the CT's grid (contours rasterised).
        annotated_slices: ``k`` indices with complete labels; ``None`` = all.
        lung: ``"contours"`` or ``"classical"`` (only ILD was drawn).
        group: split key (patient); default the case id.
        provenance: UIDs, reader, contour version (written into ``dataset.json``).
    """

    case_id: str
    ct: Volume
    labels: Volume
    annotated_slices: Sequence[int] | None = None
    lung: str = "contours"
    group: str | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)


def write_contour_export(
    out_dir: Path, cases: Iterable[ExportCase], *, source: str = "ild-review"
) -> Path:
    """Write a reader-contour export (the ``dataset.json`` format above); return its path.

    Raises:
        DatasetError: a bad case id, a duplicate, labels off the CT's grid or outside 0..2,
            an unknown ``lung`` value, annotated slices outside the volume.
    """
    from inference.imageio import write_image

    out_dir = Path(out_dir)
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for case in cases:
        if not _CASE_ID.match(case.case_id) or case.case_id in seen:
            raise DatasetError(f"case_id {case.case_id!r} is malformed or duplicated")
        seen.add(case.case_id)
        if not case.labels.same_grid(case.ct):
            raise DatasetError(f"case {case.case_id}: labels are not on the CT's grid")
        labels = np.asarray(case.labels.array)
        if labels.size and (labels.min() < 0 or labels.max() > 2):
            raise DatasetError(f"case {case.case_id}: label values must be 0, 1, 2")
        if case.lung not in ("contours", "classical"):
            raise DatasetError(f"case {case.case_id}: lung must be 'contours' or 'classical'")
        annotated = (
            None
            if case.annotated_slices is None
            else sorted({int(k) for k in case.annotated_slices})
        )
        if annotated is not None and any(k < 0 or k >= case.ct.shape_kji[0] for k in annotated):
            raise DatasetError(f"case {case.case_id}: annotated_slices outside the volume")
        rel = Path("cases") / case.case_id
        write_image(case.ct, out_dir / rel / "ct.nii.gz")
        write_image(
            case.labels.with_array(labels.astype(np.uint8)), out_dir / rel / "labels.nii.gz"
        )
        entries.append(
            {
                "case_id": case.case_id,
                "group": case.group or case.case_id,
                "ct": (rel / "ct.nii.gz").as_posix(),
                "labels": (rel / "labels.nii.gz").as_posix(),
                "annotated_slices": annotated,
                "lung": case.lung,
                **dict(case.provenance),
            }
        )
    if not entries:
        raise DatasetError("an export needs at least one case")
    manifest = {
        "format": DATASET_FORMAT,
        "format_version": DATASET_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "labels": LABELS,
        "cases": entries,
    }
    path = out_dir / DATASET_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def split_cases(
    cases: Sequence[SegmentationCase], *, validation_fraction: float, seed: int
) -> tuple[list[SegmentationCase], list[SegmentationCase]]:
    """Seeded split by group: ``(training, validation)``.

    ``round(groups * validation_fraction)`` groups go to validation (at least one when there are
    two groups or more and the fraction is positive; none with a single group).

    Raises:
        ValueError: if the fraction is outside ``[0, 1)`` or there are no cases.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if not cases:
        raise ValueError("no cases to split")
    groups = sorted({c.group for c in cases})
    n_val = round(len(groups) * validation_fraction)
    if validation_fraction > 0 and len(groups) >= 2:
        n_val = min(max(n_val, 1), len(groups) - 1)
    order = np.random.default_rng([int(seed), 2020]).permutation(len(groups))
    val_groups = {groups[i] for i in order[:n_val]}
    training = [c for c in cases if c.group not in val_groups]
    validation = [c for c in cases if c.group in val_groups]
    return training, validation
