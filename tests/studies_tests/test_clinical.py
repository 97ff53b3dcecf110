"""Clinical characteristics import: all rows or none, clear errors, per-project access."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from studies.models import Patient, PatientIdentity
from studies.services.clinical import ClinicalImportError, import_clinical_csv

pytestmark = pytest.mark.django_db


@pytest.fixture
def patients(project, other_project):
    made = {
        name: Patient.objects.create(project=project, patient_id=name)
        for name in ("ILD-0001", "ILD-0002")
    }
    PatientIdentity.objects.create(
        patient=made["ILD-0002"], original_patient_id="HOSP-77", date_shift_days=-30
    )
    made["OTHER-1"] = Patient.objects.create(project=other_project, patient_id="OTHER-1")
    return made


HEADER = "patient_id,ssc_subtype,mrss,anticentromere,anti_scl70,other_autoantibodies\n"


def test_it_stores_every_field_and_resolves_original_ids(patients):
    report = import_clinical_csv(HEADER + "ILD-0001,dcSSc,18,no,yes,\nHOSP-77,limited,4,+,-,0\n")
    assert report.updated == 2
    first = Patient.objects.get(patient_id="ILD-0001")
    assert (first.ssc_subtype, first.mrss) == ("diffuse", 18)
    assert (first.anticentromere, first.anti_scl70, first.other_autoantibodies) == (
        False,
        True,
        None,
    )
    second = Patient.objects.get(patient_id="ILD-0002")
    assert (second.ssc_subtype, second.mrss, second.anticentromere, second.anti_scl70) == (
        "limited",
        4,
        True,
        False,
    )


def test_empty_cells_keep_and_unknown_clears(patients):
    import_clinical_csv(HEADER + "ILD-0001,diffuse,18,no,yes,no\n")
    import_clinical_csv("patient_id,mrss,anti_scl70,ssc_subtype\nILD-0001,,unknown,\n")
    patient = Patient.objects.get(patient_id="ILD-0001")
    assert (patient.ssc_subtype, patient.mrss, patient.anti_scl70) == ("diffuse", 18, None)


def test_one_bad_row_imports_nothing_and_lists_every_problem(patients):
    text = HEADER + "ILD-0001,diffuse,18,no,yes,no\nILD-0002,mixed,60,maybe,yes,no\nNOBODY,,,,,\n"
    with pytest.raises(ClinicalImportError) as caught:
        import_clinical_csv(text)
    errors = {e["line"]: e["errors"] for e in caught.value.extra["errors"]}
    assert set(errors) == {3, 4}
    assert any("not diffuse or limited" in p for p in errors[3])
    assert any("outside 0-51" in p for p in errors[3])
    assert any("not positive/negative" in p for p in errors[3])
    assert errors[4] == ["unknown patient 'NOBODY'"]
    assert Patient.objects.get(patient_id="ILD-0001").ssc_subtype == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,mrss\nILD-0001,3\n", "missing column patient_id"),
        ("patient_id,skin\nILD-0001,3\n", "unknown column(s) skin"),
        ("patient_id\nILD-0001\n", "no clinical column"),
        (HEADER, "no rows"),
        (HEADER + "ILD-0001,,3,,,\nILD-0001,,4,,,\n", "invalid"),
    ],
)
def test_malformed_files_say_what_to_fix(patients, text, message):
    with pytest.raises(ClinicalImportError) as caught:
        import_clinical_csv(text)
    assert message in caught.value.message


def test_api_is_for_coordinators_of_the_patients_project(
    patients, api_client_for, coordinator, clinician, outsider
):
    def post(user, text):
        upload = SimpleUploadedFile("clinical.csv", text.encode(), content_type="text/csv")
        return api_client_for(user).post("/api/v1/clinical/", {"file": upload}, format="multipart")

    assert post(clinician, HEADER + "ILD-0001,diffuse,,,,\n").status_code == 403
    refused = post(outsider, HEADER + "ILD-0001,diffuse,,,,\n")
    assert refused.status_code == 400
    assert "unknown patient" in str(refused.json())
    done = post(coordinator, HEADER + "ILD-0001,diffuse,,,,\n")
    assert done.status_code == 200, done.content
    assert done.json()["updated"] == 1
    assert Patient.objects.get(patient_id="ILD-0001").ssc_subtype == "diffuse"


def test_command_reports_rows(patients, tmp_path):
    good = tmp_path / "ok.csv"
    good.write_text(HEADER + "ILD-0001,limited,2,yes,no,no\n")
    out = StringIO()
    call_command("import_clinical", str(good), stdout=out)
    assert "updated 1 patient" in out.getvalue()
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "ILD-0001,limited,x,yes,no,no\n")
    with pytest.raises(CommandError, match=r"line 2 .*mrss"):
        call_command("import_clinical", str(bad))
