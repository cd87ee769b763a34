"""Small server-rendered SVG charts: horizontal bars (one value per office or terminal) and a line (a trend).

    gateway.central.report (HTML report, and the PDF through fpdf2's SVG support) --> bar_chart / line_chart --> SVG
    the central dashboard (later) --> the same functions
Pure functions from labels and values to an SVG document as text: no plotting library, no script, no external
font or stylesheet (an SVG the central serves itself, also inside a PDF). Every label is XML-escaped; values
are fractions 0..1 shown as percentages unless another ``unit`` is given. A None value is drawn as "no data"
instead of a zero bar, so a missing figure is never mistaken for a bad one.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

#: Colours (readable on white, printable in grey): good, middling, bad, no data, axis, text.
GOOD, MIDDLE, BAD, NO_DATA, AXIS, INK = "#2e7d32", "#f9a825", "#c62828", "#9e9e9e", "#757575", "#212121"
FONT = "Helvetica, Arial, sans-serif"


def _value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "tidak ada data / no data"
    if unit == "%":
        return f"{value * 100:.1f}%"
    return f"{value:,.1f}{(' ' + unit) if unit else ''}"


def _colour(value: float | None, good: float, bad: float) -> str:
    if value is None:
        return NO_DATA
    if value >= good:
        return GOOD
    return BAD if value < bad else MIDDLE


def _attr(text: str) -> str:
    return escape(text, quote=True)


def bar_chart(items: Sequence[tuple[str, float | None]], *, title: str, unit: str = "%", max_value: float = 1.0,
              good: float = 0.9, bad: float = 0.6, width: int = 720, label_width: int = 260) -> str:
    """Horizontal bars, one per (label, value), in the order given; colour by thresholds good / bad."""
    row_h, top, bottom = 22, 34, 12
    height = top + max(1, len(items)) * row_h + bottom
    plot_w = width - label_width - 150
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_attr(title)}" font-family="{FONT}">',
           f"<title>{escape(title)}</title>",
           f'<text x="0" y="18" font-size="14" font-weight="bold" fill="{INK}">{escape(title)}</text>']
    if not items:
        out.append(f'<text x="0" y="{top + 14}" font-size="12" fill="{AXIS}">tidak ada data / no data</text>')
    scale = max_value if max_value > 0 else 1.0
    for i, (label, value) in enumerate(items):
        y = top + i * row_h
        shown = label if len(label) <= 40 else label[:39] + "…"
        out.append(f'<text x="{label_width - 6}" y="{y + 15}" font-size="12" text-anchor="end" '
                   f'fill="{INK}">{escape(shown)}</text>')
        length = 0.0 if value is None else max(0.0, min(1.0, value / scale)) * plot_w
        out.append(f'<rect x="{label_width}" y="{y + 3}" width="{plot_w}" height="{row_h - 6}" fill="#eeeeee"/>')
        if value is not None:
            out.append(f'<rect x="{label_width}" y="{y + 3}" width="{length:.1f}" height="{row_h - 6}" '
                       f'fill="{_colour(value, good, bad)}"/>')
        out.append(f'<text x="{label_width + plot_w + 6}" y="{y + 15}" font-size="12" '
                   f'fill="{INK}">{escape(_value_text(value, unit))}</text>')
    out.append("</svg>")
    return "".join(out)


def line_chart(points: Sequence[tuple[str, float | None]], *, title: str, unit: str = "%", max_value: float = 1.0,
               width: int = 720, height: int = 220) -> str:
    """A line over (label, value) points in order (weeks); a None value breaks the line."""
    left, right, top, bottom = 48, 16, 34, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    scale = max_value if max_value > 0 else 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_attr(title)}" font-family="{FONT}">',
           f"<title>{escape(title)}</title>",
           f'<text x="0" y="18" font-size="14" font-weight="bold" fill="{INK}">{escape(title)}</text>']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                   f'fill="{AXIS}">{escape(_value_text(frac * scale, unit))}</text>')
    if not points or all(v is None for _, v in points):
        out.append(f'<text x="{left + 8}" y="{top + plot_h / 2:.1f}" font-size="12" '
                   f'fill="{AXIS}">tidak ada data / no data</text>')
    n = len(points)
    step = plot_w / (n - 1) if n > 1 else 0.0
    segment: list[str] = []
    segments: list[list[str]] = []
    for i, (label, value) in enumerate(points):
        x = left + (i * step if n > 1 else plot_w / 2)
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle" '
                   f'fill="{AXIS}">{escape(label)}</text>')
        if value is None:
            if segment:
                segments.append(segment)
            segment = []
            continue
        y = top + plot_h * (1 - max(0.0, min(1.0, value / scale)))
        segment.append(f"{x:.1f},{y:.1f}")
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{GOOD}"/>')
        out.append(f'<text x="{x:.1f}" y="{y - 7:.1f}" font-size="11" text-anchor="middle" '
                   f'fill="{INK}">{escape(_value_text(value, unit))}</text>')
    if segment:
        segments.append(segment)
    for seg in segments:
        if len(seg) > 1:
            out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{GOOD}" stroke-width="2"/>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="{AXIS}"/>')
    out.append("</svg>")
    return "".join(out)


__all__ = ["bar_chart", "line_chart"]
