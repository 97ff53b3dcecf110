"""PFT import: every row or none, every bad row reported; CT ↔ closest PFT within ±3 months."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.core.management import CommandError, call_command

from studies.models import Patient, PatientIdentity, PftResult, Study
from studies.selectors import closest_pft
from studies.services.pft import PftImportError, import_pft_csv

pytestmark = pytest.mark.django_db

HEADER = (
    "patient_id,date,fvc_pct_predicted,tlc_pct_predicted,dlco_pct_predicted,kco_pct_predicted\n"
)


@pytest.fixture
def patient(project):
    return Patient.objects.create(project=project, patient_id="ILD-0001")


def test_it_imports_valid_rows(patient):
    report = import_pft_csv(
        HEADER + "ILD-0001,2024-01-10,78,91,47,66\nILD-0001,2024-07-01,70,85,40,60\n"
    )
    assert (report.created, report.updated) == (2, 0)
    assert PftResult.objects.get(date=date(2024, 1, 10)).dlco_pct_predicted == 47


def test_reimporting_the_same_file_updates_instead_of_duplicating(patient):
    text = HEADER + "ILD-0001,2024-01-10,78,91,47,66\n"
    import_pft_csv(text)
    report = import_pft_csv(text.replace(",47,", ",48,"))
    assert (report.created, report.updated) == (0, 1)
    assert PftResult.objects.get().dlco_pct_predicted == 48


def test_a_file_with_any_bad_row_imports_nothing_and_lists_every_bad_row(patient):
    text = (
        HEADER
        + "ILD-0001,2024-01-10,78,91,47,66\n"
        + "NOBODY,2024-01-10,78,91,47,66\n"
        + "ILD-0001,2024-13-01,78,91,47,66\n"
        + "ILD-0001,2024-02-01,780,91,47,66\n"
        + "ILD-0001,2024-03-01,,,,\n"
    )
    with pytest.raises(PftImportError) as caught:
        import_pft_csv(text)
    errors = caught.value.extra["errors"]
    assert [e["line"] for e in errors] == [3, 4, 5, 6]
    assert "unknown patient 'NOBODY'" in errors[0]["errors"][0]
    assert "YYYY-MM-DD" in errors[1]["errors"][0]
    assert "outside the plausible range" in errors[2]["errors"][0]
    assert "at least one of" in errors[3]["errors"][0]
    assert not PftResult.objects.exists()


def test_a_wrong_header_is_explained(patient):
    with pytest.raises(PftImportError, match="missing column"):
        import_pft_csv("id,when,fvc\nILD-0001,2024-01-01,80\n")
    with pytest.raises(PftImportError, match="unknown column"):
        import_pft_csv("patient_id,date,fvc_percent\nILD-0001,2024-01-01,80\n")


def test_original_hospital_ids_are_mapped_and_dates_shifted(patient):
    PatientIdentity.objects.create(
        patient=patient, original_patient_id="HOSP-9", date_shift_days=-100
    )
    import_pft_csv(HEADER + "HOSP-9,2024-05-01,80,90,50,70\n")
    assert PftResult.objects.get().date == date(2024, 5, 1) - timedelta(days=100)


def test_closest_pft_within_three_months(patient):
    study = Study.objects.create(
        patient=patient, study_instance_uid="1.2.3", study_date=date(2024, 6, 1)
    )
    PftResult.objects.create(patient=patient, date=date(2024, 1, 1), fvc_pct_predicted=80)
    assert closest_pft(study) is None
    near = PftResult.objects.create(patient=patient, date=date(2024, 8, 15), fvc_pct_predicted=75)
    PftResult.objects.create(patient=patient, date=date(2024, 9, 20), fvc_pct_predicted=70)
    assert closest_pft(study) == near


def test_import_pft_command_reports_bad_rows(patient, tmp_path):
    path = tmp_path / "pft.csv"
    path.write_text(HEADER + "ILD-0001,2024-01-10,78,91,47,66\nILD-0001,not-a-date,1,1,1,1\n")
    with pytest.raises(CommandError, match="line 3"):
        call_command("import_pft", str(path))
    assert not PftResult.objects.exists()
