"""Study setup (orders, repeats, protocol slices), longitudinal calls, times, worklist, pages."""

from __future__ import annotations

import numpy as np
import pytest

from annotation.models import Assignment, ReadingTimeEvent
from annotation.services import setup
from inference.volume import Volume
from tests.annotation_tests.conftest import assignment_of, ingest_series

pytestmark = pytest.mark.django_db


@pytest.fixture
def five_series(project):
    return [ingest_series(project, n=3, patient_id=f"P{i}") for i in range(5)]


def orders(study, reader):
    return [a.case.label for a in study.assignments.filter(reader=reader).order_by("order")]


def test_each_reader_gets_every_case_in_a_seeded_order(make_study, reader_a, reader_b, five_series):
    study = make_study(readers=[reader_a, reader_b], series_list=five_series, randomize_seed=7)
    a, b = orders(study, reader_a), orders(study, reader_b)
    assert sorted(a) == sorted(b) == sorted(c.label for c in study.cases.all())
    assert a != b  # per-reader orders (fixed by the seed; this seed gives different ones)


def test_the_same_seed_gives_the_same_order(project, coordinator, reader_a, five_series):
    def order_with(seed, name):
        study = setup.create_study(
            project=project,
            name=name,
            created_by=coordinator,
            protocol="all_slices",
            randomize_seed=seed,
        )
        setup.add_cases(
            study, [setup.CaseSpec(series=s) for s in five_series], compute_protocol=False
        )
        setup.assign_readers(study, [reader_a])
        return [a.case.series_id for a in study.assignments.order_by("order")]

    assert order_with(3, "one") == order_with(3, "two")


def test_repeats_come_after_the_first_reads(make_study, reader_a, five_series):
    study = make_study(readers=[reader_a], series_list=five_series, repeat_fraction=0.4)
    reads = list(study.assignments.order_by("order"))
    assert [a.is_repeat for a in reads] == [False] * 5 + [True] * 2
    assert {a.case_id for a in reads[5:]} <= {a.case_id for a in reads[:5]}


def test_only_radiologists_of_the_project_are_readers(make_study, clinician, five_series):
    from core.exceptions import ApplicationError

    with pytest.raises(ApplicationError, match="not a radiologist"):
        make_study(readers=[clinician], series_list=five_series)


def test_all_slices_protocol_lists_instances_head_first(study):
    case = study.cases.get()
    zs = [
        case.series.instances.get(sop_instance_uid=u).image_position_patient[2]
        for u in case.slice_sop_instance_uids
    ]
    assert zs == sorted(zs, reverse=True) and len(zs) == 5


def test_equally_spaced_protocol_uses_the_lung_mask(project, coordinator, monkeypatch):
    import inference.segmentation.classical as classical

    series = ingest_series(project, n=12)

    def fake_lung_mask(ct: Volume) -> Volume:
        labels = np.zeros(ct.array.shape, dtype=np.uint8)
        labels[:, 2:14, 2:14] = 1  # right lung in every slice: apex top, flat floor at the bottom
        return ct.with_array(labels)

    monkeypatch.setattr(classical, "lung_mask", fake_lung_mask)
    study = setup.create_study(
        project=project,
        name="eq",
        created_by=coordinator,
        protocol="equally_spaced",
        protocol_slice_count=4,
    )
    case = setup.compute_protocol(
        setup.add_cases(study, [setup.CaseSpec(series=series)], compute_protocol=False)[0]
    )
    assert case.protocol_status == "ready", case.protocol_error
    zs = [
        series.instances.get(sop_instance_uid=u).image_position_patient[2]
        for u in case.slice_sop_instance_uids
    ]
    assert zs == [0.0, -8.0, -14.0, -22.0]
    assert case.protocol_details["series"]["lung_range"]["apex_z_mm"] == 0.0


def test_a_failing_protocol_marks_the_case_failed(project, coordinator, monkeypatch):
    import inference.segmentation.classical as classical

    series = ingest_series(project, n=3)
    monkeypatch.setattr(
        classical, "lung_mask", lambda ct: ct.with_array(np.zeros(ct.array.shape, np.uint8))
    )
    study = setup.create_study(project=project, name="eq", created_by=coordinator)
    case = setup.compute_protocol(
        setup.add_cases(study, [setup.CaseSpec(series=series)], compute_protocol=False)[0]
    )
    assert case.protocol_status == "failed" and "no lung" in case.protocol_error


def test_a_longitudinal_read_needs_a_call_before_submission(
    make_study, project, reader_a, api_client_for
):
    baseline = ingest_series(project, n=3, study_date="20220101")
    follow_up = ingest_series(project, n=3, study_date="20240101")
    study = make_study(readers=[reader_a], series_list=[(baseline, follow_up)], longitudinal=True)
    assignment = assignment_of(study, reader_a)
    client = api_client_for(reader_a)
    detail = client.get(f"/api/v1/reading/assignments/{assignment.pk}/").json()
    assert detail["case"]["baseline"]["series_instance_uid"] == baseline.series_instance_uid
    assert len(detail["case"]["baseline"]["protocol_sop_instance_uids"]) == 3
    submit = f"/api/v1/reading/assignments/{assignment.pk}/submit/"
    assert client.post(submit).status_code == 400
    call = client.post(
        f"/api/v1/reading/assignments/{assignment.pk}/assessment/", {"call": "worse"}, format="json"
    )
    assert call.status_code == 200
    assert client.post(submit).status_code == 200


