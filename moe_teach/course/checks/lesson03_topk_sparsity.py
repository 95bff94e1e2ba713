"""Checks for exercise notebook 03_topk_sparsity (top-k sparsity)."""

from __future__ import annotations

import math

import torch

from ...dispatch import dispatch_grouped
from ...experts import make_experts
from ...routing import topk_softmax
from .core import (
    Mistake,
    _backward,
    _call,
    _close,
    _diagnose,
    _expect_pair,
    _expect_tensor,
    _has_grad,
    _max_diff,
    _seeded,
    _values_differ,
    register,
)

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


def _count_expert_rows(experts) -> list[int]:
    """A list that counts, per expert, the token rows its forward pass receives from now on."""
    rows = [0] * len(experts)

    def counter(e):
        def hook(module, inputs):
            rows[e] += inputs[0].reshape(-1, inputs[0].shape[-1]).shape[0]
        return hook

    for e, expert in enumerate(experts):
        expert.register_forward_pre_hook(counter(e))
    return rows


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
        rows_seen = _count_expert_rows(experts)
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
                "wrong_values", _values_differ(out, expected, f"the reference top-{k} layer"),
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
        chosen_by = torch.bincount(indices.reshape(-1), minlength=num_experts).tolist()
        extra = [e for e in range(num_experts) if rows_seen[e] > chosen_by[e]]
        if extra:
            e = extra[0]
            raise Mistake("computes_unchosen",
                          f"expert {e} ran on {rows_seen[e]} token rows but only {chosen_by[e]} tokens chose "
                          f"it: your layer computes experts for tokens that did not choose them",
                          "The output is right, but a sparse layer saves compute only if it never runs an "
                          "expert on a token that did not choose it (multiplying by a zero weight "
                          "afterwards still pays for the computation). Give each expert only the rows of "
                          "its own tokens.")


register("03_topk_sparsity", {
    "top_k_routing": _check_top_k_routing,
    "switch_routing": _check_switch_routing,
    "sparse_moe_forward": _check_sparse_moe_forward,
})
