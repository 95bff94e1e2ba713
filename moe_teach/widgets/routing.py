"""The routing explorer (lesson 03): type a 10-value token, see where the router sends it.

A small, seeded, untrained ``MoELayer(10, output_dim, num_experts, top_k)`` routes one token.
The explorer shows the gate probability of every expert (top-k highlighted), the weights of
the chosen experts, the output tensor and the share of expert compute the token used.
Changing the number of experts or k rebuilds the layer from the same seed, so the same
settings always give the same layer.

Tests drive it without a browser::

    explorer = routing_explorer()
    explorer.values_text.value = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10"
    explorer.state.probs, explorer.chart.value   # what is computed and what is drawn
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import ipywidgets as widgets
import torch

from ..counting import moe_flops_per_token
from ..moe_layer import MoELayer
from ..validation import check_choice, check_positive_int, check_top_k
from .common import message_html, parse_values, svg_bar_chart

INPUT_DIM = 10
MIN_EXPERTS, MAX_EXPERTS = 2, 8
MAX_ABS_VALUE = 1e6        # larger inputs are rejected: float32 overflows soon after
CUSTOM = "(custom)"        # the dropdown's entry while the text box holds your own token


def round_value(value: float) -> float:
    """Round to 3 significant digits, with rounding dust (``1.2e-16``) and ``-0`` shown as ``0``."""
    value = float(f"{value:.3g}")
    return 0.0 if abs(value) < 1e-9 else value


def format_values(values) -> str:
    """``[0.5, -1.0, 1.2e-16]`` -> ``"0.5, -1, 0"`` (what the text box shows), 3 significant digits."""
    return ", ".join(f"{round_value(v):g}" for v in values)


def _random_example() -> list[float]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(INPUT_DIM, generator=generator).mul(1.5).tolist()


_RAW_EXAMPLES = {
    "linear ramp": [-1 + 2 * i / (INPUT_DIM - 1) for i in range(INPUT_DIM)],
    "alternating signs": [(-1.0) ** i for i in range(INPUT_DIM)],
    "sinusoid": [math.sin(2 * math.pi * i / INPUT_DIM) for i in range(INPUT_DIM)],
    "single spike": [3.0 if i == 4 else 0.0 for i in range(INPUT_DIM)],
    "random": _random_example(),
}
#: Built-in tokens to try, name -> 10 values, rounded so the text box shows them exactly.
EXAMPLES = {name: [round_value(v) for v in values] for name, values in _RAW_EXAMPLES.items()}


def parse_token(text: str) -> list[float]:
    """The 10 values typed in the text box; ValueError with a learner-friendly message otherwise.

    Commas separate values (a trailing comma is fine). Values must be finite and at most
    ``MAX_ABS_VALUE`` in size.
    """
    parts = [part for part in str(text).replace(";", ",").split(",") if part.strip()]
    if any(len(part.split()) > 1 for part in parts):
        raise ValueError(f"Separate the values with commas, e.g. 1, 2, 3 (got {text.strip()!r})")
    values = parse_values(text, INPUT_DIM)
    too_large = [v for v in values if abs(v) > MAX_ABS_VALUE]
    if too_large:
        raise ValueError(f"{too_large[0]:g} is too large: use values between {-MAX_ABS_VALUE:g} "
                         f"and {MAX_ABS_VALUE:g}")
    return values


@dataclass
class RoutingState:
    """What the explorer shows, recomputed on every change (plain Python, for tests).

    Attributes:
        values: the 10 input values of the token (last valid input).
        num_experts, top_k: ``E`` and ``k`` of the current layer.
        probs: ``[E]`` router softmax over all experts.
        chosen: ``[k]`` chosen expert ids, best first.
        weights: ``[k]`` combine weight of each chosen expert.
        output: ``[output_dim]`` the layer's output for the token.
        compute_share: ``k / E``, the share of the experts this token ran.
        sparse_flops, dense_flops: FLOPs per token of the sparse layer and of running all ``E`` experts.
        error: the message shown for malformed input, ``None`` when the input was valid.
    """

    values: list[float]
    num_experts: int
    top_k: int
    probs: list[float] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    output: list[float] = field(default_factory=list)
    compute_share: float = 0.0
    sparse_flops: int = 0
    dense_flops: int = 0
    error: str | None = None


def explorer_layer(num_experts: int, top_k: int, output_dim: int, hidden_dim: int, seed: int) -> MoELayer:
    """A seeded ``MoELayer(10, output_dim, num_experts, top_k)`` in eval mode.

    The global random state is left as it was, so building it does not change a lesson's numbers.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = MoELayer(INPUT_DIM, output_dim, num_experts=num_experts, top_k=top_k, hidden_dim=hidden_dim)
    return layer.eval()


