"""The capacity explorer (lesson 04): move the capacity factor, see which assignments drop.

A fixed, seeded routing decision of ``num_tokens`` tokens over ``num_experts`` experts (expert 0
is made popular by ``skew`` so that it overflows first). Each expert may process
``capacity = ceil(capacity_factor * T * k / E)`` assignments (Switch, GShard); every token's
first choice is served before any second choice, in token order; the rest are dropped.

The picture is a grid, rows tokens and columns experts: a chosen cell is coloured by its slot
and shows its choice number (1st, 2nd, ...); a dropped one is red and shows the number with an X
(``2✗``: a dropped 2nd choice). Any factor > 0 can be typed; one outside the slider's range leaves
the slider at its limit and says so; moving the slider always applies the slider's value.
Tests drive it without a browser::

    explorer = capacity_explorer()
    explorer.factor_slider.value = 0.5
    explorer.state.num_dropped, explorer.grid.value    # what is computed and what is drawn
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import ipywidgets as widgets
import torch

from ..routing import apply_capacity, expert_capacity, topk_softmax
from ..routing.capacity import MAX_CAPACITY_FACTOR
from ..validation import check_non_negative_float, check_positive_float, check_positive_int, check_top_k
from .common import ACCENT, message_html

SLOT_COLOURS = (ACCENT, "#ffa94d", "#ffd8a8", "#fff4e6")   # 1st, 2nd, 3rd, 4th choice
DROPPED_FILL, DROPPED_STROKE = "#e03131", "#a51111"   # a saturated red, the lesson's "red cells"
FACTOR_MIN, FACTOR_MAX, FACTOR_STEP = 0.25, 3.0, 0.25


@dataclass
class CapacityState:
    """What the explorer shows (plain Python, for tests).

    Attributes:
        capacity_factor: the factor in use (last valid input).
        num_tokens, num_experts, top_k: ``T``, ``E``, ``k``.
        capacity: assignments each expert may process.
        expert_indices: ``[T][k]`` chosen experts, best first.
        kept: ``[T][k]`` False where the assignment was dropped.
        routed_per_expert: ``[E]`` assignments each expert was chosen for.
        kept_per_expert: ``[E]`` assignments each expert processed (at most ``capacity``).
        num_dropped: dropped assignments; ``fully_dropped``: tokens that lost every expert.
        error: message for malformed input, ``None`` when the input was valid.
        note: set when the factor in use lies outside the slider's range, else ``None``.
    """

    capacity_factor: float
    num_tokens: int
    num_experts: int
    top_k: int
    capacity: int = 0
    expert_indices: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    routed_per_expert: list = field(default_factory=list)
    kept_per_expert: list = field(default_factory=list)
    num_dropped: int = 0
    fully_dropped: list = field(default_factory=list)
    error: str | None = None
    note: str | None = None

    @property
    def drop_rate(self) -> float:
        return self.num_dropped / (self.num_tokens * self.top_k)

    def dropped_in_slot(self, slot: int) -> list:
        """Tokens whose choice number ``slot + 1`` was dropped (slot 0: first choices)."""
        return [token for token, row in enumerate(self.kept) if not row[slot]]


def plural(count: int, word: str) -> str:
    """``"1 token"``, ``"3 tokens"``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def make_logits(num_tokens: int, num_experts: int, skew: float, seed: int) -> torch.Tensor:
    """``[T, E]`` seeded router logits; ``skew`` is added to expert 0 (a popular expert)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=generator)
    logits[:, 0] += skew
    return logits


def parse_factor(text: str) -> float:
    """A capacity factor typed by the learner: a finite number > 0, else a ValueError with a hint."""
    hint = "type a capacity factor: a number > 0 such as 1.25"
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"The box is empty: {hint}")
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a number: {hint}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text.strip()!r} is not allowed: {hint}")
    if value > MAX_CAPACITY_FACTOR:
        raise ValueError(f"{text.strip()!r} is too large (at most {MAX_CAPACITY_FACTOR:g}): {hint}")
    return value


class CapacityExplorer(widgets.VBox):
    """Controls: ``factor_slider``, ``factor_text`` (any factor > 0), ``k_slider``.
    Displays: ``message``, ``summary``, ``grid`` (SVG). State: ``state``.
    """

    def __init__(self, num_tokens: int = 16, num_experts: int = 4, top_k: int = 2,
                 capacity_factor: float = 1.0, skew: float = 1.0, seed: int = 0):
        check_positive_int("num_tokens", num_tokens)
        check_positive_int("num_experts", num_experts)
        check_top_k(top_k, num_experts)
        capacity_factor = check_positive_float("capacity_factor", capacity_factor)
        check_positive_float("capacity_factor", capacity_factor, maximum=MAX_CAPACITY_FACTOR)
        check_non_negative_float("skew", skew)
        self.logits = make_logits(num_tokens, num_experts, skew, seed)
        self.factor_slider = widgets.FloatSlider(
            value=min(max(capacity_factor, FACTOR_MIN), FACTOR_MAX), min=FACTOR_MIN, max=FACTOR_MAX,
            step=FACTOR_STEP, description="capacity factor", style={"description_width": "initial"})
        self.factor_text = widgets.Text(value=f"{capacity_factor:g}", continuous_update=False,
                                        description="or type one", placeholder="e.g. 1.1, then Enter")
        self.k_slider = widgets.IntSlider(value=top_k, min=1, max=min(num_experts, len(SLOT_COLOURS)),
                                          description="top-k")
        self.message, self.note = widgets.HTML(), widgets.HTML()
        self.summary, self.grid = widgets.HTML(), widgets.HTML()
        super().__init__([
            widgets.HTML("<b>Capacity explorer</b>: move the capacity factor (or type any value) and watch "
                         "which assignments drop."),
            widgets.HBox([self.factor_slider, self.factor_text, self.k_slider]),
            self.message, self.note, self.summary, self.grid,
        ])
        self.state = CapacityState(capacity_factor, num_tokens, num_experts, top_k)
        self._syncing = False
        self.factor_slider.observe(self._on_slider, names="value")
        self.factor_text.observe(self._on_text, names="value")
        self.k_slider.observe(lambda _change: self.update(), names="value")
        self.update()

    # --- events -------------------------------------------------------------------------
    def _on_slider(self, change):
        if not self._syncing:   # a learner's move: the slider's value replaces whatever was typed
            self.factor_text.value = f"{change['new']:g}"     # fires _on_text, which updates

    def _on_text(self, _change):
        self.update()

    # --- computation and drawing ----------------------------------------------------------
    def update(self) -> CapacityState:
        """Read the factor from the text box, recompute the drops and redraw. Never raises."""
        try:
            factor, error = parse_factor(self.factor_text.value), None
        except ValueError as exc:
            factor, error = self.state.capacity_factor, str(exc)
        if error is None:   # keep the slider near the typed value without firing it back
            self._syncing = True
            try:
                self.factor_slider.value = min(max(factor, FACTOR_MIN), FACTOR_MAX)
            finally:
                self._syncing = False
        self.state = self.compute(factor, self.k_slider.value)
        self.state.error = error
        self.message.value = "" if error is None else message_html(
            f"{error} (showing capacity factor {factor:g})", error=True)
        if not FACTOR_MIN <= factor <= FACTOR_MAX:
            limit = FACTOR_MAX if factor > FACTOR_MAX else FACTOR_MIN
            self.state.note = (f"The slider shows its limit {limit:g}; using the typed value {factor:g}. "
                               "Move the slider to use its value again.")
        self.note.value = "" if self.state.note is None else message_html(self.state.note)
        self._draw()
        return self.state

    def compute(self, capacity_factor: float, top_k: int) -> CapacityState:
        """Route the fixed logits with ``top_k`` and apply the capacity of ``capacity_factor``."""
        num_tokens, num_experts = self.logits.shape
        _, _, indices = topk_softmax(self.logits, top_k)
        capacity = expert_capacity(num_tokens, num_experts, top_k, capacity_factor)
        kept = apply_capacity(indices, num_experts, capacity)
        return CapacityState(
            capacity_factor=capacity_factor, num_tokens=num_tokens, num_experts=num_experts, top_k=top_k,
            capacity=capacity, expert_indices=indices.tolist(), kept=kept.tolist(),
            routed_per_expert=torch.bincount(indices.reshape(-1), minlength=num_experts).tolist(),
            kept_per_expert=torch.bincount(indices[kept], minlength=num_experts).tolist(),
            num_dropped=int((~kept).sum()), fully_dropped=torch.where(~kept.any(dim=1))[0].tolist(),
        )

    def _draw(self):
        s = self.state
        total = s.num_tokens * s.top_k
        self.summary.value = (
            f'<div data-dropped="{s.num_dropped}" data-capacity="{s.capacity}" '
            f'data-fully-dropped="{len(s.fully_dropped)}">'
            f"capacity = ceil(factor &times; T &times; k / E) = ceil({s.capacity_factor:g} &times; "
            f"{s.num_tokens} &times; {s.top_k} / {s.num_experts}) = "
            f"<b>{plural(s.capacity, 'assignment')}</b> per expert. "
            f"Dropped: <b>{s.num_dropped}</b> of {total} assignments ({s.drop_rate:.0%}); "
            f"<b>{plural(len(s.fully_dropped), 'token')}</b> lost every expert"
            f"{carried_by_residual(len(s.fully_dropped))}.</div>")
        self.grid.value = token_expert_svg(s)


def carried_by_residual(num_lost: int) -> str:
    if num_lost == 0:
        return ""
    return f" (MoE output zero: the residual carries {'it' if num_lost == 1 else 'them'})"


def token_expert_svg(state: CapacityState, cell: int = 22) -> str:
    """The token-by-expert grid as SVG; every chosen cell has ``data-token/expert/slot/kept`` attributes."""
    left, top = 70, 34
    width = max(left + state.num_experts * cell + 150, 8 + state.top_k * 78 + 230)
    height = top + (state.num_tokens + 2) * cell
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'style="background:white;font-family:sans-serif;font-size:11px">',
             f'<text x="{left}" y="12" font-weight="bold">experts (columns) &#8594;</text>']
    for expert in range(state.num_experts):
        x = left + expert * cell + cell / 2
        parts.append(f'<text x="{x}" y="{top - 6}" text-anchor="middle">{expert}</text>')
    choice = {(t, e): (slot, state.kept[t][slot])
              for t, row in enumerate(state.expert_indices) for slot, e in enumerate(row)}
    for token in range(state.num_tokens):
        y = top + token * cell
        lost = token in state.fully_dropped
        label_colour = DROPPED_STROKE if lost else "black"
        parts.append(f'<text x="{left - 6}" y="{y + cell * 0.7}" text-anchor="end" fill="{label_colour}">'
                     f'token {token}</text>')
        for expert in range(state.num_experts):
            x = left + expert * cell
            if (token, expert) not in choice:
                parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="white" '
                             'stroke="#dee2e6"/>')
                continue
            slot, kept = choice[(token, expert)]
            fill = SLOT_COLOURS[slot] if kept else DROPPED_FILL
            stroke = "#495057" if kept else DROPPED_STROKE
            parts.append(f'<rect data-token="{token}" data-expert="{expert}" data-slot="{slot}" '
                         f'data-kept="{str(kept).lower()}" x="{x}" y="{y}" width="{cell}" height="{cell}" '
                         f'fill="{fill}" stroke="{stroke}"/>')
            label, colour = (f"{slot + 1}", "black") if kept else (f"{slot + 1}&#10007;", "white")
            parts.append(f'<text x="{x + cell / 2}" y="{y + cell * 0.7}" text-anchor="middle" '
                         f'fill="{colour}" font-weight="{"normal" if kept else "bold"}">{label}</text>')
        if lost:
            parts.append(f'<text x="{left + state.num_experts * cell + 6}" y="{y + cell * 0.7}" '
                         f'fill="{DROPPED_STROKE}">all dropped</text>')
    y = top + state.num_tokens * cell + cell * 0.8
    parts.append(f'<text x="{left - 6}" y="{y}" text-anchor="end">kept/cap</text>')
    for expert, count in enumerate(state.kept_per_expert):
        x = left + expert * cell + cell / 2
        parts.append(f'<text data-expert-kept="{expert}" data-count="{count}" x="{x}" y="{y}" '
                     f'text-anchor="middle">{count}/{state.capacity}</text>')
    legend_y = top + state.num_tokens * cell + cell * 1.8
    legend = [(SLOT_COLOURS[slot], f"choice {slot + 1}") for slot in range(state.top_k)]
    legend.append((DROPPED_FILL, "dropped (2\u2717: a dropped 2nd choice)"))
    for i, (colour, label) in enumerate(legend):
        x = 8 + i * 78
        parts.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colour}" '
                     f'stroke="#495057"/><text x="{x + 16}" y="{legend_y}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def capacity_explorer(num_tokens: int = 16, num_experts: int = 4, top_k: int = 2,
                      capacity_factor: float = 1.0, skew: float = 1.0, seed: int = 0) -> CapacityExplorer:
    """Build the capacity explorer (an ``ipywidgets.VBox``); display it as a notebook cell's last line."""
    return CapacityExplorer(num_tokens, num_experts, top_k, capacity_factor, skew, seed)
