"""Small pieces shared by the explorers: parsing typed numbers and drawing fast SVG charts.

Charts are inline SVG in an ``ipywidgets.HTML``: redrawing costs well under a millisecond
(a matplotlib redraw costs tens of milliseconds), and tests can read what is shown.
"""

from __future__ import annotations

import html
import math

from ..lessons.plots import ACCENT, MUTED

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
