"""The refresh tasks: run twice, the second run computes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from reports import tasks
from reports.models import SliceAgreement
from tests.reports_tests.conftest import assignment_of, draw, instances_of, write_label_map

pytestmark = pytest.mark.django_db


def test_contour_task_runs_twice_without_recomputing(three_readers, reader_a, reader_b):
    s = instances_of(three_readers.cases.get())
    draw(assignment_of(three_readers, reader_a), s[0])
    contour = draw(assignment_of(three_readers, reader_b), s[0], x0=-8)
    assert tasks.refresh_agreement_for_contour(contour_pk=str(contour.pk)) > 0
    rows = dict(SliceAgreement.objects.values_list("pk", "dice"))
    assert tasks.refresh_agreement_for_contour(contour_pk=str(contour.pk)) == 0
    assert dict(SliceAgreement.objects.values_list("pk", "dice")) == rows


def test_series_task_adds_engine_rows_once(three_readers, reader_a):
    case = three_readers.cases.get()
    s = instances_of(case)
    draw(assignment_of(three_readers, reader_a), s[0])
    tasks.sync_agreement(study_pk=str(three_readers.pk))
    write_label_map(case.series, {i.sop_instance_uid: np.ones((16, 16), np.uint8) for i in s})
    assert tasks.refresh_agreement_for_series(series_pk=str(case.series_id)) == 3 * 5 * 2
    assert tasks.refresh_agreement_for_series(series_pk=str(case.series_id)) == 0
    assert tasks.sync_agreement(study_pk=str(three_readers.pk)) == 0
