"""Turn a DICOM CT series into a :class:`~inference.volume.Volume`, or say exactly why not.

Geometry comes from the headers only, never from file names or ``InstanceNumber``:

* the slice normal is the cross product of the row and column cosines of
  ``ImageOrientationPatient`` (IOP);
* slices are ordered by their ``ImagePositionPatient`` (IPP) projected on that normal, and the
  slice spacing is measured from those projections (``SliceThickness`` is the reconstructed
  thickness, not the distance between slices, and is only reported);
* the volume's direction matrix has the row cosine, the column cosine and the normal as columns,
  so ``k`` increases along the normal and the matrix is a proper rotation.

Policies for series that do not form a regular grid (each is detected by
:func:`summarize_geometry`, which needs headers only):

* missing or malformed ImagePositionPatient, ImageOrientationPatient, PixelSpacing, Rows or
  Columns: refused, naming the attribute, its tag and the slices lacking it (no defaults: a
  guessed position or voxel size would give wrong volumes in mL);
* mixed orientations (a localizer or reformat mixed in): refused;
* mixed Rows/Columns or PixelSpacing (two reconstructions mixed): refused;
* several SeriesInstanceUIDs, multi-frame or colour images: refused;
* missing slices, i.e. a spacing larger than ``GAP_FACTOR`` (1.5) x the median: refused with
  ``missing slices: gap of 6.00 mm after slice 41 (...; expected 2.00 mm); re-export the
  complete series``;
* spacing jitter (some spacing more than 1 % from the median, none a gap):
  ``on_nonuniform="resample"`` (default) interpolates linearly along the normal onto a uniform
  grid at the median spacing; ``"refuse"`` refuses;
* gantry tilt (slices shifted in their own plane along the stack, more than 0.05 pixel):
  ``on_gantry_tilt="resample"`` (default) shifts each slice in-plane to where it lies physically
  (a shear correction with linear interpolation) on an in-plane grid enlarged to keep every
  voxel, filled with the series' minimum elsewhere; ``"refuse"`` refuses;
* duplicated positions: identical copies (same IPP, same HU) are dropped; copies whose pixels
  differ are refused (two acquisitions mixed);
* a single slice: accepted, its spacing taken from SpacingBetweenSlices, else SliceThickness,
  else 1 mm.

``Modality`` is not required: the stripped lungmask test slices (no Modality, IPP (0,0,0) and
(0,0,1), identity IOP) carry all the geometry a volume needs and are read as a 2-slice volume.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import pixel_array

from inference.volume import GeometryError, Volume

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
NonUniformPolicy = Literal["resample", "refuse"]
TiltPolicy = Literal["resample", "refuse"]

#: Two slices closer than this along the normal share one position.
DUPLICATE_TOLERANCE_MM = 0.01
#: Spacings within this fraction of the median (or within ``SPACING_ATOL_MM``) count as uniform.
SPACING_RTOL = 0.01
SPACING_ATOL_MM = 0.001
#: A spacing larger than this multiple of the median is a gap (missing slices).
GAP_FACTOR = 1.5
#: Largest per-component difference between two IOPs that still counts as one orientation.
ORIENTATION_TOLERANCE = 1e-3
#: In-plane shifts between slices below this fraction of a pixel are ignored (rounding of IPP).
INPLANE_TOLERANCE_PX = 0.05

_TAGS = {
    "ImagePositionPatient": "(0020,0032)",
    "ImageOrientationPatient": "(0020,0037)",
    "PixelSpacing": "(0028,0030)",
    "Rows": "(0028,0010)",
    "Columns": "(0028,0011)",
}
_PURPOSE = {
    "ImagePositionPatient": "to order the slices and measure their spacing",
    "ImageOrientationPatient": "to know the slice normal and the voxel directions",
    "PixelSpacing": "to know the voxel size (volumes in mL depend on it)",
    "Rows": "to know the slice size",
    "Columns": "to know the slice size",
}


class DicomSeriesError(GeometryError):
    """A set of DICOM datasets cannot be made into one regular volume.

    ``problems`` lists each reason, written for a person: what is wrong and what to fix.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)


@dataclass(frozen=True)
class SliceGap:
    """A spacing larger than ``GAP_FACTOR`` x the median, after slice ``after_index``.

    ``after_index`` counts distinct positions from 0 in the order along the slice normal.
    """

    after_index: int
    spacing_mm: float


