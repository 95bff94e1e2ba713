"""Instant feedback for the exercise notebooks: ``check("task name", your_function)``.

Each task has a checker that runs the learner's function on several seeded inputs (edge
cases included: one token, ``k`` equal to the number of experts, ties) and compares it
with the package's own implementation. The first failing property is reported in words,
with a hint that points the way without giving the solution. Checks are ordered so that a
common mistake gets its own hint: the shape first, then "does it sum to 1?", then "the
right dimension?", then the values, then the gradients.

``check`` shows the verdict (green tick in Jupyter, plain or coloured text in a terminal),
records it in a registry that ``moe-teach check`` reads, and returns a :class:`CheckResult`
with ``status`` one of ``"done"``, ``"failed"``, ``"not done yet"``. A function that still
raises ``NotImplementedError`` is "not done yet", so exercise notebooks run top to bottom.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import sys
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..dispatch import dispatch_grouped
from ..experts import Expert, expert_parameter_count, make_experts
from ..losses import router_z_loss, switch_load_balancing_loss
from ..routing import apply_capacity, expert_capacity, topk_softmax
from ..transformer import BlockConfig, TransformerBlock, moe_layers

DONE, FAILED, NOT_DONE = "done", "failed", "not done yet"
RESULTS_MARKER = "MOE_TEACH_RESULTS "  # prefix of the JSON line the grader parses


@dataclass
class CheckResult:
    """The verdict on one task. ``key`` names the diagnosed mistake (e.g. ``"not_renormalised"``)."""

    task: str
    status: str
    message: str
    hint: str = ""
    key: str = ""

    @property
    def passed(self) -> bool:
        return self.status == DONE

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self, color: bool = False) -> str:
        symbol, ansi = {DONE: ("✅", "32"), FAILED: ("❌", "31"), NOT_DONE: ("⏳", "33")}[self.status]
        head = f"{symbol} {self.task}: {self.message}"
        if color:
            head = f"\033[{ansi}m{head}\033[0m"
        return head + (f"\n   Hint: {self.hint}" if self.hint else "")

    def html(self) -> str:
        colour = {DONE: "#2b8a3e", FAILED: "#c92a2a", NOT_DONE: "#e67700"}[self.status]
        symbol = {DONE: "✅", FAILED: "❌", NOT_DONE: "⏳"}[self.status]
        body = (f'<div style="color:{colour};font-weight:bold">{symbol} {html.escape(self.task)}: '
                f"{html.escape(self.message)}</div>")
        if self.hint:
            body += f"<div><b>Hint:</b> {html.escape(self.hint)}</div>"
        return f'<div style="margin:4px 0">{body}</div>'

    def _ipython_display_(self):
        # check() has already shown this result: don't show it again when it is the same cell's value
        if getattr(self, "_shown_in_cell", None) == _execution_count():
            return
        _show(self)


class Mistake(Exception):
    """Raised by a checker: ``key`` identifies the mistake, ``message`` says what is wrong."""

    def __init__(self, key: str, message: str, hint: str = ""):
        super().__init__(message)
        self.key, self.message, self.hint = key, message, hint


class _NotDone(Exception):
    pass


# ----------------------------------------------------------------------------- registry

_RESULTS: dict[str, CheckResult] = {}


def results() -> list[CheckResult]:
    """Every result recorded in this Python session, in the order the tasks were checked."""
    return list(_RESULTS.values())


def reset_results() -> None:
    _RESULTS.clear()


def results_json_line() -> str:
    """One line the grader parses: the marker followed by the results as JSON."""
    return RESULTS_MARKER + json.dumps([r.as_dict() for r in results()], ensure_ascii=True)


# ----------------------------------------------------------------------------- showing


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _execution_count() -> int | None:
    """The running cell's number in IPython, else None."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else shell.execution_count


def _show(result: CheckResult) -> None:
    if _in_notebook():
        from IPython.display import display

        display({"text/html": result.html(), "text/plain": result.text()}, raw=True)
    else:
        print(result.text(color=sys.stdout.isatty()))


def summary() -> None:
    """Show one line per task checked so far in this session."""
    done = sum(r.passed for r in results())
    lines = [f"{done} of {len(results())} tasks done."] + [r.text().split("\n")[0] for r in results()]
    if _in_notebook():
        from IPython.display import display

        html_lines = "".join(f"<li>{html.escape(line)}</li>" for line in lines[1:])
        display({"text/html": f"<b>{html.escape(lines[0])}</b><ul>{html_lines}</ul>",
                 "text/plain": "\n".join(lines)}, raw=True)
    else:
        print("\n".join(lines))


