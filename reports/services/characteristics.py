"""Patient characteristics by cohort (Chassagnon et al. 2020, Table 1) and the per-patient rows
behind it and behind Table 3.

One CT per patient: in a reading study, the series of the patient's first case (by label);
otherwise the patient's earliest CT series with an extent from the chosen source (else the
earliest CT series). Lung function is the PFT closest to that CT within ±3 months
(``studies.selectors.closest_pft``). Age is at the CT, in years.

Rows: age, women, diffuse SSc, modified Rodnan skin score, autoantibodies (anticentromere,
anti-Scl-70, other, none — a patient may have several; "none" when all three are negative;
unknown when not all are recorded and none is positive), TLC / FVC / DLCO / KCO (% predicted), ILD extent per source (% of lung; the
source of each patient's number is in the per-patient table), Goh stage (extent > 20 % =
extensive). Continuous rows are median [IQR] with Mann-Whitney (2 cohorts) or Kruskal-Wallis
(≥ 3) P values, categorical rows counts (%) with Fisher's exact (Freeman-Halton) P, all from
``inference.stats.tables``; extra columns compare two cohorts only (the paper's P†,
correlation vs external).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from django.db.models import QuerySet

from annotation.models import ReadingStudy
from inference.stats import (
    CategoricalRow,
    ContinuousRow,
    describe_categorical,
    describe_continuous,
    format_p,
)
from reports.selectors import cohort_sort_key, export_patient_id
from reports.services.extent import (
    NO_EXTENT,
    READERS,
    Extent,
    SourceMode,
    goh_of,
    series_extents,
)
from studies.models import Patient, Series
from studies.selectors import closest_pft

PFTS = (
    ("tlc", "Predicted TLC (%)"),
    ("fvc", "Predicted FVC (%)"),
    ("dlco", "Predicted DLCO (%)"),
    ("kco", "Predicted KCO (%)"),
)
ANTIBODIES = (
    ("anticentromere", "Anticentromere"),
    ("anti_scl70", "Anti-Scl-70"),
    ("other_autoantibodies", "Other"),
)
NO_COHORT = "(untagged)"


@dataclass
class PatientRow:
    patient_pk: Any
    patient: str  # the export pseudonym
    cohort: str
    series_uid: str
    age_years: float | None
    woman: bool | None
    pft: dict[str, float | None]
    pft_interval_days: int | None
    diffuse: bool | None = None
    mrss: int | None = None
    # anticentromere, anti_scl70, other_autoantibodies, none (all three negative); None = unknown
    antibodies: dict[str, bool | None] = field(default_factory=dict)
    extents: dict[str, Extent] = field(default_factory=dict)

    def extent(self, source: str) -> Extent:
        return self.extents.get(source, NO_EXTENT)

    def goh(self, source: str) -> str | None:
        return goh_of(self.extent(source).extent_pct)

    def to_dict(self, sources: Sequence[str]) -> dict[str, Any]:
        data: dict[str, Any] = {
            "patient": self.patient,
            "cohort": self.cohort,
            "series_instance_uid": self.series_uid,
            "age_years": None if self.age_years is None else round(self.age_years, 1),
            "sex": None if self.woman is None else ("F" if self.woman else "M"),
            "ssc_subtype": None
            if self.diffuse is None
            else ("diffuse" if self.diffuse else "limited"),
            "mrss": self.mrss,
            **{f"antibody[{name}]": value for name, value in self.antibodies.items()},
            **{f"{name}_pct_predicted": self.pft.get(name) for name, _ in PFTS},
            "pft_interval_days": self.pft_interval_days,
        }
        for source in sources:
            extent = self.extent(source)
            data[f"extent_pct[{source}]"] = extent.extent_pct
            data[f"extent_source[{source}]"] = extent.source
            data[f"goh[{source}]"] = self.goh(source)
        return data


def _age_years(patient: Patient, series: Series) -> float | None:
    born, seen = patient.birth_date, series.study.study_date
    if born is None or seen is None:
        return None
    return (seen - born).days / 365.25


def _woman(patient: Patient) -> bool | None:
    sex = (patient.sex or "").upper()
    return {"F": True, "M": False}.get(sex)


def _diffuse(patient: Patient) -> bool | None:
    return {"diffuse": True, "limited": False}.get(patient.ssc_subtype or "")


def _antibodies(patient: Patient) -> dict[str, bool | None]:
    found: dict[str, bool | None] = {name: getattr(patient, name) for name, _ in ANTIBODIES}
    known = [v for v in found.values() if v is not None]
    if any(known):
        found["none"] = False
    elif len(known) == len(ANTIBODIES):
        found["none"] = True
    else:
        found["none"] = None
    return found


def chosen_series(
    patients: QuerySet[Patient], reading_study: ReadingStudy | None
) -> dict[Any, Series]:
    """One CT series per patient (see the module docstring)."""
    chosen: dict[Any, Series] = {}
    if reading_study is not None:
        allowed = set(patients.values_list("pk", flat=True))
        for case in reading_study.cases.select_related("series", "series__study").order_by("label"):
            patient_pk = case.series.study.patient_id
            if patient_pk in allowed:
                chosen.setdefault(patient_pk, case.series)
        return chosen
    series = (
        Series.objects.filter(study__patient__in=patients, modality="CT")
        .select_related("study")
        .order_by("study__study_date", "series_number", "created")
    )
    for item in series:
        chosen.setdefault(item.study.patient_id, item)
    return chosen


def patient_rows(
    patients: QuerySet[Patient],
    *,
    sources: Sequence[str],
    reading_study: ReadingStudy | None = None,
    cohorts: Sequence[str] = (),
    mode: SourceMode = "auto",
) -> list[PatientRow]:
    """One row per patient with a CT, in cohort then pseudonym order."""
    if cohorts:
        patients = patients.filter(cohort__in=list(cohorts))
    if reading_study is not None:
        patients = patients.filter(studies__series__reading_cases__study=reading_study).distinct()
    series_by_patient = chosen_series(patients, reading_study)
    if reading_study is None and sources:
        # prefer, per patient, the earliest CT that has an extent from the first source
        candidates = list(
            Series.objects.filter(study__patient__in=patients, modality="CT")
            .select_related("study")
            .order_by("study__study_date", "series_number", "created")
        )
        if candidates:
            first = series_extents([s.pk for s in candidates], source=sources[0], mode=mode)
            with_extent: dict[Any, Series] = {}
            for item in candidates:
                if first.get(item.pk, NO_EXTENT).known:
                    with_extent.setdefault(item.study.patient_id, item)
            series_by_patient.update(with_extent)
    series_ids = [s.pk for s in series_by_patient.values()]
    extents = {source: series_extents(series_ids, source=source, mode=mode) for source in sources}
    rows = []
    for patient in patients.filter(pk__in=list(series_by_patient)):
        series = series_by_patient[patient.pk]
        pft = closest_pft(series.study)
        interval = None
        if pft is not None and series.study.study_date is not None:
            interval = abs((pft.date - series.study.study_date).days)
        rows.append(
            PatientRow(
                patient_pk=patient.pk,
                patient=export_patient_id(patient),
                cohort=patient.cohort or NO_COHORT,
                series_uid=series.series_instance_uid,
                age_years=_age_years(patient, series),
                woman=_woman(patient),
                diffuse=_diffuse(patient),
                mrss=patient.mrss,
                antibodies=_antibodies(patient),
                pft={
                    name: None if pft is None else getattr(pft, f"{name}_pct_predicted")
                    for name, _ in PFTS
                },
                pft_interval_days=interval,
                extents={s: extents[s].get(series.pk, NO_EXTENT) for s in sources},
            )
        )
    rows.sort(key=lambda r: (cohort_sort_key(r.cohort), r.patient))
    return rows


def _values(rows: Sequence[PatientRow], get: Any) -> list[float]:
    out = []
    for row in rows:
        value = get(row)
        out.append(math.nan if value is None else float(value))
    return out


@dataclass
class CharacteristicsTable:
    groups: list[str]
    counts: dict[str, int]
    rows: list[tuple[str, ContinuousRow | CategoricalRow, int, dict[str, float]]]
    comparisons: list[tuple[str, str]]
    sources: list[str]
    patients: list[PatientRow]
    test_groups: list[str] = field(default_factory=list)

    def header(self) -> list[str]:
        extra = [f"P value ({a} vs {b})" for a, b in self.comparisons]
        return [
            "Characteristic",
            *[f"{g} (n = {self.counts[g]})" for g in self.groups],
            "P value"
            if self.test_groups == self.groups
            else f"P value ({', '.join(self.test_groups)})",
            *extra,
        ]

    def cells(self) -> list[list[str]]:
        out = [self.header()]
        for _, row, decimals, extra in self.rows:
            if isinstance(row, ContinuousRow):
                cells = row.cells(decimals=decimals)
            else:
                cells = row.cells()
            out.append(
                cells
                + [format_p(extra[f"{a}|{b}"]).removeprefix("= ") for a, b in self.comparisons]
            )
        return out

    def numbers(self) -> list[dict[str, Any]]:
        """Every number behind the table, one line per characteristic and cohort."""
        out = []
        for key, row, _, extra in self.rows:
            for group in self.groups:
                item: dict[str, Any] = {"characteristic": row.label, "key": key, "cohort": group}
                if isinstance(row, ContinuousRow):
                    summary = row.summaries[group]
                    item.update(
                        median=summary.median if summary.n else None,
                        q1=summary.q1 if summary.n else None,
                        q3=summary.q3 if summary.n else None,
                        n=summary.n,
                        n_missing=summary.n_excluded,
                    )
                else:
                    level = row.levels[0] if row.levels else None
                    item.update(
                        level=str(level),
                        count=row.counts[group].get(level, 0) if level is not None else 0,
                        n=row.n[group],
                        n_missing=row.n_missing[group],
                    )
                item.update(
                    test=row.test,
                    statistic=getattr(row, "statistic", None),
                    p_value=None if math.isnan(row.p_value) else row.p_value,
                )
                for name, value in extra.items():
                    item[f"p_value[{name.replace('|', ' vs ')}]"] = (
                        None if math.isnan(value) else value
                    )
                out.append(item)
        return out


def characteristics_table(
    rows: Sequence[PatientRow],
    *,
    sources: Sequence[str],
    groups: Sequence[str] | None = None,
    test_groups: Sequence[str] | None = None,
    comparisons: Sequence[tuple[str, str]] = (),
) -> CharacteristicsTable:
    """Table 1 with a column per cohort in ``groups`` (default every cohort present).

    The "P value" column compares ``test_groups`` (default every column; the paper's P*
    compares its three internal cohorts only), and each ``(a, b)`` of ``comparisons`` adds a
    column comparing two cohorts (the paper's P†: correlation vs external).
    """
    present = sorted({r.cohort for r in rows}, key=cohort_sort_key)
    order = [g for g in (groups or present) if g in present]
    tested = [g for g in (test_groups or order) if g in order]
    by_group = {g: [r for r in rows if r.cohort == g] for g in present}
    comparisons = [(a, b) for a, b in comparisons if a in by_group and b in by_group]
    built: list[tuple[str, ContinuousRow | CategoricalRow, int, dict[str, float]]] = []

    def continuous(key: str, label: str, get: Any, decimals: int) -> None:
        data = {g: _values(by_group[g], get) for g in present}
        row = describe_continuous({g: data[g] for g in order}, label=label)
        test = describe_continuous({g: data[g] for g in tested}, label=label)
        row = replace(
            row,
            test=test.test,
            statistic=test.statistic,
            p_value=test.p_value,
            tested_groups=test.tested_groups,
        )
        extra = {
            f"{a}|{b}": describe_continuous({a: data[a], b: data[b]}).p_value
            for a, b in comparisons
        }
        built.append((key, row, decimals, extra))

    def categorical(key: str, label: str, get: Any, levels: Sequence[Any]) -> None:
        data = {g: [get(r) for r in by_group[g]] for g in present}
        row = describe_categorical({g: data[g] for g in order}, label=label, levels=levels)
        test = describe_categorical({g: data[g] for g in tested}, label=label, levels=levels)
        row = replace(row, test=test.test, p_value=test.p_value)
        extra = {
            f"{a}|{b}": describe_categorical({a: data[a], b: data[b]}, levels=levels).p_value
            for a, b in comparisons
        }
        built.append((key, row, 0, extra))

    if order:
        continuous("age", "Age (y)", lambda r: r.age_years, 0)
        categorical("women", "No. of women", lambda r: r.woman, (True, False))
        categorical("diffuse", "Diffuse SSc", lambda r: r.diffuse, (True, False))
        continuous("mrss", "Modified Rodnan skin score", lambda r: r.mrss, 0)
        for name, label in (*ANTIBODIES, ("none", "None")):
            categorical(
                f"antibody[{name}]",
                f"Autoantibodies: {label}",
                lambda r, name=name: r.antibodies.get(name),
                (True, False),
            )
        for name, label in PFTS:
            continuous(name, label, lambda r, name=name: r.pft.get(name), 0)
        for source in sources:
            title = "readers' contours" if source == READERS else source
            continuous(
                f"extent[{source}]",
                f"ILD extent, {title} (% of lung)",
                lambda r, source=source: r.extent(source).extent_pct,
                1,
            )
            categorical(
                f"goh[{source}]",
                f"Extensive disease (Goh, > 20 %), {title}",
                lambda r, source=source: r.goh(source),
                ("extensive", "limited"),
            )
    return CharacteristicsTable(
        groups=order,
        counts={g: len(by_group[g]) for g in order},
        rows=built,
        comparisons=list(comparisons),
        sources=list(sources),
        patients=[r for r in rows if r.cohort in order or any(r.cohort in c for c in comparisons)],
        test_groups=tested,
    )
