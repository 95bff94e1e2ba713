"""The balance explorer (lesson 05): balancing-loss coefficient and capacity factor.

When it is built, the explorer trains one short run of lesson 05's collapse experiment
(:mod:`moe_teach.lessons.balance`) per coefficient of a small grid (a few seconds in all); the
coefficient slider snaps to those grid values. The capacity factor only decides which
assignments are dropped, so it is applied live to each trained router's routing of a
held-out batch (a simplification: during training these runs were dropless).

Shown for the chosen pair: each expert's share of the held-out assignments (sums to 1), the
capacity, the drop rate, the held-out error with the drops applied, the final Switch loss, and
each expert's share over the training steps. Tests drive it without a browser::

    explorer = balance_explorer()
    explorer.coef_slider.value = "0.1"
    explorer.factor_slider.value = "1.25"
    explorer.state.shares, explorer.state.drop_rate, explorer.chart.value
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ipywidgets as widgets
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..dispatch import dispatch_grouped
from ..lessons.balance import (
    BalanceConfig,
    BalanceRun,
    capacity_drops,
    make_cluster_task,
    route,
    split_task,
    train_balance,
)
from ..lessons.timing import torch_threads
from ..validation import check_non_negative_float, check_positive_float
from .common import message_html, svg_bar_chart, svg_line_chart

DEFAULT_COEFS = (0.0, 0.01, 0.03, 0.1, 0.3)
DEFAULT_FACTORS = (0.75, 1.0, 1.25, 1.5, 2.0, None)   # None: dropless
DROPLESS = "dropless"
#: matplotlib's default colour cycle (tab10), so lines match the lesson's matplotlib plots


def factor_label(factor: float | None) -> str:
    return DROPLESS if factor is None else f"{factor:g}"


@dataclass
class BalanceState:
    """What the explorer shows (plain Python, for tests).

    Attributes:
        coef: balancing-loss coefficient of the run shown.
        capacity_factor: ``None`` for dropless.
        capacity: assignments each expert may take on the held-out batch (``None`` dropless).
        shares: ``[E]`` share of the held-out ``T * k`` assignments routed to each expert (sums to 1).
        routed_per_expert, kept_per_expert: ``[E]`` assignments chosen / processed per expert.
        num_assignments, num_dropped: ``T * k`` and how many of them were dropped.
        drop_rate: ``num_dropped / num_assignments``.
        held_out_mse: mean squared error on the held-out batch with the drops applied.
        switch_loss: Switch loss at the last training step (1 = balanced, E = collapsed).
        shares_over_steps: ``[steps][E]`` training shares of the run.
    """

    coef: float
    capacity_factor: float | None
    capacity: int | None = None
    shares: list = field(default_factory=list)
    routed_per_expert: list = field(default_factory=list)
    kept_per_expert: list = field(default_factory=list)
    num_assignments: int = 0
    num_dropped: int = 0
    drop_rate: float = 0.0
    held_out_mse: float = 0.0
    switch_loss: float = 0.0
    shares_over_steps: list = field(default_factory=list)


def train_grid(coefs, config: BalanceConfig, train, progress: bool = True) -> dict[float, BalanceRun]:
    """One run per coefficient, each from the same seeded layer."""
    runs = {}
    for coef in tqdm(coefs, desc="training the grid", disable=not progress, leave=True):
        cfg = BalanceConfig(**{**config.__dict__, "switch_coef": coef})
        runs[coef] = train_balance(train, cfg)
    return runs


class BalanceExplorer(widgets.VBox):
    """Controls: ``coef_slider`` and ``factor_slider`` (``SelectionSlider``s; values are labels such as
    ``"0.01"`` and ``"dropless"``). Displays: ``message``, ``summary``, ``chart``, ``steps_chart``.
    State: ``state``; the trained runs: ``runs`` (coef -> :class:`~moe_teach.lessons.balance.BalanceRun`).
    """

    def __init__(self, coefs=DEFAULT_COEFS, factors=DEFAULT_FACTORS, top_k: int = 1, steps: int = 80,
                 seed: int = 0, progress: bool = True):
        coefs = tuple(check_non_negative_float("coefs", c) for c in coefs)
        factors = tuple(None if f is None else check_positive_float("factors", f) for f in factors)
        if not coefs or not factors:
            raise ValueError("coefs and factors must each hold at least one value")
        self.config = BalanceConfig(top_k=top_k, steps=steps, seed=seed)
        self.train_task, self.held_out = split_task(make_cluster_task(512, seed=seed))
        self.runs = train_grid(coefs, self.config, self.train_task, progress)
        self.coefs = {f"{c:g}": c for c in coefs}
        self.factors = {factor_label(f): f for f in factors}
        with torch_threads(1):   # every (coef, factor) pair once, so moving a slider only redraws
            self.records = {coef: route(run.layer, self.held_out.x) for coef, run in self.runs.items()}
            self.states = {(c, f): self.compute(c, f) for c in coefs for f in factors}
        default_factor = factor_label(None) if None in factors else factor_label(factors[-1])
        self.coef_slider = widgets.SelectionSlider(options=list(self.coefs), value=next(iter(self.coefs)),
                                                   description="balance coef",
                                                   style={"description_width": "initial"})
        self.factor_slider = widgets.SelectionSlider(options=list(self.factors), value=default_factor,
                                                     description="capacity factor",
                                                     style={"description_width": "initial"})
        self.message, self.summary = widgets.HTML(), widgets.HTML()
        self.chart, self.steps_chart = widgets.HTML(), widgets.HTML()
        super().__init__([
            widgets.HTML(f"<b>Balance explorer</b>: {len(coefs)} short runs of the collapse experiment "
                         f"(top-{top_k}, {self.config.num_experts} experts, {steps} steps), one per "
                         "coefficient; "
                         "the capacity factor is applied to a held-out batch."),
            widgets.HBox([self.coef_slider, self.factor_slider]),
            self.message, self.summary, widgets.HBox([self.chart, self.steps_chart]),
        ])
        self.coef_slider.observe(lambda _change: self.update(), names="value")
        self.factor_slider.observe(lambda _change: self.update(), names="value")
        self.update()

    def update(self) -> BalanceState:
        """Recompute the state for the sliders' values and redraw. Never raises."""
        try:
            key = (self.coefs[self.coef_slider.value], self.factors[self.factor_slider.value])
            self.state = self.states[key]
            self.message.value = ""
        except KeyError as exc:    # only reachable if a caller forces a label the grid does not have
            self.message.value = message_html(f"Cannot show this setting: {exc}", error=True)
            return self.state
        self._draw()
        return self.state

    @torch.no_grad()
    def compute(self, coef: float, capacity_factor: float | None) -> BalanceState:
        """Apply ``capacity_factor`` to the held-out routing of the run trained with ``coef``."""
        run, record = self.runs[coef], self.records[coef]
        num_experts = record.num_experts
        kept, capacity = capacity_drops(record.expert_indices, num_experts, capacity_factor)
        output = dispatch_grouped(self.held_out.x, run.layer.experts, record.expert_indices,
                                  record.expert_weights, kept)
        routed = torch.bincount(record.expert_indices.reshape(-1), minlength=num_experts)
        num_assignments = record.expert_indices.numel()
        num_dropped = int((~kept).sum())
        return BalanceState(
            coef=coef, capacity_factor=capacity_factor, capacity=capacity,
            shares=(routed.float() / num_assignments).tolist(), routed_per_expert=routed.tolist(),
            kept_per_expert=torch.bincount(record.expert_indices[kept], minlength=num_experts).tolist(),
            num_assignments=num_assignments, num_dropped=num_dropped, drop_rate=num_dropped / num_assignments,
            held_out_mse=float(F.mse_loss(output, self.held_out.y)), switch_loss=float(run.switch_loss[-1]),
            shares_over_steps=run.shares.tolist(),
        )

    def _draw(self):
        s = self.state
        num_experts = len(s.shares)
        over = [e for e, n in enumerate(s.routed_per_expert) if s.capacity is not None and n > s.capacity]
        capacity_text = ("dropless (no capacity)" if s.capacity is None else
                         f"capacity {s.capacity} assignments per expert (a share of "
                         f"{s.capacity / s.num_assignments:.2f})")
        self.summary.value = (
            f'<div data-drop-rate="{s.drop_rate!r}" data-switch="{s.switch_loss!r}" '
            f'data-max-share="{max(s.shares)!r}">'
            f"coefficient {s.coef:g}: final Switch loss <b>{s.switch_loss:.3f}</b> (1 = balanced, "
            f"{num_experts} = collapsed), largest share <b>{max(s.shares):.2f}</b> (balanced: "
            f"{1 / num_experts:.2f}). Held-out batch, {capacity_text}: dropped <b>{s.num_dropped}</b> of "
            f"{s.num_assignments} assignments (<b>{s.drop_rate:.1%}</b>), error with drops "
            f"{s.held_out_mse:.4f}.</div>")
        self.chart.value = svg_bar_chart(
            s.shares, [f"expert {e}" for e in range(num_experts)], highlight=over, y_max=1.0, width=380,
            title="Held-out share per expert (orange: over capacity)", y_label="share of assignments")
        self.steps_chart.value = svg_line_chart(s.shares_over_steps, title="Share per expert during training")


def balance_explorer(coefs=DEFAULT_COEFS, factors=DEFAULT_FACTORS, top_k: int = 1, steps: int = 80,
                     seed: int = 0, progress: bool = True) -> BalanceExplorer:
    """Train the grid and build the explorer (an ``ipywidgets.VBox``); display it as a cell's last line."""
    return BalanceExplorer(coefs, factors, top_k, steps, seed, progress)
