"""CSV / XLSX / ZIP exports and the management command: the numbers of the tables, and no
original identifier anywhere."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest
from django.core.management import call_command

from reports.services import agreement
from studies.models import Patient, PatientIdentity
from tests.reports_tests.conftest import (
    draw,
    instances_of,
    submit,
    write_label_map,
)

pytestmark = pytest.mark.django_db


def ingest_deidentified(project, patient_id, name):
    from pydicom.uid import generate_uid

    from studies.models import Series
    from studies.services.ingest import ingest_datasets_bytes
    from tests.dicom_builders import ct_series_bytes

    series_uid = generate_uid()
    files = ct_series_bytes(5, series_uid=series_uid, patient_id=patient_id, patient_name=name)
    report = ingest_datasets_bytes(
        [(f"{i}.dcm", f) for i, f in enumerate(files)], project=project, deidentify=True
    )
    assert report.stored == 5, report.to_dict()
    return Series.objects.get(study__patient__identity__original_patient_id=patient_id)


@pytest.fixture
def exported_study(project, make_study, reader_a, reader_b, series):
    """Two cases: one de-identified patient (with a PatientIdentity), one imported as is."""
    deidentified = ingest_deidentified(project, "MRN-98765", "SMITH^ALICE")
    Patient.objects.filter(pk=deidentified.study.patient_id).update(cohort="test")
    Patient.objects.filter(pk=series.study.patient_id).update(cohort="test")
    study = make_study(readers=[reader_a, reader_b], series_list=[deidentified, series])
    for case in study.cases.all():
        s = instances_of(case)
        for reader, shift in ((reader_a, 0), (reader_b, 2)):
            assignment = case.assignments.get(reader=reader)
            draw(assignment, s[0], x0=-10 + shift, size=8)
            draw(assignment, s[1], size=6)
            for inst in s[:2]:
                draw(assignment, inst, structure="lung", x0=-14, y0=-14, size=24)
            submit(assignment)
        labels = {}
        for inst in s:
            slice_labels = np.zeros((16, 16), np.uint8)
            slice_labels[1:13, 1:13] = 1
            slice_labels[3:7, 3:7] = 2
            labels[inst.sop_instance_uid] = slice_labels
        write_label_map(case.series, labels, extent_pct=7.5)
    return study


def originals():
    identity = PatientIdentity.objects.get()
    values = [identity.original_patient_id, identity.original_patient_name, "SMITH", "ALICE"]
    values += ["HOSP-001", "DOE^JANE", "19600101", "1960-01-01", "ACC123"]
    return [v for v in values if v]


def every_text(zip_bytes):
    """All text in a ZIP, including inside the XLSX (itself a ZIP of XML)."""
    texts = []
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        for name in archive.namelist():
            data = archive.read(name)
            if name.endswith(".xlsx"):
                texts += every_text(data)
            else:
                texts.append(data.decode("utf-8", errors="replace"))
    return texts


def test_table2_csv_is_the_dashboard_table(exported_study, coordinator, api_client_for):
    client = api_client_for(coordinator)
    response = client.get(
        f"/api/v1/reports/export/agreement.csv?reading_study={exported_study.pk}"
        "&table=table2_dice_ild&n_resamples=100"
    )
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))
    report = agreement.agreement_report(
        exported_study, agreement.Filters(ci=False, n_resamples=100)
    )
    assert rows == report.table
    assert rows[0] == ["Reader", "reader-b", "atlasnet"]


def test_xlsx_has_a_sheet_per_table_with_the_numbers(exported_study, coordinator, api_client_for):
    from openpyxl import load_workbook

    response = api_client_for(coordinator).get(
        f"/api/v1/reports/export/agreement.xlsx?reading_study={exported_study.pk}&n_resamples=100"
    )
    workbook = load_workbook(io.BytesIO(response.content))
    assert {"table2_dice_ild", "dice_slices_lung", "dice_numbers_ild"} <= set(workbook.sheetnames)
    sheet = workbook["dice_slices_ild"]
    values = [[c.value for c in row] for row in sheet.iter_rows()]
    header_index = next(i for i, row in enumerate(values) if row and row[0] == "kind")
    header = values[header_index]
    dice_column = header.index("dice")
    slices = values[header_index + 1 :]
    rows = agreement.slice_rows(exported_study, agreement.Filters())
    assert len(slices) == len(rows)
    assert sorted(r[dice_column] for r in slices if r[dice_column] is not None) == sorted(
        r["dice"] for r in rows if r["dice"] is not None
    )


def test_no_original_identifier_leaves_the_app(exported_study, coordinator, api_client_for):
    client = api_client_for(coordinator)
    bundle = client.get(
        f"/api/v1/reports/export/all.zip?reading_study={exported_study.pk}&n_resamples=100"
        "&source=atlasnet,readers"
    )
    assert bundle.status_code == 200
    texts = every_text(bundle.content)
    joined = "\n".join(texts)
    for value in originals():
        assert value not in joined, value
    identity = PatientIdentity.objects.get()
    assert identity.patient.patient_id in joined  # the pseudonym is what identifies the patient
    assert "reader-a" in joined
    for assignment in exported_study.assignments.all():
        data = client.get(f"/api/v1/reports/assignments/{assignment.pk}/seg/").content
        for value in originals():
            assert value.encode() not in data, value


def test_patient_rows_carry_the_export_pseudonym(exported_study, coordinator, api_client_for):
    data = (
        api_client_for(coordinator)
        .get(f"/api/v1/reports/characteristics/?reading_study={exported_study.pk}")
        .json()
    )
    ids = {row["patient"] for row in data["patients"]}
    identity = PatientIdentity.objects.get()
    assert identity.patient.patient_id in ids
    assert any(i.startswith("X-") for i in ids) and "HOSP-001" not in ids


def test_export_agreement_command_writes_every_file(exported_study, tmp_path):
    out = tmp_path / "export"
    stdout = io.StringIO()
    call_command(
        "export_agreement",
        "--reading-study",
        str(exported_study.pk),
        "--out",
        str(out),
        "--n-resamples",
        "100",
        "--all-tables",
        stdout=stdout,
    )
    names = {p.name for p in out.iterdir()}
    assert {"README.txt", "tables.xlsx", "table2_dice_ild.csv", "dice_slices_lung.csv"} <= names
    assert {"table1_characteristics.csv", "table3_correlation.csv"} <= names
    segs = list((out / "seg").glob("*.dcm"))
    assert len(segs) == 4  # 2 readers x 2 cases
    everything = "\n".join(
        p.read_bytes().decode("utf-8", errors="replace") for p in out.rglob("*") if p.is_file()
    )
    for value in originals():
        assert value not in everything, value
    assert "tables" in stdout.getvalue()


def test_unknown_report_or_table_is_a_clear_error(exported_study, coordinator, api_client_for):
    client = api_client_for(coordinator)
    base = f"reading_study={exported_study.pk}"
    assert client.get(f"/api/v1/reports/export/nope.zip?{base}").status_code == 400
    response = client.get(f"/api/v1/reports/export/agreement.csv?{base}&table=nope&ci=0")
    assert response.status_code == 404 and "table2_dice_ild" in response.json()["detail"]
    assert client.get("/api/v1/reports/export/agreement.zip").status_code == 400
