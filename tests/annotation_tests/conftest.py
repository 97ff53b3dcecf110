"""A small reading study: two CT series (16×16 pixels of 2 mm, 5 slices), readers A and B."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from tests.dicom_builders import ct_series_bytes


def ingest_series(project, n=5, patient_id="HOSP-001", study_date="20240115"):
    from studies.models import Series
    from studies.services.ingest import ingest_datasets_bytes

    series_uid = generate_uid()
    files = ct_series_bytes(n, series_uid=series_uid, patient_id=patient_id, study_date=study_date)
    report = ingest_datasets_bytes(
        [(f"{i}.dcm", data) for i, data in enumerate(files)], project=project, deidentify=False
    )
    assert report.stored == n, report.to_dict()
    return Series.objects.get(series_instance_uid=series_uid)


@pytest.fixture
def series(project):
    return ingest_series(project)


@pytest.fixture
def make_study(project, coordinator):
    from annotation.services import setup

    def make(*, readers, series_list, **options):
        study = setup.create_study(
            project=project,
            name=options.pop("name", "Test study"),
            created_by=coordinator,
            protocol=options.pop("protocol", "all_slices"),
            **options,
        )
        specs = [
            setup.CaseSpec(series=s[1], baseline_series=s[0])
            if isinstance(s, tuple)
            else setup.CaseSpec(series=s)
            for s in series_list
        ]
        for case in setup.add_cases(study, specs, compute_protocol=False):
            setup.compute_protocol(case)
        setup.assign_readers(study, readers)
        return study

    return make


@pytest.fixture
def study(make_study, reader_a, reader_b, series):
    return make_study(readers=[reader_a, reader_b], series_list=[series])


def assignment_of(study, reader, *, is_repeat=False):
    return study.assignments.get(reader=reader, is_repeat=is_repeat)


def square_lps(instance, *, x0=-10.0, y0=-10.0, size=8.0):
    """A square ring in LPS mm on the instance's plane."""
    z = float(instance.image_position_patient[2])
    return [[x0, y0, z], [x0 + size, y0, z], [x0 + size, y0 + size, z], [x0, y0 + size, z]]


def geometry(*rings, holes=None):
    data = {"schema_version": 1, "polygons": [list(r) for r in rings]}
    if holes:
        data["holes"] = holes
    return data


def first_slice(assignment):
    from studies.models import Instance

    return Instance.objects.get(sop_instance_uid=assignment.case.slice_sop_instance_uids[0])


def save(client, assignment, instance, *, base_version=0, structure="ild", rings=None, **extra):
    rings = rings if rings is not None else [square_lps(instance)]
    return client.post(
        f"/api/v1/reading/assignments/{assignment.pk}/contours/",
        {
            "structure": structure,
            "referenced_sop_instance_uid": instance.sop_instance_uid,
            "base_version": base_version,
            "geometry": geometry(*rings),
            **extra,
        },
        format="json",
    )