@dataclass(frozen=True)
class SeriesGeometry:
    """What the headers of one series say about its geometry (no pixel data needed).

    Vectors are in LPS (patient) coordinates, lengths in millimetres. ``orientation`` is the most
    common ImageOrientationPatient (row cosine, then column cosine) and ``normal`` their unit cross
    product. ``pixel_spacing_mm`` is DICOM's (row spacing, column spacing), i.e. (j, i). Slice
    spacings are distances between distinct positions along ``normal``; they are ``None`` when the
    positions cannot be known (missing IPP/IOP, mixed orientations) or for a single slice.
    ``slice_thickness_mm`` is the median SliceThickness, reported only. ``buildable``
    says whether :func:`volume_from_datasets` would accept the series with its default policies
    (it may still refuse duplicated positions whose pixels differ, which headers cannot tell).
    """

    n_slices: int
    rows: int | None
    columns: int | None
    pixel_spacing_mm: tuple[float, float] | None
    slice_spacing_mm: float | None
    min_slice_spacing_mm: float | None
    max_slice_spacing_mm: float | None
    slice_thickness_mm: float | None
    orientation: tuple[float, ...] | None
    normal: tuple[float, float, float] | None
    uniform: bool
    gaps: tuple[SliceGap, ...]
    gantry_tilt_deg: float
    mixed_orientation: bool
    mixed_dimensions: bool
    duplicate_positions: int
    missing_attributes: tuple[str, ...]
    series_instance_uids: tuple[str, ...]
    problems: tuple[str, ...]
    buildable: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable values (lists, floats, ints, strings, bools, None)."""
        return {
            "n_slices": self.n_slices,
            "rows": self.rows,
            "columns": self.columns,
            "pixel_spacing_mm": _list_or_none(self.pixel_spacing_mm),
            "slice_spacing_mm": self.slice_spacing_mm,
            "min_slice_spacing_mm": self.min_slice_spacing_mm,
            "max_slice_spacing_mm": self.max_slice_spacing_mm,
            "slice_thickness_mm": self.slice_thickness_mm,
            "orientation": _list_or_none(self.orientation),
            "normal": _list_or_none(self.normal),
            "uniform": self.uniform,
            "gaps": [{"after_index": g.after_index, "spacing_mm": g.spacing_mm} for g in self.gaps],
            "gantry_tilt_deg": self.gantry_tilt_deg,
            "mixed_orientation": self.mixed_orientation,
            "mixed_dimensions": self.mixed_dimensions,
            "duplicate_positions": self.duplicate_positions,
            "missing_attributes": list(self.missing_attributes),
            "series_instance_uids": list(self.series_instance_uids),
            "problems": list(self.problems),
            "buildable": self.buildable,
        }


def _list_or_none(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


# --------------------------------------------------------------------------------------------
# Header analysis


@dataclass(frozen=True)
class _Problem:
    kind: Literal["refuse", "nonuniform", "tilt", "duplicates"]
    message: str


@dataclass(frozen=True)
class _Orientation:
    iop: tuple[float, ...]  # the most common ImageOrientationPatient
    row_cosine: npt.NDArray[np.float64]  # orthonormalized direction of increasing i
    col_cosine: npt.NDArray[np.float64]  # orthonormalized direction of increasing j
    normal: npt.NDArray[np.float64] | None  # None when the IOP is not orthonormal
    mixed: bool


@dataclass(frozen=True)
class _Stack:
    """The slices' positions along the normal, grouped where they coincide."""

    groups: list[list[int]]  # dataset indices sharing each distinct position, along the normal
    positions_mm: npt.NDArray[np.float64]  # distance of each group along the normal
    ipp_mm: npt.NDArray[np.float64]  # (n_groups, 3) IPP of each group's first slice
    offsets_ji_px: npt.NDArray[np.float64]  # (n_groups, 2) in-plane shift from the first group
    median_mm: float | None
    min_mm: float | None
    max_mm: float | None
    uniform: bool
    gaps: tuple[SliceGap, ...]
    tilt_deg: float


@dataclass(frozen=True)
class _Layout:
    """Everything needed to fill a volume, in order along the normal."""

    stack: _Stack
    orientation: _Orientation
    normal: npt.NDArray[np.float64]
    spacing_ji_mm: tuple[float, float]
    shape_ji: tuple[int, int]
    single_slice_spacing_mm: float


@dataclass(frozen=True)
class _Analysis:
    geometry: SeriesGeometry
    problems: list[_Problem]
    layout: _Layout | None


def summarize_geometry(datasets: Sequence[Dataset]) -> SeriesGeometry:
    """Summarize the geometry of one series from its headers.

    Works on datasets read with ``stop_before_pixels=True``. Never raises for a bad geometry: every
    problem found is described in ``problems`` (and flagged in the other fields). Slice indices in
    ``gaps`` count distinct positions from 0 along the normal.

    Raises:
        DicomSeriesError: if ``datasets`` is empty.
    """
    return _analyse(datasets).geometry


def _float_values(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) != count:
        return None
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return result if all(math.isfinite(v) for v in result) else None


def _optional_float(ds: Dataset, keyword: str) -> float | None:
    values = _float_values(ds, keyword, 1)
    return None if values is None else values[0]


