"""Follow-up statistics (Chassagnon et al. 2021): functional worsening, visual calls, mean
log-Jacobian by group, its Spearman correlation with PFT changes, and the worsening classifiers.

**Pairs.** In a longitudinal reading study, each case's baseline and follow-up series; otherwise
each patient's first and last CT (different studies). PFTs are the closest to each CT within
±3 months.

**Functional worsening** (ATS/ERS/JRS/ALAT): FVC % predicted −10 points or DLCO −15 points, from
``inference.stats.functional_change`` (missing values: decided on what is available; a patient
with neither pair is "undetermined" and left out of the functional groups, never counted as
stable).

**Morphologic change**: the readers' visual calls (improved / stable / worse) on their
submitted first reads of the case; the majority call, ``None`` on a tie (reported as
undetermined). The paper's two radiologists read in consensus.

**Mean log-Jacobian** comes from registration jobs through :func:`registration_summaries`, an
adapter over ``Job`` rows of kind ``"registration"`` (another service produces them); patients
without one are left out of those statistics.

**Classifiers** (the paper's "Depiction of Disease Worsening"): a cut-off on a score — the ILD
extent change (follow-up − baseline, points of % lung) or the mean log-Jacobian — chosen by ROC
(Youden) on the training cohorts and evaluated on the test cohorts with exact CIs
(``inference.stats.extent_change_criterion``); and, when registration jobs report a classifier's
prediction, its sensitivity/specificity/accuracy/PPV/NPV on the test cohorts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.db.models import QuerySet

from annotation.models import Assignment, ReadingCase, ReadingStudy, VisualAssessment
from inference.stats import (
    ContinuousRow,
    Correlation,
    DiagnosticMetrics,
    ExtentChangeCriterion,
    FunctionalChange,
    compare_mean_log_jacobian,
    describe_categorical,
    describe_continuous,
    diagnostic_metrics,
    extent_change_criterion,
    format_p,
    functional_change,
    pft_change_correlations,
    summarize,
)
from inference.stats._common import format_number
from jobs.models import Job
from reports.selectors import cohort_sort_key, export_patient_id
from reports.services.characteristics import NO_COHORT, PFTS
from reports.services.extent import NO_EXTENT, Extent, SourceMode, series_extents
from studies.models import Patient, PftResult, Series
from studies.selectors import closest_pft

REGISTRATION_KIND = "registration"
MONTH_DAYS = 30.4375
PFT_NAMES = {"tlc": "TLC", "fvc": "FVC", "dlco": "DLCO", "kco": "KCO"}
FUNCTIONAL_GROUPS = ("Functional worsening", "Functional stability")
MORPHOLOGIC_GROUPS = ("worse", "stable", "improved")
DEFAULT_TRAIN = ("training", "validation")
DEFAULT_TEST = ("test",)


# ----------------------------------------------------------------------- registration adapter


@dataclass(frozen=True)
class RegistrationSummary:
    job_id: Any
    baseline_series_uid: str
    followup_series_uid: str
    mean_log_jacobian: float
    engine: str = ""
    engine_version: str = ""
    predicted_functional_worsening: bool | None = None
    predicted_morphologic_worsening: bool | None = None


def _first_str(mappings: Sequence[dict[str, Any]], *keys: str) -> str:
    for mapping in mappings:
        for key in keys:
            value = mapping.get(key)
            if isinstance(value, str) and value:
                return value
    return ""


def _bool_or_none(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _predicted(result: dict[str, Any], target: str) -> bool | None:
    """The worsening classifier's call for ``target`` (``functional`` / ``morphologic``):
    ``result["worsening"][target]["predicted"]`` as the registration job stores it."""
    worsening = result.get("worsening")
    if isinstance(worsening, dict) and isinstance(worsening.get(target), dict):
        return _bool_or_none(worsening[target].get("predicted"))
    return _bool_or_none(result.get(f"predicted_{target}_worsening"))


def registration_summaries(patient: Patient) -> list[RegistrationSummary] | None:
    """The patient's SUCCEEDED registration jobs as summaries; ``None`` when there are none.

    A job's ``series`` is the follow-up (moving) series and ``baseline_series`` the baseline
    (fixed) one (else ``params``/``result`` ``fixed_series_instance_uid`` or
    ``baseline_series_instance_uid``); the mean log-Jacobian is ``mean_log_jacobian`` at the top
    of the result or in its ``summary`` (as ``inference.register`` writes ``summary.json``).
    """
    jobs = Job.objects.filter(
        kind=REGISTRATION_KIND, status=Job.Status.SUCCEEDED, series__study__patient=patient
    ).select_related("series", "baseline_series")
    out = []
    for job in jobs.order_by("finished", "created"):
        result, params = job.result or {}, job.params or {}
        nested = result.get("summary")
        summary: dict[str, Any] = nested if isinstance(nested, dict) else {}
        value = result.get("mean_log_jacobian", summary.get("mean_log_jacobian"))
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        baseline = (
            job.baseline_series.series_instance_uid
            if job.baseline_series is not None
            else _first_str(
                [params, result], "fixed_series_instance_uid", "baseline_series_instance_uid"
            )
        )
        followup = _first_str(
            [params, result], "moving_series_instance_uid", "followup_series_instance_uid"
        ) or (job.series.series_instance_uid if job.series else "")
        out.append(
            RegistrationSummary(
                job_id=job.pk,
                baseline_series_uid=baseline,
                followup_series_uid=followup,
                mean_log_jacobian=float(value),
                engine=job.engine,
                engine_version=job.engine_version,
                predicted_functional_worsening=_predicted(result, "functional"),
                predicted_morphologic_worsening=_predicted(result, "morphologic"),
            )
        )
    return out or None


# ------------------------------------------------------------------------------ per patient


@dataclass
class LongitudinalRow:
    patient: str
    cohort: str
    baseline_uid: str
    followup_uid: str
    age_years: float | None
    woman: bool | None
    interval_months: float | None
    pft_before: dict[str, float | None]
    pft_after: dict[str, float | None]
    change: FunctionalChange
    visual: str | None
    visual_votes: str
    extent_before: Extent
    extent_after: Extent
    registration: RegistrationSummary | None

    @property
    def functional_group(self) -> str | None:
        if self.change.worsening is None:
            return None
        return FUNCTIONAL_GROUPS[0] if self.change.worsening else FUNCTIONAL_GROUPS[1]

    @property
    def mean_log_jacobian(self) -> float | None:
        return None if self.registration is None else self.registration.mean_log_jacobian

    @property
    def extent_change(self) -> float | None:
        before, after = self.extent_before.extent_pct, self.extent_after.extent_pct
        return None if before is None or after is None else after - before

    def pft_change(self, name: str) -> float | None:
        before, after = self.pft_before.get(name), self.pft_after.get(name)
        return None if before is None or after is None else after - before

    def to_dict(self) -> dict[str, Any]:
        return {
            "patient": self.patient,
            "cohort": self.cohort,
            "baseline_series_instance_uid": self.baseline_uid,
            "followup_series_instance_uid": self.followup_uid,
            "age_years": None if self.age_years is None else round(self.age_years, 1),
            "sex": None if self.woman is None else ("F" if self.woman else "M"),
            "interval_months": (
                None if self.interval_months is None else round(self.interval_months, 1)
            ),
            **{f"{n}_before": self.pft_before.get(n) for n in PFT_NAMES},
            **{f"{n}_after": self.pft_after.get(n) for n in PFT_NAMES},
            "fvc_worsened": self.change.fvc_worsened,
            "dlco_worsened": self.change.dlco_worsened,
            "functional_worsening": self.change.worsening,
            "visual_call": self.visual,
            "visual_votes": self.visual_votes,
            "extent_before_pct": self.extent_before.extent_pct,
            "extent_after_pct": self.extent_after.extent_pct,
            "extent_source": self.extent_after.source or self.extent_before.source,
            "extent_change_pct": self.extent_change,
            "mean_log_jacobian": self.mean_log_jacobian,
            "registration_job": str(self.registration.job_id) if self.registration else None,
        }


def _pft_values(pft: PftResult | None) -> dict[str, float | None]:
    return {n: None if pft is None else getattr(pft, f"{n}_pct_predicted") for n in PFT_NAMES}


def _visual(case: ReadingCase | None) -> tuple[str | None, str]:
    if case is None:
        return None, ""
    calls = list(
        VisualAssessment.objects.filter(
            assignment__case=case,
            assignment__is_repeat=False,
            assignment__status=Assignment.Status.SUBMITTED,
        ).values_list("call", flat=True)
    )
    if not calls:
        return None, ""
    votes = Counter(calls)
    ranked = votes.most_common()
    votes_text = ", ".join(f"{call} {n}" for call, n in sorted(votes.items()))
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None, votes_text
    return ranked[0][0], votes_text


def _pairs(
    patients: QuerySet[Patient], reading_study: ReadingStudy | None
) -> list[tuple[Patient, Series, Series, ReadingCase | None]]:
    pairs: list[tuple[Patient, Series, Series, ReadingCase | None]] = []
    if reading_study is not None:
        allowed = set(patients.values_list("pk", flat=True))
        cases = (
            reading_study.cases.filter(baseline_series__isnull=False)
            .select_related("series__study__patient", "baseline_series__study")
            .order_by("label")
        )
        for case in cases:
            patient = case.series.study.patient
            if patient.pk in allowed and case.baseline_series is not None:
                pairs.append((patient, case.baseline_series, case.series, case))
        return pairs
    series = (
        Series.objects.filter(study__patient__in=patients, modality="CT")
        .select_related("study", "study__patient")
        .order_by("study__study_date", "series_number", "created")
    )
    by_patient: dict[Any, list[Series]] = {}
    for item in series:
        by_patient.setdefault(item.study.patient_id, []).append(item)
    for items in by_patient.values():
        first, last = items[0], items[-1]
        if first.study_id == last.study_id:
            continue
        read = (
            ReadingCase.objects.filter(series=last, baseline_series=first)
            .order_by("created")
            .first()
        )
        pairs.append((first.study.patient, first, last, read))
    return pairs


def longitudinal_rows(
    patients: QuerySet[Patient],
    *,
    reading_study: ReadingStudy | None = None,
    cohorts: Sequence[str] = (),
    source: str = "readers",
    mode: SourceMode = "auto",
) -> list[LongitudinalRow]:
    if cohorts:
        patients = patients.filter(cohort__in=list(cohorts))
    pairs = _pairs(patients, reading_study)
    series_ids = [s.pk for _, b, f, _ in pairs for s in (b, f)]
    extents = series_extents(series_ids, source=source, mode=mode)
    rows = []
    for patient, baseline, followup, case in pairs:
        pft_before, pft_after = closest_pft(baseline.study), closest_pft(followup.study)
        before, after = _pft_values(pft_before), _pft_values(pft_after)
        change = functional_change(before["fvc"], after["fvc"], before["dlco"], after["dlco"])
        summaries = registration_summaries(patient) or []
        matching = [
            s
            for s in summaries
            if s.followup_series_uid == followup.series_instance_uid
            and s.baseline_series_uid in ("", baseline.series_instance_uid)
        ]
        visual, votes = _visual(case)
        interval = None
        if baseline.study.study_date and followup.study.study_date:
            interval = (followup.study.study_date - baseline.study.study_date).days / MONTH_DAYS
        age = None
        if patient.birth_date and baseline.study.study_date:
            age = (baseline.study.study_date - patient.birth_date).days / 365.25
        rows.append(
            LongitudinalRow(
                patient=export_patient_id(patient),
                cohort=patient.cohort or NO_COHORT,
                baseline_uid=baseline.series_instance_uid,
                followup_uid=followup.series_instance_uid,
                age_years=age,
                woman={"F": True, "M": False}.get((patient.sex or "").upper()),
                interval_months=interval,
                pft_before=before,
                pft_after=after,
                change=change,
                visual=visual,
                visual_votes=votes,
                extent_before=extents.get(baseline.pk, NO_EXTENT),
                extent_after=extents.get(followup.pk, NO_EXTENT),
                registration=matching[-1] if matching else None,
            )
        )
    rows.sort(key=lambda r: (cohort_sort_key(r.cohort), r.patient))
    return rows


# ----------------------------------------------------------------------------------- tables


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


@dataclass
class GroupTable:
    """Characteristics by group (the 2021 paper's Tables 1 and 2): an "All" column, one column
    per group, the P value across groups."""

    title: str
    groups: list[str]
    counts: dict[str, int]
    n_all: int
    lines: list[tuple[str, list[str], Any]] = field(default_factory=list)

    def header(self) -> list[str]:
        return [
            "Characteristic",
            f"All patients (n = {self.n_all})",
            *[f"{g} (n = {self.counts[g]})" for g in self.groups],
            "P value",
        ]

    def cells(self) -> list[list[str]]:
        return [self.header(), *[[label, *cells] for label, cells, _ in self.lines]]

    def numbers(self) -> list[dict[str, Any]]:
        out = []
        for label, _, row in self.lines:
            out.append({"table": self.title, "characteristic": label, **row.to_dict()})
        return out


def _baseline_pft(row: LongitudinalRow, *, name: str) -> float | None:
    return row.pft_before.get(name)


def _pft_change(row: LongitudinalRow, *, name: str) -> float | None:
    return row.pft_change(name)


def group_table(
    title: str,
    rows: Sequence[LongitudinalRow],
    group_of: Callable[[LongitudinalRow], str | None],
    groups: Sequence[str],
    *,
    include_functional: bool,
    include_morphologic: bool,
) -> GroupTable:
    members = {g: [r for r in rows if group_of(r) == g] for g in groups}
    grouped = [r for r in rows if group_of(r) in groups]
    table = GroupTable(title, list(groups), {g: len(v) for g, v in members.items()}, len(grouped))

    def continuous(label: str, get: Callable[[LongitudinalRow], float | None], dec: int) -> None:
        data = {g: [_nan(get(r)) for r in members[g]] for g in groups}
        row = describe_continuous(data, label=label)
        overall = summarize([_nan(get(r)) for r in grouped])
        cells = row.cells(decimals=dec)
        all_text = "..." if overall.n == 0 else overall.format(dec, brackets="[]")
        table.lines.append((label, [all_text, *cells[1:]], row))

    def categorical(label: str, get: Callable[[LongitudinalRow], bool | None]) -> None:
        data = {g: [get(r) for r in members[g]] for g in groups}
        row = describe_categorical(data, label=label, levels=(True, False))
        values = [v for v in (get(r) for r in grouped) if v is not None]
        all_text = (
            f"{sum(values)} ({format_number(100 * sum(values) / len(values), 0)})"
            if values
            else "..."
        )
        table.lines.append((label, [all_text, *row.cells()[1:]], row))

    continuous("Age at baseline (y)", lambda r: r.age_years, 0)
    categorical("Women", lambda r: r.woman)
    for name, label in PFTS:
        continuous(f"Baseline {label}", partial(_baseline_pft, name=name), 0)
    continuous("Interval between CTs (mo)", lambda r: r.interval_months, 0)
    categorical(
        "ILD at baseline CT",
        lambda r: None if r.extent_before.extent_pct is None else r.extent_before.extent_pct > 0,
    )
    continuous("ILD extent at baseline CT (%)", lambda r: r.extent_before.extent_pct, 1)
    for name, label in PFTS:
        continuous(f"Change in {label}", partial(_pft_change, name=name), 0)
    if include_morphologic:
        categorical(
            "Morphologic worsening at CT",
            lambda r: None if r.visual is None else r.visual == "worse",
        )
    if include_functional:
        categorical("Functional deterioration (ATS/ERS)", lambda r: r.change.worsening)
    continuous("Change in ILD extent (points)", lambda r: r.extent_change, 1)
    continuous("Mean log-Jacobian", lambda r: r.mean_log_jacobian, 2)
    return table


@dataclass
class Classifier:
    name: str
    reference: str
    criterion: ExtentChangeCriterion | None = None
    metrics: DiagnosticMetrics | None = None
    n_train: int = 0
    n_test: int = 0
    error: str = ""

    def lines(self) -> list[list[str]]:
        metrics = self.criterion.test if self.criterion is not None else self.metrics
        head = [f"{self.name} vs {self.reference}"]
        if metrics is None:
            return [[*head, "NA", self.error]]
        out = []
        if self.criterion is not None:
            out.append(
                [*head, "Threshold (training ROC, Youden)", f"{self.criterion.threshold_pct:.4g}"]
            )
            out.append([*head, "Training AUC", f"{self.criterion.training.curve.auc:.2f}"])
        for attribute, label in (
            ("sensitivity", "Sensitivity"),
            ("specificity", "Specificity"),
            ("accuracy", "Accuracy"),
            ("ppv", "Positive predictive value"),
            ("npv", "Negative predictive value"),
        ):
            out.append([*head, f"{label} (test)", getattr(metrics, attribute).format()])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reference": self.reference,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "criterion": self.criterion.to_dict() if self.criterion else None,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "error": self.error,
        }


def _functional_reference(row: LongitudinalRow) -> bool | None:
    return row.change.worsening


def _visual_reference(row: LongitudinalRow) -> bool | None:
    return None if row.visual is None else row.visual == "worse"


def _functional_prediction(row: LongitudinalRow) -> bool | None:
    return None if row.registration is None else row.registration.predicted_functional_worsening


def _visual_prediction(row: LongitudinalRow) -> bool | None:
    return None if row.registration is None else row.registration.predicted_morphologic_worsening


def _references() -> list[tuple[str, Callable[[LongitudinalRow], bool | None]]]:
    return [
        ("functional worsening (ATS/ERS)", _functional_reference),
        ("morphologic worsening (visual)", _visual_reference),
    ]


def classifiers(
    rows: Sequence[LongitudinalRow],
    *,
    train_cohorts: Sequence[str] = DEFAULT_TRAIN,
    test_cohorts: Sequence[str] = DEFAULT_TEST,
) -> list[Classifier]:
    out = []
    scores: list[tuple[str, Callable[[LongitudinalRow], float | None]]] = [
        ("ILD extent change", lambda r: r.extent_change),
        ("Mean log-Jacobian", lambda r: r.mean_log_jacobian),
    ]
    for reference_name, reference in _references():
        for score_name, score in scores:
            item = Classifier(score_name, reference_name)
            usable = [r for r in rows if score(r) is not None and reference(r) is not None]
            train = [r for r in usable if r.cohort in train_cohorts]
            test = [r for r in usable if r.cohort in test_cohorts]
            item.n_train, item.n_test = len(train), len(test)
            try:
                item.criterion = extent_change_criterion(
                    [_nan(score(r)) for r in train],
                    [bool(reference(r)) for r in train],
                    [_nan(score(r)) for r in test],
                    [bool(reference(r)) for r in test],
                )
            except ValueError as error:
                item.error = (
                    f"needs both classes in the training cohorts {list(train_cohorts)} and "
                    f"patients in the test cohorts {list(test_cohorts)}: {error}"
                )
            out.append(item)
        predictions = (
            _functional_prediction if reference is _functional_reference else _visual_prediction
        )
        test = [
            r
            for r in rows
            if r.cohort in test_cohorts and predictions(r) is not None and reference(r) is not None
        ]
        if test:
            item = Classifier("Registration classifier", reference_name, n_test=len(test))
            item.metrics = diagnostic_metrics(
                [bool(reference(r)) for r in test], [bool(predictions(r)) for r in test]
            )
            out.append(item)
    return out


@dataclass
class LongitudinalReport:
    rows: list[LongitudinalRow]
    functional: GroupTable
    morphologic: GroupTable
    jacobian_by_group: list[ContinuousRow]
    correlations: dict[str, Correlation]
    correlation_error: str
    classifiers: list[Classifier]
    n_undetermined_functional: int
    n_undetermined_visual: int
    n_without_registration: int
    source: str

    def correlation_cells(self) -> list[list[str]]:
        table = [["Change in", "n", "ρ", "95% CI", "P"]]
        for name, result in self.correlations.items():
            table.append(
                [
                    f"{name} (% predicted)",
                    str(result.n),
                    format_number(result.rho, 2),
                    f"{format_number(result.ci_low, 2)}, {format_number(result.ci_high, 2)}",
                    format_p(result.p_value).removeprefix("= "),
                ]
            )
        return table

    def jacobian_cells(self) -> list[list[str]]:
        out = [["Grouping", "Group", "Mean log-Jacobian, median [IQR]", "n", "P value", "Test"]]
        for grouping, row in zip(
            ("functional", "morphologic"), self.jacobian_by_group, strict=True
        ):
            for group, summary in row.summaries.items():
                out.append(
                    [
                        grouping,
                        group,
                        "..." if summary.n == 0 else summary.format(2, brackets="[]"),
                        str(summary.n),
                        format_p(row.p_value).removeprefix("= ") if row.test else "",
                        row.test or "",
                    ]
                )
        return out

    def classifier_cells(self) -> list[list[str]]:
        out = [["Classifier", "Measure", "Value"]]
        for item in self.classifiers:
            out += item.lines()
        return out


def longitudinal_report(
    rows: Sequence[LongitudinalRow],
    *,
    source: str,
    train_cohorts: Sequence[str] = DEFAULT_TRAIN,
    test_cohorts: Sequence[str] = DEFAULT_TEST,
) -> LongitudinalReport:
    functional = group_table(
        "by functional change",
        rows,
        lambda r: r.functional_group,
        FUNCTIONAL_GROUPS,
        include_functional=False,
        include_morphologic=True,
    )
    morphologic = group_table(
        "by morphologic change",
        rows,
        lambda r: r.visual,
        MORPHOLOGIC_GROUPS,
        include_functional=True,
        include_morphologic=False,
    )
    with_jacobian = [r for r in rows if r.mean_log_jacobian is not None]
    jacobian = [
        compare_mean_log_jacobian(
            [_nan(r.mean_log_jacobian) for r in with_jacobian],
            [r.functional_group for r in with_jacobian],
            order=FUNCTIONAL_GROUPS,
        ),
        compare_mean_log_jacobian(
            [_nan(r.mean_log_jacobian) for r in with_jacobian],
            [r.visual for r in with_jacobian],
            order=MORPHOLOGIC_GROUPS,
        ),
    ]
    correlations: dict[str, Correlation] = {}
    errors = []
    values = [_nan(r.mean_log_jacobian) for r in with_jacobian]
    for n, name in PFT_NAMES.items():
        # one PFT at a time, so a PFT missing for most patients does not hide the others
        try:
            correlations.update(
                pft_change_correlations(
                    values,  # type: ignore[arg-type]
                    {name: [_nan(r.pft_before.get(n)) for r in with_jacobian]},
                    {name: [_nan(r.pft_after.get(n)) for r in with_jacobian]},
                )
            )
        except ValueError as exc:
            errors.append(str(exc))
    error = "; ".join(errors)
    if not with_jacobian:
        error = "no patient has a registration result (mean log-Jacobian)"
    return LongitudinalReport(
        rows=list(rows),
        functional=functional,
        morphologic=morphologic,
        jacobian_by_group=jacobian,
        correlations=correlations,
        correlation_error=error,
        classifiers=classifiers(rows, train_cohorts=train_cohorts, test_cohorts=test_cohorts),
        n_undetermined_functional=sum(r.change.worsening is None for r in rows),
        n_undetermined_visual=sum(r.visual is None for r in rows),
        n_without_registration=sum(r.registration is None for r in rows),
        source=source,
    )
