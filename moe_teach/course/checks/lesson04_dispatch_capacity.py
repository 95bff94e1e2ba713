"""Checks for exercise notebook 04_dispatch_capacity (dispatch and capacity)."""

from __future__ import annotations

import math

import torch

from ...dispatch import dispatch_grouped
from ...experts import make_experts
from ...routing import apply_capacity, expert_capacity, topk_softmax
from .core import (
    Mistake,
    _backward,
    _call,
    _close,
    _diagnose,
    _expect_tensor,
    _seeded,
    _values_differ,
    register,
)


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
            raise Mistake("int_mask", f"your mask holds 0 and 1 as {out.dtype}, not True and False",
                          "The task asks for a bool mask because it is used to index: x[mask] with a bool "
                          "mask keeps the True rows, but with an integer 0/1 tensor it picks rows 0 and 1. "
                          "A comparison such as position < capacity already gives a bool tensor; drop the "
                          "conversion to a number.")
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
            "wrong_values", _values_differ(out, expected, "the reference dispatch"),
            "Follow one token by hand: each kept slot adds its expert's output scaled by that slot's "
            "weight; a dropped slot adds nothing."))


def _sorted_variant(x, experts, indices, weights, token_of="divide", sort_weights=True, unsort=True,
                    weighted=True):
    """The sort-based dispatch, right by default; each flag reproduces one common mistake."""
    num_tokens, k = indices.shape
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=len(experts)).tolist()
    tokens = order // k if token_of == "divide" else (order % k) % num_tokens
    sorted_y = torch.cat([expert(chunk) for expert, chunk in zip(experts, x[tokens].split(counts))])
    if weighted:
        sorted_y = sorted_y * (weights.reshape(-1)[order] if sort_weights else weights.reshape(-1))[:, None]
    per_slot = torch.zeros_like(sorted_y).index_copy(0, order, sorted_y) if unsort else sorted_y
    return per_slot.view(num_tokens, k, -1).sum(1)


def _count_calls(experts) -> tuple[list[int], list[int]]:
    """Two lists filled from now on: per expert, how many times it ran and on how many rows in all."""
    calls, rows = [0] * len(experts), [0] * len(experts)

    def counter(e):
        def hook(module, inputs):
            calls[e] += 1
            rows[e] += inputs[0].reshape(-1, inputs[0].shape[-1]).shape[0]
        return hook

    for e, expert in enumerate(experts):
        expert.register_forward_pre_hook(counter(e))
    return calls, rows


def _check_sorted_dispatch(fn):
    messages = {
        "unweighted": ("the experts' outputs are added without their routing weights",
                       "Scale each sorted row by the weight of its own assignment before putting it back."),
        "weights_not_sorted": ("the weights are applied in the original assignment order to rows that are "
                               "in expert order",
                               "The rows were reordered by the sort: reorder the flat weights the same way "
                               "(with the same permutation) before multiplying."),
        "not_unsorted": ("the results were summed in expert order: they were never put back to the "
                         "assignments they came from",
                         "Undo the permutation before summing over the k slots: the row at sorted position "
                         "i belongs to assignment order[i] (index_copy or scatter puts it there)."),
        "wrong_token": ("each sorted assignment reads the wrong token's row",
                        "Assignments are numbered token by token, k per token, in the flat [T * k] list: "
                        "integer division of the assignment number by k gives its token (the remainder is "
                        "its slot)."),
    }
    cases = [(12, 4, 4, 2, 3), (7, 3, 5, 1, 3), (1, 4, 3, 3, 2), (9, 4, 6, 3, 4)]   # (T, dim, E, k, out)
    for seed, (tokens, dim, num_experts, k, out_dim) in enumerate(cases):
        with _seeded(130 + seed):
            x = torch.randn(tokens, dim)
            experts = make_experts(num_experts, dim, 8, out_dim)
            _, weights, indices = topk_softmax(torch.randn(tokens, num_experts), k)
        with torch.no_grad():
            expected = dispatch_grouped(x, experts, indices, weights)
            candidates = {
                "unweighted": _sorted_variant(x, experts, indices, weights, weighted=False),
                "weights_not_sorted": _sorted_variant(x, experts, indices, weights, sort_weights=False),
                "not_unsorted": _sorted_variant(x, experts, indices, weights, unsort=False),
                "wrong_token": _sorted_variant(x, experts, indices, weights, token_of="modulo"),
            }
        calls, rows = _count_calls(experts)
        grad_weights = weights.clone().requires_grad_(True)
        out = _call(fn, x.clone(), experts, indices.clone(), grad_weights)
        _expect_tensor(out, expected.shape, "The output is [tokens, output_dim].")
        if not _close(out, expected):
            _diagnose(out, candidates, messages, (
                "wrong_values", _values_differ(out, expected, "the reference dispatch"),
                "Follow one assignment through: its position after the sort, the token row it reads, the "
                "expert slice it falls in, its weight, and where it goes back before the sum over k."))
        counts = torch.bincount(indices.reshape(-1), minlength=num_experts).tolist()
        extra = [e for e in range(num_experts) if rows[e] > counts[e]]
        if extra:
            e = extra[0]
            raise Mistake("computes_unchosen",
                          f"expert {e} ran on {rows[e]} rows but only {counts[e]} assignments chose it",
                          "Each expert runs only on its own slice of the sorted rows.")
        repeated = [e for e in range(num_experts) if calls[e] > 1]
        if repeated:
            e = repeated[0]
            raise Mistake("not_grouped",
                          f"expert {e} was called {calls[e]} times: the rows of one expert were not kept together",
                          "The point of sorting is one contiguous slice per expert: split the sorted rows by "
                          "the per-expert counts and call each expert once, on its whole slice.")
        _backward(out, "the routing weights")
        if grad_weights.grad is None or not bool((grad_weights.grad != 0).any()):
            raise Mistake("no_gradient", "no gradient reaches the routing weights",
                          "Multiply by the weights with torch operations (no .detach() or .tolist()).")


register("04_dispatch_capacity", {
    "capacity_per_expert": _check_capacity_per_expert,
    "keep_mask": _check_keep_mask,
    "dispatch_with_capacity": _check_dispatch_with_capacity,
    "sorted_dispatch": _check_sorted_dispatch,
})
