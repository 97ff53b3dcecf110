"""QIDO-RS: matching, return attributes, paging, errors."""

from __future__ import annotations

import pytest

from tests.dicomweb_tests.conftest import ROOT, store_series

pytestmark = pytest.mark.django_db

JSON = {"HTTP_ACCEPT": "application/dicom+json"}


def values(items, tag):
    return [item[tag].get("Value", [None])[0] for item in items]


def search(client, url, **params):
    response = client.get(url, params, **JSON)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/dicom+json"
    return response.json()


def test_it_lists_studies_with_standard_return_attributes(api_client_for, reader_a, series):
    (study,) = search(api_client_for(reader_a), f"{ROOT}/studies")
    assert study["0020000D"]["Value"] == [series.study.study_instance_uid]
    assert study["00100010"]["Value"] == [{"Alphabetic": "DOE^JANE"}]
    assert study["00080061"]["Value"] == ["CT"]
    assert study["00201206"]["Value"] == [1]
    assert study["00201208"]["Value"] == [3]
    assert study["00081190"]["Value"][0].endswith(
        f"/dicomweb/studies/{series.study.study_instance_uid}"
    )
    assert study["00080020"]["Value"] == ["20240115"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientID": "HOSP-001"}, ["HOSP-001"]),
        ({"00100020": "HOSP-001"}, ["HOSP-001"]),
        ({"PatientName": "*doe*"}, ["HOSP-001"]),
        ({"PatientName": "D?E^JANE"}, ["HOSP-001"]),
        ({"PatientName": "jane", "fuzzymatching": "true"}, ["HOSP-001"]),
        ({"PatientName": "jane", "fuzzymatching": "false"}, []),
        ({"StudyDate": "20240101-20240131"}, ["HOSP-001"]),
        ({"StudyDate": "20240116-"}, ["HOSP-002"]),
        ({"StudyDate": "-20240115"}, ["HOSP-001"]),
        ({"AccessionNumber": "ACC123"}, ["HOSP-001", "HOSP-002"]),
        ({"ModalitiesInStudy": "CT"}, ["HOSP-001", "HOSP-002"]),
        ({"ModalitiesInStudy": "MR"}, []),
        ({"PatientID": "*"}, ["HOSP-001", "HOSP-002"]),
    ],
)
def test_study_matching(api_client_for, reader_a, project, params, expected):
    store_series(project, 1, patient_id="HOSP-001", patient_name="DOE^JANE")
    store_series(project, 1, patient_id="HOSP-002", patient_name="ROE^RICH", study_date="20240301")
    found = search(api_client_for(reader_a), f"{ROOT}/studies", **params)
    assert sorted(values(found, "00100020")) == expected


def test_study_uid_lists_match_any_listed_study(api_client_for, reader_a, project):
    a = store_series(project, 1, patient_id="A")
    store_series(project, 1, patient_id="B")
    c = store_series(project, 1, patient_id="C")
    uids = f"{a.study.study_instance_uid},{c.study.study_instance_uid}"
    found = search(api_client_for(reader_a), f"{ROOT}/studies", StudyInstanceUID=uids)
    assert sorted(values(found, "00100020")) == ["A", "C"]


def test_limit_and_offset_page_through_studies(api_client_for, reader_a, project):
    for name in "ABCDE":
        store_series(project, 1, patient_id=name)
    client = api_client_for(reader_a)
    first = search(client, f"{ROOT}/studies", limit=2, offset=0)
    second = search(client, f"{ROOT}/studies", limit=2, offset=2)
    rest = search(client, f"{ROOT}/studies", offset=4)
    assert values(first + second + rest, "00100020") == list("ABCDE")


def test_includefield_adds_attributes_from_the_stored_instances(api_client_for, reader_a, series):
    client = api_client_for(reader_a)
    (found,) = search(
        client,
        f"{ROOT}/studies/{series.study.study_instance_uid}/series",
        includefield="InstitutionName,SeriesTime,0008103E",
    )
    assert found["0020000E"]["Value"] == [series.series_instance_uid]
    assert found["00201209"]["Value"] == [3]
    # Not indexed: InstitutionName comes from the stored JSON; SeriesTime is absent, so empty.
    assert found["00080080"]["Value"] == ["Hospital"]
    assert found["00080031"] == {"vr": "TM"}
    (everything,) = search(
        client, f"{ROOT}/studies/{series.study.study_instance_uid}/series", includefield="all"
    )
    assert everything["00180050"]["Value"] == [2.0]  # SliceThickness
    assert "00200013" not in everything  # instance-level attributes stay off a series