def test_reading_time_is_recorded_per_slice_and_per_case(study, reader_a, api_client_for):
    assignment = assignment_of(study, reader_a)
    sop = assignment.case.slice_sop_instance_uids[0]
    events = [
        {
            "kind": "slice",
            "sop_instance_uid": sop,
            "started_at": "2026-01-01T10:00:00Z",
            "duration_ms": 1500,
        },
        {
            "kind": "slice",
            "sop_instance_uid": sop,
            "started_at": "2026-01-01T10:00:05Z",
            "duration_ms": 500,
        },
        {"kind": "case", "started_at": "2026-01-01T10:00:00Z", "duration_ms": 9000},
    ]
    client = api_client_for(reader_a)
    response = client.post(
        f"/api/v1/reading/assignments/{assignment.pk}/timing/", {"events": events}, format="json"
    )
    assert response.json() == {"recorded": 3}
    detail = client.get(f"/api/v1/reading/assignments/{assignment.pk}/").json()
    assert detail["reading_times"] == {"case_ms": 9000, "slice_ms": {sop: 2000}}
    assert ReadingTimeEvent.objects.count() == 3


def test_the_worklist_points_to_the_next_open_case(
    make_study, reader_a, five_series, api_client_for
):
    study = make_study(readers=[reader_a], series_list=five_series[:2])
    client = api_client_for(reader_a)
    first = study.assignments.get(order=1)
    client.post(f"/api/v1/reading/assignments/{first.pk}/submit/")
    body = client.get("/api/v1/reading/worklist/").json()
    assert (body["total"], body["submitted"]) == (2, 1)
    assert body["next"] == str(study.assignments.get(order=2).pk)


def test_progress_counts_submitted_reads_per_reader(study, reader_a, coordinator, api_client_for):
    api_client_for(reader_a).post(
        f"/api/v1/reading/assignments/{assignment_of(study, reader_a).pk}/submit/"
    )
    body = api_client_for(coordinator).get(f"/api/v1/reading/studies/{study.pk}/progress/").json()
    assert [(r["username"], r["submitted"], r["total"]) for r in body["readers"]] == [
        ("reader-a", 1, 1),
        ("reader-b", 0, 1),
    ]
    assert (
        api_client_for(reader_a).get(f"/api/v1/reading/studies/{study.pk}/progress/").status_code
        == 403
    )


def test_the_coordinator_sets_up_a_study_through_the_api(
    project, coordinator, reader_a, series, api_client_for, django_capture_on_commit_callbacks
):
    client = api_client_for(coordinator)
    created = client.post(
        "/api/v1/reading/studies/",
        {"project": "ssc", "name": "API study", "protocol": "all_slices"},
        format="json",
    )
    assert created.status_code == 201
    study_id = created.json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        cases = client.post(
            f"/api/v1/reading/studies/{study_id}/cases/",
            {"cases": [{"series_instance_uid": series.series_instance_uid}]},
            format="json",
        )
    assert cases.status_code == 201
    assert (
        client.post(
            f"/api/v1/reading/studies/{study_id}/readers/", {"readers": ["reader-a"]}, format="json"
        ).status_code
        == 201
    )
    assignment = Assignment.objects.get(reader=reader_a)
    assert assignment.case.protocol_status == "ready"  # computed by the (eager) task


def test_pages_render_for_reader_and_coordinator(study, reader_a, coordinator, client):
    client.force_login(reader_a)
    home = client.get("/reading/")
    assert "0</strong> of <strong>1" in home.content.decode()
    assert client.get("/reading/next/").status_code == 302
    assert (
        client.get(f"/reading/assignments/{assignment_of(study, reader_a).pk}/").status_code == 200
    )
    assert client.get(f"/reading/studies/{study.pk}/").status_code == 404
    client.force_login(coordinator)
    assert "reader-b" in client.get(f"/reading/studies/{study.pk}/").content.decode()
    assert client.get("/reading/studies/new/").status_code == 200


def test_the_setup_page_creates_study_cases_and_assignments(
    project, coordinator, reader_a, reader_b, series, client, django_capture_on_commit_callbacks
):
    client.force_login(coordinator)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/reading/studies/new/",
            {
                "project": project.pk,
                "name": "Page study",
                "protocol": "all_slices",
                "protocol_slice_count": 20,
                "randomize_seed": 1,
                "repeat_fraction": 0,
                "series": [series.pk],
                "readers": [reader_a.pk, reader_b.pk],
            },
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Assignment.objects.filter(study__name="Page study").count() == 2


def test_the_reopen_page_requires_a_reason(study, reader_a, coordinator, client, api_client_for):
    assignment = assignment_of(study, reader_a)
    api_client_for(reader_a).post(f"/api/v1/reading/assignments/{assignment.pk}/submit/")
    client.force_login(coordinator)
    client.post(f"/reading/assignments/{assignment.pk}/reopen/", {"reason": ""})
    assignment.refresh_from_db()
    assert assignment.status == "submitted"
    client.post(f"/reading/assignments/{assignment.pk}/reopen/", {"reason": "recheck"})
    assignment.refresh_from_db()
    assert assignment.status == "in_progress" and assignment.reopens.get().reason == "recheck"
