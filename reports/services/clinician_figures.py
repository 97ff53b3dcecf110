"""The clinician report's trend charts, laid out once and drawn twice: as inline SVG for the page
(with :mod:`reports.services.figures`' frame, ticks and axis) and as reportlab vector graphics
for the PDF, so both show the same marks at the same places.

* PFTs: FVC, DLCO, TLC and KCO (% predicted) over time, one coloured line each; a red triangle
  above every PFT that meets the ATS/ERS criterion of functional worsening against the previous
  PFT, or against the PFT closest to the previous CT (a pair of CTs); dashed grey verticals at
  the CT dates.
* ILD extent per CT (% of lung), coloured by Goh stage, with the 20 % limited/extensive line.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING

from reports.services import figures
from reports.services.clinician import ClinicianReport, fmt, fmt_date
from reports.services.extent import GOH_EXTENSIVE_ABOVE_PCT

if TYPE_CHECKING:
    from reportlab.graphics.shapes import Drawing

WORSENING_RED = "#dc2626"
CT_GREY = "#9ca3af"
PFT_COLOURS = {"FVC": "#1f77b4", "DLCO": "#2ca02c", "TLC": "#ff7f0e", "KCO": "#9467bd"}
STAGE_COLOURS = {"limited": "#1f77b4", "extensive": "#ff7f0e"}
FRAME = figures.Frame(width=560, height=260, left=52, right=16, top=28, bottom=58)


@dataclass(frozen=True)
class TrendLine:
    label: str
    colour: str
    points: list[tuple[dt.date, float]]


@dataclass(frozen=True)
class Marker:
    """A mark at one point: ``shape`` ``"triangle"`` (worsening) or ``"dot"``."""

    when: dt.date
    value: float
    colour: str
    shape: str
    hover: str


@dataclass
class TrendChart:
    title: str
    y_label: str
    lines: list[TrendLine] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    verticals: list[tuple[dt.date, str]] = field(default_factory=list)  # CT dates
    horizontals: list[tuple[float, str]] = field(default_factory=list)  # thresholds
    legend: list[tuple[str, str]] = field(default_factory=list)  # (label, colour)
    y_floor: float | None = None

    @property
    def empty(self) -> bool:
        return not any(line.points for line in self.lines) and not self.markers


def pft_chart(report: ClinicianReport) -> TrendChart:
    chart = TrendChart("Lung function (% predicted)", "% predicted")
    for name, label in (("fvc", "FVC"), ("dlco", "DLCO"), ("tlc", "TLC"), ("kco", "KCO")):
        points = [(p.date, v) for p in report.pfts if (v := p.value(name)) is not None]
        if points:
            chart.lines.append(TrendLine(label, PFT_COLOURS[label], points))
            chart.legend.append((label, PFT_COLOURS[label]))
    flagged = [(s, "the previous PFT") for s in report.pft_steps if s.worsening]
    flagged += [
        (p.functional, f"the PFT closest to the CT of {fmt_date(p.baseline.date)}")
        for p in report.pairs
        if p.functional is not None and p.functional.worsening
    ]
    marked: set[dt.date] = set()
    for step, since in flagged:
        if step.after.date in marked:
            continue
        marked.add(step.after.date)
        top = max((v for v in (step.after.fvc, step.after.dlco) if v is not None), default=0.0)
        chart.markers.append(
            Marker(
                step.after.date,
                top,
                WORSENING_RED,
                "triangle",
                f"{fmt_date(step.after.date)}: functional worsening (ATS/ERS) since {since}, "
                f"{fmt_date(step.before.date)} (FVC {fmt(step.fvc_change)}, "
                f"DLCO {fmt(step.dlco_change)} points)",
            )
        )
    if chart.markers:
        chart.legend.append(("functional worsening (ATS/ERS)", WORSENING_RED))
    chart.verticals = [(ct.date, "CT") for ct in report.cts if ct.date is not None]
    chart.y_floor = 0.0
    return chart


def extent_chart(report: ClinicianReport) -> TrendChart:
    chart = TrendChart("ILD extent per CT (% of lung)", "ILD extent (%)")
    known = [
        (ct, ct.date, ct.extent_pct)
        for ct in report.cts
        if ct.date is not None and ct.extent_pct is not None
    ]
    chart.lines.append(TrendLine("ILD extent", "#6b7280", [(d, v) for _, d, v in known]))
    for ct, when, value in known:
        stage = ct.goh_stage or "limited"
        chart.markers.append(
            Marker(
                when,
                value,
                STAGE_COLOURS[stage],
                "dot",
                f"{fmt_date(ct.date)}: {fmt(ct.extent_pct)} % ({stage}; {ct.engine} "
                f"{ct.engine_version})",
            )
        )
    chart.horizontals = [(GOH_EXTENSIVE_ABOVE_PCT, "Goh: extensive above 20 %")]
    chart.legend = [(f"Goh {s}", c) for s, c in STAGE_COLOURS.items()]
    chart.y_floor = 0.0
    return chart


# ------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class Layout:
    """Scales in SVG coordinates (y down) shared by both renderers."""

    sx: Callable[[dt.date], float]
    sy: Callable[[float], float]
    y_ticks: list[float]
    x_ticks: list[dt.date]


def layout(chart: TrendChart, frame: figures.Frame = FRAME) -> Layout:
    dates = [d for line in chart.lines for d, _ in line.points]
    dates += [m.when for m in chart.markers] + [d for d, _ in chart.verticals]
    values = [v for line in chart.lines for _, v in line.points]
    values += [m.value for m in chart.markers] + [v for v, _ in chart.horizontals]
    if chart.y_floor is not None:
        values.append(chart.y_floor)
    first, last = (min(dates), max(dates)) if dates else (dt.date(2000, 1, 1), dt.date(2001, 1, 1))
    pad = max(15, (last - first).days // 20)
    first, last = first - dt.timedelta(days=pad), last + dt.timedelta(days=pad)
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    y_ticks = figures.nice_ticks(low, high * 1.08 if high > 0 else high + 1)
    step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    while y_ticks[-1] < high * 1.08:  # nice_ticks stops at the last tick below ``high``
        y_ticks.append(round(y_ticks[-1] + step, 10))
    y_low, y_high = y_ticks[0], y_ticks[-1]
    span = (last - first).days or 1

    def sx(when: dt.date) -> float:
        return frame.left + frame.plot_width * (when - first).days / span

    def sy(value: float) -> float:
        return frame.top + frame.plot_height * (1 - (value - y_low) / ((y_high - y_low) or 1.0))

    n_ticks = 5
    x_ticks = [first + dt.timedelta(days=round(span * (i + 0.5) / n_ticks)) for i in range(n_ticks)]
    return Layout(sx, sy, y_ticks, x_ticks)


# --------------------------------------------------------------------------------------- SVG


def _triangle(x: float, y: float, size: float = 6.0) -> str:
    return f"{x:.1f},{y - size - 8:.1f} {x - size:.1f},{y - 2 * size - 8:.1f} {x + size:.1f},{y - 2 * size - 8:.1f}"


def trend_svg(chart: TrendChart, frame: figures.Frame = FRAME) -> str:
    """The chart as a self-contained SVG string (marks carry ``<title>`` hover text)."""
    out = figures._open(frame, chart.title)
    if chart.empty:
        out.append(
            f'<text x="{frame.width / 2:.0f}" y="{frame.height / 2:.0f}" text-anchor="middle" '
            'fill="#6b7280">no data</text></svg>'
        )
        return "\n".join(out)
    scales = layout(chart, frame)
    out += figures._y_axis(frame, scales.y_ticks, scales.sy, chart.y_label)
    base = frame.height - frame.bottom
    out.append(
        f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{base}" y2="{base}" '
        'stroke="#374151"/>'
    )
    for tick in scales.x_ticks:
        out.append(
            f'<text x="{scales.sx(tick):.1f}" y="{base + 14}" text-anchor="middle">'
            f"{tick:%Y-%m}</text>"
        )
    for when, label in chart.verticals:
        x = scales.sx(when)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.top}" y2="{base}" stroke="{CT_GREY}" '
            f'stroke-dasharray="4 3"><title>{escape(label)} {fmt_date(when)}</title></line>'
        )
    for value, label in chart.horizontals:
        y = scales.sy(value)
        out.append(
            f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="#111827" stroke-dasharray="6 3"/>'
        )
        out.append(
            f'<text x="{frame.width - frame.right - 4}" y="{y - 4:.1f}" text-anchor="end">'
            f"{escape(label)}</text>"
        )
    for line in chart.lines:
        if len(line.points) > 1:
            coords = " ".join(f"{scales.sx(d):.1f},{scales.sy(v):.1f}" for d, v in line.points)
            out.append(
                f'<polyline points="{coords}" fill="none" stroke="{line.colour}" stroke-width="2"/>'
            )
        for d, v in line.points:
            out.append(
                f'<circle cx="{scales.sx(d):.1f}" cy="{scales.sy(v):.1f}" r="3" '
                f'fill="{line.colour}"><title>{escape(line.label)} {fmt_date(d)}: '
                f"{fmt(v)}</title></circle>"
            )
    for marker in chart.markers:
        x, y = scales.sx(marker.when), scales.sy(marker.value)
        if marker.shape == "triangle":
            out.append(
                f'<polygon class="worsening" points="{_triangle(x, y)}" fill="{marker.colour}">'
                f"<title>{escape(marker.hover)}</title></polygon>"
            )
        else:
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{marker.colour}" '
                f'stroke="#111827"><title>{escape(marker.hover)}</title></circle>'
            )
    for index, (label, colour) in enumerate(chart.legend):
        lx = frame.left + 4 + 120 * (index % 4)
        ly = frame.height - 22 + 14 * (index // 4)
        out.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="{ly + 1}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


# -------------------------------------------------------------------------------- reportlab


def trend_drawing(chart: TrendChart, frame: figures.Frame = FRAME, scale: float = 0.85) -> Drawing:
    """The same chart as a reportlab ``Drawing`` (vector graphics in the PDF)."""
    from reportlab.graphics.shapes import Circle, Drawing, Group, Line, Polygon, PolyLine, Rect
    from reportlab.graphics.shapes import String as Text
    from reportlab.lib.colors import HexColor

    height = frame.height

    def fy(y: float) -> float:  # SVG y (down) to PDF y (up)
        return height - y

    group = Group()
    group.add(Rect(0, 0, frame.width, height, fillColor=HexColor("#ffffff"), strokeColor=None))
    group.add(Text(frame.left, fy(16), chart.title, fontName="Helvetica-Bold", fontSize=10))
    font = {"fontName": "Helvetica", "fontSize": 8}
    if chart.empty:
        group.add(Text(frame.width / 2, height / 2, "no data", textAnchor="middle", **font))
    else:
        scales = layout(chart, frame)
        for tick in scales.y_ticks:
            y = fy(scales.sy(tick))
            group.add(
                Line(frame.left, y, frame.width - frame.right, y, strokeColor=HexColor("#e5e7eb"))
            )
            group.add(Text(frame.left - 6, y - 3, figures._fmt(tick), textAnchor="end", **font))
        mid = fy(frame.top + frame.plot_height / 2)
        label = Group(Text(0, 0, chart.y_label, textAnchor="middle", **font))
        label.transform = (0, 1, -1, 0, 14, mid)
        group.add(label)
        base = fy(frame.height - frame.bottom)
        group.add(
            Line(frame.left, base, frame.width - frame.right, base, strokeColor=HexColor("#374151"))
        )
        for month in scales.x_ticks:
            group.add(
                Text(scales.sx(month), base - 12, f"{month:%Y-%m}", textAnchor="middle", **font)
            )
        for when, _ in chart.verticals:
            x = scales.sx(when)
            group.add(
                Line(
                    x,
                    fy(frame.top),
                    x,
                    base,
                    strokeColor=HexColor(CT_GREY),
                    strokeDashArray=[4, 3],
                )
            )
        for value, text in chart.horizontals:
            y = fy(scales.sy(value))
            group.add(
                Line(
                    frame.left,
                    y,
                    frame.width - frame.right,
                    y,
                    strokeColor=HexColor("#111827"),
                    strokeDashArray=[6, 3],
                )
            )
            group.add(Text(frame.width - frame.right - 4, y + 3, text, textAnchor="end", **font))
        for series in chart.lines:
            colour = HexColor(series.colour)
            coords = [(scales.sx(d), fy(scales.sy(v))) for d, v in series.points]
            if len(coords) > 1:
                flat = [c for point in coords for c in point]
                group.add(PolyLine(flat, strokeColor=colour, strokeWidth=1.6))
            for x, y in coords:
                group.add(Circle(x, y, 2.5, fillColor=colour, strokeColor=None))
        for marker in chart.markers:
            x, y = scales.sx(marker.when), scales.sy(marker.value)
            colour = HexColor(marker.colour)
            if marker.shape == "triangle":
                points = [float(c) for pair in _triangle(x, y).split() for c in pair.split(",")]
                flipped = [v if i % 2 == 0 else fy(v) for i, v in enumerate(points)]
                group.add(Polygon(flipped, fillColor=colour, strokeColor=None))
            else:
                group.add(Circle(x, fy(y), 4.5, fillColor=colour, strokeColor=HexColor("#111827")))
        for index, (text, colour) in enumerate(chart.legend):
            lx = frame.left + 4 + 120 * (index % 4)
            ly = fy(frame.height - 22 + 14 * (index // 4))
            group.add(Rect(lx, ly - 2, 10, 10, fillColor=HexColor(colour), strokeColor=None))
            group.add(Text(lx + 14, ly, text, **font))
    group.scale(scale, scale)
    drawing = Drawing(frame.width * scale, height * scale)
    drawing.add(group)
    return drawing