# ----------------------------------------------------------------------------- helpers for checkers


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch inside the block without disturbing the learner's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _call(fn, *args):
    """Call the learner's function; turn its exceptions into verdicts."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise _NotDone from None
    except Mistake:
        raise
    except Exception as error:  # noqa: BLE001 - any learner error becomes a readable failure
        text = str(error).strip().split("\n")[0][:300]
        hint = "Read the error: it usually names the tensor whose shape or type is off. "
        if isinstance(error, AttributeError):
            hint = ("Read the error: it names the attribute that an object lacks; print the objects you "
                    "loop over or index to see what they are.")
        elif "cannot be multiplied" in text:
            hint += ("nn.Linear stores its weight as [out_features, in_features], "
                     "so a layer computes x @ weight.T + bias.")
        else:
            hint += "Try your function on a small input and print the shapes of the intermediate tensors."
        raise Mistake("raised", f"your function raised {type(error).__name__}: {text}", hint) from None


def _expect_tensor(value, shape, hint: str, what: str = "your output"):
    if not isinstance(value, torch.Tensor):
        raise Mistake("not_a_tensor", f"{what} should be a torch.Tensor of shape {list(shape)}, "
                      f"got a {type(value).__name__}",
                      "Return the tensor itself, not a list, a number or a tuple.")
    if tuple(value.shape) != tuple(shape):
        raise Mistake("wrong_shape",
                      f"wrong shape for {what}: expected {list(shape)}, got {list(value.shape)}", hint)
    return value


def _expect_pair(value, what: str):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise Mistake("return_format",
                      f"your function should return a pair {what}, got a {type(value).__name__}",
                      f"Return the two tensors together as a tuple {what}, in this order.")
    return value


def _expect_scalar(value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise Mistake("not_a_tensor",
                      f"the loss should be a scalar torch.Tensor, got a {type(value).__name__}",
                      "Keep the loss a tensor (no .item() or float()) so it can be added to the training "
                      "loss and backpropagated.")
    if value.numel() != 1:
        raise Mistake("not_scalar", f"the loss should be a single number, got shape {list(value.shape)}",
                      "Reduce over tokens and experts to one number (sum or mean, as the spec says).")
    return value.reshape(())


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _diagnose(out, candidates: dict, messages: dict, generic: tuple, keys: dict | None = None):
    """Raise the mistake whose candidate output matches ``out``, else the generic one.

    ``candidates`` and ``messages`` share their labels; ``keys`` maps a label to the mistake key it
    reports when several variants (each with its own message) share one key.
    """
    keys = keys or {}
    for label, value in candidates.items():
        values = value if isinstance(value, list) else [value]
        if any(_close(out, v) for v in values):
            raise Mistake(keys.get(label, label), *messages[label])
    key, message, hint = generic
    raise Mistake(key, message, hint)


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(a).detach().double() - torch.as_tensor(b).detach().double()).abs().max())


def _has_grad(tensor_or_module) -> bool:
    params = tensor_or_module.parameters() if isinstance(tensor_or_module, nn.Module) else [tensor_or_module]
    return any(p.grad is not None and bool((p.grad != 0).any()) for p in params)


def _backward(out, hint_what: str):
    if not out.requires_grad:
        raise Mistake("no_gradient",
                      f"your output is not connected to {hint_what}: no gradient can flow back",
                      "Don't use torch.no_grad(), .detach(), .item() or .tolist() on the way to the output.")
    with _seeded(99):
        (out * torch.randn_like(out)).sum().backward()


def _clone(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()


# ----------------------------------------------------------------------------- 01 experts


def _expert_weights(expert: Expert) -> list[torch.Tensor]:
    layers = [expert.up, expert.down] if expert.gate is None else [expert.gate, expert.up, expert.down]
    weights = []
    for layer in layers:
        weights.append(_clone(layer.weight))
        if layer.bias is not None:
            weights.append(_clone(layer.bias))
    return weights


def _check_relu_expert(fn):
    messages = {
        "no_activation": ("your output is what the expert gives without the ReLU, so the expert is linear",
                          "Apply torch.relu to the hidden layer, between the up and the down projection."),
        "activation_on_output": ("your output is never negative: the ReLU was applied to the output",
                                 "The ReLU belongs on the hidden layer only; the down projection's output "
                                 "can be negative."),
        "wrong_activation": ("your output matches an expert with another activation (GELU, SiLU, sigmoid or "
                             "tanh) instead of ReLU",
                             "This task's expert uses ReLU, max(z, 0), which torch.relu computes."),
        "bias_after_activation": ("up_bias was added after the ReLU instead of before it",
                                  "A layer adds its bias to its own output: up_bias belongs to the up "
                                  "projection, inside the ReLU."),
        "missing_both_biases": ("your output matches an expert without its two biases",
                                "Each projection adds its own bias: up_bias after the up projection, "
                                "down_bias after the down projection."),
        "missing_up_bias": ("your output matches an expert without up_bias (down_bias is there)",
                            "up_bias belongs to the up projection: add it before the ReLU."),
        "missing_down_bias": ("your output matches an expert without down_bias (up_bias is there)",
                              "down_bias belongs to the down projection: add it to the final output."),
    }
    keys = dict.fromkeys(["missing_both_biases", "missing_up_bias", "missing_down_bias"], "missing_bias")
    functional = torch.nn.functional
    for seed, (tokens, dim, hidden, out_dim) in enumerate([(5, 3, 8, 2), (1, 4, 6, 4), (7, 2, 5, 3)]):
        with _seeded(seed):
            expert, x = Expert(dim, hidden, out_dim, "relu"), torch.randn(tokens, dim)
        up_w, up_b, down_w, down_b = _expert_weights(expert)
        with torch.no_grad():
            expected = expert(x)
        out = _call(fn, x.clone(), up_w.clone(), up_b.clone(), down_w.clone(), down_b.clone())
        _expect_tensor(out, expected.shape,
                       "The output is [tokens, output_dim]; a layer computes x @ weight.T + bias "
                       "with weight stored as [out_features, in_features].")
        if _close(out, expected):
            continue
        up, up_no_bias = x @ up_w.T + up_b, x @ up_w.T

        def down(hidden, bias=True):
            return hidden @ down_w.T + (down_b if bias else 0)

        others = [functional.gelu, lambda z: functional.gelu(z, approximate="tanh"), functional.silu,
                  torch.sigmoid, torch.tanh]
        candidates = {
            "no_activation": down(up),
            "activation_on_output": [torch.relu(down(torch.relu(up))), torch.relu(down(up))],
            "wrong_activation": [down(act(up)) for act in others],
            "bias_after_activation": down(torch.relu(up_no_bias) + up_b),
            "missing_both_biases": down(torch.relu(up_no_bias), bias=False),
            "missing_up_bias": down(torch.relu(up_no_bias)),
            "missing_down_bias": down(torch.relu(up), bias=False),
        }
        _diagnose(out, candidates, messages, (
            "wrong_values", (f"the shape is right but the values differ from the reference expert "
                             f"(largest difference {_max_diff(out, expected):.3g})"),
            "Check the three steps of down(relu(up(x))) one at a time on a single token: which weight "
            "each projection uses, where each bias is added, and that the ReLU sits in between."), keys)


def _check_swiglu_expert(fn):
    messages = {
        "swapped_gate_up": ("you applied SiLU to the up projection instead of the gate projection",
                            "The activation goes on the gate branch; the up branch stays linear."),
        "wrong_activation": ("the gate uses the wrong activation (ReLU, sigmoid or GELU instead of SiLU)",
                             "SiLU(z) = z * sigmoid(z); torch.nn.functional.silu computes it."),
        "missing_up": ("your output has no up-projection branch: the gate is not multiplied by up(x)",
                       "SwiGLU has two branches, the activated gate and the linear up projection, "
                       "and combines them before the down projection."),
        "added_branches": ("you added the two branches; SwiGLU multiplies them",
                           "The gate branch scales the up branch element by element: that is what makes "
                           "it a gate."),
        "silu_of_product": ("the SiLU was applied after combining the branches",
                            "Only the gate branch goes through SiLU, before it meets the up branch."),
        "silu_on_both": ("both branches went through SiLU",
                         "Only the gate branch is activated; the up branch stays linear."),
    }
    silu = torch.nn.functional.silu
    for seed, (tokens, dim, hidden, out_dim) in enumerate([(5, 3, 8, 2), (1, 4, 6, 4), (6, 4, 3, 5)]):
        with _seeded(10 + seed):
            expert, x = Expert(dim, hidden, out_dim, "swiglu", bias=False), torch.randn(tokens, dim)
        gate_w, up_w, down_w = _expert_weights(expert)
        with torch.no_grad():
            expected = expert(x)
        out = _call(fn, x.clone(), gate_w.clone(), up_w.clone(), down_w.clone())
        _expect_tensor(out, expected.shape,
                       "The output is [tokens, output_dim]; each projection is x @ weight.T "
                       "with weight stored as [out_features, in_features].")
        if _close(out, expected):
            continue
        gate, up = x @ gate_w.T, x @ up_w.T
        candidates = {
            "swapped_gate_up": (silu(up) * gate) @ down_w.T,
            "wrong_activation": [(act(gate) * up) @ down_w.T
                                 for act in (torch.relu, torch.sigmoid, torch.nn.functional.gelu)],
            "missing_up": [silu(gate) @ down_w.T, silu(up) @ down_w.T],
            "added_branches": [(silu(gate) + up) @ down_w.T, silu(gate + up) @ down_w.T],
            "silu_of_product": silu(gate * up) @ down_w.T,
            "silu_on_both": (silu(gate) * silu(up)) @ down_w.T,
        }
        _diagnose(out, candidates, messages, (
            "wrong_values", (f"the shape is right but the values differ from the reference SwiGLU expert "
                             f"(largest difference {_max_diff(out, expected):.3g})"),
            "Check the steps one at a time on a single token: which weight each projection uses, which "
            "branch gets the SiLU, how the two branches are combined (element-wise), then the down "
            "projection."))


def _parameter_pieces(dim: int, hidden: int, out_dim: int, activation: str, bias: bool) -> dict[str, int]:
    """The expert's parameter tensors by name -> size (what a correct count adds up)."""
    pieces = {"gate_weight": dim * hidden, "gate_bias": hidden} if activation == "swiglu" else {}
    pieces.update(up_weight=dim * hidden, up_bias=hidden, down_weight=hidden * out_dim, down_bias=out_dim)
    return pieces if bias else {name: n for name, n in pieces.items() if not name.endswith("bias")}


_PIECE_WORDS = {
    "up_bias": "a hidden_dim bias vector", "gate_bias": "a hidden_dim bias vector",
    "down_bias": "an output_dim bias vector", "up_weight": "an input_dim x hidden_dim weight matrix",
    "gate_weight": "an input_dim x hidden_dim weight matrix",
    "down_weight": "a hidden_dim x output_dim weight matrix",
}


def _off_by_words(difference: int, pieces: dict[str, int]) -> str:
    """Name a parameter tensor (or a weight + bias pair) whose size equals ``difference``, if any."""
    size = abs(difference)
    same_size = list(dict.fromkeys(_PIECE_WORDS[name] for name, n in pieces.items() if n == size))
    if same_size:
        return f"{' or '.join(same_size)}'s worth?"
    for layer in ("up", "gate", "down"):
        if pieces.get(f"{layer}_weight", 0) + pieces.get(f"{layer}_bias", 0) == size:
            return f"a whole {layer} projection's worth (weight and bias)?"
    return ("list the expert's weight matrices and bias vectors with their shapes and add up their sizes; "
            "compare with sum(p.numel() for p in Expert(...).parameters()).")


