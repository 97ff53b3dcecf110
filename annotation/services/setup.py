"""Setting up a reading study: cases, protocol slices, readers and their randomized worklists."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import Max

from annotation.models import Assignment, ReadingCase, ReadingStudy
from core.access import projects_for
from core.exceptions import ApplicationError
from core.models import Project, Role, User
from studies.models import Instance, Series
from studies.services import storage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseSpec:
    series: Series
    baseline_series: Series | None = None


def create_study(
    *,
    project: Project,
    name: str,
    created_by: User,
    protocol: str = ReadingStudy.Protocol.EQUALLY_SPACED,
    protocol_slice_count: int = 20,
    randomize_seed: int = 0,
    repeat_fraction: float = 0.0,
    allow_model_overlay_after_submit: bool = False,
    longitudinal: bool = False,
    description: str = "",
) -> ReadingStudy:
    if not projects_for(created_by).filter(pk=project.pk).exists():
        raise ApplicationError("you are not a member of this project", status_code=403)
    if ReadingStudy.objects.filter(project=project, name=name).exists():
        raise ApplicationError(f"a reading study named {name!r} already exists in this project")
    if not 2 <= protocol_slice_count <= 500:
        raise ApplicationError("protocol_slice_count must be between 2 and 500")
    if not 0.0 <= repeat_fraction <= 1.0:
        raise ApplicationError("repeat_fraction must be between 0 and 1")
    return ReadingStudy.objects.create(
        project=project,
        name=name,
        description=description,
        protocol=protocol,
        protocol_slice_count=protocol_slice_count,
        randomize_seed=randomize_seed,
        repeat_fraction=repeat_fraction,
        allow_model_overlay_after_submit=allow_model_overlay_after_submit,
        longitudinal=longitudinal,
        created_by=created_by,
    )


def add_cases(
    study: ReadingStudy, specs: Sequence[CaseSpec], *, compute_protocol: bool = True
) -> list[ReadingCase]:
    """Add cases and queue the computation of their protocol slices."""
    if study.assignments.exists():
        raise ApplicationError("readers are already assigned; create a new study to add cases")
    cases: list[ReadingCase] = []
    with transaction.atomic():
        start = study.cases.count()
        for offset, spec in enumerate(specs):
            for series in filter(None, [spec.series, spec.baseline_series]):
                if series.study.patient.project_id != study.project_id:
                    raise ApplicationError(
                        f"series {series.series_instance_uid} is not in the study's project"
                    )
            if study.longitudinal and spec.baseline_series is None:
                raise ApplicationError("a longitudinal study needs a baseline for every case")
            if spec.baseline_series is not None and not study.longitudinal:
                raise ApplicationError("baselines belong to longitudinal studies")
            if study.cases.filter(series=spec.series).exists():
                raise ApplicationError(
                    f"series {spec.series.series_instance_uid} is already a case of this study"
                )
            cases.append(
                ReadingCase.objects.create(
                    study=study,
                    series=spec.series,
                    baseline_series=spec.baseline_series,
                    label=f"Case {start + offset + 1}",
                )
            )
        if compute_protocol:
            from annotation.tasks import compute_case_protocol

            for case in cases:
                transaction.on_commit(partial(compute_case_protocol.delay, case_pk=str(case.pk)))
    return cases


def _ordered_instances(series: Series) -> list[Instance]:
    """Instances head first (LPS z decreasing), ties by instance number."""
    instances = list(series.instances.all())
    return sorted(
        instances,
        key=lambda inst: (
            -float((inst.image_position_patient or [0, 0, 0])[2]),
            inst.instance_number or 0,
        ),
    )


def protocol_for_series(series: Series, study: ReadingStudy) -> tuple[list[str], dict[str, Any]]:
    """The protocol's SOP Instance UIDs (apex first) and how they were found."""
    instances = _ordered_instances(series)
    if not instances:
        raise ApplicationError(f"series {series.series_instance_uid} has no instances")
    if study.protocol == ReadingStudy.Protocol.ALL_SLICES:
        return [i.sop_instance_uid for i in instances], {"method": "all_slices"}

    from inference.dicom.series import read_dicom_series
    from inference.protocols import equally_spaced_slices
    from inference.segmentation.classical import lung_mask

    ct = read_dicom_series([storage.absolute(i.file) for i in instances])
    heights = [float((i.image_position_patient or [0, 0, 0])[2]) for i in instances]
    selection = equally_spaced_slices(lung_mask(ct), heights, study.protocol_slice_count)
    details = selection.to_dict()
    details["method"] = "equally_spaced"
    return [instances[k].sop_instance_uid for k in selection.indices], details


def compute_protocol(case: ReadingCase) -> ReadingCase:
    """Fill the case's protocol slices; record a readable error on failure (no retry helps)."""
    try:
        slices, details = protocol_for_series(case.series, case.study)
        baseline_slices: list[str] = []
        if case.baseline_series is not None:
            baseline_slices, baseline_details = protocol_for_series(
                case.baseline_series, case.study
            )
            details = {"series": details, "baseline": baseline_details}
        else:
            details = {"series": details}
    except Exception as exc:  # a bad series must fail its case, not the worker
        logger.exception("protocol for case %s failed", case.pk)
        ReadingCase.objects.filter(pk=case.pk).update(
            protocol_status=ReadingCase.ProtocolStatus.FAILED,
            protocol_error=f"{type(exc).__name__}: {exc}",
        )
    else:
        ReadingCase.objects.filter(pk=case.pk).update(
            protocol_status=ReadingCase.ProtocolStatus.READY,
            protocol_error="",
            slice_sop_instance_uids=slices,
            baseline_slice_sop_instance_uids=baseline_slices,
            protocol_details=details,
        )
    case.refresh_from_db()
    return case


def assign_readers(study: ReadingStudy, readers: Sequence[User]) -> list[Assignment]:
    """Give each reader every case in a seeded random order, plus repeats of a seeded subset.

    Repeats come after all first reads, themselves shuffled, so a reader meets a case again only
    once its first read is behind them.
    """
    cases = list(study.cases.order_by("label"))
    if not cases:
        raise ApplicationError("add cases before assigning readers")
    created: list[Assignment] = []
    with transaction.atomic():
        ReadingStudy.objects.select_for_update().get(pk=study.pk)
        repeat_count = round(study.repeat_fraction * len(cases))
        repeats = random.Random(f"{study.randomize_seed}:repeats").sample(cases, repeat_count)
        for reader in readers:
            if reader.role != Role.RADIOLOGIST:
                raise ApplicationError(f"{reader.username} is not a radiologist")
            if not projects_for(reader).filter(pk=study.project_id).exists():
                raise ApplicationError(f"{reader.username} is not a member of the project")
            if study.assignments.filter(reader=reader).exists():
                raise ApplicationError(f"{reader.username} is already a reader of this study")
            rng = random.Random(f"{study.randomize_seed}:{reader.username}")
            first = cases[:]
            rng.shuffle(first)
            again = repeats[:]
            rng.shuffle(again)
            order = (study.assignments.filter(reader=reader).aggregate(m=Max("order"))["m"]) or 0
            for is_repeat, group in ((False, first), (True, again)):
                for case in group:
                    order += 1
                    created.append(
                        Assignment.objects.create(
                            study=study, case=case, reader=reader, order=order, is_repeat=is_repeat
                        )
                    )
    return created
