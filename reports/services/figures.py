"""Plots as self-contained SVG (no plotting library): box plots, scatter plots, heat maps.

Box plots follow the papers' figures: the box spans the quartiles and the line is the median
(``inference.stats.summarize``: linear interpolation, as every table), whiskers reach the most
extreme values within 1.5 IQR of the box (Tukey), values beyond are dots. Each mark carries a
``<title>`` (hover text) with its numbers, and marks may link (drill-down).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

from inference.stats import summarize

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class Frame:
    width: int = 640
    height: int = 320
    left: int = 56
    right: int = 16
    top: int = 28
    bottom: int = 64

    @property
    def plot_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> int:
        return self.height - self.top - self.bottom


def _open(frame: Frame, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{frame.width}" height="{frame.height}" '
        f'viewBox="0 0 {frame.width} {frame.height}" role="img" {FONT}>',
        f"<title>{escape(title)}</title>",
        f'<rect width="{frame.width}" height="{frame.height}" fill="#fff"/>',
        f'<text x="{frame.left}" y="16" font-weight="bold">{escape(title)}</text>',
    ]


def _y_axis(frame: Frame, ticks: Sequence[float], scale: object, label: str) -> list[str]:
    out = []
    for tick in ticks:
        y = scale(tick)  # type: ignore[operator]
        out.append(
            f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#e5e7eb"/>'
        )
        out.append(
            f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>'
        )
    mid = frame.top + frame.plot_height / 2
    out.append(
        f'<text x="14" y="{mid:.1f}" transform="rotate(-90 14 {mid:.1f})" '
        f'text-anchor="middle">{escape(label)}</text>'
    )
    return out


def box_plot(
    groups: Sequence[tuple[str, Sequence[float], str | None]],
    *,
    title: str,
    y_label: str = "Dice",
    y_range: tuple[float, float] | None = (0.0, 1.0),
) -> str:
    """One box per ``(label, values, link or None)``; NaN values are left out."""
    frame = Frame(width=max(360, 90 * len(groups) + 80))
    clean = [(label, np.asarray(v, dtype=float), link) for label, v, link in groups]
    clean = [(label, v[~np.isnan(v)], link) for label, v, link in clean]
    if y_range is None:
        finite = np.concatenate([v for _, v, _ in clean]) if clean else np.array([0.0, 1.0])
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    else:
        low, high = y_range
    ticks = nice_ticks(low, high)
    low, high = min(low, ticks[0]), max(high, ticks[-1])

    def y(value: float) -> float:
        return frame.top + frame.plot_height * (1 - (value - low) / ((high - low) or 1.0))

    out = _open(frame, title) + _y_axis(frame, ticks, y, y_label)
    slot = frame.plot_width / max(len(clean), 1)
    for index, (label, values, link) in enumerate(clean):
        cx = frame.left + slot * (index + 0.5)
        half = min(24.0, slot / 3)
        colour = PALETTE[index % len(PALETTE)]
        out.append(
            f'<text x="{cx:.1f}" y="{frame.height - frame.bottom + 16}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
        if values.size == 0:
            out.append(
                f'<text x="{cx:.1f}" y="{y((low + high) / 2):.1f}" text-anchor="middle" '
                'fill="#6b7280">no data</text>'
            )
            continue
        summary = summarize(values)
        iqr = summary.q3 - summary.q1
        inside = values[(values >= summary.q1 - 1.5 * iqr) & (values <= summary.q3 + 1.5 * iqr)]
        whisker_low, whisker_high = float(inside.min()), float(inside.max())
        outliers = values[(values < whisker_low) | (values > whisker_high)]
        hover = (
            f"{label}: median {summary.median:.3f} (IQR {summary.q1:.3f}–{summary.q3:.3f}), "
            f"n = {summary.n}"
        )
        group = [f"<g><title>{escape(hover)}</title>"]
        group.append(
            f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(whisker_low):.1f}" '
            f'y2="{y(whisker_high):.1f}" stroke="#374151"/>'
        )
        for value in (whisker_low, whisker_high):
            group.append(
                f'<line x1="{cx - half / 2:.1f}" x2="{cx + half / 2:.1f}" y1="{y(value):.1f}" '
                f'y2="{y(value):.1f}" stroke="#374151"/>'
            )
        group.append(
            f'<rect x="{cx - half:.1f}" y="{y(summary.q3):.1f}" width="{2 * half:.1f}" '
            f'height="{max(y(summary.q1) - y(summary.q3), 1):.1f}" fill="{colour}" '
            'fill-opacity="0.25" stroke="#374151"/>'
        )
        group.append(
            f'<line x1="{cx - half:.1f}" x2="{cx + half:.1f}" y1="{y(summary.median):.1f}" '
            f'y2="{y(summary.median):.1f}" stroke="#f97316" stroke-width="2"/>'
        )
        for value in outliers:
            group.append(f'<circle cx="{cx:.1f}" cy="{y(float(value)):.1f}" r="2" fill="#374151"/>')
        group.append("</g>")
        text = "".join(group)
        out.append(f'<a href="{escape(link)}">{text}</a>' if link else text)
    out.append("</svg>")
    return "\n".join(out)


def scatter_plot(
    points: Sequence[tuple[float, float, str, str]],
    *,
    title: str,
    x_label: str,
    y_label: str,
) -> str:
    """Points ``(x, y, group, hover text)`` coloured by group, with a legend."""
    frame = Frame(width=420, height=340, bottom=56)
    groups: list[str] = []
    for _, _, group, _ in points:
        if group not in groups:
            groups.append(group)
    xs = [p[0] for p in points] or [0.0, 1.0]
    ys = [p[1] for p in points] or [0.0, 1.0]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x_low, x_high, y_low, y_high = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def sx(value: float) -> float:
        return frame.left + frame.plot_width * (value - x_low) / ((x_high - x_low) or 1.0)

    def sy(value: float) -> float:
        return frame.top + frame.plot_height * (1 - (value - y_low) / ((y_high - y_low) or 1.0))

    out = _open(frame, title) + _y_axis(frame, y_ticks, sy, y_label)
    base = frame.height - frame.bottom
    for tick in x_ticks:
        out.append(
            f'<text x="{sx(tick):.1f}" y="{base + 14}" text-anchor="middle">{_fmt(tick)}</text>'
        )
    out.append(
        f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{base}" y2="{base}" '
        'stroke="#374151"/>'
    )
    out.append(
        f'<text x="{frame.left + frame.plot_width / 2:.1f}" y="{base + 30}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
    )
    for x, y, group, hover in points:
        colour = PALETTE[groups.index(group) % len(PALETTE)]
        out.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{colour}" '
            f'fill-opacity="0.75"><title>{escape(hover)}</title></circle>'
        )
    for index, group in enumerate(groups):
        lx = frame.left + 8 + 100 * index
        out.append(
            f'<circle cx="{lx}" cy="{frame.height - 10}" r="4" '
            f'fill="{PALETTE[index % len(PALETTE)]}"/>'
        )
        out.append(f'<text x="{lx + 8}" y="{frame.height - 6}">{escape(group)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _heat_colour(value: float) -> str:
    """White (0) → dark blue (1)."""
    t = min(max(value, 0.0), 1.0)
    r, g, b = (int(255 + (c - 255) * t) for c in (8, 48, 107))
    return f"#{r:02x}{g:02x}{b:02x}"


def heat_map(
    labels: Sequence[str],
    medians: np.ndarray,
    *,
    title: str,
    links: dict[tuple[int, int], str] | None = None,
) -> str:
    """Symmetric matrix of median Dice; empty cells where a pair was not compared."""
    cell = 64
    left, top = 130, 40
    size = len(labels)
    width, height = left + cell * size + 16, top + cell * size + 90
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" {FONT}>',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="8" y="16" font-weight="bold">{escape(title)}</text>',
    ]
    for i, label in enumerate(labels):
        out.append(
            f'<text x="{left - 6}" y="{top + cell * i + cell / 2 + 4:.1f}" '
            f'text-anchor="end">{escape(label)}</text>'
        )
        x = left + cell * i + cell / 2
        y = top + cell * size + 12
        out.append(
            f'<text x="{x:.1f}" y="{y}" transform="rotate(35 {x:.1f} {y})">{escape(label)}</text>'
        )
        for j in range(size):
            value = float(medians[i, j])
            x0, y0 = left + cell * j, top + cell * i
            if math.isnan(value):
                out.append(
                    f'<rect x="{x0}" y="{y0}" width="{cell}" height="{cell}" fill="#f3f4f6" '
                    'stroke="#fff"/>'
                )
                continue
            text_colour = "#fff" if value > 0.55 else "#111827"
            mark = (
                f"<g><title>{escape(labels[i])} vs {escape(labels[j])}: median Dice "
                f'{value:.3f}</title><rect x="{x0}" y="{y0}" width="{cell}" height="{cell}" '
                f'fill="{_heat_colour(value)}" stroke="#fff"/><text x="{x0 + cell / 2}" '
                f'y="{y0 + cell / 2 + 4}" text-anchor="middle" fill="{text_colour}">'
                f"{value:.2f}</text></g>"
            )
            link = (links or {}).get((i, j))
            out.append(f'<a href="{escape(link)}">{mark}</a>' if link else mark)
    out.append("</svg>")
    return "\n".join(out)
