"""``load_demo`` generates, imports and links the demo cohort, and can run again safely."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from core.models import Project, User
from studies.models import Patient, PftResult, Study
from studies.selectors import closest_pft

pytestmark = pytest.mark.django_db


def test_it_loads_patients_with_two_cts_and_pfts(tmp_path):
    out = StringIO()
    call_command("load_demo", patients=2, shape_kji=[24, 48, 48], out=tmp_path / "demo", stdout=out)
    assert "stored 96, already there 0, rejected 0" in out.getvalue()

    project = Project.objects.get(slug="demo")
    assert Patient.objects.filter(project=project, cohort="demo").count() == 2
    for patient in Patient.objects.all():
        assert patient.deidentified
        studies = list(patient.studies.order_by("study_date"))
        assert len(studies) == 2
        assert all(s.series.get().instances.count() == 24 for s in studies)
        # every CT has lung function within three months, on the shifted time line
        assert all(closest_pft(s) is not None for s in studies)
        # Table 1 characteristics come with the cohort
        assert patient.ssc_subtype in ("diffuse", "limited")
        assert patient.mrss is not None and patient.anti_scl70 is not None
    assert set(User.objects.values_list("username", "role")) >= {
        ("coordinator", "coordinator"),
        ("reader-a", "radiologist"),
        ("clinician", "clinician"),
    }

    call_command("load_demo", patients=2, shape_kji=[24, 48, 48], out=tmp_path / "demo")
    assert Study.objects.count() == 4
    assert (
        PftResult.objects.count() == PftResult.objects.values("patient", "date").distinct().count()
    )