def _label(ds: Dataset, index: int) -> str:
    """How a person finds the slice: file name, else InstanceNumber, else SOPInstanceUID."""
    filename = getattr(ds, "filename", None)
    if isinstance(filename, str) and filename:
        return Path(filename).name
    if ds.get("InstanceNumber") not in (None, ""):
        return f"InstanceNumber {ds.InstanceNumber}"
    if ds.get("SOPInstanceUID"):
        return f"SOPInstanceUID {ds.SOPInstanceUID}"
    return f"dataset #{index}"


def _examples(datasets: Sequence[Dataset], indices: Sequence[int], limit: int = 3) -> str:
    names = [_label(datasets[i], i) for i in indices[:limit]]
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return ", ".join(names) + more


def _refusal(message: str) -> _Problem:
    return _Problem("refuse", message)


def _analyse(datasets: Sequence[Dataset]) -> _Analysis:
    if not datasets:
        raise DicomSeriesError("no DICOM datasets given")
    series_uids, problems = _series_problems(datasets)

    # Per-slice attributes; None where absent or malformed.
    ipps = [_float_values(ds, "ImagePositionPatient", 3) for ds in datasets]
    iops = [_float_values(ds, "ImageOrientationPatient", 6) for ds in datasets]
    pixel_spacings = [_float_values(ds, "PixelSpacing", 2) for ds in datasets]
    rows = [int(ds.Rows) if ds.get("Rows") else None for ds in datasets]
    columns = [int(ds.Columns) if ds.get("Columns") else None for ds in datasets]
    missing = _missing_attributes(
        datasets,
        {
            "ImagePositionPatient": ipps,
            "ImageOrientationPatient": iops,
            "PixelSpacing": pixel_spacings,
            "Rows": rows,
            "Columns": columns,
        },
        problems,
    )

    sizes = Counter((r, c) for r, c in zip(rows, columns, strict=True) if r and c)
    if len(sizes) > 1:
        listing = ", ".join(f"{r}x{c} ({count} slices)" for (r, c), count in sizes.items())
        problems.append(
            _refusal(
                f"slices have different sizes (rows x columns: {listing}); "
                "two reconstructions are mixed: select the images of one"
            )
        )
    shape_ji = sizes.most_common(1)[0][0] if sizes else None

    spacings = Counter((round(s[0], 4), round(s[1], 4)) for s in pixel_spacings if s is not None)
    if len(spacings) > 1:
        listing = ", ".join(f"{a} x {b} mm ({count} slices)" for (a, b), count in spacings.items())
        problems.append(
            _refusal(
                f"slices have different PixelSpacing ({listing}); "
                "two reconstructions are mixed: select the images of one"
            )
        )
    pixel_spacing: tuple[float, float] | None = None
    if spacings:
        # The exact value of the most common spacing (the rounding only groups the slices).
        common = spacings.most_common(1)[0][0]
        exact = next(s for s in pixel_spacings if s and (round(s[0], 4), round(s[1], 4)) == common)
        pixel_spacing = (exact[0], exact[1])

    thicknesses = [t for ds in datasets if (t := _optional_float(ds, "SliceThickness")) is not None]
    slice_thickness = float(np.median(thicknesses)) if thicknesses else None

    orientation = _orientation([iop for iop in iops if iop is not None], problems)
    stack: _Stack | None = None
    layout: _Layout | None = None
    normal = None if orientation is None else orientation.normal
    if (
        orientation is not None
        and normal is not None
        and not orientation.mixed
        and not missing
        and pixel_spacing is not None
        and shape_ji is not None
    ):
        positions = np.asarray(ipps, dtype=np.float64)
        stack = _stack(datasets, positions, orientation, normal, pixel_spacing, problems)
        single = _optional_float(datasets[0], "SpacingBetweenSlices") or slice_thickness or 1.0
        layout = _Layout(stack, orientation, normal, pixel_spacing, shape_ji, abs(single) or 1.0)

    geometry = SeriesGeometry(
        n_slices=len(datasets),
        rows=None if shape_ji is None else shape_ji[0],
        columns=None if shape_ji is None else shape_ji[1],
        pixel_spacing_mm=pixel_spacing,
        slice_spacing_mm=None if stack is None else stack.median_mm,
        min_slice_spacing_mm=None if stack is None else stack.min_mm,
        max_slice_spacing_mm=None if stack is None else stack.max_mm,
        slice_thickness_mm=slice_thickness,
        orientation=None if orientation is None else orientation.iop,
        normal=None if normal is None else _triple(normal),
        uniform=stack is not None and stack.uniform,
        gaps=() if stack is None else stack.gaps,
        gantry_tilt_deg=0.0 if stack is None else stack.tilt_deg,
        mixed_orientation=orientation is not None and orientation.mixed,
        mixed_dimensions=len(sizes) > 1,
        duplicate_positions=0 if stack is None else len(datasets) - len(stack.groups),
        missing_attributes=tuple(missing),
        series_instance_uids=series_uids,
        problems=tuple(p.message for p in problems),
        buildable=layout is not None and not any(p.kind == "refuse" for p in problems),
    )
    return _Analysis(geometry, problems, layout)