class RoutingExplorer(widgets.VBox):
    """The explorer's container. Controls: ``example_dropdown``, ``values_text``, ``experts_slider``,
    ``k_slider``. Displays: ``message``, ``chart`` (SVG), ``output_box``, ``compute_box``. State: ``state``.
    """

    def __init__(self, num_experts: int = 4, top_k: int = 2, output_dim: int = 4, hidden_dim: int = 16,
                 seed: int = 0, example: str = "linear ramp"):
        check_positive_int("num_experts", num_experts)
        if not MIN_EXPERTS <= num_experts <= MAX_EXPERTS:
            raise ValueError(f"num_experts must be between {MIN_EXPERTS} and {MAX_EXPERTS}, "
                             f"got {num_experts}")
        check_top_k(top_k, num_experts)
        self.output_dim = check_positive_int("output_dim", output_dim)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.seed = seed
        check_choice("example", example, tuple(EXAMPLES))

        self.example_dropdown = widgets.Dropdown(options=[*EXAMPLES, CUSTOM], value=example,
                                                 description="example")
        self.values_text = widgets.Text(value=format_values(EXAMPLES[example]), continuous_update=False,
                                        description="token", layout=widgets.Layout(width="520px"),
                                        placeholder="10 comma-separated numbers, then Enter")
        self.experts_slider = widgets.IntSlider(value=num_experts, min=MIN_EXPERTS, max=MAX_EXPERTS,
                                                description="experts E")
        self.k_slider = widgets.IntSlider(value=top_k, min=1, max=num_experts, description="top-k")
        self.message = widgets.HTML()
        self.chart = widgets.HTML()
        self.output_box = widgets.HTML()
        self.compute_box = widgets.HTML()
        super().__init__([
            widgets.HTML("<b>Routing explorer</b>: type a token (10 values) or pick an example; "
                         "move E and k."),
            widgets.HBox([self.example_dropdown, self.values_text]),
            widgets.HBox([self.experts_slider, self.k_slider]),
            self.message, self.chart, self.output_box, self.compute_box,
        ])
        self.layer = explorer_layer(num_experts, top_k, output_dim, hidden_dim, seed)
        self.state = RoutingState(values=list(EXAMPLES[example]), num_experts=num_experts, top_k=top_k)
        self._syncing = False
        self.example_dropdown.observe(self._on_example, names="value")
        self.values_text.observe(self._on_text, names="value")
        self.experts_slider.observe(self._on_sizes, names="value")
        self.k_slider.observe(self._on_sizes, names="value")
        self.update()

    # --- events -------------------------------------------------------------------------
    def _on_example(self, change):
        if self._syncing or change["new"] == CUSTOM:
            return
        text = format_values(EXAMPLES[change["new"]])
        if self.values_text.value == text:   # no change event would fire: apply it here
            self.update()
        self.values_text.value = text         # fires _on_text

    def _on_text(self, _change):
        self.update()
        self._sync_dropdown()

    def _sync_dropdown(self):
        """Show the example the text box holds, or "(custom)" once it holds anything else."""
        matching = [name for name, values in EXAMPLES.items() if self.state.error is None
                    and self.state.values == values]
        self._syncing = True
        try:
            self.example_dropdown.value = matching[0] if matching else CUSTOM
        finally:
            self._syncing = False

    def _on_sizes(self, _change):
        if self._syncing:
            return
        num_experts = self.experts_slider.value
        self._syncing = True
        try:   # clamp k before shrinking its range, so the slider never holds k > E
            self.k_slider.value = min(self.k_slider.value, num_experts)
            self.k_slider.max = num_experts
        finally:
            self._syncing = False
        top_k = self.k_slider.value
        self.layer = explorer_layer(num_experts, top_k, self.output_dim, self.hidden_dim, self.seed)
        self.update()

    # --- computation and drawing ----------------------------------------------------------
    def update(self) -> RoutingState:
        """Parse the text box, route the token and redraw.

        Malformed input never raises: it shows a message and the last valid token stays on display.
        """
        previous = self.state.values
        try:
            values, error = parse_token(self.values_text.value), None
        except ValueError as exc:   # keep showing the last valid token, with the message above it
            values, error = previous, str(exc)
        state = self.compute(values)
        if not all(math.isfinite(v) for v in state.probs + state.output):
            error = "These values overflow the layer (the result is not finite): try smaller values"
            state = self.compute(previous)
        self.state = state
        self.state.error = error
        self.message.value = "" if error is None else message_html(
            f"{error} (showing the last valid token)", error=True)
        self._draw()
        return self.state

    @torch.no_grad()
    def compute(self, values: list[float]) -> RoutingState:
        """Route one token ``[1, 10]`` through the current layer."""
        output, record = self.layer(torch.tensor([values]), return_record=True)
        num_experts, top_k = self.layer.num_experts, self.layer.top_k
        return RoutingState(
            values=list(values), num_experts=num_experts, top_k=top_k,
            probs=record.probs[0].tolist(), chosen=record.expert_indices[0].tolist(),
            weights=record.expert_weights[0].tolist(), output=output[0].tolist(),
            compute_share=top_k / num_experts,
            sparse_flops=self._flops(num_experts, top_k),
            dense_flops=self._flops(num_experts, num_experts),
        )

    def _flops(self, num_experts: int, top_k: int) -> int:
        return moe_flops_per_token(INPUT_DIM, self.hidden_dim, num_experts, top_k, self.output_dim)

    def _draw(self):
        s = self.state
        self.chart.value = svg_bar_chart(
            s.probs, [f"expert {e}" for e in range(s.num_experts)], highlight=s.chosen,
            title=f"Gate probability of each expert (top-{s.top_k} of {s.num_experts} highlighted)",
            y_label="probability", y_max=1.0, width=460)
        renormalised = ("renormalised to sum to 1" if self.layer.router.renormalize
                        else "raw probability (k=1)")
        chosen = ", ".join(f"expert {e} &times; {w:.3f}" for e, w in zip(s.chosen, s.weights))
        output = ", ".join(f"{v:.4f}" for v in s.output)
        self.output_box.value = (
            f"<div>chosen experts and weights ({renormalised}): {chosen}</div>"
            f"<div>output (shape [1, {len(s.output)}]): "
            f"<code data-output>[{html.escape(output)}]</code></div>")
        self.compute_box.value = (
            f'<div data-compute-share="{s.compute_share!r}">expert compute used: k/E = '
            f"{s.top_k}/{s.num_experts} = {s.compute_share:.0%}; FLOPs per token: {s.sparse_flops:,} "
            f"(router + {s.top_k} expert{'s' if s.top_k > 1 else ''}) "
            f"vs {s.dense_flops:,} (router + all {s.num_experts} experts) "
            f"= {s.sparse_flops / s.dense_flops:.0%}</div>")


def routing_explorer(num_experts: int = 4, top_k: int = 2, output_dim: int = 4, hidden_dim: int = 16,
                     seed: int = 0, example: str = "linear ramp") -> RoutingExplorer:
    """Build the routing explorer (an ``ipywidgets.VBox``); display it as a notebook cell's last line."""
    return RoutingExplorer(num_experts, top_k, output_dim, hidden_dim, seed, example)
