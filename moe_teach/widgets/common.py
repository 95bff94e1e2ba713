"""Small pieces shared by the explorers: parsing typed numbers and drawing fast SVG charts.

Charts are inline SVG in an ``ipywidgets.HTML``: redrawing costs well under a millisecond
(a matplotlib redraw costs tens of milliseconds), and tests can read what is shown.
"""

from __future__ import annotations

import html
import math

from ..lessons.plots import ACCENT, MUTED

LINE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")

ERROR_STYLE = "color:#c92a2a;font-weight:bold"


def parse_values(text: str, count: int) -> list[float]:
    """Parse ``count`` comma-separated numbers from ``text``.

    Raises ValueError with a learner-friendly message for an empty box, a wrong count or
    something that is not a number.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"Type {count} comma-separated numbers, for example 0.1, -0.5, 2, ...")
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    parts = [p for p in parts if p != ""]
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number: type {count} comma-separated numbers") from None
        if not math.isfinite(value):
            raise ValueError(f"{part!r} is not a finite number: use ordinary numbers such as 0.5 or -2")
        values.append(value)
    if len(values) != count:
        raise ValueError(f"Expected {count} comma-separated values, got {len(values)}")
    return values


def message_html(text: str, error: bool = False) -> str:
    """An HTML snippet for a message line (red when ``error``)."""
    style = ERROR_STYLE if error else "color:#495057"
    return f'<div style="{style}">{html.escape(text)}</div>'


def svg_bar_chart(values, labels, highlight=(), title: str = "", y_label: str = "",
                  y_max: float | None = None, width: int = 420, height: int = 220) -> str:
    """An SVG bar chart: one bar per value, bars whose index is in ``highlight`` in the accent colour.

    Each bar carries ``data-index``, ``data-value`` and ``data-highlight`` attributes so tests
    (and curious learners) can read exactly what is drawn.
    """
    values = [float(v) for v in values]
    top = y_max if y_max is not None else max([v for v in values] + [1e-12])
    left, bottom, top_pad = 45, 30, 25
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    bar_w = plot_w / max(1, len(values))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'style="background:white;font-family:sans-serif;font-size:11px">']
    parts.append(f'<text x="{width / 2}" y="15" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>')
    axis_y = top_pad + plot_h
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="black"/>')
    parts.append(f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="black"/>')
    for tick in (0.0, 0.5, 1.0):
        y = top_pad + plot_h * (1 - tick)
        parts.append(f'<text x="{left - 4}" y="{y + 4}" text-anchor="end">{tick * top:.2g}</text>')
    parts.append(f'<text x="12" y="{top_pad + plot_h / 2}" transform="rotate(-90 12 {top_pad + plot_h / 2})" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')
    highlight = set(int(i) for i in highlight)
    for i, (value, label) in enumerate(zip(values, labels)):
        h = plot_h * max(0.0, min(value / top, 1.0)) if top > 0 else 0.0
        x = left + i * bar_w + bar_w * 0.15
        colour = ACCENT if i in highlight else MUTED
        parts.append(f'<rect data-index="{i}" data-value="{value:.6g}" data-highlight="{str(i in highlight).lower()}" '
                     f'x="{x:.1f}" y="{top_pad + plot_h - h:.1f}" width="{bar_w * 0.7:.1f}" height="{h:.1f}" '
                     f'fill="{colour}"/>')
        parts.append(f'<text x="{x + bar_w * 0.35:.1f}" y="{top_pad + plot_h - h - 3:.1f}" '
                     f'text-anchor="middle">{value:.2f}</text>')
        parts.append(f'<text x="{x + bar_w * 0.35:.1f}" y="{top_pad + plot_h + 14:.1f}" '
                     f'text-anchor="middle">{html.escape(str(label))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _step_ticks(steps: int) -> list[int]:
    """Round step numbers for the x axis: 0 and every multiple of a 1-2-5 spacing up to the last step."""
    if steps <= 1:
        return [0]
    nice = (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000)
    spacing = next((s for s in nice if (steps - 1) / s <= 5), (steps - 1) // 5)
    return list(range(0, steps, spacing))


def svg_line_chart(rows, title: str = "", width: int = 380, height: int = 220) -> str:
    """Lines of ``rows`` ``[steps][E]`` (one line per column, y from 0 to 1) as SVG, with a legend."""
    left, bottom, top_pad, right = 45, 30, 25, 80
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    steps = len(rows)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'style="background:white;font-family:sans-serif;font-size:11px">',
             f'<text x="{(width - right) / 2}" y="15" text-anchor="middle" font-weight="bold">'
             f'{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" '
             'stroke="black"/>',
             f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="black"/>',
             f'<text x="{left + plot_w / 2}" y="{height - 2}" text-anchor="middle">training step</text>',
             f'<text x="12" y="{top_pad + plot_h / 2}" transform="rotate(-90 12 {top_pad + plot_h / 2})" '
             f'text-anchor="middle">share</text>']
    for tick in (0.0, 0.5, 1.0):
        y = top_pad + plot_h * (1 - tick) + 4
        parts.append(f'<text x="{left - 4}" y="{y}" text-anchor="end">{tick:g}</text>')
    for step in _step_ticks(steps):
        x = left + plot_w * step / max(1, steps - 1)
        parts.append(f'<line x1="{x:.1f}" y1="{top_pad + plot_h}" x2="{x:.1f}" y2="{top_pad + plot_h + 4}" '
                     'stroke="black"/>')
        parts.append(f'<text data-step-tick="{step}" x="{x:.1f}" y="{top_pad + plot_h + 15}" '
                     f'text-anchor="middle">{step}</text>')
    num_series = len(rows[0]) if rows else 0
    for series in range(num_series):
        xs = [left + plot_w * i / max(1, steps - 1) for i in range(steps)]
        points = " ".join(f"{x:.1f},{top_pad + plot_h * (1 - row[series]):.1f}" for x, row in zip(xs, rows))
        colour = LINE_COLOURS[series % len(LINE_COLOURS)]
        parts.append(f'<polyline data-series="{series}" points="{points}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"/>')
        parts.append(f'<text x="{left + plot_w + 8}" y="{top_pad + 12 + 14 * series}" fill="{colour}">'
                     f'expert {series}</text>')
    parts.append("</svg>")
    return "".join(parts)
