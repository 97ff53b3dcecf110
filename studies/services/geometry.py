"""The series geometry summary (slices, spacing, orientation, gaps, problems), made from the
indexed instance headers: ingest marks a series' summary stale in the transaction of its rows,
and ``studies.selectors.series_for_study`` remakes the stale ones when they are read."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from pydicom.dataset import Dataset

from studies.models import Instance, Series


def refresh_series_geometry(series_uids: Iterable[str]) -> None:
    """Recompute each series' geometry summary from the indexed headers (no file reads).

    The stale mark is cleared before the headers are read: instances a concurrent ingest
    commits after that read mark the series stale again (in the transaction of their rows), so
    a summary made from fewer instances never passes for up to date.
    """
    from inference.dicom.series import summarize_geometry

    uids = list(series_uids)
    Series.objects.filter(series_instance_uid__in=uids).update(geometry_stale=False)
    rows_by_series: dict[Any, list[tuple[Any, ...]]] = {}
    for row in (
        Instance.objects.filter(series__series_instance_uid__in=uids)
        .order_by()
        .values_list(
            "series_id",
            "sop_instance_uid",
            "rows",
            "columns",
            "instance_number",
            "image_position_patient",
            "image_orientation_patient",
            "pixel_spacing",
        )
    ):
        rows_by_series.setdefault(row[0], []).append(row[1:])
    for series_pk, rows in rows_by_series.items():
        headers = [
            _Header(
                SOPInstanceUID=sop_uid,
                Rows=n_rows,
                Columns=n_columns,
                InstanceNumber=number,
                ImagePositionPatient=position,
                ImageOrientationPatient=orientation,
                PixelSpacing=spacing,
            )
            for sop_uid, n_rows, n_columns, number, position, orientation, spacing in rows
        ]
        try:
            geometry = summarize_geometry(cast("list[Dataset]", headers)).to_dict()
        except Exception as exc:
            geometry = {"n_slices": len(headers), "problems": [str(exc)]}
        Series.objects.filter(pk=series_pk).update(geometry=geometry)


class _Header(dict[str, Any]):
    """An indexed instance's geometry attributes, read like a header-only Dataset
    (``ds.get("PixelSpacing")``, ``ds.Rows``). Building real Datasets for every slice of the
    series on every upload cost 0.3 ms a slice; a 400-slice series costs 120 ms that way."""

    def __getattr__(self, keyword: str) -> Any:
        value = self.get(keyword)
        if value is None:
            raise AttributeError(keyword)
        return value