def _check_count_expert_parameters(fn):
    messages = {
        "forgot_bias": ("your count leaves out the biases",
                        "Each linear layer with a bias has one bias value per output feature."),
        "ignored_bias_flag": ("your count includes biases although bias=False",
                              "bias=False means no linear layer has a bias vector."),
        "swiglu_gate": ("your count for SwiGLU is off: it has three weight matrices (gate, up, down)",
                        "A SwiGLU expert has a gate and an up projection, both input_dim -> hidden_dim."),
        "gate_without_swiglu": ("your count includes a gate projection for a ReLU or GELU expert",
                                "Only SwiGLU has the extra gate projection; ReLU and GELU experts have two "
                                "layers."),
        "ignored_output_dim": ("your count does not use output_dim for the down projection",
                               "The down projection maps hidden_dim -> output_dim (plus output_dim biases)."),
        "one_layer_only": ("your count covers only some of the expert's linear layers",
                           "An expert has an up projection and a down projection (and a gate for SwiGLU); "
                           "add up every layer's weight and bias."),
    }
    cases = [(8, 32, 8, "relu", True), (8, 32, 4, "gelu", False), (6, 16, 6, "swiglu", True),
             (5, 7, 3, "swiglu", False), (3, 4, 2, "relu", True), (1, 1, 1, "gelu", True)]
    for dim, hidden, out_dim, activation, bias in cases:
        expected = expert_parameter_count(dim, hidden, out_dim, activation, bias)
        got = _call(fn, dim, hidden, out_dim, activation, bias)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, int):
            raise Mistake("not_int",
                          f"your function should return an int, got {got!r} ({type(got).__name__})",
                          "Return a plain Python int, the number of parameters (use // rather than /).")
        if got == expected:
            continue
        case = (f"input_dim={dim}, hidden_dim={hidden}, output_dim={out_dim}, "
                f"activation={activation!r}, bias={bias}")
        other = "swiglu" if activation != "swiglu" else "relu"
        pieces = _parameter_pieces(dim, hidden, out_dim, activation, bias)
        layers = {layer: pieces.get(f"{layer}_weight", 0) + pieces.get(f"{layer}_bias", 0)
                  for layer in ("gate", "up", "down")}
        candidates = {
            "forgot_bias": expert_parameter_count(dim, hidden, out_dim, activation, False),
            "ignored_bias_flag": expert_parameter_count(dim, hidden, out_dim, activation, True),
            "swiglu_gate": expert_parameter_count(dim, hidden, out_dim, other, bias)
            if activation == "swiglu" else [],
            "gate_without_swiglu": expert_parameter_count(dim, hidden, out_dim, other, bias)
            if activation != "swiglu" else [],
            "ignored_output_dim": [expert_parameter_count(dim, hidden, wrong, activation, with_bias)
                                   for wrong in (dim, hidden) if wrong != out_dim
                                   for with_bias in {bias, False}],
            "one_layer_only": [layers["up"], layers["down"], layers["gate"] + layers["up"]],
        }
        for key, value in candidates.items():
            if got in (value if isinstance(value, list) else [value]):
                message, hint = messages[key]
                raise Mistake(key, f"{message} (for {case} you gave {got})", hint)
        difference = got - expected
        raise Mistake("wrong_count",
                      f"for {case} you counted {got} parameters, "
                      f"{abs(difference)} too {'many' if difference > 0 else 'few'}",
                      f"Off by {abs(difference)} — {_off_by_words(difference, pieces)}")


# ----------------------------------------------------------------------------- 02 gating