def test_series_and_instances_can_be_searched_at_every_level(api_client_for, reader_a, series):
    client = api_client_for(reader_a)
    study_uid = series.study.study_instance_uid
    assert len(search(client, f"{ROOT}/series", Modality="CT")) == 1
    assert len(search(client, f"{ROOT}/series", SeriesInstanceUID=series.series_instance_uid)) == 1
    assert len(search(client, f"{ROOT}/instances")) == 3
    assert len(search(client, f"{ROOT}/studies/{study_uid}/instances")) == 3
    found = search(
        client,
        f"{ROOT}/studies/{study_uid}/series/{series.series_instance_uid}/instances",
        InstanceNumber="2",
    )
    assert values(found, "00200013") == [2]
    assert found[0]["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
    assert found[0]["00280010"]["Value"] == [16]


def test_an_unsupported_but_valid_attribute_is_ignored_with_a_warning(
    api_client_for, reader_a, series
):
    response = api_client_for(reader_a).get(f"{ROOT}/studies", {"PatientAge": "050Y"}, **JSON)
    assert response.status_code == 200
    assert len(response.json()) == 1
    assert "PatientAge" in response["Warning"]


@pytest.mark.parametrize(
    "params",
    [
        {"NotAnAttribute": "x"},
        {"StudyDate": "2024-13-45"},
        {"StudyDate": "yesterday"},
        {"limit": "-1"},
        {"offset": "many"},
        {"includefield": "Nonsense"},
        {"StudyInstanceUID": "1.2.abc"},
    ],
)
def test_bad_queries_are_400(api_client_for, reader_a, series, params):
    response = api_client_for(reader_a).get(f"{ROOT}/studies", params, **JSON)
    assert response.status_code == 400
    assert response.json()["detail"]


def test_an_unknown_study_is_404_when_searching_below_it(api_client_for, reader_a, series):
    response = api_client_for(reader_a).get(f"{ROOT}/studies/1.2.3.4/series", **JSON)
    assert response.status_code == 404


def test_unsupported_accept_is_406(api_client_for, reader_a, series):
    response = api_client_for(reader_a).get(
        f"{ROOT}/studies", HTTP_ACCEPT='multipart/related; type="application/dicom+xml"'
    )
    assert response.status_code == 406


def test_a_repeated_study_list_shows_new_studies_and_counts_at_once(
    api_client_for, reader_a, project
):
    client = api_client_for(reader_a)
    store_series(project, 2, patient_id="A")
    assert values(search(client, f"{ROOT}/studies"), "00201208") == [2]
    store_series(project, 3, patient_id="B")
    listed = search(client, f"{ROOT}/studies", limit=1, offset=1)
    assert values(listed, "00100020") == ["B"]
    assert values(listed, "00201208") == [3]
    assert values(search(client, f"{ROOT}/studies"), "00201208") == [2, 3]


def test_a_membership_or_role_change_applies_to_the_next_study_list(
    api_client_for, reader_a, project, other_series
):
    from core.models import Membership

    client = api_client_for(reader_a)
    store_series(project, 1, patient_id="MINE")
    assert values(search(client, f"{ROOT}/studies"), "00100020") == ["MINE"]
    reader_a.role = "admin"  # a site admin sees every project
    reader_a.save()
    assert values(search(client, f"{ROOT}/studies"), "00100020") == ["MINE", "OTHER-9"]
    reader_a.role = "radiologist"
    reader_a.save()
    Membership.objects.filter(user=reader_a).delete()
    assert search(client, f"{ROOT}/studies") == []


@pytest.mark.parametrize("params", [{}, {"PatientID": "MIXED"}, {"ModalitiesInStudy": "PT"}])
def test_a_study_of_several_modalities_is_one_result_with_all_of_them(
    api_client_for, reader_a, project, params
):
    ct = store_series(project, 3, patient_id="MIXED")
    pet = store_series(project, 2, patient_id="MIXED", study_uid=ct.study.study_instance_uid)
    pet.modality = "PT"
    pet.save()
    store_series(project, 1, patient_id="ZZ-AFTER")
    client = api_client_for(reader_a)
    found = search(client, f"{ROOT}/studies", includefield="00080060", **params)
    mixed = [item for item in found if values([item], "00100020") == ["MIXED"]]
    assert len(mixed) == 1
    (study,) = mixed
    assert study["00080061"]["Value"] == ["CT", "PT"]
    assert study["00080060"]["Value"] == ["CT", "PT"]  # OHIF's study-level Modality
    assert study["00201206"]["Value"] == [2]
    assert study["00201208"]["Value"] == [5]
    if not params:
        assert values(found, "00100020") == ["MIXED", "ZZ-AFTER"]
        assert values(search(client, f"{ROOT}/studies", limit=1, offset=1), "00201208") == [1]


def test_searches_of_one_shape_share_their_sql_and_each_finds_its_own_values(
    api_client_for, reader_a, project, monkeypatch
):
    from collections import OrderedDict

    from core import sql as core_sql

    monkeypatch.setattr(core_sql, "_cache", OrderedDict())
    store_series(project, 1, patient_id="HOSP-001", patient_name="DOE^JANE")
    store_series(project, 2, patient_id="HOSP-002", patient_name="ROE^RICH", study_date="20240301")
    client = api_client_for(reader_a)
    cases = [  # (query, patient IDs found), several values for each shape
        ({"PatientID": "HOSP-001"}, ["HOSP-001"]),
        ({"PatientID": "hosp-002"}, ["HOSP-002"]),
        ({"PatientID": "HOSP_00%"}, []),  # LIKE's wildcards are plain characters
        ({"StudyDate": "20240101-20240131"}, ["HOSP-001"]),
        ({"StudyDate": "20240201-20240331"}, ["HOSP-002"]),
        ({"StudyDate": "20240301"}, ["HOSP-002"]),
        ({"PatientName": "jane", "fuzzymatching": "true"}, ["HOSP-001"]),
        ({"PatientName": "rich", "fuzzymatching": "true"}, ["HOSP-002"]),
        ({"PatientName": "R*"}, ["HOSP-002"]),
        ({"PatientName": "D*"}, ["HOSP-001"]),
        ({"StudyTime": "10"}, ["HOSP-001", "HOSP-002"]),
        ({"StudyTime": "11"}, []),
        ({"SeriesNumber": "2", "PatientID": "HOSP-002"}, ["HOSP-002"]),
        ({"SeriesNumber": "7", "PatientID": "HOSP-002"}, []),
    ]
    for params, expected in cases:
        found = search(client, f"{ROOT}/studies", **params)
        assert sorted(values(found, "00100020")) == expected, params
    # Keys of the DICOMweb queries: ("dicomweb", who, project, query, database).
    queries = [key[3] for key in core_sql._cache if key[0] == "dicomweb"]
    shapes = {query for query in queries if query[0] == "qido-studies"}
    # One compiled query per shape, not per value: PatientID; a date range; a date; a name
    # matched by regular expression (fuzzy words and wildcards alike); a time; two keys.
    assert len(shapes) == 6


def test_each_study_lists_its_own_series_with_their_counts(api_client_for, reader_a, project):
    first = store_series(project, 3, patient_id="A")
    second = store_series(project, 2, patient_id="A", study_uid=first.study.study_instance_uid)
    other = store_series(project, 1, patient_id="B", patient_name="ROE^RICH")
    client = api_client_for(reader_a)
    for series_list, name in (([first, second], "DOE^JANE"), ([other], "ROE^RICH")):
        study_uid = series_list[0].study.study_instance_uid
        for include in ("", "PatientName", "InstitutionName"):
            found = search(client, f"{ROOT}/studies/{study_uid}/series", includefield=include)
            counts = {item["0020000E"]["Value"][0]: item["00201209"]["Value"][0] for item in found}
            assert counts == {s.series_instance_uid: s.instances.count() for s in series_list}
            if include == "PatientName":  # scoped: the name comes from a stored instance
                assert {item["00100010"]["Value"][0]["Alphabetic"] for item in found} == {name}
            if include == "InstitutionName":
                assert values(found, "00080080") == ["Hospital"] * len(series_list)
    ordered = sorted([first, second], key=lambda s: s.series_instance_uid)
    page = search(
        client, f"{ROOT}/studies/{first.study.study_instance_uid}/series", limit=1, offset=1
    )
    assert values(page, "0020000E") == [ordered[1].series_instance_uid]
    assert values(page, "00201209") == [ordered[1].instances.count()]
    everywhere = search(client, f"{ROOT}/series", PatientName="ROE^RICH")
    assert values(everywhere, "0020000E") == [other.series_instance_uid]
    assert values(everywhere, "00100010") == [{"Alphabetic": "ROE^RICH"}]
