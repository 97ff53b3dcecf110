"""The clinician's longitudinal report of one patient: CTs, lung function and how both changed.

Built from stored rows only (no model is run here):

* **CTs**: one CT series per study (``jobs.selectors.primary_ct_series``), its ILD extent from
  the latest SUCCEEDED segmentation job of any engine (engine and version named), its Goh stage
  and the closest PFT within ±3 months (``studies.selectors.closest_pft``).
* **PFTs**: FVC, DLCO, TLC and KCO in % predicted, and the ATS/ERS functional-worsening decision
  (``inference.stats.functional_change``: FVC −10 points or DLCO −15 points) between every two
  consecutive PFTs.
* **Pairs of consecutive CTs**: the registration job's mean log-Jacobian over the lung (below 0:
  the lung shrank from baseline to follow-up), its superior/inferior/anterior/posterior halves,
  the folding fraction, the worsening classifier's output when the job carries one
  (``result["worsening"]``), the ILD extent change (points, only when both CTs were segmented by
  the same engine) and the functional decision between the PFTs closest to each CT.
* **Summary**: 3–5 plain sentences about the latest pair, every number formatted from the fields
  above with the same formatters the tables use.

Goh staging (Goh et al. 2008, as the 2020 AtlasNet paper words it): "limited" or "extensive" ILD
"based on whether the extent of ILD is [...] greater than 20% of lung volume". Goh's full
algorithm also uses FVC for indeterminate visual extents; the automatic extent is exact, so only
the 20 % rule is applied here: extensive when the extent is above 20 %, limited otherwise.

Who may read it: members of the patient's project (others get 404, like every patient view)
with the clinician or coordinator role, and site admins. Radiologists are refused (403): they
read cases blinded to model output (``annotation.selectors``), and this report is model output.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from django.http import Http404
from django.utils import timezone

from core.access import has_role
from core.exceptions import ApplicationError
from core.models import Role
from inference.stats import FunctionalChange, functional_change
from jobs import selectors as job_selectors
from jobs.models import Job
from reports.selectors import export_patient_id
from reports.services.engines import engine_name, job_extent_pct
from reports.services.extent import goh_of
from studies import selectors as study_selectors
from studies.models import Patient, PftResult, Series

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import User

    AnyUser = User | AnonymousUser

REPORT_ROLES = (Role.CLINICIAN, Role.COORDINATOR)  # site admins always pass has_role
MONTH_DAYS = 30.4375
PFT_MEASURES = (("fvc", "FVC"), ("dlco", "DLCO"), ("tlc", "TLC"), ("kco", "KCO"))
REGIONS = ("superior", "inferior", "anterior", "posterior")
REGION_WORDS = {
    "superior": "upper lungs",
    "inferior": "lower lungs",
    "anterior": "anterior lungs",
    "posterior": "posterior lungs",
}
CRITERION_TEXT = "the ATS/ERS criterion of functional worsening (FVC -10 or DLCO -15 points)"


# ------------------------------------------------------------------------------- formatting


def fmt(value: float | None, decimals: int = 1) -> str:
    """A number as every table and the summary print it (ASCII minus, no ``-0.0``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt_signed(value: float | None, decimals: int = 1) -> str:
    text = fmt(value, decimals)
    return text if text == "n/a" or text.startswith("-") or float(text) == 0 else f"+{text}"


def fmt_date(value: dt.date | None) -> str:
    return value.isoformat() if value else "undated"


# ----------------------------------------------------------------------------------- access


def patient_for_report(user: AnyUser, patient_id: str) -> Patient:
    """The patient whose report ``user`` may read.

    Raises:
        Http404: no such patient in the user's projects.
        ApplicationError (403): the user's role may not see model results (radiologists).
    """
    patient = (
        study_selectors.patients_for(user)
        .select_related("project")
        .filter(patient_id=patient_id)
        .first()
    )
    if patient is None:
        raise Http404("no such patient in your projects")
    if not has_role(user, *REPORT_ROLES):
        raise ApplicationError(
            "readers are blinded to model results: the longitudinal report is for clinicians, "
            "coordinators and administrators",
            status_code=403,
        )
    return patient


# ------------------------------------------------------------------------------ the report


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(float(value)) else float(value)


def _job_note(kind: str, latest: Job | None, done: Job | None) -> str:
    """What is missing or pending about a job, "" when the newest job succeeded."""
    if latest is None:
        return f"no {kind} yet"
    if done is not None and latest.pk == done.pk:
        return ""
    if latest.status == Job.Status.FAILED:
        reason = f": {latest.error}" if latest.error else ""
        prefix = "the newest " if done is not None else ""
        return f"{prefix}{kind} failed{reason}"
    running = f" ({round(100 * latest.progress)} %)" if latest.status == Job.Status.RUNNING else ""
    prefix = "a newer " if done is not None else ""
    return f"{prefix}{kind} {latest.status}{running}"


@dataclass(frozen=True)
class PftRow:
    date: dt.date
    fvc: float | None
    dlco: float | None
    tlc: float | None
    kco: float | None

    @classmethod
    def of(cls, pft: PftResult) -> PftRow:
        return cls(
            pft.date,
            pft.fvc_pct_predicted,
            pft.dlco_pct_predicted,
            pft.tlc_pct_predicted,
            pft.kco_pct_predicted,
        )

    def value(self, name: str) -> float | None:
        return getattr(self, name)


def _change(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class FunctionalStep:
    """The ATS/ERS decision between two PFTs (``worsening`` ``None``: cannot be decided)."""

    before: PftRow
    after: PftRow
    change: FunctionalChange

    @property
    def fvc_change(self) -> float | None:
        return _change(self.change.fvc_change)

    @property
    def dlco_change(self) -> float | None:
        return _change(self.change.dlco_change)

    @property
    def worsening(self) -> bool | None:
        return self.change.worsening

    @property
    def flag_text(self) -> str:
        if self.worsening is None:
            return "undetermined (FVC and DLCO not both measured)"
        if self.worsening:
            return "functional worsening (ATS/ERS)"
        return "no functional worsening"

    @classmethod
    def between(cls, before: PftRow, after: PftRow) -> FunctionalStep:
        return cls(before, after, functional_change(before.fvc, after.fvc, before.dlco, after.dlco))


@dataclass(frozen=True)
class CtRow:
    date: dt.date | None
    description: str
    series_id: Any
    extent_pct: float | None
    lung_ml: float | None
    ild_ml: float | None
    engine: str
    engine_version: str
    job_id: Any
    note: str
    pft: PftRow | None

    @property
    def goh_stage(self) -> str | None:
        return goh_of(self.extent_pct)


@dataclass(frozen=True)
class Prediction:
    probability: float
    threshold: float
    predicted: bool

    @property
    def text(self) -> str:
        call = "predicted worsening" if self.predicted else "not predicted"
        return f"{fmt(self.probability, 2)} (threshold {fmt(self.threshold, 2)}, {call})"


@dataclass(frozen=True)
class WorseningOutput:
    """The worsening classifier's output stored with a registration (``result["worsening"]``)."""

    model_version: str
    functional: Prediction | None
    morphologic: Prediction | None
    template_mean_log_jacobian: float | None


def _prediction(value: Any) -> Prediction | None:
    if not isinstance(value, dict):
        return None
    probability, threshold = _float(value.get("probability")), _float(value.get("threshold"))
    predicted = value.get("predicted")
    if probability is None or threshold is None or not isinstance(predicted, bool):
        return None
    return Prediction(probability, threshold, predicted)


def worsening_output(result: dict[str, Any]) -> WorseningOutput | None:
    """The classifier's output of a registration result; ``None`` when absent or unreadable."""
    value = result.get("worsening")
    if not isinstance(value, dict):
        return None
    functional, morphologic = (
        _prediction(value.get("functional")),
        _prediction(value.get("morphologic")),
    )
    if functional is None and morphologic is None:
        return None
    return WorseningOutput(
        model_version=str(value.get("model_version") or "unknown version"),
        functional=functional,
        morphologic=morphologic,
        template_mean_log_jacobian=_float(value.get("template_mean_log_jacobian")),
    )


@dataclass(frozen=True)
class PairRow:
    baseline: CtRow
    followup: CtRow
    job_id: Any
    backend: str
    backend_version: str
    mean_log_jacobian: float | None
    regional: dict[str, float | None]
    folding_pct: float | None
    worsening: WorseningOutput | None
    registration_note: str
    extent_change_points: float | None
    extent_note: str
    functional: FunctionalStep | None
    functional_note: str

    @property
    def registered(self) -> bool:
        return self.mean_log_jacobian is not None

    @property
    def interval_months(self) -> float | None:
        if self.baseline.date is None or self.followup.date is None:
            return None
        return (self.followup.date - self.baseline.date).days / MONTH_DAYS

    @property
    def strongest_region(self) -> str | None:
        """The region that changed most in the direction of the whole-lung mean."""
        known = {k: v for k, v in self.regional.items() if v is not None}
        if not known or self.mean_log_jacobian is None or self.mean_log_jacobian == 0:
            return None
        pick = min if self.mean_log_jacobian < 0 else max
        return pick(known, key=lambda k: known[k])

    @property
    def volume_text(self) -> str:
        if self.mean_log_jacobian is None:
            return "not registered"
        if self.mean_log_jacobian < 0:
            return "lost volume"
        return "gained volume" if self.mean_log_jacobian > 0 else "kept its volume"


@dataclass
class TimelineEvent:
    date: dt.date | None
    kind: str  # "CT" or "PFT"
    text: str


@dataclass
class ClinicianReport:
    patient: str  # the pseudonym (export_patient_id), never the hospital identifier
    patient_key: str  # Patient.patient_id: the pages' URL key, not printed
    project: str
    generated: dt.datetime
    cts: list[CtRow]
    pfts: list[PftRow]
    pft_steps: list[FunctionalStep]
    pairs: list[PairRow]
    timeline: list[TimelineEvent]
    summary: list[str]
    missing: list[str] = field(default_factory=list)

    @property
    def summary_text(self) -> str:
        return " ".join(self.summary)

    @property
    def versions(self) -> list[str]:
        """Every engine, backend and model that produced a number in the report."""
        out: list[str] = []
        for ct in self.cts:
            if ct.engine:
                out.append(f"segmentation: {ct.engine} {ct.engine_version}".strip())
        for pair in self.pairs:
            if pair.backend:
                out.append(f"registration: {pair.backend} {pair.backend_version}".strip())
            if pair.worsening is not None:
                out.append(f"worsening classifier: {pair.worsening.model_version}")
        return list(dict.fromkeys(out))

    def step_after(self, pft: PftRow) -> FunctionalStep | None:
        return next((s for s in self.pft_steps if s.after is pft), None)


def _ct_row(series: Series) -> CtRow:
    latest = job_selectors.latest_job(Job.Kind.SEGMENTATION, series)
    done = job_selectors.latest_succeeded(Job.Kind.SEGMENTATION, series)
    note = _job_note("segmentation", latest, done)
    extent = lung = ild = None
    engine = version = ""
    if done is not None:
        result = done.result or {}
        extent = job_extent_pct(done)
        lung, ild = _float(result.get("lung_ml")), _float(result.get("ild_ml"))
        engine = engine_name(done)
        version = done.engine_version or str(result.get("version") or "")
        if extent is None and not note:
            note = "the segmentation result has no readable ILD extent"
    pft = study_selectors.closest_pft(series.study)
    return CtRow(
        date=series.study.study_date,
        description=series.study.description or series.description,
        series_id=series.pk,
        extent_pct=extent,
        lung_ml=lung,
        ild_ml=ild,
        engine=engine,
        engine_version=version,
        job_id=done.pk if done else None,
        note=note,
        pft=PftRow.of(pft) if pft else None,
    )


def _extent_change(baseline: CtRow, followup: CtRow) -> tuple[float | None, str]:
    if baseline.extent_pct is None or followup.extent_pct is None:
        return None, "needs the ILD extent of both CTs"
    if baseline.engine != followup.engine:
        return None, (
            f"not compared: the CTs were segmented by different engines "
            f"({baseline.engine} and {followup.engine})"
        )
    note = ""
    if baseline.engine_version != followup.engine_version:
        note = f"engine versions differ ({baseline.engine_version} and {followup.engine_version})"
    return followup.extent_pct - baseline.extent_pct, note


def _pair_row(baseline_series: Series, followup_series: Series, cts: dict[Any, CtRow]) -> PairRow:
    baseline, followup = cts[baseline_series.pk], cts[followup_series.pk]
    kind = Job.Kind.REGISTRATION
    latest = job_selectors.latest_job(kind, followup_series, baseline_series=baseline_series)
    done = job_selectors.latest_succeeded(kind, followup_series, baseline_series=baseline_series)
    result = (done.result or {}) if done is not None else {}
    mean = _float(result.get("mean_log_jacobian"))
    registration_note = _job_note("registration", latest, done)
    if done is not None and mean is None and not registration_note:
        registration_note = "the registration result has no mean log-Jacobian"
    regional_raw = result.get("regional")
    regional_raw = regional_raw if isinstance(regional_raw, dict) else {}
    folding = _float(result.get("folding_fraction"))
    change, extent_note = _extent_change(baseline, followup)
    functional = None
    if baseline.pft is None or followup.pft is None:
        functional_note = "needs a PFT within 3 months of each CT"
    elif baseline.pft.date == followup.pft.date:
        functional_note = "both CTs are closest to the same PFT"
    else:
        functional = FunctionalStep.between(baseline.pft, followup.pft)
        functional_note = ""
    return PairRow(
        baseline=baseline,
        followup=followup,
        job_id=done.pk if done else None,
        backend=(done.engine or str(result.get("backend") or "")) if done else "",
        backend_version=(done.engine_version or str(result.get("version") or "")) if done else "",
        mean_log_jacobian=mean,
        regional={name: _float(regional_raw.get(name)) for name in REGIONS},
        folding_pct=None if folding is None else 100.0 * folding,
        worsening=worsening_output(result) if done is not None else None,
        registration_note=registration_note,
        extent_change_points=change,
        extent_note=extent_note,
        functional=functional,
        functional_note=functional_note,
    )


def clinician_report(patient: Patient, *, now: dt.datetime | None = None) -> ClinicianReport:
    """The report of one patient (access is checked by :func:`patient_for_report`)."""
    series = job_selectors.primary_ct_series(patient)
    cts = {s.pk: _ct_row(s) for s in series}
    ct_rows = [cts[s.pk] for s in series]
    pfts = [PftRow.of(p) for p in patient.pfts.order_by("date")]
    steps = [FunctionalStep.between(a, b) for a, b in pairwise(pfts)]
    pairs = [_pair_row(b, f, cts) for b, f in job_selectors.consecutive_pairs(patient)]
    report = ClinicianReport(
        patient=export_patient_id(patient),
        patient_key=patient.patient_id,
        project=patient.project.name,
        generated=now or timezone.now(),
        cts=ct_rows,
        pfts=pfts,
        pft_steps=steps,
        pairs=pairs,
        timeline=_timeline(ct_rows, pfts, steps),
        summary=[],
        missing=_missing(ct_rows, pfts, pairs),
    )
    report.summary = summary_sentences(report)
    return report


def _timeline(
    cts: list[CtRow], pfts: list[PftRow], steps: list[FunctionalStep]
) -> list[TimelineEvent]:
    events = []
    for ct in cts:
        extent = f"ILD extent {fmt(ct.extent_pct)} %" if ct.extent_pct is not None else ct.note
        events.append(TimelineEvent(ct.date, "CT", f"{ct.description or 'CT'}: {extent}"))
    flagged = {id(s.after): s for s in steps}
    for pft in pfts:
        text = f"FVC {fmt(pft.fvc)} %, DLCO {fmt(pft.dlco)} % predicted"
        step = flagged.get(id(pft))
        if step is not None and step.worsening:
            text += " - functional worsening since the previous PFT"
        events.append(TimelineEvent(pft.date, "PFT", text))
    events.sort(key=lambda e: (e.date is None, e.date or dt.date.min, e.kind))
    return events


def _missing(cts: list[CtRow], pfts: list[PftRow], pairs: list[PairRow]) -> list[str]:
    out = []
    if not cts:
        out.append("No CT scan is stored for this patient.")
    elif len(cts) == 1:
        out.append("Only one CT: no change between CTs can be measured yet.")
    if not pfts:
        out.append("No PFT recorded: functional worsening cannot be assessed.")
    for ct in cts:
        if ct.note:
            out.append(f"CT {fmt_date(ct.date)}: {ct.note}.")
        if pfts and ct.pft is None:
            out.append(f"CT {fmt_date(ct.date)}: no PFT within 3 months.")
    for pair in pairs:
        label = f"CTs {fmt_date(pair.baseline.date)} to {fmt_date(pair.followup.date)}"
        if pair.registration_note:
            out.append(f"{label}: {pair.registration_note}.")
        elif pair.worsening is None:
            out.append(f"{label}: worsening classifier output not available.")
    return out


# ---------------------------------------------------------------------------------- summary


def _pft_change_words(name: str, change: float | None) -> str:
    if change is None:
        return f"{name} not measured at both"
    if change < 0:
        return f"{name} fell {fmt(-change)} points"
    if change > 0:
        return f"{name} rose {fmt(change)} points"
    return f"{name} did not change"


def _extent_sentence(pair: PairRow) -> str:
    before, after = pair.baseline, pair.followup
    if pair.extent_change_points is None:
        return f"The change in ILD extent is not available ({pair.extent_note})."
    change = pair.extent_change_points
    verb = "rose" if change > 0 else "fell" if change < 0 else "stayed"
    stages = f"Goh stage {before.goh_stage} at baseline, {after.goh_stage} at follow-up"
    return (
        f"ILD extent {verb} from {fmt(before.extent_pct)} % to {fmt(after.extent_pct)} % "
        f"({fmt_signed(change)} points; {stages})."
    )


def _functional_sentence(pair: PairRow) -> str:
    step = pair.functional
    if step is None:
        return f"Functional worsening cannot be assessed for these CTs ({pair.functional_note})."
    words = (
        f"{_pft_change_words('FVC', step.fvc_change)} and "
        f"{_pft_change_words('DLCO', step.dlco_change)}"
    )
    dates = f"between the PFTs of {fmt_date(step.before.date)} and {fmt_date(step.after.date)}"
    if step.worsening is None:
        verdict = "so the ATS/ERS criterion cannot be applied"
    elif step.worsening:
        verdict = f"this meets {CRITERION_TEXT}"
    else:
        verdict = f"this does not meet {CRITERION_TEXT}"
    return f"{words[0].upper()}{words[1:]} {dates}; {verdict}."


def _classifier_sentence(pair: PairRow) -> str:
    output = pair.worsening
    if output is None:
        if not pair.registered:
            return "The worsening classifier needs the registration and is not available."
        return "The worsening classifier's output is not available for these CTs."
    parts = []
    if output.functional is not None:
        parts.append(f"functional worsening {output.functional.text}")
    if output.morphologic is not None:
        parts.append(f"morphologic worsening {output.morphologic.text}")
    return (
        f"The worsening classifier ({output.model_version}) gives probabilities of "
        f"{' and '.join(parts)}."
    )


def summary_sentences(report: ClinicianReport) -> list[str]:
    """3–5 sentences about the latest pair of CTs (or the only CT); numbers from ``report``."""
    cts = report.cts
    if not cts:
        return [
            f"No CT scan is stored for {report.patient}; {len(report.pfts)} PFT(s) are recorded.",
            "ILD extent, lung shrinkage and the worsening classifier need at least one CT "
            "(two for any change).",
            "Upload the CTs and request the segmentation and registration jobs.",
        ]
    first, last = cts[0], cts[-1]
    out = [
        f"{report.patient} has {len(cts)} CT scan(s) from {fmt_date(first.date)} to "
        f"{fmt_date(last.date)} and {len(report.pfts)} PFT(s)."
    ]
    if not report.pairs:
        if first.extent_pct is None:
            out.append(f"The ILD extent of the CT is not available ({first.note or 'no result'}).")
        else:
            out.append(
                f"ILD extent on {fmt_date(first.date)} was {fmt(first.extent_pct)} % of the lung "
                f"(Goh stage {first.goh_stage}, {first.engine} {first.engine_version})."
            )
        out.append("A second CT is needed to measure lung shrinkage and the change in extent.")
        return out
    pair = report.pairs[-1]
    period = f"Between {fmt_date(pair.baseline.date)} and {fmt_date(pair.followup.date)}"
    if pair.mean_log_jacobian is None:
        out.append(f"{period} no registration result is available ({pair.registration_note}).")
    else:
        region = pair.strongest_region
        where = f", strongest in the {REGION_WORDS[region]}" if region else ""
        out.append(
            f"{period} the lungs {pair.volume_text} "
            f"(mean log-Jacobian {fmt(pair.mean_log_jacobian, 3)}{where})."
        )
    out.append(_extent_sentence(pair))
    out.append(_functional_sentence(pair))
    out.append(_classifier_sentence(pair))
    return out
