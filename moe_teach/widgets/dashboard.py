"""The routing dashboard (lesson 09): the trained language model's routing, coloured in your text.

Type a text: each token is coloured by its first-choice expert at the selected layer, its
second choice is the coloured underline, and its tooltip lists every expert's probability and
the weights used. Below the text, views over the validation set: the domain-by-expert share
heatmap, expert cards, cross-layer co-occurrence and router uncertainty. A capacity factor
shows which tokens of your text would be dropped if the text were one batch.

Every token is an HTML element ``<span class="moe-token" data-token=... data-expert=...
data-layer=...>``, so tests (and curious learners, with the browser's inspector) can read what
is drawn. Tests drive it without a browser::

    dashboard = routing_dashboard()
    dashboard.text_box.value = "the bank reported that revenue rose ."
    dashboard.state.experts, dashboard.tokens.value      # what is computed and what is drawn
    dashboard.layer_buttons.value = 1                      # or "all"
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field

import ipywidgets as widgets
import torch
from matplotlib.colors import to_rgb

from ..lessons.plots import EXPERT_COLOURS
from ..lessons.routing_analysis import domain_examples, load_model, route_text, validation_corpus
from ..lessons.routing_views import (
    RoutingTable,
    check_capacity_factor,
    check_layer,
    cooccurrence,
    domain_expert_shares,
    expert_card,
    mutual_information,
    routing_entropy,
    routing_margin,
    routing_table,
)
from ..lessons.timing import time_callable
from ..lm.data import DOMAINS
from ..lm.tokenizer import UNK
from ..routing import expert_capacity
from ..transformer import moe_layers
from .common import message_html

ALL = "all"
VIEWS = ("domains", "experts", "cross-layer", "uncertainty")
VIEW_LABELS = {"domains": "domain × expert", "experts": "expert cards", "cross-layer": "cross-layer",
               "uncertainty": "uncertainty"}
CAPACITY_CHOICES = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)   # 0.0 stands for dropless
EMPTY_MESSAGE = "Type some text above (or pick an example) to see where each token is routed."


def expert_colour(expert: int, alpha: float = 1.0) -> str:
    """CSS colour of ``expert`` (tab10, as in the lessons' plots), with opacity ``alpha``."""
    r, g, b = (round(255 * c) for c in to_rgb(EXPERT_COLOURS[expert % len(EXPERT_COLOURS)]))
    return f"rgba({r},{g},{b},{alpha:g})"


@dataclass
class DashboardState:
    """What the dashboard shows (plain Python, for tests).

    Attributes:
        text: the text routed; words: its tokens as shown (cut to the context); tokens: the
            token each word became (``<unk>`` for an unknown word).
        unknown: ``[T]`` True where the word is not in the vocabulary.
        layer: the selected layer index, or ``"all"``; num_layers: MoE layers in the model.
        capacity_factor: ``None`` (dropless) or the factor whose drops are shown.
        experts, weights: ``[L][T][k]`` chosen experts (best first) and the weights used.
        probs: ``[L][T][E]`` router probabilities; entropy, margin: ``[L][T]``.
        kept: ``[L][T][k]`` False where the capacity factor would drop the assignment.
        message: shown instead of tokens (empty text); note: cut text or unknown words;
        error: a problem with the input, shown in the widget; seconds: time of the last update.
    """

    text: str = ""
    words: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    unknown: list = field(default_factory=list)
    layer: object = 0
    num_layers: int = 0
    capacity_factor: float | None = None
    experts: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    probs: list = field(default_factory=list)
    entropy: list = field(default_factory=list)
    margin: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    cut: int = 0
    message: str | None = None
    note: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def shown_layers(self) -> list[int]:
        """The layers drawn: the selected one, or every layer for ``"all"``."""
        return list(range(self.num_layers)) if self.layer == ALL else [self.layer]

    def first_choice(self, layer: int) -> list[int]:
        """``[T]`` first-choice expert of each shown token at ``layer``."""
        return [row[0] for row in self.experts[layer]]

    def dropped(self, layer: int) -> list[int]:
        """Tokens that would lose every expert at ``layer`` under the capacity factor."""
        return [t for t, row in enumerate(self.kept[layer]) if not any(row)] if self.kept else []


class RoutingDashboard(widgets.VBox):
    """Controls: ``text_box``, ``example``, ``validation_index``, ``layer_buttons``, ``capacity``, ``view_buttons``.
    Displays: ``message``, ``note``, ``tokens``, ``summary``, ``view``. State: ``state``.
    """

    def __init__(self, model, tokenizer, corpus=None, text: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.num_layers = len(moe_layers(model))
        if self.num_layers == 0:
            raise ValueError("the model has no MoE layers: the dashboard shows routing, so it needs an MoE model")
        self.num_experts = moe_layers(model)[0].num_experts
        self.corpus = validation_corpus() if corpus is None else corpus
        self.examples = domain_examples(self.corpus)
        self._table: RoutingTable | None = None
        self._shares = None
        self._views: dict = {}   # (view, layers) -> HTML of the views that do not depend on the text
        first_text = self.examples[DOMAINS[0]] if text is None else text

        self.text_box = widgets.Textarea(value=first_text, continuous_update=True,
                                         placeholder="type a text, e.g. the bank reported that revenue rose .",
                                         layout=widgets.Layout(width="100%", height="70px"))
        self.text_box.add_class("moe-dashboard-text")
        self.example = widgets.Dropdown(
            options=[("(your own text)", "")] + [(f"{d} example", d) for d in DOMAINS]
            + [("validation document #", "validation")],
            value=DOMAINS[0] if text is None else "", description="example")
        self.validation_index = widgets.BoundedIntText(value=0, min=0, max=len(self.corpus.validation) - 1,
                                                       description="#", layout=widgets.Layout(width="140px"))
        layer_options = [(f"layer {i}", i) for i in range(self.num_layers)] + [("all layers", ALL)]
        self.layer_buttons = widgets.ToggleButtons(options=layer_options, value=0, description="layer")
        self.layer_buttons.add_class("moe-dashboard-layer")
        self.capacity = widgets.Dropdown(
            options=[("dropless" if f == 0 else f"{f:g}", f) for f in CAPACITY_CHOICES], value=0.0,
            description="capacity factor", style={"description_width": "initial"})
        self.view_buttons = widgets.ToggleButtons(options=[(VIEW_LABELS[v], v) for v in VIEWS],
                                                  value=VIEWS[0], description="view")
        self.message, self.note, self.summary = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.tokens, self.legend, self.view = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.tokens.add_class("moe-dashboard-tokens")
        self.legend.value = self._legend_html()
        super().__init__([
            widgets.HTML("<b>Routing dashboard</b>: each token is coloured by the expert it is routed to "
                         "(underline: second choice); hover a token for every expert's probability."),
            self.text_box,
            widgets.HBox([self.example, self.validation_index, self.capacity]),
            self.layer_buttons, self.legend, self.message, self.note, self.tokens, self.summary,
            widgets.HTML("<b>Over the validation set</b>"), self.view_buttons, self.view,
        ])
        self.add_class("moe-dashboard")
        self.state = DashboardState(num_layers=self.num_layers)
        self._choosing_example = False
        self.text_box.observe(self._on_text, names="value")
        self.example.observe(self._on_example, names="value")
        self.validation_index.observe(self._on_example, names="value")
        for control in (self.layer_buttons, self.capacity, self.view_buttons):
            control.observe(lambda _change: self.update(), names="value")
        self.update()

    # --- events -------------------------------------------------------------------------
    def _on_text(self, _change):
        if not self._choosing_example:
            self.example.value = "" if self.text_box.value not in self._example_texts() else self.example.value
        self.update()

    def _on_example(self, _change):
        choice = self.example.value
        if choice == "":
            return
        text = (self.corpus.validation[self.validation_index.value].text if choice == "validation"
                else self.examples[choice])
        self._choosing_example = True
        try:
            if self.text_box.value == text:
                self.update()
            self.text_box.value = text
        finally:
            self._choosing_example = False

    def _example_texts(self) -> set:
        chosen = self.corpus.validation[self.validation_index.value].text
        return set(self.examples.values()) | {chosen}

    # --- computation --------------------------------------------------------------------
    def update(self) -> DashboardState:
        """Route the text, recompute what is shown and redraw. Never raises: problems become messages."""
        start = time.perf_counter()
        try:
            self.state = self.compute(self.text_box.value, self.layer_buttons.value, self.capacity.value or None)
        except Exception as error:  # noqa: BLE001 - the learner sees a message, never a traceback
            self.state = DashboardState(text=str(self.text_box.value), num_layers=self.num_layers,
                                        layer=self.layer_buttons.value,
                                        error=f"Could not route this text: {type(error).__name__}: {error}")
        self._draw()
        self.state.seconds = time.perf_counter() - start
        return self.state

    def compute(self, text, layer, capacity_factor) -> DashboardState:
        """The state for ``text`` at ``layer`` (index or ``"all"``) under ``capacity_factor`` (None: dropless)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        layer = check_layer(layer, self.num_layers)
        capacity_factor = check_capacity_factor(capacity_factor)
        state = DashboardState(text=text, layer=layer, num_layers=self.num_layers,
                               capacity_factor=capacity_factor)
        routing = route_text(self.model, self.tokenizer, text)
        if not routing.words:
            state.message = EMPTY_MESSAGE
            return state
        state.words, state.unknown, state.cut = routing.words, routing.unknown, routing.cut
        state.tokens = [UNK if unk else w for w, unk in zip(routing.words, routing.unknown)]
        state.experts, state.weights = routing.experts.tolist(), routing.weights.tolist()
        state.probs = routing.probs.tolist()
        state.entropy = routing_entropy(routing.probs).tolist()
        state.margin = routing_margin(routing.probs).tolist() if routing.num_experts > 1 else []
        state.kept = [routing.kept(i, capacity_factor).tolist() for i in range(routing.num_layers)]
        notes = []
        if routing.cut:
            room = self.model.config.max_seq_len - 1
            notes.append(f"The text is longer than the model's context: showing its first {room} words; "
                         f"the last {routing.cut} word(s) were cut.")
        unknown = sorted({w for w, unk in zip(routing.words, routing.unknown) if unk})
        if unknown:
            notes.append(f"{len(unknown)} word(s) not in the vocabulary are routed as {UNK} (dashed outline): "
                         + ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else ""))
        state.note = " ".join(notes) or None
        return state

    def routing_table(self) -> RoutingTable:
        """The validation set's routing (computed once, on first use)."""
        if self._table is None:
            self._table = routing_table(self.model, self.tokenizer, self.corpus)
            self._shares = domain_expert_shares(self._table)
        return self._table

    # --- drawing ------------------------------------------------------------------------
    def _draw(self):
        s = self.state
        self.message.value = (message_html(s.error, error=True) if s.error
                              else message_html(s.message) if s.message else "")
        self.note.value = message_html(s.note) if s.note else ""
        rows = [] if (s.error or s.message) else [self._row_html(layer) for layer in s.shown_layers]
        self.tokens.value = (f'<div class="moe-tokens" data-count="{len(s.words)}" '
                             f'data-layers="{" ".join(map(str, s.shown_layers)) if rows else ""}">'
                             + "".join(rows) + "</div>")
        self.summary.value = self._summary_html()
        self.view.value = self._view_html()

    def _row_html(self, layer: int) -> str:
        s = self.state
        spans = []
        for t, word in enumerate(s.words):
            experts, kept = s.experts[layer][t], s.kept[layer][t]
            first = experts[0]
            second = experts[1] if len(experts) > 1 else None
            lost = not any(kept)
            style = [f"background:{expert_colour(first, 0.45 if not lost else 0.12)}",
                     "padding:1px 3px", "margin:2px", "border-radius:3px", "display:inline-block",
                     "line-height:1.6"]
            if second is not None:
                style.append(f"border-bottom:4px solid {expert_colour(second, 1 if kept[1] else 0.3)}")
            if s.unknown[t]:
                style.append("outline:2px dashed #c92a2a")
            if lost:
                style.append("text-decoration:line-through")
            label = html.escape(word) + (f'<sup style="color:#c92a2a">{html.escape(UNK)}</sup>'
                                         if s.unknown[t] else "")
            attrs = {"class": "moe-token", "data-token": s.tokens[t], "data-word": word,
                     "data-layer": layer, "data-expert": first, "data-second": "" if second is None else second,
                     "data-unk": str(s.unknown[t]).lower(), "data-dropped": str(lost).lower(),
                     "title": self._tooltip(layer, t), "style": ";".join(style)}
            attr_text = " ".join(f'{k}="{html.escape(str(v), quote=True)}"' for k, v in attrs.items())
            spans.append(f"<span {attr_text}>{label}</span>")
        label = (f'<span style="display:inline-block;width:60px;color:#495057;font-size:12px">'
                 f"layer {layer}</span>")
        return f'<div class="moe-row" data-layer="{layer}" style="margin:4px 0">{label}{"".join(spans)}</div>'

    def _tooltip(self, layer: int, t: int) -> str:
        s = self.state
        probs = " · ".join(f"E{e} {p:.2f}" for e, p in enumerate(s.probs[layer][t]))
        used = ", ".join(f"E{e} {w:.2f}" + ("" if k else " (dropped)")
                         for e, w, k in zip(s.experts[layer][t], s.weights[layer][t], s.kept[layer][t]))
        lines = [f"{s.words[t]!r} at layer {layer}" + (f" (not in the vocabulary: routed as {UNK})"
                                                        if s.unknown[t] else ""),
                 f"router probabilities: {probs}", f"weights used: {used}",
                 f"entropy {s.entropy[layer][t]:.2f} nats"
                 + (f", margin {s.margin[layer][t]:.2f}" if s.margin else "")]
        return "\n".join(lines)

    def _legend_html(self) -> str:
        chips = "".join(f'<span style="background:{expert_colour(e, 0.45)};padding:1px 6px;margin-right:6px;'
                        f'border-radius:3px">expert {e}</span>' for e in range(self.num_experts))
        return (f'<div style="font-size:12px">{chips} <span style="color:#495057">underline: second choice; '
                f"dashed outline: {html.escape(UNK)}; struck through: dropped by the capacity factor</span></div>")

    def _summary_html(self) -> str:
        s = self.state
        if s.error or s.message or s.capacity_factor is None:
            return ""
        top_k = len(s.experts[0][0])
        capacity = expert_capacity(len(s.words), self.num_experts, top_k, s.capacity_factor)
        parts = []
        for layer in s.shown_layers:
            dropped_slots = sum(not k for row in s.kept[layer] for k in row)
            lost = s.dropped(layer)
            parts.append(f'<div data-layer="{layer}" data-dropped-assignments="{dropped_slots}" '
                         f'data-dropped-tokens="{len(lost)}">layer {layer}: capacity '
                         f"ceil({s.capacity_factor:g} × {len(s.words)} × {top_k} / {self.num_experts}) = {capacity} "
                         f"per expert; {dropped_slots} of {len(s.words) * top_k} assignments dropped, "
                         f"{len(lost)} token(s) lose every expert (struck through)</div>")
        return ('<div style="font-size:12px;color:#495057">If this text were one batch (routing as recorded, '
                "each layer on its own):" + "".join(parts) + "</div>")

    # --- views over the validation set -------------------------------------------------
    def _view_html(self) -> str:
        view = self.view_buttons.value
        layers = list(range(self.num_layers)) if self.layer_buttons.value == ALL else [self.layer_buttons.value]
        if view == "uncertainty":   # the only view that lists tokens of the typed text
            return self._uncertainty_html(layers)
        key = (view, tuple(layers))
        if key not in self._views:
            self._views[key] = self._validation_view_html(view, layers)
        return self._views[key]

    def _validation_view_html(self, view: str, layers: list[int]) -> str:
        if view == "domains":
            return "".join(self._heatmap_html(layer) for layer in layers)
        if view == "experts":
            return "".join(self._cards_html(layer) for layer in layers)
        return self._cross_layer_html(layers)

    def _heatmap_html(self, layer: int) -> str:
        self.routing_table()
        shares = self._shares[layer]
        top_k = self._table.top_k
        header = "".join(f"<th>E{e}</th>" for e in range(self.num_experts))
        rows = []
        for d, domain in enumerate(DOMAINS):
            cells = "".join(
                f'<td data-domain="{domain}" data-expert="{e}" data-share="{float(v):.4f}" '
                f'style="background:rgba(33,37,41,{min(1.0, float(v) * top_k) * 0.85:.2f});'
                f'color:{"white" if float(v) * top_k > 0.5 else "black"};text-align:center;padding:2px 8px">'
                f"{float(v):.2f}</td>" for e, v in enumerate(shares[d]))
            rows.append(f"<tr><th style='text-align:right'>{domain}</th>{cells}</tr>")
        return (f'<div class="moe-heatmap" data-layer="{layer}" style="display:inline-block;margin:4px 16px 4px 0">'
                f"<div>layer {layer}: share of each domain's assignments (max 1/k = {1 / top_k:.2f})</div>"
                f"<table><tr><th></th>{header}</tr>{''.join(rows)}</table></div>")

    def _cards_html(self, layer: int) -> str:
        table = self.routing_table()
        cards = []
        for e in range(self.num_experts):
            card = expert_card(table, layer, e, n=6)
            words = ", ".join(f"{html.escape(w)} ({c})" for w, c in card.top_words) or "(none)"
            domains = ", ".join(f"{d} {v:.0%}" for d, v in sorted(card.domain_shares.items(),
                                                                  key=lambda item: -item[1]))
            cards.append(f'<div class="moe-card" data-layer="{layer}" data-expert="{e}" '
                         f'data-traffic="{card.traffic:.4f}" style="display:inline-block;vertical-align:top;'
                         f"width:220px;margin:4px;padding:6px;border-left:6px solid {expert_colour(e)};"
                         f'background:#f8f9fa;font-size:12px"><b>layer {layer}, expert {e}</b><br>'
                         f"first choice of {card.traffic:.0%} of tokens<br>top words: {words}<br>"
                         f"domains: {domains}</div>")
        return f"<div>{''.join(cards)}</div>"

    def _cross_layer_html(self, layers: list[int]) -> str:
        if self.num_layers < 2:
            return message_html(f"The cross-layer view needs two MoE layers; this model has {self.num_layers}.")
        table = self.routing_table()
        pairs = sorted({(max(1, layer) - 1, max(1, layer)) for layer in layers})
        parts = []
        for a, b in pairs:
            counts = cooccurrence(table.first_choice(a), table.first_choice(b), self.num_experts)
            rows_total = counts.sum(dim=1, keepdim=True).clamp_min(1)
            conditional = counts.double() / rows_total
            header = "".join(f"<th>E{e}</th>" for e in range(self.num_experts))
            rows = []
            for i in range(self.num_experts):
                cells = "".join(
                    f'<td data-from="{i}" data-to="{j}" data-count="{int(counts[i, j])}" '
                    f'style="background:rgba(33,37,41,{float(conditional[i, j]) * 0.85:.2f});'
                    f'color:{"white" if conditional[i, j] > 0.5 else "black"};text-align:center;padding:2px 8px">'
                    f"{float(conditional[i, j]):.2f}</td>" for j in range(self.num_experts))
                rows.append(f"<tr><th>E{i}</th>{cells}</tr>")
            info = mutual_information(counts)
            parts.append(f'<div class="moe-cooccurrence" data-from-layer="{a}" data-to-layer="{b}" '
                         f'data-mutual-information="{info:.4f}" style="display:inline-block;margin:4px 16px 4px 0">'
                         f"<div>rows: first choice at layer {a}; columns: at layer {b}; "
                         f"cells: P(column | row); mutual information {info:.2f} bits</div>"
                         f"<table><tr><th></th>{header}</tr>{''.join(rows)}</table></div>")
        return "".join(parts)

    def _uncertainty_html(self, layers: list[int]) -> str:
        table = self.routing_table()
        words = table.words()
        parts = []
        for layer in layers:
            entropy = routing_entropy(table.probs[layer])
            totals, counts = {}, {}
            for w, h in zip(words, entropy.tolist()):
                totals[w] = totals.get(w, 0.0) + h
                counts[w] = counts.get(w, 0) + 1
            mean = {w: totals[w] / counts[w] for w in totals if counts[w] >= 5}
            unsure = sorted(mean, key=lambda w: -mean[w])[:6]
            sure = sorted(mean, key=lambda w: mean[w])[:6]
            line = f"layer {layer}: mean entropy {float(entropy.mean()):.2f} nats (uniform: " \
                   f"{float(torch.log(torch.tensor(float(self.num_experts)))):.2f}); most unsure words: " \
                   + ", ".join(f"{html.escape(w)} {mean[w]:.2f}" for w in unsure) \
                   + "; most certain: " + ", ".join(f"{html.escape(w)} {mean[w]:.2f}" for w in sure)
            s = self.state
            if s.words and not s.error and s.margin:
                order = sorted(range(len(s.words)), key=lambda t: s.margin[layer][t])[:5]
                line += "<br>in your text, smallest margins: " + ", ".join(
                    f"{html.escape(s.words[t])} {s.margin[layer][t]:.2f}" for t in order)
            parts.append(f'<div class="moe-uncertainty" data-layer="{layer}" style="font-size:12px;margin:4px 0">'
                         f"{line}</div>")
        return "".join(parts)


def routing_dashboard(checkpoint=None, model=None, tokenizer=None, cache_dir=None, progress: bool = True,
                      text: str | None = None) -> RoutingDashboard:
    """Build the routing dashboard (an ``ipywidgets.VBox``); display it as a notebook cell's last line.

    The model: ``model`` and ``tokenizer`` if given, else the checkpoint at ``checkpoint`` (any file
    ``save_checkpoint`` wrote), else the default model (trained on the spot the first time, a few
    seconds, then cached under ``cache_dir`` or ``~/.cache/moe-teach``). ``text``: the first text
    shown (default: the finance example).
    """
    if model is not None or tokenizer is not None:
        if model is None or tokenizer is None:
            raise ValueError("pass model and tokenizer together (or neither, to use checkpoint or the default)")
        if checkpoint is not None:
            raise ValueError("pass either checkpoint or model and tokenizer, not both")
    else:
        model, tokenizer = load_model(checkpoint, cache_dir, progress)
    return RoutingDashboard(model, tokenizer, text=text)


def time_update(dashboard: RoutingDashboard, text: str, repeats: int = 20):
    """Median time of one update after typing: the text box alternates between ``text`` and ``text`` + one word.

    Returns a :class:`~moe_teach.lessons.timing.Timing` (a benchmark, not a test: it prints nothing).
    """
    texts = [text, text + " the"]
    flip = iter(range(10**9))

    def type_once():
        dashboard.text_box.value = texts[next(flip) % 2]

    return time_callable(type_once, repeats=repeats, warmup=3)
