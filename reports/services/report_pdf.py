"""The clinician report as a printable A4 PDF (reportlab): the summary, the trend charts as vector
graphics, the tables of the page, what is missing, and the engines and models behind every
number. Only the pseudonym identifies the patient; the generation date is on every page."""

from __future__ import annotations

import io
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from reports.services import clinician_figures
from reports.services.clinician import REGIONS, ClinicianReport, fmt, fmt_date, fmt_signed

MARGIN = 15 * mm
CONTENT_WIDTH = A4[0] - 2 * MARGIN
FLAG_RED = colors.HexColor(clinician_figures.WORSENING_RED)


def _text(value: object) -> str:
    """Paragraph markup for any text: escaped, and limited to what the built-in fonts draw."""
    return escape(str(value).encode("cp1252", "replace").decode("cp1252"))


class _Styles:
    def __init__(self) -> None:
        sheet = getSampleStyleSheet()
        self.title = sheet["Title"]
        self.h2 = ParagraphStyle("h2", parent=sheet["Heading2"], spaceBefore=8, spaceAfter=4)
        self.body = ParagraphStyle("body", parent=sheet["BodyText"], fontSize=9.5, leading=12.5)
        self.small = ParagraphStyle("small", parent=self.body, fontSize=7.5, leading=9.5)
        self.cell = ParagraphStyle("cell", parent=self.body, fontSize=7.5, leading=9)
        self.head = ParagraphStyle("head", parent=self.cell, fontName="Helvetica-Bold")
        self.flag = ParagraphStyle("flag", parent=self.cell, textColor=FLAG_RED)


def _table(
    rows: list[list[str]], styles: _Styles, fractions: list[float], flagged: set[int]
) -> Table:
    """A table over the page width (``fractions`` of it per column); ``flagged`` rows in red."""
    data = [[Paragraph(_text(c), styles.head) for c in rows[0]]]
    for index, row in enumerate(rows[1:], start=1):
        style = styles.flag if index in flagged else styles.cell
        data.append([Paragraph(_text(c), style) for c in row])
    widths = [f * CONTENT_WIDTH for f in fractions]
    table = Table(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eef1f5")),
                ("LINEBELOW", (0, 0), (-1, -1), 0.4, colors.HexColor("#d1d5db")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 3),
                ("RIGHTPADDING", (0, 0), (-1, -1), 3),
            ]
        )
    )
    return table


def ct_rows(report: ClinicianReport) -> list[list[str]]:
    rows = [["CT date", "ILD extent (%)", "Lung / ILD (mL)", "Goh stage", "Engine", "Closest PFT"]]
    for ct in report.cts:
        pft = (
            f"{fmt_date(ct.pft.date)}: FVC {fmt(ct.pft.fvc)}, DLCO {fmt(ct.pft.dlco)}"
            if ct.pft
            else "none within 3 months"
        )
        rows.append(
            [
                fmt_date(ct.date),
                fmt(ct.extent_pct) if ct.extent_pct is not None else ct.note or "n/a",
                f"{fmt(ct.lung_ml, 0)} / {fmt(ct.ild_ml, 0)}",
                ct.goh_stage or "n/a",
                f"{ct.engine} {ct.engine_version}".strip() or "-",
                pft,
            ]
        )
    return rows


def pft_rows(report: ClinicianReport) -> tuple[list[list[str]], set[int]]:
    rows = [["PFT date", "FVC %", "DLCO %", "TLC %", "KCO %", "Since the previous PFT"]]
    flagged = set()
    for index, pft in enumerate(report.pfts, start=1):
        step = report.step_after(pft)
        since = "first PFT"
        if step is not None:
            since = (
                f"FVC {fmt_signed(step.fvc_change)}, DLCO {fmt_signed(step.dlco_change)} "
                f"points: {step.flag_text}"
            )
            if step.worsening:
                flagged.add(index)
        rows.append(
            [fmt_date(pft.date), fmt(pft.fvc), fmt(pft.dlco), fmt(pft.tlc), fmt(pft.kco), since]
        )
    return rows, flagged


