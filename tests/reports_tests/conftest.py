"""Reading studies with contours for the reports, built with the annotation tests' helpers.

The series are 16 × 16 pixels of 2 mm (``tests.dicom_builders``), first pixel centre at
(−16, −16) mm: pixel (row r, column c) has its centre at x = −16 + 2c, y = −16 + 2r. A square
drawn from (x0, y0) with side ``size`` mm covers the pixels whose centres are inside it.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.annotation_tests import conftest as annotation_conftest
from tests.annotation_tests.conftest import assignment_of, ingest_series, square_lps

# the annotation tests' fixtures, for the tests here
make_study = annotation_conftest.make_study
series = annotation_conftest.series

__all__ = ["assignment_of", "ingest_series", "make_study", "series"]


@pytest.fixture
def reader_c(project):
    from tests.conftest import _member

    return _member("reader-c", "radiologist", project)


def instances_of(case):
    from studies.models import Instance

    by_uid = {
        i.sop_instance_uid: i
        for i in Instance.objects.filter(sop_instance_uid__in=case.slice_sop_instance_uids)
    }
    return [by_uid[uid] for uid in case.slice_sop_instance_uids]


def draw(assignment, instance, *, structure="ild", x0=-10.0, y0=-10.0, size=8.0, rings=None):
    """Save a square (or ``rings``; ``[]`` deletes) as the reader's next contour version."""
    from annotation.models import ContourVersion
    from annotation.services.contours import save_contour

    latest = (
        ContourVersion.objects.filter(
            assignment=assignment,
            structure=structure,
            referenced_sop_instance_uid=instance.sop_instance_uid,
        )
        .order_by("-version")
        .first()
    )
    polygons = rings if rings is not None else [square_lps(instance, x0=x0, y0=y0, size=size)]
    return save_contour(
        assignment=assignment,
        user=assignment.reader,
        structure=structure,
        referenced_sop_instance_uid=instance.sop_instance_uid,
        base_version=latest.version if latest else 0,
        geometry_json={"schema_version": 1, "polygons": polygons},
    ).contour


def submit(assignment):
    from annotation.services.reading import submit as submit_read

    return submit_read(assignment, assignment.reader)


def mask_of(contour):
    from annotation.services.geometry import unpack_mask

    return unpack_mask(bytes(contour.mask), contour.mask_rows, contour.mask_columns)


def write_label_map(series, labels_by_uid, *, engine="atlasnet", extent_pct=None, name=None):
    """A fabricated SUCCEEDED segmentation job whose npz label map holds ``labels_by_uid``."""
    from django.conf import settings

    from jobs.models import Job

    relpath = f"jobs/segmentation/{series.series_instance_uid}/{name or engine}.npz"
    path = settings.STORAGE_ROOT / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    uids = list(labels_by_uid)
    np.savez_compressed(
        path,
        labels=np.stack([labels_by_uid[u] for u in uids]).astype(np.uint8),
        sop_instance_uids=np.array(uids),
    )
    result = {"label_map_npz": relpath}
    if extent_pct is not None:
        result["extent_pct"] = extent_pct
    return Job.objects.create(
        kind="segmentation",
        status=Job.Status.SUCCEEDED,
        series=series,
        engine=engine,
        engine_version="1.0",
        result=result,
    )


@pytest.fixture
def three_readers(make_study, reader_a, reader_b, reader_c, series):
    """A study of one 5-slice series read by A, B and C (not yet drawn or submitted)."""
    return make_study(readers=[reader_a, reader_b, reader_c], series_list=[series])
