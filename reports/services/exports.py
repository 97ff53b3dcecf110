"""Every table as CSV and XLSX, with the per-slice / per-patient data behind it.

A report becomes a list of :class:`Table`: the table as printed (the paper's layout, formatted
strings), the numbers behind every cell (medians, quartiles, n, excluded, CIs, P values, test
names, unrounded), and the per-slice or per-patient rows they were computed from. CSV is one
table per file (UTF-8 with a BOM so spreadsheet programs read "ρ" and "–" correctly); XLSX is
one sheet per table. :func:`bundle` zips them all with a README.

Identifiers: patients appear only by ``reports.selectors.export_patient_id`` and readers by
username; the builders never read names, birth dates, study dates or accession numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from reports.services.agreement import AgreementReport, slice_rows
from reports.services.characteristics import CharacteristicsTable
from reports.services.correlation import CorrelationReport
from reports.services.longitudinal import LongitudinalReport

XLSX_SHEET_CHARS = 31


@dataclass
class Table:
    name: str  # file name without extension
    title: str
    header: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_cells(
        cls, name: str, title: str, cells: list[list[str]], notes: Sequence[str] = ()
    ) -> Table:
        header, *rows = cells if cells else [[]]
        return cls(name, title, list(header), [list(r) for r in rows], list(notes))

    @classmethod
    def from_dicts(
        cls, name: str, title: str, items: Sequence[dict[str, Any]], notes: Sequence[str] = ()
    ) -> Table:
        header: list[str] = []
        for item in items:
            for key in item:
                if key not in header:
                    header.append(key)
        rows = [[_plain(item.get(key)) for key in header] for item in items]
        return cls(name, title, header, rows, list(notes))


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return value


def to_csv(table: Table) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(table.header)
    for row in table.rows:
        writer.writerow(["" if v is None else v for v in row])
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def _sheet_name(name: str, used: set[str]) -> str:
    base = re.sub(r"[\[\]:*?/\\]", "_", name)[:XLSX_SHEET_CHARS]
    candidate, n = base, 2
    while candidate.lower() in used:
        suffix = f"~{n}"
        candidate, n = base[: XLSX_SHEET_CHARS - len(suffix)] + suffix, n + 1
    used.add(candidate.lower())
    return candidate


_XLSX_PARTS = {
    "[Content_Types].xml": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/styles.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
        "{sheets}</Types>"
    ),
    "_rels/.rels": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        'relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>'
    ),
    "xl/styles.xml": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        '<fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>'
        '<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>'
        '<fills count="2"><fill><patternFill patternType="none"/></fill>'
        '<fill><patternFill patternType="gray125"/></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
        '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/>'
        "</cellStyleXfs>"
        '<cellXfs count="2"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
        '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/></cellXfs>'
        '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
        "</styleSheet>"
    ),
}
# characters XML 1.0 cannot carry
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _column(index: int) -> str:
    name = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        name = chr(65 + remainder) + name
    return name


def _cell(ref: str, value: Any, bold: bool) -> str:
    style = ' s="1"' if bold else ""
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return f'<c r="{ref}" t="b"{style}><v>{int(value)}</v></c>'
    if isinstance(value, int | float):
        return f'<c r="{ref}"{style}><v>{value!r}</v></c>'
    text = xml_escape(_XML_ILLEGAL.sub("", str(value)))
    return f'<c r="{ref}" t="inlineStr"{style}><is><t xml:space="preserve">{text}</t></is></c>'


def _sheet_xml(table: Table) -> str:
    lines: list[tuple[list[Any], bool]] = [([table.title], True)]
    lines += [([note], False) for note in table.notes]
    lines += [([], False), (list(table.header), True)]
    lines += [(list(row), False) for row in table.rows]
    width = max((len(values) for values, _ in lines), default=1)
    columns = [_column(i) for i in range(width)]
    parts = [
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        "<sheetData>"
    ]
    for number, (values, bold) in enumerate(lines, start=1):
        cells = "".join(
            _cell(f"{columns[i]}{number}", value, bold) for i, value in enumerate(values)
        )
        parts.append(f'<row r="{number}">{cells}</row>')
    parts.append("</sheetData></worksheet>")
    return "".join(parts)


def to_xlsx(tables: Iterable[Table]) -> bytes:
    """One sheet per table: the title, the notes, a blank line, then the header and rows.

    A minimal SpreadsheetML package (inline strings, one bold style), written directly: a
    per-slice sheet of tens of thousands of rows takes about a second, where a general
    workbook library takes a minute. Tests read it back with openpyxl.
    """
    tables = list(tables)
    used: set[str] = set()
    names = [_sheet_name(table.name, used) for table in tables]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        overrides = "".join(
            f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/'
            f'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            for i in range(1, len(tables) + 1)
        )
        archive.writestr(
            "[Content_Types].xml", _XLSX_PARTS["[Content_Types].xml"].replace("{sheets}", overrides)
        )
        archive.writestr("_rels/.rels", _XLSX_PARTS["_rels/.rels"])
        archive.writestr("xl/styles.xml", _XLSX_PARTS["xl/styles.xml"])
        sheets = "".join(
            f'<sheet name="{xml_escape(name, {chr(34): "&quot;"})}" sheetId="{i}" r:id="rId{i}"/>'
            for i, name in enumerate(names, start=1)
        )
        archive.writestr(
            "xl/workbook.xml",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
            'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
            f"<sheets>{sheets}</sheets></workbook>",
        )
        relationships = "".join(
            f'<Relationship Id="rId{i}" Type="http://schemas.openxmlformats.org/officeDocument/'
            f'2006/relationships/worksheet" Target="worksheets/sheet{i}.xml"/>'
            for i in range(1, len(tables) + 1)
        )
        styles_id = len(tables) + 1
        archive.writestr(
            "xl/_rels/workbook.xml.rels",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f"{relationships}"
            f'<Relationship Id="rId{styles_id}" Type="http://schemas.openxmlformats.org/'
            'officeDocument/2006/relationships/styles" Target="styles.xml"/></Relationships>',
        )
        for i, table in enumerate(tables, start=1):
            archive.writestr(f"xl/worksheets/sheet{i}.xml", _sheet_xml(table))
    return buffer.getvalue()


def bundle(
    tables: Sequence[Table], *, readme: str = "", extra: dict[str, bytes] | None = None
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for table in tables:
            archive.writestr(f"{table.name}.csv", to_csv(table))
        archive.writestr("tables.xlsx", to_xlsx(tables))
        lines = [readme.strip(), "", "Files:"] if readme else ["Files:"]
        lines += [f"  {t.name}.csv — {t.title}" for t in tables]
        archive.writestr("README.txt", "\n".join(lines) + "\n")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


# ------------------------------------------------------------------------------- builders


def agreement_tables(report: AgreementReport, *, with_slices: bool = True) -> list[Table]:
    structure = report.filters.structure
    notes = [*report.notes]
    if report.filters.cohorts:
        notes.append(f"Cohorts: {', '.join(report.filters.cohorts)}")
    tables = [
        Table.from_cells(
            f"table2_dice_{structure}",
            f"Median Dice (IQR) between {structure.upper()} contours, {report.study.name}",
            report.table,
            notes,
        )
    ]
    for kind, title in (
        ("intra", "Intra-observer Dice (first vs repeat read)"),
        ("consensus", "Dice vs the STAPLE consensus of the readers"),
    ):
        pairs = report.of_kind(kind)
        cells = [
            ["Rater", "Compared with", "Median (IQR)", "95% CI", "Slices", "Excluded", "Patients"]
        ]
        cells += [
            [
                p.label_a,
                p.label_b,
                p.text,
                p.ci_text,
                str(p.summary.n),
                str(p.summary.n_excluded),
                str(p.n_patients),
            ]
            for p in pairs
        ]
        tables.append(
            Table.from_cells(
                f"{kind}_dice_{structure}", f"{title}, {structure.upper()}", cells, notes
            )
        )
    numbers = []
    for p in report.pairs:
        ci = p.ci
        numbers.append(
            {
                "structure": structure,
                "kind": p.kind,
                "rater_a": p.label_a,
                "rater_b": p.label_b,
                "median": p.summary.median if p.summary.n else None,
                "q1": p.summary.q1 if p.summary.n else None,
                "q3": p.summary.q3 if p.summary.n else None,
                "n_slices_used": p.summary.n,
                "n_excluded_both_empty": p.summary.n_excluded,
                "n_errors": p.n_errors,
                "n_patients": p.n_patients,
                "ci_low": ci.low if ci else None,
                "ci_high": ci.high if ci else None,
                "ci_method": f"{ci.method}, {ci.n_resamples} resamples, patients as clusters, seed {ci.seed}"
                if ci
                else p.ci_error,
            }
        )
    tables.append(
        Table.from_dicts(
            f"dice_numbers_{structure}", f"Every Dice summary, {structure.upper()}", numbers, notes
        )
    )
    if with_slices:
        rows = slice_rows(report.study, report.filters)
        for row in rows:
            for key in ("id", "case_id", "rater_a", "rater_b", "assignment_a", "assignment_b"):
                row.pop(key, None)
        tables.append(
            Table.from_dicts(
                f"dice_slices_{structure}",
                f"Dice per slice, {structure.upper()} (pixels_a/pixels_b/overlap in pixels)",
                rows,
                notes,
            )
        )
    return tables


def characteristics_tables(table: CharacteristicsTable) -> list[Table]:
    notes = [
        "Continuous: median [IQR], Mann-Whitney U (2 cohorts) or Kruskal-Wallis (3 or more); "
        "categorical: n (%), Fisher exact (Freeman-Halton for more than 2 x 2).",
        "ILD extent: % of lung; the source of each patient's value is in the per-patient table.",
    ]
    return [
        Table.from_cells(
            "table1_characteristics", "Patient characteristics by cohort", table.cells(), notes
        ),
        Table.from_dicts("table1_numbers", "Every number of Table 1", table.numbers(), notes),
        Table.from_dicts(
            "table1_patients",
            "Per-patient data behind Tables 1 and 3",
            [row.to_dict(table.sources) for row in table.patients],
        ),
    ]


def correlation_tables(report: CorrelationReport) -> list[Table]:
    notes = ["Spearman ρ; 95% CI by Fisher z with SE 1.06/√(n−3); two-sided P (t approximation)."]
    return [
        Table.from_cells(
            "table3_correlation", "Correlation between ILD extent and PFTs", report.cells(), notes
        ),
        Table.from_dicts("table3_numbers", "Every number of Table 3", report.numbers(), notes),
        Table.from_dicts(
            "table3_patients",
            "Per-patient extent and PFT values behind Table 3",
            [row.to_dict(report.sources) for row in report.rows],
        ),
    ]


def longitudinal_tables(report: LongitudinalReport) -> list[Table]:
    notes = [
        "Functional worsening: FVC −10 or DLCO −15 points of % predicted (ATS/ERS/JRS/ALAT).",
        f"Undetermined: functional {report.n_undetermined_functional}, visual "
        f"{report.n_undetermined_visual}; without registration {report.n_without_registration}.",
        f"ILD extent source: {report.source}.",
    ]
    corr_notes = [*notes]
    if report.correlation_error:
        corr_notes.append(report.correlation_error)
    return [
        Table.from_cells(
            "long_functional",
            "Characteristics by functional change",
            report.functional.cells(),
            notes,
        ),
        Table.from_cells(
            "long_morphologic",
            "Characteristics by morphologic change",
            report.morphologic.cells(),
            notes,
        ),
        Table.from_cells(
            "long_jacobian_groups", "Mean log-Jacobian by group", report.jacobian_cells(), notes
        ),
        Table.from_cells(
            "long_jacobian_pft",
            "Spearman of mean log-Jacobian vs PFT changes",
            report.correlation_cells(),
            corr_notes,
        ),
        Table.from_cells(
            "long_classifiers",
            "Worsening classifiers on the test cohorts",
            report.classifier_cells(),
            notes,
        ),
        Table.from_dicts(
            "long_numbers",
            "Every number of the longitudinal tables",
            report.functional.numbers()
            + report.morphologic.numbers()
            + [{"table": "classifier", **c.to_dict()} for c in report.classifiers]
            + [
                {"table": "jacobian vs PFT change", "pft": k, **v.to_dict()}
                for k, v in report.correlations.items()
            ],
        ),
        Table.from_dicts(
            "long_patients", "Per-patient longitudinal data", [r.to_dict() for r in report.rows]
        ),
    ]


TABLE_BUILDERS = ("agreement", "characteristics", "correlation", "longitudinal")


def find(tables: Sequence[Table], name: str) -> Table | None:
    return next((t for t in tables if t.name == name), None)
