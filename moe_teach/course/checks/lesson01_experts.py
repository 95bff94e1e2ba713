"""Checks for exercise notebook 01_experts (experts)."""

from __future__ import annotations

import torch

from ...experts import Expert, expert_parameter_count
from .core import (
    Mistake,
    _call,
    _clone,
    _close,
    _diagnose,
    _expect_tensor,
    _seeded,
    _values_differ,
    register,
)


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
            "wrong_values", _values_differ(out, expected, "the reference expert"),
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
            "wrong_values", _values_differ(out, expected, "the reference SwiGLU expert"),
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


register("01_experts", {
    "relu_expert": _check_relu_expert,
    "swiglu_expert": _check_swiglu_expert,
    "count_expert_parameters": _check_count_expert_parameters,
})