def pair_rows(report: ClinicianReport) -> tuple[list[list[str]], list[list[str]], set[int]]:
    registration = [
        [
            "CTs",
            "Mean log-Jacobian",
            "Upper / lower / anterior / posterior",
            "Folding (%)",
            "Registration",
        ]
    ]
    change = [["CTs", "ILD extent change", "Functional (closest PFTs)", "Classifier"]]
    flagged = set()
    for index, pair in enumerate(report.pairs, start=1):
        label = f"{fmt_date(pair.baseline.date)} to {fmt_date(pair.followup.date)}"
        if pair.registered:
            registration.append(
                [
                    label,
                    fmt(pair.mean_log_jacobian, 3),
                    " / ".join(fmt(pair.regional[r], 3) for r in REGIONS),
                    fmt(pair.folding_pct, 2),
                    f"{pair.backend} {pair.backend_version}".strip()
                    + (f" ({pair.registration_note})" if pair.registration_note else ""),
                ]
            )
        else:
            registration.append([label, pair.registration_note or "n/a", "", "", ""])
        extent = (
            f"{fmt_signed(pair.extent_change_points)} points"
            if pair.extent_change_points is not None
            else pair.extent_note
        )
        if pair.functional is None:
            functional = pair.functional_note
        else:
            step = pair.functional
            functional = (
                f"{fmt_date(step.before.date)} to {fmt_date(step.after.date)}: FVC "
                f"{fmt_signed(step.fvc_change)}, DLCO {fmt_signed(step.dlco_change)} points; "
                f"{step.flag_text}"
            )
            if step.worsening:
                flagged.add(index)
        output = pair.worsening
        if output is None:
            classifier = "not available"
        else:
            parts = []
            if output.functional is not None:
                parts.append(f"functional {output.functional.text}")
            if output.morphologic is not None:
                parts.append(f"morphologic {output.morphologic.text}")
            classifier = "; ".join(parts) + f" [{output.model_version}]"
        change.append([label, extent, functional, classifier])
    return registration, change, flagged


def _footer(report: ClinicianReport) -> object:
    generated = report.generated.strftime("%Y-%m-%d %H:%M UTC")

    def draw(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.HexColor("#4b5563"))
        canvas.drawString(
            MARGIN,
            8 * mm,
            f"ILD Review - {report.patient} (pseudonymous) - generated {generated}",
        )
        canvas.drawRightString(A4[0] - MARGIN, 8 * mm, f"page {doc.page}")
        canvas.restoreState()

    return draw


def render_report_pdf(report: ClinicianReport) -> bytes:
    """The report as PDF bytes (A4 portrait)."""
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 4 * mm,
        title=f"ILD longitudinal report {report.patient}",
        author="ILD Review",
        subject="Longitudinal ILD report (pseudonymous)",
    )
    styles = _Styles()
    generated = report.generated.strftime("%Y-%m-%d %H:%M UTC")
    story: list[object] = [
        Paragraph(_text(f"ILD longitudinal report: {report.patient}"), styles.title),
        Paragraph(
            _text(f"Project {report.project} - generated {generated} - pseudonymous identifier"),
            styles.small,
        ),
        Paragraph("Summary", styles.h2),
        Paragraph(_text(report.summary_text), styles.body),
        Spacer(1, 4 * mm),
    ]
    scale = CONTENT_WIDTH / clinician_figures.FRAME.width
    for chart in (
        clinician_figures.pft_chart(report),
        clinician_figures.extent_chart(report),
    ):
        story.append(clinician_figures.trend_drawing(chart, scale=scale))
        story.append(Spacer(1, 2 * mm))

    timeline = [["Date", "Exam", "Result"]] + [
        [fmt_date(e.date), e.kind, e.text] for e in report.timeline
    ]
    if report.timeline:
        story.append(Paragraph("Timeline", styles.h2))
        story.append(_table(timeline, styles, [0.13, 0.07, 0.8], set()))
    story.append(Paragraph("CT scans and ILD extent", styles.h2))
    story.append(_table(ct_rows(report), styles, [0.13, 0.14, 0.14, 0.11, 0.2, 0.28], set()))
    rows, flagged = pft_rows(report)
    pft_table = _table(rows, styles, [0.13, 0.09, 0.09, 0.09, 0.09, 0.51], flagged)
    story.append(KeepTogether([Paragraph("Lung function (% predicted)", styles.h2), pft_table]))
    if report.pairs:
        registration, change, flagged = pair_rows(report)
        story.append(
            KeepTogether(
                [
                    Paragraph("Change between consecutive CTs: registration", styles.h2),
                    Paragraph(
                        "Mean log-Jacobian of the follow-up to baseline registration over the "
                        "lung: below 0 the lung shrank, above 0 it expanded.",
                        styles.small,
                    ),
                    _table(registration, styles, [0.2, 0.14, 0.3, 0.1, 0.26], set()),
                ]
            )
        )
        story.append(
            KeepTogether(
                [
                    Paragraph("Change between consecutive CTs: extent and worsening", styles.h2),
                    _table(change, styles, [0.17, 0.15, 0.36, 0.32], flagged),
                ]
            )
        )
    if report.missing:
        story.append(Paragraph("Missing or pending", styles.h2))
        for item in report.missing:
            story.append(Paragraph(_text(f"- {item}"), styles.small))
    story.append(Paragraph("Engines and models", styles.h2))
    for item in report.versions or ["no model result yet"]:
        story.append(Paragraph(_text(f"- {item}"), styles.small))

    footer = _footer(report)
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()