def _series_problems(datasets: Sequence[Dataset]) -> tuple[tuple[str, ...], list[_Problem]]:
    """The SeriesInstanceUIDs present, and refusals for several series, multi-frame or colour."""
    problems: list[_Problem] = []
    uids = Counter(str(ds.get("SeriesInstanceUID", "") or "") for ds in datasets)
    named_uids = tuple(uid for uid in uids if uid)
    if len(named_uids) > 1:
        listing = ", ".join(f"{uid or '(none)'} ({n} slices)" for uid, n in uids.most_common())
        problems.append(
            _refusal(
                f"the datasets belong to {len(named_uids)} series: {listing}; pass one series only"
            )
        )
    frames = [i for i, ds in enumerate(datasets) if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if frames:
        problems.append(
            _refusal(
                f"multi-frame images ({_examples(datasets, frames)}) are not supported; "
                "export the series as single-frame CT Image Storage"
            )
        )
    colour = [i for i, ds in enumerate(datasets) if int(ds.get("SamplesPerPixel", 1) or 1) != 1]
    if colour:
        problems.append(
            _refusal(
                f"colour images ({_examples(datasets, colour)}) have SamplesPerPixel != 1; "
                "a CT series must be greyscale"
            )
        )
    return named_uids, problems


def _missing_attributes(
    datasets: Sequence[Dataset], values: dict[str, list[Any]], problems: list[_Problem]
) -> list[str]:
    """Keywords absent (or malformed) in any slice; appends one refusal per keyword."""
    missing = []
    for keyword, per_slice in values.items():
        lacking = [i for i, value in enumerate(per_slice) if value is None]
        if lacking:
            missing.append(keyword)
            problems.append(
                _refusal(
                    f"{keyword} {_TAGS[keyword]} is missing or malformed in {len(lacking)} of "
                    f"{len(datasets)} slices ({_examples(datasets, lacking)}); it is needed "
                    f"{_PURPOSE[keyword]}; re-export the series with complete headers"
                )
            )
    return missing


def _orientation(iops: list[tuple[float, ...]], problems: list[_Problem]) -> _Orientation | None:
    """The most common orientation; refusals for mixed or non-orthonormal orientations."""
    if not iops:
        return None
    clusters: list[list[Any]] = []  # [reference IOP, count]
    for iop in iops:
        for cluster in clusters:
            if np.max(np.abs(np.subtract(iop, cluster[0]))) <= ORIENTATION_TOLERANCE:
                cluster[1] += 1
                break
        else:
            clusters.append([iop, 1])
    clusters.sort(key=lambda cluster: -int(cluster[1]))
    common: tuple[float, ...] = clusters[0][0]
    if len(clusters) > 1:
        listing = "; ".join(
            f"{count} slices with IOP {[round(v, 4) for v in reference]}"
            for reference, count in clusters
        )
        problems.append(
            _refusal(
                f"mixed orientations ({listing}); a localizer or a reformat is mixed in: "
                "select the images of one orientation"
            )
        )
    row, col = np.asarray(common[:3]), np.asarray(common[3:])
    if (
        abs(np.linalg.norm(row) - 1) > ORIENTATION_TOLERANCE
        or abs(np.linalg.norm(col) - 1) > ORIENTATION_TOLERANCE
        or abs(float(row @ col)) > ORIENTATION_TOLERANCE
    ):
        problems.append(
            _refusal(
                f"ImageOrientationPatient {list(common)} is not two orthogonal unit vectors; "
                "the headers are corrupt: re-export the series"
            )
        )
        return _Orientation(common, row, col, None, len(clusters) > 1)
    # Orthonormalize away the rounding of the DS strings (Volume wants a rotation matrix).
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return _Orientation(common, row, col, np.cross(row, col), len(clusters) > 1)


def _stack(
    datasets: Sequence[Dataset],
    ipps: npt.NDArray[np.float64],
    orientation: _Orientation,
    normal: npt.NDArray[np.float64],
    pixel_spacing_ji: tuple[float, float],
    problems: list[_Problem],
) -> _Stack:
    """Order the slices along the normal and measure spacings, gaps, duplicates and tilt."""
    along = ipps @ normal
    groups: list[list[int]] = []
    for index in np.argsort(along, kind="stable").tolist():
        if groups and along[index] - along[groups[-1][0]] < DUPLICATE_TOLERANCE_MM:
            groups[-1].append(index)
        else:
            groups.append([index])
    if len(groups) < len(datasets):
        shared = [i for group in groups if len(group) > 1 for i in group]
        problems.append(
            _Problem(
                "duplicates",
                f"duplicated positions: {len(datasets) - len(groups)} slices share their position "
                f"along the normal with another slice ({_examples(datasets, shared)}); identical "
                "copies are dropped, copies whose pixels differ are refused",
            )
        )
    firsts = [group[0] for group in groups]
    positions = along[firsts]
    differences = np.diff(positions)

    median = minimum = maximum = None
    gaps: list[SliceGap] = []
    uniform = True
    if len(differences):
        median = float(np.median(differences))
        minimum, maximum = float(differences.min()), float(differences.max())
        gaps = [
            SliceGap(after, float(d))
            for after, d in enumerate(differences.tolist())
            if d > GAP_FACTOR * median
        ]
        for gap in gaps:
            name = _label(datasets[firsts[gap.after_index]], firsts[gap.after_index])
            problems.append(
                _refusal(
                    f"missing slices: gap of {gap.spacing_mm:.2f} mm after slice {gap.after_index}"
                    f" ({name}; expected {median:.2f} mm); re-export the complete series"
                )
            )
        tolerance = max(SPACING_RTOL * median, SPACING_ATOL_MM)
        uniform = not gaps and float(np.max(np.abs(differences - median))) <= tolerance
        if not uniform and not gaps:
            problems.append(
                _Problem(
                    "nonuniform",
                    f"non-uniform slice spacing: {minimum:.3f} to {maximum:.3f} mm "
                    f"(median {median:.3f} mm)",
                )
            )

    ipp_mm = ipps[firsts]
    offsets_mm = ipp_mm - ipp_mm[0]
    tilt_deg = 0.0
    if len(groups) > 1:
        stacking = offsets_mm[-1] / np.linalg.norm(offsets_mm[-1])
        tilt_deg = float(np.degrees(np.arccos(min(1.0, abs(float(stacking @ normal))))))
    offsets_ji_px = np.stack(
        [
            offsets_mm @ orientation.col_cosine / pixel_spacing_ji[0],
            offsets_mm @ orientation.row_cosine / pixel_spacing_ji[1],
        ],
        axis=1,
    )
    if float(np.max(np.abs(offsets_ji_px))) > INPLANE_TOLERANCE_PX:
        inplane_mm = offsets_mm - np.outer(offsets_mm @ normal, normal)
        problems.append(
            _Problem(
                "tilt",
                f"gantry tilt of {tilt_deg:.2f} degrees: slices are shifted in their own plane by "
                f"up to {float(np.max(np.linalg.norm(inplane_mm, axis=1))):.1f} mm along the stack",
            )
        )
    else:
        offsets_ji_px = np.zeros_like(offsets_ji_px)  # IPP rounding, not a tilt
    return _Stack(
        groups,
        positions,
        ipp_mm,
        offsets_ji_px,
        median,
        minimum,
        maximum,
        uniform,
        tuple(gaps),
        tilt_deg,
    )


def _triple(vector: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    return (float(vector[0]), float(vector[1]), float(vector[2]))


# --------------------------------------------------------------------------------------------
# Building volumes


def volume_from_datasets(
    datasets: Sequence[Dataset],
    *,
    on_nonuniform: NonUniformPolicy = "resample",
    on_gantry_tilt: TiltPolicy = "resample",
    target_spacing_mm: float | None = None,
) -> Volume:
    """Build a HU volume from the datasets (with pixel data) of one single-frame series.

    The datasets may come in any order. The result's array is ``[k, j, i]``: ``k`` along the
    slice normal (row cosine x column cosine), ``j`` down the rows, ``i`` along a row; spacing,
    origin and direction are in ``(i, j, k)`` order, LPS millimetres. Voxels are
    ``stored * RescaleSlope + RescaleIntercept``: ``int16`` when slope and intercept are integers
    and the values fit, ``float32`` otherwise.

    Irregular series follow the policies in this module's docstring. ``on_nonuniform`` handles a
    slight spacing jitter, ``on_gantry_tilt`` in-plane shifts along the stack; both resample
    linearly (integer HU are rounded back to integers). ``target_spacing_mm``, when given, is the
    slice spacing of the output: slices are interpolated linearly along the normal whenever the
    series' spacing differs from it (also for a uniform series); by default a uniform series keeps
    its own spacing and a jittered one is resampled at its median spacing.

    Raises:
        DicomSeriesError: when the series is refused; the message lists every reason and the fix.
    """
    return _build_volume(
        datasets,
        lambda index: _dataset_pixels(datasets[index], index),
        on_nonuniform=on_nonuniform,
        on_gantry_tilt=on_gantry_tilt,
        target_spacing_mm=target_spacing_mm,
    )


def read_headers(path_or_paths: PathLike | Sequence[PathLike]) -> dict[str, list[Dataset]]:
    """Read the headers (no pixel data) of the DICOM image files, grouped by SeriesInstanceUID.

    A folder is searched recursively; files in it that are not DICOM, and DICOM files without
    Rows/Columns (reports, DICOMDIR, presentation states), are skipped. Files named explicitly
    must be DICOM images. Datasets keep their path in ``filename``. A series without a
    SeriesInstanceUID is keyed by ``""``.

    Raises:
        FileNotFoundError: if a path does not exist.
        DicomSeriesError: if an explicitly named file is not a DICOM image, or no DICOM image
            is found.
    """
    if isinstance(path_or_paths, str | os.PathLike):
        root = Path(path_or_paths)
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        explicit = not root.is_dir()
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        where = str(root)
    else:
        files = [Path(p) for p in path_or_paths]
        explicit = True
        where = f"the {len(files)} files given"
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist or is not a file")

    series: dict[str, list[Dataset]] = {}
    skipped = 0
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, OSError) as error:
            if explicit:
                raise DicomSeriesError(f"{path} is not a readable DICOM file: {error}") from error
            skipped += 1
            continue
        if not ("Rows" in ds and "Columns" in ds):
            if explicit:
                raise DicomSeriesError(f"{path} is a DICOM file without an image (no Rows/Columns)")
            skipped += 1
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if not series:
        raise DicomSeriesError(
            f"no DICOM image files found in {where} ({skipped} files skipped as not DICOM images)"
        )
    return series


def read_dicom_series(
    path_or_paths: PathLike | Sequence[PathLike],
    *,
    series_instance_uid: str | None = None,
    on_nonuniform: NonUniformPolicy = "resample",
    on_gantry_tilt: TiltPolicy = "resample",
    target_spacing_mm: float | None = None,
) -> Volume:
    """Read one DICOM series from a folder (searched recursively), a file or a list of files.

    Headers are read first to order and check the slices; pixels are then decoded one file at a
    time into a preallocated array (peak memory: the volume, plus a second copy only when it must
    be resampled). Output axes, units and policies are those of :func:`volume_from_datasets`.

    Args:
        series_instance_uid: which series to read when the files hold several.

    Raises:
        FileNotFoundError: if a path does not exist.
        DicomSeriesError: if the files hold several series and none is chosen (the message lists
            each SeriesInstanceUID with its file count), the chosen series is absent, no DICOM
            image is found, or the series is refused.
    """
    series = read_headers(path_or_paths)
    if series_instance_uid is not None:
        if series_instance_uid not in series:
            raise DicomSeriesError(
                f"series {series_instance_uid} not found; present: {_list_series(series)}"
            )
        headers = series[series_instance_uid]
    elif len(series) > 1:
        raise DicomSeriesError(
            f"{len(series)} series found: {_list_series(series)}; "
            "choose one with series_instance_uid="
        )
    else:
        headers = next(iter(series.values()))

    def load(index: int) -> npt.NDArray[Any]:
        return pixel_array(headers[index].filename)

    return _build_volume(
        headers,
        load,
        on_nonuniform=on_nonuniform,
        on_gantry_tilt=on_gantry_tilt,
        target_spacing_mm=target_spacing_mm,
    )


def _list_series(series: dict[str, list[Dataset]]) -> str:
    parts = []
    for uid, headers in sorted(series.items(), key=lambda item: -len(item[1])):
        first = headers[0]
        description = str(first.get("SeriesDescription", "") or "")
        number = first.get("SeriesNumber")
        extra = "".join(
            [
                f", SeriesNumber {number}" if number not in (None, "") else "",
                f', "{description}"' if description else "",
            ]
        )
        parts.append(f"{uid or '(no SeriesInstanceUID)'} ({len(headers)} files{extra})")
    return "; ".join(parts)


def _build_volume(
    headers: Sequence[Dataset],
    load_pixels: Callable[[int], npt.NDArray[Any]],
    *,
    on_nonuniform: NonUniformPolicy,
    on_gantry_tilt: TiltPolicy,
    target_spacing_mm: float | None,
) -> Volume:
    if on_nonuniform not in ("resample", "refuse"):
        raise ValueError(f"on_nonuniform must be 'resample' or 'refuse', got {on_nonuniform!r}")
    if on_gantry_tilt not in ("resample", "refuse"):
        raise ValueError(f"on_gantry_tilt must be 'resample' or 'refuse', got {on_gantry_tilt!r}")
    if target_spacing_mm is not None and not target_spacing_mm > 0:
        raise ValueError(f"target_spacing_mm must be positive, got {target_spacing_mm}")

    analysis = _analyse(headers)
    layout = _accepted_layout(analysis, on_nonuniform=on_nonuniform, on_gantry_tilt=on_gantry_tilt)
    stack = layout.stack
    voxels = _decode_stack(headers, layout, load_pixels)

    positions_mm = stack.positions_mm - stack.positions_mm[0]
    resample_along = False
    if len(positions_mm) == 1:
        slice_spacing = float(target_spacing_mm or layout.single_slice_spacing_mm)
    elif stack.uniform:
        # The mean step: jitter within tolerance must not accumulate along the stack.
        slice_spacing = float(positions_mm[-1] / (len(positions_mm) - 1))
        if target_spacing_mm is not None:
            tolerance = max(SPACING_RTOL * slice_spacing, SPACING_ATOL_MM)
            resample_along = abs(target_spacing_mm - slice_spacing) > tolerance
            slice_spacing = float(target_spacing_mm) if resample_along else slice_spacing
    else:
        slice_spacing = float(target_spacing_mm or stack.median_mm or 1.0)
        resample_along = True
    shift_inplane = bool(np.any(stack.offsets_ji_px != 0))

    origin = stack.ipp_mm[0]
    if resample_along or shift_inplane:
        for problem in analysis.problems:
            if problem.kind in ("nonuniform", "tilt"):
                logger.warning("resampling DICOM series: %s", problem.message)
        grid_mm = positions_mm
        if resample_along:
            count = math.floor(positions_mm[-1] / slice_spacing + 1e-3) + 1
            grid_mm = np.arange(count, dtype=np.float64) * slice_spacing
        voxels, canvas_min_ji = _resample(voxels, positions_mm, stack.offsets_ji_px, grid_mm)
        origin = (
            origin
            + canvas_min_ji[1] * layout.spacing_ji_mm[1] * layout.orientation.row_cosine
            + canvas_min_ji[0] * layout.spacing_ji_mm[0] * layout.orientation.col_cosine
        )

    direction = np.column_stack(
        [layout.orientation.row_cosine, layout.orientation.col_cosine, layout.normal]
    )
    return Volume(
        voxels,
        (layout.spacing_ji_mm[1], layout.spacing_ji_mm[0], slice_spacing),
        _triple(origin),
        direction,
    )


def _accepted_layout(
    analysis: _Analysis, *, on_nonuniform: NonUniformPolicy, on_gantry_tilt: TiltPolicy
) -> _Layout:
    """The layout, or a DicomSeriesError listing every refusal under the chosen policies."""
    refusals = [p.message for p in analysis.problems if p.kind == "refuse"]
    for problem in analysis.problems:
        if problem.kind == "nonuniform" and on_nonuniform == "refuse":
            refusals.append(
                problem.message + "; re-export with a uniform spacing, or pass "
                "on_nonuniform='resample' to interpolate onto a uniform grid"
            )
        if problem.kind == "tilt" and on_gantry_tilt == "refuse":
            refusals.append(
                problem.message + "; reconstruct without tilt, or pass on_gantry_tilt='resample' "
                "to shift each slice to its physical place"
            )
    if analysis.layout is None and not refusals:
        refusals.append("the slice positions cannot be determined from the headers")
    if refusals or analysis.layout is None:
        raise DicomSeriesError(
            "cannot build a volume from this series: " + "; ".join(refusals), refusals
        )
    return analysis.layout


def _rescale(ds: Dataset) -> tuple[float, float]:
    slope = _optional_float(ds, "RescaleSlope")
    intercept = _optional_float(ds, "RescaleIntercept")
    if slope is None and "ModalityLUTSequence" in ds:
        raise DicomSeriesError(
            f"{_label(ds, 0)} uses a Modality LUT Sequence instead of RescaleSlope/Intercept; "
            "this is not supported for CT: re-export with a linear rescale"
        )
    return (1.0 if slope is None else slope, 0.0 if intercept is None else intercept)


def _decode_stack(
    headers: Sequence[Dataset],
    layout: _Layout,
    load_pixels: Callable[[int], npt.NDArray[Any]],
) -> npt.NDArray[Any]:
    """Decode one slice at a time into a preallocated ``[k, j, i]`` array of HU.

    ``int16`` when every slope and intercept is an integer, else ``float32``; an integer series
    whose HU overflow int16 is converted to ``float32`` (exact below 2**24) once, when it happens.
    """
    rescales = [_rescale(ds) for ds in headers]
    integral = all(float(s).is_integer() and float(b).is_integer() for s, b in rescales)
    voxels: npt.NDArray[Any] = np.empty(
        (len(layout.stack.groups), *layout.shape_ji), dtype=np.int16 if integral else np.float32
    )
    int16 = np.iinfo(np.int16)
    for k, group in enumerate(layout.stack.groups):
        for index in group:
            hu = _decode_hu(headers[index], index, load_pixels, layout.shape_ji, rescales[index])
            if voxels.dtype == np.int16 and (hu.min() < int16.min or hu.max() > int16.max):
                voxels = voxels.astype(np.float32)
            if index == group[0]:
                voxels[k] = hu
            elif not (
                np.array_equal(voxels[k], hu)
                and np.allclose(
                    layout.stack.ipp_mm[k],
                    np.asarray(headers[index].ImagePositionPatient, dtype=np.float64),
                    atol=DUPLICATE_TOLERANCE_MM,
                )
            ):
                first = _label(headers[group[0]], group[0])
                where = f"{layout.stack.positions_mm[k]:.2f} mm along the normal"
                raise DicomSeriesError(
                    f"duplicated position with different pixels: {first} and "
                    f"{_label(headers[index], index)} lie at {where} but differ; two acquisitions "
                    "or reconstructions are mixed: separate them (e.g. by AcquisitionNumber)",
                    [f"duplicated position with different pixels at {where}"],
                )
    return voxels


def _decode_hu(
    ds: Dataset,
    index: int,
    load_pixels: Callable[[int], npt.NDArray[Any]],
    shape_ji: tuple[int, int],
    rescale: tuple[float, float],
) -> npt.NDArray[Any]:
    """One slice in HU: ``int32`` for an integer rescale, else ``float32``."""
    try:
        stored = load_pixels(index)
    except DicomSeriesError:
        raise
    except Exception as error:  # decoders raise many types; all mean the same to a reader
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise DicomSeriesError(
            f"cannot decode the pixel data of {_label(ds, index)} (transfer syntax "
            f"{getattr(syntax, 'name', None) or syntax or 'unknown'}): {error}"
        ) from error
    if stored.shape != shape_ji:
        raise DicomSeriesError(
            f"{_label(ds, index)} decodes to shape {stored.shape}, "
            f"expected {shape_ji} from Rows/Columns"
        )
    slope, intercept = rescale
    # In place: one slice-sized temporary, not three.
    if float(slope).is_integer() and float(intercept).is_integer():
        exact = stored.astype(np.int32)
        exact *= int(slope)
        exact += int(intercept)
        return exact
    scaled = stored.astype(np.float32)
    scaled *= np.float32(slope)
    scaled += np.float32(intercept)
    return scaled


def _dataset_pixels(ds: Dataset, index: int) -> npt.NDArray[Any]:
    if "PixelData" not in ds:
        raise DicomSeriesError(
            f"{_label(ds, index)} has no pixel data (was it read with stop_before_pixels=True?)"
        )
    return pixel_array(ds)


def _resample(
    stack: npt.NDArray[Any],
    positions_mm: npt.NDArray[np.float64],
    offsets_ji_px: npt.NDArray[np.float64],
    grid_mm: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[Any], tuple[int, int]]:
    """Linear resampling onto slices at ``grid_mm`` along the normal and a common in-plane grid.

    Input slice ``k`` lies at ``positions_mm[k]`` along the normal, shifted in-plane by
    ``offsets_ji_px[k]`` pixels from the first slice. The output canvas is enlarged to hold every
    shifted slice; returns it and the index ``(j, i)`` of its first pixel in the first slice's
    pixel grid (non-positive integers). Voxels outside every input slice get the stack's minimum.
    """
    from scipy import ndimage

    rows, columns = stack.shape[1:]
    low = np.floor(np.minimum(offsets_ji_px.min(axis=0), 0)).astype(int)
    high = np.ceil(np.maximum(offsets_ji_px.max(axis=0), 0)).astype(int)
    canvas_shape = (rows + int(high[0] - low[0]), columns + int(high[1] - low[1]))
    shifting = bool(np.any(offsets_ji_px != 0))
    fill = float(stack.min())
    integer = np.issubdtype(stack.dtype, np.integer)
    output = np.empty((len(grid_mm), *canvas_shape), dtype=stack.dtype)

    cache: dict[int, npt.NDArray[np.float32]] = {}

    def placed(k: int) -> npt.NDArray[np.float32]:
        if k not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            data = stack[k].astype(np.float32)
            if shifting:
                data = ndimage.affine_transform(
                    data,
                    np.ones(2),
                    offset=low - offsets_ji_px[k],
                    output_shape=canvas_shape,
                    order=1,
                    mode="constant",
                    cval=fill,
                )
            cache[k] = data
        return cache[k]

    last = len(positions_mm) - 1
    for m, z in enumerate(grid_mm.tolist()):
        below = int(np.clip(np.searchsorted(positions_mm, z, side="right") - 1, 0, last))
        above = min(below + 1, last)
        weight = 0.0
        if above != below:
            weight = float(
                np.clip(
                    (z - positions_mm[below]) / (positions_mm[above] - positions_mm[below]), 0, 1
                )
            )
        value = placed(below) if weight < 1e-6 else placed(below) * np.float32(1 - weight)
        if weight >= 1e-6:
            value = value + placed(above) * np.float32(weight)
        output[m] = np.rint(value) if integer else value
    return output, (int(low[0]), int(low[1]))