def _mix(outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of expert outputs ``[T, E, O]`` with weights ``[T, E]`` -> ``[T, O]``."""
    return torch.einsum("te,teo->to", weights, outputs)


def _check_gate_probabilities(fn):
    for seed, (tokens, dim, num_experts) in enumerate([(6, 4, 3), (1, 5, 4), (8, 3, 5)]):
        with _seeded(20 + seed):
            x, router_weight = torch.randn(tokens, dim), torch.randn(num_experts, dim)
        logits = x @ router_weight.T
        expected = torch.softmax(logits, dim=-1)
        out = _call(fn, x.clone(), router_weight.clone())
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (num_experts, tokens):
            raise Mistake("transposed_output", f"your output has shape {list(out.shape)}: experts by tokens",
                          "Return [tokens, num_experts]: router_weight is [num_experts, input_dim] "
                          "(nn.Linear's layout), so it is transposed when it multiplies x.")
        _expect_tensor(out, expected.shape, "The output is [tokens, num_experts].")
        row_sums = out.detach().double().sum(dim=-1)
        if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-5):
            col_sums = out.detach().double().sum(dim=0)
            if tokens > 1 and torch.allclose(col_sums, torch.ones_like(col_sums), atol=1e-5):
                raise Mistake("softmax_wrong_dim",
                              "each expert's column sums to 1 instead of each token's row: "
                              "the softmax was taken over the wrong dimension (over tokens)",
                              "Take the softmax over the experts, the last dimension: dim=-1.")
            if _close(out, logits):
                raise Mistake("no_softmax", "your output is the raw router logits: they do not sum to 1",
                              "Turn the logits into probabilities with a softmax over the experts.")
            if _close(out.exp(), expected):
                raise Mistake("log_softmax", "your output is the log of the probabilities (log_softmax): "
                              "the values are negative and do not sum to 1",
                              "The gate returns probabilities themselves, not their logarithms.")
            raise Mistake("not_normalised", f"a token's probabilities should sum to 1, yours sum to "
                          f"{row_sums[0].item():.4g} for the first token",
                          "Use a softmax (not a sigmoid) over the experts dimension.")
        if not _close(out, expected):
            raise Mistake("wrong_values",
                          "your probabilities sum to 1 but differ from the softmax of the router logits "
                          f"(largest difference {_max_diff(out, expected):.3g})",
                          "Look at the logits before the softmax: the router weight is "
                          "[num_experts, input_dim], used as it is, with no scaling or sign change.")


def _check_soft_mixture(fn):
    messages = {
        "unweighted": ("your output treats all experts the same: the gate probabilities are not used",
                       "Multiply each expert's output by the token's probability for that expert, then sum."),
        "softmax_wrong_dim": ("the mixture weights were normalised over tokens instead of over experts",
                              "Take the softmax over the experts dimension (dim=-1)."),
        "no_softmax": ("your output weights the experts by raw logits, not probabilities",
                       "Apply a softmax over the experts to the logits first."),
        "hard_routing": ("your output uses only each token's best expert",
                         ("The soft mixture uses every expert, weighted by its probability; "
                         "keeping only the best one comes in lesson 03.")),
    }
    for seed, (tokens, dim, num_experts, out_dim) in enumerate([(6, 4, 3, 2), (1, 3, 4, 3), (5, 2, 2, 4)]):
        with _seeded(30 + seed):
            x, router_weight = torch.randn(tokens, dim), torch.randn(num_experts, dim)
            experts = make_experts(num_experts, dim, 8, out_dim)
        logits = x @ router_weight.T
        with torch.no_grad():
            outputs = torch.stack([expert(x) for expert in experts], dim=1)            # [T, E, O]
        probs = torch.softmax(logits, dim=-1)
        expected = _mix(outputs, probs)
        router_weight = router_weight.clone().requires_grad_(True)
        out = _call(fn, x.clone(), router_weight, experts)
        _expect_tensor(out, expected.shape, "The output is [tokens, output_dim]: one mixed vector per token.")
        if not _close(out, expected):
            candidates = {
                "unweighted": [outputs.mean(dim=1), outputs.sum(dim=1)],
                "softmax_wrong_dim": _mix(outputs, torch.softmax(logits, dim=0)),
                "no_softmax": _mix(outputs, logits),
                "hard_routing": [outputs[torch.arange(tokens), probs.argmax(-1)],
                                 _mix(outputs, probs * torch.nn.functional.one_hot(probs.argmax(-1),
                                                                                   num_experts))],
            }
            _diagnose(out, candidates, messages, (
                "wrong_values", (f"the shape is right but the values differ from the soft mixture "
                                f"(largest difference {_max_diff(out, expected):.3g})"),
                "Each token's output weights every expert's output by that token's probability for that "
                "expert; check that the probabilities line up with the experts and which dimension you "
                "sum over."))
        _backward(out, "the router weight")
        if not _has_grad(router_weight):
            raise Mistake("router_no_grad", "the router weight gets no gradient from your output",
                          "Keep the probabilities in the graph (no .detach() or torch.no_grad()).")


# ----------------------------------------------------------------------------- 03 top-k sparsity

_TOPK_MESSAGES = {
    "not_renormalised": (("the k weights of a token do not sum to 1: they are the softmax probabilities "
                         "before renormalisation"),
                         "After picking the top k probabilities, divide them by their sum."),
    "weights_are_logits": ("your weights are raw logits, not probabilities",
                           "Take the softmax over all experts first, then pick the top k."),
    "softmax_wrong_dim": ("the softmax was taken over the wrong dimension (over tokens instead of experts)",
                          "Use dim=-1: each token's probabilities over the experts sum to 1."),
    "picked_smallest": ("you picked the k *least* likely experts",
                        ("torch.topk returns the largest values by default; don't pass largest=False "
                        "or sort ascending.")),
}


def _topk_cases():
    cases = []
    for seed, (tokens, num_experts, k) in enumerate([(6, 5, 2), (1, 4, 3), (4, 4, 4), (5, 3, 1), (7, 8, 3)]):
        with _seeded(40 + seed):
            cases.append((2 * torch.randn(tokens, num_experts), k))
    # ties: experts 1 and 2 tie for the second place in the first row, all four tie in the last row;
    # either choice among tied experts is accepted
    cases.append((torch.tensor([[2.0, 1.0, 1.0, 0.0], [0.5, -1.0, 3.0, 0.5], [1.0, 1.0, 1.0, 1.0]]), 2))
    return cases


def _check_top_k_routing(fn):
    for case_number, (logits, k) in enumerate(_topk_cases()):
        tokens, num_experts = logits.shape
        probs = torch.softmax(logits, dim=-1)
        grad_logits = logits.clone().requires_grad_(True)
        weights, indices = _expect_pair(_call(fn, grad_logits, k), "(weights, indices)")
        shape_hint = "Both outputs are [tokens, k]: torch.topk(..., k, dim=-1) gives that."
        if isinstance(weights, torch.Tensor) and not weights.is_floating_point():
            raise Mistake("swapped_outputs",
                          "your first output holds integers: weights and indices are swapped",
                          "Return (weights, indices), in this order.")
        _expect_tensor(weights, (tokens, k), shape_hint, "the weights")
        _expect_tensor(indices, (tokens, k), shape_hint, "the indices")
        if indices.is_floating_point() or indices.min() < 0 or indices.max() >= num_experts:
            raise Mistake("bad_indices",
                          "the indices must be integer expert numbers from 0 to num_experts - 1",
                          "Use the indices torch.topk returns.")
        if any(len(set(row.tolist())) < k for row in indices):
            raise Mistake("duplicate_indices", "a token chose the same expert twice",
                          "Each token's k experts must be distinct; torch.topk guarantees it.")
        w = weights.detach().double()
        chosen_probs = probs.gather(1, indices).double()
        if not torch.allclose(w.sum(-1), torch.ones(tokens, dtype=torch.float64), atol=1e-5):
            if _close(w, chosen_probs) and k == 1:
                raise Mistake("not_renormalised",
                              "when k is 1 your weight is the raw softmax probability; this task renormalises "
                              "for every k, so a single kept weight becomes 1",
                              "Divide by the sum of the kept probabilities when k is 1 too (not renormalising "
                              "top-1 is the Switch rule of the next task).")
            if _close(w, chosen_probs):
                raise Mistake("not_renormalised", *_TOPK_MESSAGES["not_renormalised"])
            if _close(w, logits.gather(1, indices)):
                raise Mistake("weights_are_logits", *_TOPK_MESSAGES["weights_are_logits"])
            raise Mistake("not_normalised", "a token's k weights should sum to 1",
                          "Renormalise after picking: the k kept probabilities are rescaled to sum to 1.")
        chosen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, indices, True)
        worst_chosen = logits.masked_fill(~chosen, math.inf).min(-1).values
        best_unchosen = logits.masked_fill(chosen, -math.inf).max(-1).values
        if bool((worst_chosen < best_unchosen - 1e-6).any()):
            wrong_dim = torch.softmax(logits, dim=0).topk(k, dim=-1).indices
            wrong_chosen = torch.zeros_like(chosen).scatter(1, wrong_dim, True)
            if tokens > 1 and torch.equal(chosen, wrong_chosen):
                raise Mistake("softmax_wrong_dim", *_TOPK_MESSAGES["softmax_wrong_dim"])
            smallest = torch.zeros_like(chosen).scatter(1, logits.topk(k, dim=-1, largest=False).indices,
                                                        True)
            if torch.equal(chosen, smallest):
                raise Mistake("picked_smallest", *_TOPK_MESSAGES["picked_smallest"])
            raise Mistake("not_top_k", "some token did not get its k most likely experts",
                          "Each token keeps the experts with its k largest probabilities: check which "
                          "dimension you pick along and that you pick the largest.")
        expected = chosen_probs / chosen_probs.sum(-1, keepdim=True)
        if not _close(w, expected):
            if _close(w.sort(-1).values, expected.sort(-1).values):
                raise Mistake("weights_misaligned", "your weights are not in the same order as your indices",
                              "weights[t, j] must be the weight of expert indices[t, j].")
            raise Mistake("wrong_values", f"the right experts, but the weights differ from the renormalised "
                          f"softmax (largest difference {_max_diff(w, expected):.3g})",
                          "The experts are right, so look at the weights: they start from the softmax "
                          "over all experts and are only rescaled so that a token's k weights sum to 1.")
        if case_number == 0:
            _backward(weights, "the logits")
            if not _has_grad(grad_logits):
                raise Mistake("router_no_grad", "no gradient reaches the logits through your weights",
                              "Compute the weights from the logits with torch operations only.")


def _check_switch_routing(fn):
    for seed, (tokens, num_experts) in enumerate([(6, 4), (1, 3), (5, 8)]):
        with _seeded(50 + seed):
            logits = 2 * torch.randn(tokens, num_experts)
        probs = torch.softmax(logits, dim=-1)
        grad_logits = logits.clone().requires_grad_(True)
        weights, indices = _expect_pair(_call(fn, grad_logits), "(weights, indices)")
        if isinstance(weights, torch.Tensor) and not weights.is_floating_point():
            raise Mistake("swapped_outputs",
                          "your first output holds integers: weights and indices are swapped",
                          "Return (weights, indices), in this order.")
        shape_hint = "Both outputs are [tokens, 1] (top-1 keeps one expert per token)."
        _expect_tensor(weights, (tokens, 1), shape_hint, "the weights")
        _expect_tensor(indices, (tokens, 1), shape_hint, "the indices")
        if not torch.equal(indices.long(), logits.argmax(-1, keepdim=True)):
            if tokens > 1 and torch.equal(indices.long(), logits.argmin(-1, keepdim=True)):
                raise Mistake("picked_smallest", *_TOPK_MESSAGES["picked_smallest"])
            raise Mistake("not_best", "some token was not sent to its most likely expert",
                          "Take the arg-max over the experts dimension (dim=-1).")
        w = weights.detach().double()
        if torch.all(w == 1):
            raise Mistake("renormalised_top1", "every weight is exactly 1: renormalising a single weight "
                          "(or a softmax over the one kept logit) always gives 1, so the router gets no "
                          "gradient from the task loss",
                          "Switch multiplies by the chosen expert's softmax probability, "
                          "without renormalising it.")
        if tokens > 1 and _close(w, torch.softmax(logits, dim=0).gather(1, indices)):
            raise Mistake("softmax_wrong_dim", *_TOPK_MESSAGES["softmax_wrong_dim"])
        if _close(w, logits.gather(1, indices)):
            raise Mistake("weights_are_logits", *_TOPK_MESSAGES["weights_are_logits"])
        if not _close(w, probs.gather(1, indices)):
            raise Mistake("wrong_values", "the weight should be the chosen expert's softmax probability "
                          f"(largest difference {_max_diff(w, probs.gather(1, indices)):.3g})",
                          "The weight is a probability from the softmax over all experts, kept as it is "
                          "(no renormalisation, no other scaling).")
        _backward(weights, "the logits")
        if not _has_grad(grad_logits):
            raise Mistake("router_no_grad", "no gradient reaches the logits through your weights",
                          "Compute the weight from the logits with torch operations (no .detach()).")


def _check_sparse_moe_forward(fn):
    messages = {
        "dense_mixture": ("every expert contributes to every token: this is the soft mixture, not top-k",
                          "Only each token's top k experts contribute, with renormalised weights."),
        "not_renormalised": ("the chosen experts' weights are not renormalised to sum to 1",
                             "Divide each token's k chosen probabilities by their sum."),
        "unweighted": ("the chosen experts' outputs are added without their weights",
                       "Multiply each chosen expert's output by its routing weight."),
        "first_choice_only": ("only each token's first choice contributes: its other k - 1 experts are "
                              "missing", "Every one of a token's k chosen experts adds its weighted output."),
    }
    # case 0: 2 tokens, 6 experts, top-2 -> at least two experts are chosen by no token
    cases = [(2, 4, 6, 2, 3), (5, 3, 4, 2, 2), (1, 4, 3, 3, 3)]     # (tokens, dim, experts, k, out_dim)
    for seed, (tokens, dim, num_experts, k, out_dim) in enumerate(cases):
        with _seeded(60 + seed):
            x, router_weight = torch.randn(tokens, dim), torch.randn(num_experts, dim)
            experts = make_experts(num_experts, dim, 8, out_dim)
        logits = x @ router_weight.T
        probs, weights, indices = topk_softmax(logits, k)
        with torch.no_grad():
            expected = dispatch_grouped(x, experts, indices, weights)
        router_weight = router_weight.clone().requires_grad_(True)
        out = _call(fn, x.clone(), router_weight, experts, k)
        _expect_tensor(out, expected.shape, "The output is [tokens, output_dim].")
        if not _close(out, expected):
            with torch.no_grad():
                outputs = torch.stack([expert(x) for expert in experts], dim=1)      # [T, E, O]
            chosen_outputs = outputs[torch.arange(tokens)[:, None], indices]       # [T, k, O]
            candidates = {
                "dense_mixture": torch.einsum("te,teo->to", probs, outputs),
                "not_renormalised": (chosen_outputs * probs.gather(1, indices)[..., None]).sum(1),
                "unweighted": chosen_outputs.sum(1),
                "first_choice_only": chosen_outputs[:, 0] * weights[:, :1],
            }
            _diagnose(out, candidates, messages, (
                "wrong_values", (f"the shape is right but the values differ from the reference top-{k} layer "
                                f"(largest difference {_max_diff(out, expected):.3g})"),
                "Follow one token by hand: the experts your top_k_routing chose, their weights, and "
                "that each chosen expert's output is scaled by the weight of that same expert."))
        _backward(out, "the experts and the router")
        unchosen = sorted(set(range(num_experts)) - set(indices.reshape(-1).tolist()))
        leaking = [e for e in unchosen if _has_grad(experts[e])]
        if leaking:
            raise Mistake("gradient_leak",
                          f"expert {leaking[0]} was chosen by no token, yet it received a gradient",
                          "An unchosen expert must not influence the output at all: run only the chosen "
                          "experts, or make sure its weight is exactly zero (not a tiny number).")
        if not _has_grad(router_weight):
            raise Mistake("router_no_grad", "the router weight gets no gradient from your output",
                          "Keep the routing weights connected to router_weight (no .detach()).")


# ----------------------------------------------------------------------------- 04 dispatch and capacity


def _check_capacity_per_expert(fn):
    messages = {
        "missing_num_experts": (("your capacity is not divided by the number of experts: it is the capacity "
                                "of all experts together"),
                                "Each expert gets its share: divide by num_experts."),
        "missing_top_k": (("your capacity ignores top_k: with k experts per token there are tokens * k "
                          "assignments to share out"), "Multiply the number of tokens by top_k."),
        "rounded_down": ("your capacity is rounded down: a fractional capacity must round up",
                         "Use math.ceil so capacity_factor 1.0 never leaves a slot short."),
        "rounded_too_early": ("you rounded up the per-token share and then multiplied by top_k, which "
                              "rounds k times instead of once",
                              "Round once, at the very end, after every factor of the formula is in."),
    }
    cases = [(16, 4, 1, 1.0), (16, 4, 2, 1.25), (10, 3, 3, 1.0), (7, 4, 2, 1.5), (1, 8, 1, 1.0),
             (12, 5, 2, 0.5)]
    for tokens, num_experts, k, factor in cases:
        expected = expert_capacity(tokens, num_experts, k, factor)
        got = _call(fn, tokens, num_experts, k, factor)
        if isinstance(got, bool) or not isinstance(got, int):
            hint = ("Compute with plain Python numbers: math.ceil returns an int, which is a count."
                    if isinstance(got, torch.Tensor) else
                    "math.ceil returns an int; a float such as 4.0 is not a count.")
            raise Mistake("not_int", f"the capacity should be an int, got {got!r} ({type(got).__name__})",
                          hint)
        if got == expected:
            continue
        case = f"tokens={tokens}, num_experts={num_experts}, top_k={k}, capacity_factor={factor}"
        candidates = {
            "missing_num_experts": math.ceil(factor * tokens * k),
            "missing_top_k": math.ceil(factor * tokens / num_experts),
            "rounded_down": int(factor * tokens * k / num_experts),
            "rounded_too_early": math.ceil(factor * tokens / num_experts) * k,
        }
        for key, value in candidates.items():
            if got == value:
                raise Mistake(key, f"{messages[key][0]} (for {case} you gave {got})", messages[key][1])
        raise Mistake("wrong_capacity", f"for {case} you gave {got}",
                      "Check each part of the spec's formula: the assignments are shared out among the "
                      "experts, scaled by capacity_factor, and a fraction rounds up.")


def _token_major_keep(indices: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """The common mistake: serve (token, slot) pairs row by row instead of slot by slot."""
    one_hot = torch.nn.functional.one_hot(indices.reshape(-1), num_experts)
    position = ((one_hot.cumsum(0) - one_hot) * one_hot).sum(-1)
    return (position < capacity).view_as(indices)


def _keep_mask_cases():
    cases = [(torch.tensor([[0, 1], [2, 0], [0, 3]]), 4, 2)]   # a token's 2nd choice vs another's 1st
    for seed, (tokens, num_experts, k, capacity) in enumerate([(10, 4, 2, 3), (8, 3, 1, 2), (6, 4, 3, 3),
                                                               (1, 4, 2, 1), (9, 3, 2, 100)]):
        with _seeded(70 + seed):
            indices = torch.stack([torch.randperm(num_experts)[:k] for _ in range(tokens)])
        cases.append((indices, num_experts, capacity))
    return cases


_KEEP_MESSAGES = {
    "token_major_priority": ("a token's second choice was served before another token's first choice",
                             "Serve all first choices (column 0, in token order) before any second "
                             "choice: walk the [tokens, k] indices column by column."),
    "reshape_order": ("your decisions are right but land on the wrong (token, choice) slots: the "
                      "choice-by-choice order was reshaped straight to [tokens, k]",
                      "A flat list built choice by choice is laid out choice-major; bring it back to "
                      "[tokens, k] through that layout, not with a direct view."),
}


def _check_keep_mask(fn):
    ambiguous = False
    for indices, num_experts, capacity in _keep_mask_cases():
        out = _call(fn, indices.clone(), num_experts, capacity)
        _expect_tensor(out, indices.shape, "The mask has the shape of expert_indices: [tokens, k].")
        if out.dtype != torch.bool:
            if out.is_floating_point() or not bool(((out == 0) | (out == 1)).all()):
                raise Mistake("not_bool", f"the mask should be True/False, got dtype {out.dtype}",
                              "A comparison such as position < capacity gives a bool tensor.")
            out = out.bool()
        expected = apply_capacity(indices, num_experts, capacity)
        if torch.equal(out, expected):
            continue
        tokens, k = indices.shape
        token_major = torch.equal(out, _token_major_keep(indices, num_experts, capacity))
        reshaped = k > 1 and torch.equal(out, expected.T.reshape(-1).view(tokens, k))
        if token_major and reshaped:
            ambiguous = True          # this case cannot tell the two apart: let a later case decide
            continue
        if reshaped:                  # before the counts: a reshaped mask moves decisions between experts
            raise Mistake("reshape_order", *_KEEP_MESSAGES["reshape_order"])
        routed = torch.bincount(indices.reshape(-1), minlength=num_experts)
        kept = torch.bincount(indices[out], minlength=num_experts)
        over = (kept > capacity).nonzero().reshape(-1)
        if over.numel():
            e = int(over[0])
            raise Mistake("over_capacity", f"expert {e} keeps {int(kept[e])} assignments but its capacity is "
                          f"{capacity}", "Positions count from 0, so position p is kept when p < capacity.")
        short = (kept < routed.clamp(max=capacity)).nonzero().reshape(-1)
        if short.numel():
            e = int(short[0])
            raise Mistake("dropped_with_room",
                          f"expert {e} keeps only {int(kept[e])} of its {int(routed[e])} "
                          f"assignments although its capacity is {capacity}",
                          "Drop only the assignments past the capacity; the first `capacity` ones stay.")
        if token_major:
            raise Mistake("token_major_priority", *_KEEP_MESSAGES["token_major_priority"])
        raise Mistake("wrong_priority",
                      "each expert keeps the right number of assignments, but not the right ones",
                      "Within each choice (column), earlier tokens come first.")
    if ambiguous:
        raise Mistake("token_major_priority", *_KEEP_MESSAGES["token_major_priority"])


def _check_dispatch_with_capacity(fn):
    messages = {
        "dropped_passthrough": (("a dropped assignment added x * weight to the output; it must contribute "
                                "exactly zero (the residual connection carries the token)"),
                                ("Zero the weight of every dropped (token, slot) pair, do not replace the "
                                "expert's output by the input.")),
        "ignored_kept": ("your output includes assignments that the capacity dropped",
                         "Use kept: an assignment with kept[t, j] == False contributes nothing."),
        "kept_inverted": ("your output uses the dropped assignments and skips the kept ones",
                          "kept[t, j] is True where the assignment is kept, i.e. processed by its expert."),
        "renormalised_after_drop": ("you renormalised the remaining weights after dropping",
                                    ("This course keeps the routing weights as they are; a dropped slot "
                                    "simply contributes zero.")),
    }
    for seed, (tokens, dim, num_experts, k, factor) in enumerate([(8, 4, 4, 2, 0.5), (6, 3, 3, 1, 0.5),
                                                                 (5, 4, 4, 2, None), (1, 3, 2, 2, 0.4)]):
        with _seeded(80 + seed):
            x = torch.randn(tokens, dim)
            experts = make_experts(num_experts, dim, 8)
            _, weights, indices = topk_softmax(torch.randn(tokens, num_experts), k)
        capacity = None if factor is None else expert_capacity(tokens, num_experts, k, factor)
        kept = apply_capacity(indices, num_experts, capacity)
        with torch.no_grad():
            expected = dispatch_grouped(x, experts, indices, weights, kept)
        out = _call(fn, x.clone(), experts, indices.clone(), weights.clone(), kept.clone())
        _expect_tensor(out, expected.shape, "The output is [tokens, output_dim].")
        if _close(out, expected):
            continue
        with torch.no_grad():
            dropless = dispatch_grouped(x, experts, indices, weights)
            passthrough = expected + ((weights * ~kept)[..., None] * x[:, None, :]).sum(1)
            kept_weights = weights * kept
            renormalised = dispatch_grouped(x, experts, indices,
                                            kept_weights / kept_weights.sum(-1,
                                                                            keepdim=True).clamp(min=1e-9),
                                                                            kept)
            inverted = dispatch_grouped(x, experts, indices, weights, ~kept)
        candidates = {"dropped_passthrough": passthrough, "ignored_kept": dropless, "kept_inverted": inverted,
                      "renormalised_after_drop": renormalised}
        all_dropped = ~kept.any(-1)
        if all_dropped.any() and not _close(out[all_dropped], torch.zeros_like(out[all_dropped])):
            t = int(all_dropped.nonzero()[0])
            _diagnose(out, candidates, messages, (
                "dropped_token_not_zero",
                f"token {t} was dropped by all its experts, yet its output is not zero",
                "A token whose every assignment was dropped gets an all-zero MoE output."))
        _diagnose(out, candidates, messages, (
            "wrong_values", (f"the shape is right but the values differ from the reference dispatch "
                            f"(largest difference {_max_diff(out, expected):.3g})"),
            "Follow one token by hand: each kept slot adds its expert's output scaled by that slot's "
            "weight; a dropped slot adds nothing."))


# ----------------------------------------------------------------------------- 05 load balancing


def _how_far(value: torch.Tensor, expected: torch.Tensor) -> str:
    """Roughly how far ``value`` is from ``expected`` in words, without giving ``expected`` away."""
    value, expected = float(value.detach()), float(expected.detach())
    if not math.isfinite(value):
        return "not a finite number"
    if expected == 0 or value / expected <= 0:
        return "of the wrong sign or size"
    ratio = value / expected
    direction = "too large" if ratio > 1 else "too small"
    if 0.5 < ratio < 2:
        return f"about {abs(ratio - 1) * 100:.2g}% {direction}"
    return f"about {max(ratio, 1 / ratio):.2g} times {direction}"


def _switch_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(probs [T, E], expert_indices [T, k]) pairs: skewed routing first, then the edge cases."""
    cases = []
    for seed, (tokens, num_experts, k) in enumerate([(16, 8, 2), (12, 6, 1), (10, 5, 3), (6, 3, 3),
                                                     (1, 4, 2)]):
        with _seeded(90 + seed):
            # a per-expert offset skews the routing: some experts are clearly more popular than others
            skew = torch.linspace(2.0, -2.0, num_experts)
            probs, _, indices = topk_softmax(torch.randn(tokens, num_experts) + skew, k)
        cases.append((probs, indices))
    cases.append((torch.full((4, 4), 0.25), torch.arange(4)[:, None]))                  # uniform: loss 1
    cases.append((torch.eye(3)[[0, 0, 0, 0]], torch.zeros(4, 1, dtype=torch.long)))     # collapse: loss E
    return cases


def _switch_candidates(probs: torch.Tensor, indices: torch.Tensor, expected: torch.Tensor) -> dict:
    """What the common wrong versions of the Switch loss give on this case."""
    tokens, num_experts = probs.shape
    k = indices.shape[1]
    counts = torch.bincount(indices.reshape(-1), minlength=num_experts).float()
    fractions = counts / (tokens * k)
    chosen = torch.zeros_like(probs).scatter(1, indices, 1.0)
    top_weights = probs.gather(1, indices)
    top_weights = top_weights / top_weights.sum(-1, keepdim=True)
    renormalised = torch.zeros_like(probs).scatter(1, indices, top_weights)
    first_counts = torch.bincount(indices[:, 0], minlength=num_experts).float()
    candidates = {
        "f_not_divided_by_k": expected * k,
        "missing_num_experts": expected / num_experts,
        "gshard_mean": expected / num_experts ** 2,
        "p_from_topk": num_experts * (fractions * (probs * chosen).mean(0)).sum(),
        "p_from_topk_weights": num_experts * (fractions * renormalised.mean(0)).sum(),
        "first_choice_only": num_experts * (first_counts / tokens * probs.mean(0)).sum(),
        "p_divided_by_k": expected / k,
        "counts_not_fractions": expected * tokens * k,
    }
    if k == 1:  # at k = 1 these mistakes change nothing
        for key in ("f_not_divided_by_k", "p_divided_by_k", "first_choice_only", "p_from_topk_weights"):
            del candidates[key]
    return candidates


def _probe_loss(fn, probs: torch.Tensor, indices: torch.Tensor) -> float | None:
    """The learner's loss on a probe input, or None when it cannot be had (error, not a number)."""
    try:
        loss = fn(probs.clone(), indices.clone())
        value = float(torch.as_tensor(loss).detach().reshape(()))
    except Exception:  # noqa: BLE001 - a probe only refines the hint; the main check reports errors
        return None
    return value if math.isfinite(value) else None


def _switch_fallback_hint(fn) -> str:
    """A hint built from what the learner's loss does when f_i or P_i is made uniform.

    With every P_i equal to 1/E the loss reduces to the sum of the f_i, and with every f_i
    equal to 1/E to the sum of the P_i: both should be exactly 1.
    """
    tokens, num_experts, k = 8, 4, 2
    with _seeded(97):
        skewed_probs = torch.softmax(2 * torch.randn(tokens, num_experts) + torch.linspace(2, -2, 4), -1)
        skewed_indices = torch.multinomial(skewed_probs, k)       # distinct experts per token, skewed
    balanced_indices = torch.stack([torch.arange(tokens) % num_experts,
                                    (torch.arange(tokens) + 1) % num_experts], dim=1)
    uniform_probs = torch.full((tokens, num_experts), 1 / num_experts)
    sum_f = _probe_loss(fn, uniform_probs, skewed_indices)
    sum_p = _probe_loss(fn, skewed_probs, balanced_indices)
    f_off = sum_f is not None and not math.isclose(sum_f, 1, rel_tol=1e-4)
    p_off = sum_p is not None and not math.isclose(sum_p, 1, rel_tol=1e-4)
    if f_off and p_off and math.isclose(sum_f, sum_p, rel_tol=1e-3):
        return (f"With either the probabilities or the assignments made perfectly uniform your loss is "
                f"{sum_f:.3g} instead of 1: an overall factor is off. Check the constant in front of the "
                "sum, and whether you sum or average where the spec says (over tokens, over experts).")
    parts = []
    if f_off:
        parts.append(f"with every probability equal to 1/E your loss is {sum_f:.3g} instead of 1, so your "
                     "f_i do not sum to 1: count every assignment and divide by their total number")
    if p_off:
        parts.append(f"with perfectly balanced assignments your loss is {sum_p:.3g} instead of 1, so your "
                     "P_i do not sum to 1: average each expert's probability over the tokens")
    if parts:
        text = "; ".join(parts)
        return text[0].upper() + text[1:] + "."
    if sum_f is None or sum_p is None:
        return ("Check the pieces one at a time: print your f_i and your P_i for a small input; each "
                "should sum to 1, and perfectly uniform routing should give a loss of exactly 1.")
    return ("Your f_i and your P_i each sum to 1 (with either one uniform your loss is 1), so look at how "
            "they are paired: both must follow the same expert order, f_i counting expert i's "
            "assignments and P_i averaging probs[:, i] over the tokens.")


def _check_switch_aux_loss(fn):
    messages = {
        "f_not_divided_by_k": (("your loss is k times too large: f_i was divided by the number of tokens, "
                               "not by the number of assignments tokens * k"),
                               "f_i is a fraction of all tokens * k assignments, so the f_i sum to 1."),
        "missing_num_experts": ("your loss is off by a factor of the number of experts",
                                "The spec's loss is scaled by the number of experts so that uniform "
                                "routing gives exactly 1."),
        "gshard_mean": ("your loss is the mean of f_i * P_i (GShard's convention, minimum 1/E^2)",
                        "This course sums over the experts and scales by the number of experts, so "
                        "uniform routing gives 1."),
        "p_from_topk": ("P_i was computed from the chosen experts' probabilities only",
                        ("P_i is the mean over all tokens of the full softmax probability of expert i, "
                        "whether or not the token chose it.")),
        "p_from_topk_weights": ("your P_i come from the renormalised top-k weights, not from the "
                                "router probabilities",
                                "P_i must come from the full softmax over all experts, not the top-k "
                                "weights: average probs[:, i] over all tokens, chosen or not."),
        "first_choice_only": ("your f_i count only each token's first choice, not all k of its experts",
                              "Each token is assigned to k experts: count every one of the k assignments "
                              "of each token (all columns of expert_indices), not just the first."),
        "p_divided_by_k": ("your loss is k times too small: P_i was divided by tokens * k",
                           "P_i is a plain mean over tokens of probs[:, i]."),
        "counts_not_fractions": ("you used raw counts for f_i instead of fractions",
                                 "Divide the counts by tokens * k."),
    }
    for case_number, (probs, indices) in enumerate(_switch_cases()):
        expected = switch_load_balancing_loss(probs, indices)
        grad_probs = probs.clone().requires_grad_(True)
        loss = _expect_scalar(_call(fn, grad_probs, indices.clone()))
        if not _close(loss, expected):
            _diagnose(loss, _switch_candidates(probs, indices, expected), messages, (
                "wrong_values", f"your loss is {loss.item():.4g}, {_how_far(loss, expected)}",
                _switch_fallback_hint(fn)))
        if case_number == 0:
            _backward(loss, "the router probabilities")
            if not _has_grad(grad_probs):
                raise Mistake("no_gradient", "no gradient reaches the probabilities",
                              "P_i must stay a differentiable mean of probs; f_i is a constant count.")


def _z_loss_fallback_hint(fn, num_experts: int = 4) -> str:
    """By-hand case first: all-zero logits give log(E) squared; if that passes, point past it."""
    try:
        at_zero = float(torch.as_tensor(fn(torch.zeros(3, num_experts))).detach().reshape(()))
    except Exception:  # noqa: BLE001 - a probe only refines the hint
        at_zero = None
    if at_zero is not None and math.isclose(at_zero, math.log(num_experts) ** 2, rel_tol=1e-4):
        return ("Your loss is right when every logit is zero, so look at what changes when the logits "
                "differ: one logsumexp per token over its experts, each squared, then the mean over tokens.")
    return ("Try a case you can do by hand: for all-zero logits every token's logsumexp is "
            "log(num_experts), so the loss should be log(num_experts) ** 2.")


def _z_loss_cases() -> list[torch.Tensor]:
    """Router logits [T, E]: ordinary ones (one token included), then large ones."""
    cases = []
    for seed, (tokens, num_experts) in enumerate([(6, 4), (5, 8), (1, 3)]):
        with _seeded(100 + seed):
            cases.append(3 * torch.randn(tokens, num_experts) + 1)
    with _seeded(103):
        cases.append(1000 + 3 * torch.randn(4, 5))   # large logits: exp overflows without stabilising
    return cases


def _check_router_z_loss(fn):
    messages = {
        "missing_square": ("your loss is the mean logsumexp, not its square",
                           "Square each token's logsumexp before taking the mean."),
        "squared_mean": ("your loss is the square of the mean logsumexp, not the mean of the squares",
                         "Square each token's logsumexp first, then average those squares over the "
                         "tokens: squaring the average is not the same."),
        "max_not_logsumexp": ("you used the largest logit instead of the logsumexp",
                              "The z-loss uses the logsumexp over the experts (a smooth maximum that "
                              "torch.logsumexp computes), not the plain maximum."),
        "sum_not_mean": ("your loss is summed over tokens instead of averaged",
                         "Take the mean over tokens so the loss does not grow with the batch size."),
        "wrong_dim": ("the logsumexp was taken over tokens instead of experts",
                      "Use dim=-1: one logsumexp per token, over its experts."),
    }
    for logits in _z_loss_cases():
        expected = router_z_loss(logits)
        grad_logits = logits.clone().requires_grad_(True)
        loss = _expect_scalar(_call(fn, grad_logits))
        if not torch.isfinite(loss) and logits.abs().max() > 100:
            raise Mistake("overflow",
                          f"your loss is {loss.item()} for logits around {logits.mean().item():.0f}: "
                          "the computation overflowed",
                          "exp of a large logit is inf in floating point (exp(1000) already is), so "
                          "computing exp, then sum, then log breaks down. Use torch.logsumexp, which is "
                          "numerically stable, or subtract each token's largest logit before exp and "
                          "add it back after the log.")
        if not _close(loss, expected):
            lse = torch.logsumexp(logits, dim=-1)
            candidates = {
                "missing_square": lse.mean(),
                "squared_mean": lse.mean().square(),
                "max_not_logsumexp": logits.max(-1).values.square().mean(),
                "sum_not_mean": lse.square().sum(),
                "wrong_dim": torch.logsumexp(logits, dim=0).square().mean(),
            }
            if logits.shape[0] == 1:  # one token: the square of the mean is the mean of the square
                del candidates["squared_mean"]
            _diagnose(loss, candidates, messages, (
                "wrong_values", f"your loss is {loss.item():.4g}, {_how_far(loss, expected)}",
                _z_loss_fallback_hint(fn)))
        _backward(loss, "the logits")
        if not _has_grad(grad_logits):
            raise Mistake("no_gradient", "no gradient reaches the logits", "Use torch operations only.")
        if not torch.isfinite(grad_logits.grad).all():
            raise Mistake("overflow", "the gradient of your loss is not finite (inf or nan)",
                          "Use torch.logsumexp, which is numerically stable, or subtract each token's "
                          "largest logit before exp and add it back after the log.")


# ----------------------------------------------------------------------------- 06 transformer block

_BLOCK_CONFIG = {"dim": 16, "num_heads": 2, "hidden_dim": 32, "num_experts": 4, "top_k": 2}


def _forbidden_forward(*args, **kwargs):
    raise Mistake("called_block", "your function called block(x) itself",
                  "Write the forward pass from the parts: block.norm1, block.attention, block.norm2, "
                  "block.feed_forward.")


def _check_block_forward(fn):
    messages = {
        "post_norm": ("you normalised after adding the residual (post-norm)",
                      "Pre-norm normalises only what a sub-layer reads; the residual sum itself is "
                      "never normalised."),
        "missing_residual": ("a residual connection is missing: the block's input is not added back",
                             "Each sub-layer's output is added back to the stream it read from (the "
                             "residual connection): once after attention, once after the feed-forward."),
        "missing_norm": ("a sub-layer sees the un-normalised input",
                         ("Normalise before each sub-layer: norm1 before attention, norm2 before the "
                         "feed-forward.")),
        "parallel_block": ("attention and feed-forward both read the block's input (a parallel block)",
                           "The feed-forward reads the output of the attention step."),
        "wrong_norm": ("the feed-forward reads the stream through norm1 instead of its own norm",
                       "Each sub-layer has its own norm: norm1 belongs to attention, norm2 to the "
                       "feed-forward."),
        "residual_from_norm": ("the residual adds a sub-layer's output to the normalised stream",
                               "Only what a sub-layer reads is normalised; its output is added back to "
                               "the stream as it was before the norm."),
    }
    for seed, (batch, seq) in enumerate([(2, 5), (1, 1), (3, 4)]):
        with _seeded(110 + seed):
            block = TransformerBlock(BlockConfig(**_BLOCK_CONFIG))
            x = torch.randn(batch, seq, _BLOCK_CONFIG["dim"])
            with torch.no_grad():        # fresh norms are all identical: give each its own parameters
                for param in [*block.norm1.parameters(), *block.norm2.parameters()]:
                    param.add_(0.5 * torch.randn_like(param))
        with torch.no_grad():
            expected = block(x)
            h = x + block.attention(block.norm1(x))
            unnormed_h = x + block.attention(x)
            post_h = block.norm1(x + block.attention(x))
            candidates = {
                "post_norm": block.norm2(post_h + block.feed_forward(post_h)),
                "missing_residual": [block.feed_forward(block.norm2(h)),
                                     block.attention(block.norm1(x)) + block.feed_forward(
                                         block.norm2(block.attention(block.norm1(x))))],
                "missing_norm": [h + block.feed_forward(h),
                                 unnormed_h + block.feed_forward(block.norm2(unnormed_h))],
                "parallel_block": x + block.attention(block.norm1(x)) + block.feed_forward(block.norm2(x)),
                "wrong_norm": h + block.feed_forward(block.norm1(h)),
            }
            normed = block.norm1(x) + block.attention(block.norm1(x))
            candidates["residual_from_norm"] = block.norm2(normed) + block.feed_forward(block.norm2(normed))
        block.forward = _forbidden_forward
        out = _call(fn, block, x.clone())
        _expect_tensor(out, expected.shape, "The block keeps the shape of its input: [batch, seq, dim].")
        if not _close(out, expected):
            _diagnose(out, candidates, messages, (
                "wrong_values", (f"the shape is right but the values differ from the reference block "
                                f"(largest difference {_max_diff(out, expected):.3g})"),
                "Check the order of the parts: each sub-layer reads its own norm of the current "
                "stream, and the feed-forward step starts from the output of the attention step."))


def _check_total_aux_loss(fn):
    messages = {
        "one_layer_only": ("your total includes only one MoE layer's losses",
                           "Add the losses of every MoE layer; moe_layers(model) lists them."),
        "averaged": ("your total is the mean over layers, not the sum",
                     "Each layer adds its own auxiliary losses to the training loss: sum them."),
        "balance_coef_unused": ("the balancing coefficient is not applied",
                                "Multiply the Switch loss by balance_coef."),
        "z_coef_unused": ("the z-loss coefficient is not applied", "Multiply the z-loss by z_coef."),
        "coefs_swapped": ("the two coefficients are swapped",
                          "balance_coef scales aux_losses['switch'], z_coef scales aux_losses['z']."),
    }
    balance_coef, z_coef = 0.01, 0.001
    dense = dict(_BLOCK_CONFIG, moe=False)
    for seed, configs in enumerate([[_BLOCK_CONFIG] * 3, [_BLOCK_CONFIG, dense, _BLOCK_CONFIG]]):
        with _seeded(120 + seed):
            model = nn.Sequential(*[TransformerBlock(BlockConfig(**c)) for c in configs])
            model(torch.randn(2, 6, _BLOCK_CONFIG["dim"]))
        layers = [layer.last_record.aux_losses for layer in moe_layers(model)]
        switch = [float(a["switch"].detach()) for a in layers]
        z = [float(a["z"].detach()) for a in layers]
        expected = torch.tensor(balance_coef * sum(switch) + z_coef * sum(z))
        loss = _expect_scalar(_call(fn, model, balance_coef, z_coef))
        if not _close(loss, expected):
            candidates = {
                "one_layer_only": [torch.tensor(balance_coef * s + z_coef * zz) for s, zz in zip(switch, z)],
                "averaged": expected / len(layers),
                "balance_coef_unused": torch.tensor(sum(switch) + z_coef * sum(z)),
                "z_coef_unused": torch.tensor(balance_coef * sum(switch) + sum(z)),
                "coefs_swapped": torch.tensor(z_coef * sum(switch) + balance_coef * sum(z)),
            }
            _diagnose(loss, candidates, messages, (
                "wrong_values", f"your total is {loss.item():.4g}, {_how_far(loss, expected)}",
                "Check each piece: every MoE layer counts once, each coefficient goes with its own "
                "loss, and the layers' contributions are added up."))
        if not loss.requires_grad:
            raise Mistake("detached",
                          "your total is detached from the model: backward would not reach the routers",
                          "Add the loss tensors themselves; don't call .item() or float() on them.")


# ----------------------------------------------------------------------------- the task table


@dataclass(frozen=True)
class Task:
    lesson: str
    checker: object


TASKS: dict[str, Task] = {
    "relu_expert": Task("01_experts", _check_relu_expert),
    "swiglu_expert": Task("01_experts", _check_swiglu_expert),
    "count_expert_parameters": Task("01_experts", _check_count_expert_parameters),
    "gate_probabilities": Task("02_gating", _check_gate_probabilities),
    "soft_mixture": Task("02_gating", _check_soft_mixture),
    "top_k_routing": Task("03_topk_sparsity", _check_top_k_routing),
    "switch_routing": Task("03_topk_sparsity", _check_switch_routing),
    "sparse_moe_forward": Task("03_topk_sparsity", _check_sparse_moe_forward),
    "capacity_per_expert": Task("04_dispatch_capacity", _check_capacity_per_expert),
    "keep_mask": Task("04_dispatch_capacity", _check_keep_mask),
    "dispatch_with_capacity": Task("04_dispatch_capacity", _check_dispatch_with_capacity),
    "switch_aux_loss": Task("05_load_balancing", _check_switch_aux_loss),
    "router_z_loss": Task("05_load_balancing", _check_router_z_loss),
    "block_forward": Task("06_transformer_block", _check_block_forward),
    "total_aux_loss": Task("06_transformer_block", _check_total_aux_loss),
}


def evaluate(task: str, fn) -> CheckResult:
    """Run the checker of ``task`` on ``fn`` and return the verdict, without showing or recording it."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if not callable(fn):
        raise TypeError(f"check({task!r}, fn): fn must be your function, got {type(fn).__name__}")
    try:
        TASKS[task].checker(fn)
    except _NotDone:
        return CheckResult(task, NOT_DONE, "not done yet (the function still raises NotImplementedError)")
    except Mistake as mistake:
        return CheckResult(task, FAILED, mistake.message, mistake.hint, mistake.key)
    return CheckResult(task, DONE, "done, all checks pass")


def check(task: str, fn, show: bool = True) -> CheckResult:
    """Check the learner's ``fn`` for ``task``: show the verdict, record it, return it."""
    result = evaluate(task, fn)
    _RESULTS.pop(task, None)
    _RESULTS[task] = result
    if show:
        _show(result)
        result._shown_in_cell = _execution_count()
    return result
