"""Checks for exercise notebook 02_gating (gating)."""

from __future__ import annotations

import torch

from ...experts import make_experts
from .core import (
    Mistake,
    _backward,
    _call,
    _close,
    _diagnose,
    _expect_tensor,
    _has_grad,
    _max_diff,
    _seeded,
    _values_differ,
    register,
)


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
                "wrong_values", _values_differ(out, expected, "the soft mixture"),
                "Each token's output weights every expert's output by that token's probability for that "
                "expert; check that the probabilities line up with the experts and which dimension you "
                "sum over."))
        _backward(out, "the router weight")
        if not _has_grad(router_weight):
            raise Mistake("router_no_grad", "the router weight gets no gradient from your output",
                          "Keep the probabilities in the graph (no .detach() or torch.no_grad()).")


register("02_gating", {
    "gate_probabilities": _check_gate_probabilities,
    "soft_mixture": _check_soft_mixture,
})
