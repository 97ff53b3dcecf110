"""``import_dicom`` on real CT from ../shared/data/real (skipped when that folder is absent)."""

from __future__ import annotations

import contextlib
import json
from io import StringIO

import pytest
from django.core.management import call_command

from studies import selectors
from studies.models import Instance, Series
from studies.services import storage

pytestmark = [pytest.mark.django_db, pytest.mark.real_data]


def run_import(*args: str) -> dict:
    out = StringIO()
    with contextlib.suppress(SystemExit):  # exit 1 when every file was rejected
        call_command("import_dicom", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_popi_is_one_series_of_141_instances_with_its_geometry(real_data):
    from inference.dicom.series import read_dicom_series

    report = run_import(str(real_data("popi-00-ct")), "--project", "popi")
    assert report["stored"] == 141
    rejected = [f["name"] for f in report["files"] if f["status"] == "rejected"]
    assert rejected == ["popi-00-ct/SOURCE.txt"] or all(not n.endswith(".dcm") for n in rejected)
    assert len(report["series"]) == 1
    series = Series.objects.get()
    assert series.instances.count() == 141
    geometry = selectors.series_for_study(series.study).get().geometry
    assert geometry["n_slices"] == 141
    assert geometry["slice_spacing_mm"] == pytest.approx(2.0, abs=1e-3)

    volume = read_dicom_series(
        [storage.absolute(f) for f in Instance.objects.values_list("file", flat=True)]
    )
    assert volume.array.shape == (141, 512, 512)
    assert volume.spacing_mm == pytest.approx((0.977, 0.977, 2.0), abs=1e-3)


def test_popi_reimport_is_all_duplicates(real_data):
    run_import(str(real_data("popi-00-ct")), "--project", "popi")
    again = run_import(str(real_data("popi-00-ct")), "--project", "popi")
    assert (again["stored"], again["duplicate"]) == (0, 141)


def test_the_j2k_series_without_study_uids_gets_a_reason_per_file(real_data):
    report = run_import(
        str(real_data("totalseg-j2k-dicom") / "example_ct_dicom"), "--no-deidentify"
    )
    assert report["stored"] == 0
    assert report["rejected"] == 20
    assert all("StudyInstanceUID" in f["reason"] for f in report["files"])


def test_the_stripped_header_slices_get_a_clear_answer(real_data):
    report = run_import(str(real_data("lungmask-2slice")))
    outcomes = {f["name"].rsplit("/", 1)[-1]: f for f in report["files"]}
    assert outcomes["SOURCE.txt"]["status"] == "rejected"
    assert "not a DICOM file" in outcomes["SOURCE.txt"]["reason"]
    # Modality is missing but implied by the SOP class; position, orientation and spacing are
    # there, so the two slices are stored as one 2-slice series at 1 mm.
    assert outcomes["0.dcm"]["status"] == outcomes["1.dcm"]["status"] == "stored"
    series = Series.objects.get()
    assert series.modality == "CT"
    geometry = selectors.series_for_study(series.study).get().geometry
    assert geometry["n_slices"] == 2
    assert geometry["slice_spacing_mm"] == pytest.approx(1.0)
