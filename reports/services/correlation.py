"""ILD extent vs lung function per cohort (Chassagnon et al. 2020, Table 3 and Figure 5).

For each cohort and each extent source (an engine, or the readers' contours), Spearman ρ of the
extent (% of lung) with TLC, FVC, DLCO and KCO (% predicted), with the two-sided P value and the
95 % CI (Fisher z with SE 1.06/√(n−3)) of ``inference.stats.correlation_table`` / ``spearman``.
A patient without the PFT drops out of that PFT only; fewer than 3 complete pairs gives "NA".
With ``mode="auto"`` an engine column uses the readers' extent for patients without that
engine's job; each column says how many numbers came from which source.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.stats import Correlation, format_p, spearman
from inference.stats._common import format_number
from reports.services.characteristics import PFTS, PatientRow
from reports.services.extent import READERS


@dataclass
class CorrelationColumn:
    cohort: str
    source: str
    n_patients: int
    sources_used: dict[str, int]
    cells: dict[str, Correlation | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        name = "readers' contours" if self.source == READERS else self.source
        return f"{self.cohort} (n = {self.n_patients}) · {name}"


@dataclass
class CorrelationReport:
    columns: list[CorrelationColumn]
    rows: list[PatientRow]
    sources: list[str]

    def header(self) -> list[str]:
        out = ["Parameter"]
        for column in self.columns:
            out += [f"{column.title} · ρ", f"{column.title} · 95% CI", f"{column.title} · P"]
        return out

    def cells(self) -> list[list[str]]:
        table = [self.header()]
        for name, label in PFTS:
            row = [label]
            for column in self.columns:
                result = column.cells.get(name)
                if result is None:
                    row += ["NA", "", ""]
                    continue
                row += [
                    format_number(result.rho, 2),
                    f"{format_number(result.ci_low, 2)}, {format_number(result.ci_high, 2)}",
                    format_p(result.p_value).removeprefix("= "),
                ]
            table.append(row)
        return table

    def numbers(self) -> list[dict[str, Any]]:
        out = []
        for column in self.columns:
            for name, label in PFTS:
                result = column.cells.get(name)
                out.append(
                    {
                        "cohort": column.cohort,
                        "extent_source": column.source,
                        "parameter": label,
                        "n_patients": column.n_patients,
                        "sources_used": "; ".join(
                            f"{k or 'none'}: {v}" for k, v in sorted(column.sources_used.items())
                        ),
                        **(
                            result.to_dict()
                            if result is not None
                            else {"rho": None, "error": column.errors.get(name, "")}
                        ),
                    }
                )
        return out

    def scatter(self, source: str, pft: str) -> list[dict[str, Any]]:
        """Points of Figure 5: extent (x, % of lung) vs the PFT (y, % predicted)."""
        points = []
        for row in self.rows:
            x, y = row.extent(source).extent_pct, row.pft.get(pft)
            if x is None or y is None or math.isnan(float(y)):
                continue
            points.append(
                {
                    "x": x,
                    "y": float(y),
                    "cohort": row.cohort,
                    "patient": row.patient,
                    "source": row.extent(source).source,
                }
            )
        return points


def correlation_report(
    rows: Sequence[PatientRow], *, sources: Sequence[str], cohorts: Sequence[str]
) -> CorrelationReport:
    columns = []
    for cohort in cohorts:
        members = [r for r in rows if r.cohort == cohort]
        for source in sources:
            used = Counter(r.extent(source).source for r in members)
            column = CorrelationColumn(cohort, source, len(members), dict(used))
            x = [
                math.nan if r.extent(source).extent_pct is None else r.extent(source).extent_pct
                for r in members
            ]
            for name, _ in PFTS:
                y = [math.nan if r.pft.get(name) is None else r.pft[name] for r in members]
                try:
                    column.cells[name] = spearman(x, y)  # type: ignore[arg-type]
                except ValueError as error:
                    column.cells[name] = None
                    column.errors[name] = str(error)
            columns.append(column)
    return CorrelationReport(columns=columns, rows=list(rows), sources=list(sources))
