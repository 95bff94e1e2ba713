"""Checks for exercise notebook 10_modern_moe (today's MoE designs)."""

from __future__ import annotations

import torch

from ...routing import expert_choice, group_limited_mask, selection_bias_delta
from ...shared import shared_combine
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
    register,
)


# ----------------------------------------------------------------------------- task 1: the bias update
def _bias_cases():
    """(bias [E], load [E], rate): a skewed load with a non-zero starting bias, uneven signs, ties at the mean."""
    with _seeded(110):
        bias = 0.05 * torch.randn(6)
    return [
        (bias, torch.tensor([50.0, 3.0, 20.0, 9.0, 30.0, 8.0]), 1e-3),      # 3 above the mean, 3 below
        (torch.zeros(4), torch.tensor([90.0, 4.0, 3.0, 3.0]), 1e-2),       # 1 above, 3 below: centring matters
        (bias[:4], torch.tensor([10.0, 10.0, 10.0, 10.0]), 1e-2),          # balanced: nothing moves
        (bias[:5], torch.tensor([7.0, 1.0, 4.0, 4.0, 4.0]), 0.1),          # two experts exactly at the mean
    ]


def _check_bias_update(fn):
    messages = {
        "wrong_direction": ("your update raises the bias of the busiest experts",
                            "An over-loaded expert should become *less* attractive: its bias goes down, "
                            "and an under-loaded expert's bias goes up."),
        "not_mean_centred": ("your update is not mean-centred: when more experts are below the mean than "
                             "above, all biases drift upwards",
                             "Subtract the mean of the change from the change before adding it."),
        "no_sign": ("your change is proportional to how far each load is from the mean",
                    "The rule uses only the sign of (mean_load - load): every expert moves by exactly "
                    "rate, up or down, however far off it is."),
        "forgot_bias": ("you returned the change alone, not the updated bias",
                        "Return the old bias plus the change: the bias accumulates over the training steps."),
    }
    for bias, load, rate in _bias_cases():
        expected = bias + selection_bias_delta(load, rate)
        out = _call(fn, bias.clone(), load.clone(), rate)
        _expect_tensor(out, bias.shape, "Return the new bias, one value per expert [E].")
        if not _close(out, expected):
            step = rate * torch.sign(load.mean() - load)
            candidates = {
                "wrong_direction": [bias - (step - step.mean()), bias - step],
                "not_mean_centred": bias + step,
                "no_sign": [bias + rate * (load.mean() - load), bias + rate * ((load.mean() - load)
                                                                               - (load.mean() - load).mean())],
                "forgot_bias": [step - step.mean(), step],
            }
            _diagnose(out, candidates, messages, (
                "wrong_values", f"your new bias differs from the rule's by up to {_max_diff(out, expected):.3g}",
                "Work it out by hand for load [3, 1] and rate 0.1: the mean is 2, expert 0 is above it "
                "(change -0.1), expert 1 below (+0.1); the changes already average to 0."))


# ----------------------------------------------------------------------------- task 2: expert choice
def _choice_cases():
    cases = []
    for seed, (tokens, experts, capacity) in enumerate([(7, 4, 2), (10, 3, 4), (5, 2, 5)]):
        with _seeded(120 + seed):
            cases.append((torch.softmax(2 * torch.randn(tokens, experts), dim=-1), capacity))
    return cases


def _sorted_rows(token_ids: torch.Tensor, weights: torch.Tensor):
    """Each expert's (token ids, weights) in token order, so any order of the C picks is accepted."""
    order = token_ids.argsort(dim=-1)
    return token_ids.gather(1, order), weights.gather(1, order)


def _check_expert_choice(fn):
    messages = {
        "renormalised": ("your weights sum to 1 for each expert",
                         "Keep each chosen token's router probability for that expert as its weight; "
                         "expert choice does not renormalise."),
        "weights_ones": ("all your weights are 1",
                         "Weigh each chosen token by its probability probs[token, expert], so the "
                         "router still learns from the task loss."),
    }
    for probs, capacity in _choice_cases():
        tokens, experts = probs.shape
        grad_probs = probs.clone().requires_grad_(True)
        out = _expect_pair(_call(fn, grad_probs, capacity), "(token_ids, weights)")
        token_ids, weights = out
        if isinstance(token_ids, torch.Tensor) and tuple(token_ids.shape) == (tokens, capacity):
            raise Mistake("wrong_dim", f"your token_ids have shape {list(token_ids.shape)}: one row per token",
                          "Each *expert* picks tokens: take the top-C over the tokens dimension "
                          "(transpose probs, or topk along dim=0), giving [num_experts, C].")
        _expect_tensor(token_ids, (experts, capacity), "token_ids is [num_experts, capacity].", "token_ids")
        _expect_tensor(weights, (experts, capacity), "weights is [num_experts, capacity].", "weights")
        if token_ids.dtype != torch.long:
            raise Mistake("not_long", f"token_ids should be int64 (torch.long), got {token_ids.dtype}",
                          "Use the indices that topk returns.")
        expected_ids, expected_weights = expert_choice(probs, capacity)
        ids, got = _sorted_rows(token_ids, weights)
        want_ids, want = _sorted_rows(expected_ids, expected_weights)
        if not torch.equal(ids, want_ids):
            raise Mistake("wrong_tokens", "some expert did not get its highest-probability tokens",
                          "Expert e takes the C tokens with the largest probs[:, e] (a top-C down column e).")
        if not _close(got, want):
            candidates = {"renormalised": want / want.sum(-1, keepdim=True), "weights_ones": torch.ones_like(want)}
            _diagnose(got, candidates, messages, (
                "wrong_weights", "your tokens are right but their weights are not",
                "Each weight is probs[token, expert] for the token the expert chose."))
        _backward(weights, "the router probabilities")
        if not _has_grad(grad_probs):
            raise Mistake("no_gradient", "no gradient reaches the probabilities",
                          "Take the weights from probs itself (topk values or a gather), not from a copy.")


# ----------------------------------------------------------------------------- task 3: shared combine
def _shared_cases():
    cases = []
    for seed, (tokens, width) in enumerate([(5, 4), (3, 6)]):
        with _seeded(130 + seed):
            cases.append((torch.randn(tokens, width), torch.randn(tokens, width), 2 * torch.randn(tokens, 1)))
    return cases


def _check_shared_combine(fn):
    messages = {
        "gate_ignored": ("your output ignores the gate: the two outputs are added as they are",
                         "The shared output is scaled by sigmoid(gate_logits) (a softmax over one logit is "
                         "always 1, so it cannot gate)."),
        "raw_gate": ("you scaled the shared output by the raw gate logits",
                     "Squash the gate logits with a sigmoid first, so the scale lies between 0 and 1."),
        "gate_on_routed": ("the gate scales the routed output too",
                           "Only the shared expert's output is gated; the routed output is added unscaled."),
    }
    for routed, shared, gate in _shared_cases():
        grad_gate = gate.clone().requires_grad_(True)
        out = _expect_tensor(_call(fn, routed.clone(), shared.clone(), grad_gate), routed.shape,
                             "The output has the shape of routed [T, O].")
        expected = shared_combine(routed, shared, gate)
        if not _close(out, expected):
            candidates = {
                "gate_ignored": routed + shared,
                "raw_gate": routed + gate * shared,
                "gate_on_routed": [torch.sigmoid(gate) * (routed + shared), torch.sigmoid(gate) * routed + shared],
            }
            _diagnose(out, candidates, messages, (
                "wrong_values", f"your output differs by up to {_max_diff(out, expected):.3g}",
                "Scale only the shared output, by the sigmoid of the gate logits ([T, 1], broadcast over the "
                "width), then add the routed output."))
        _backward(out, "the gate logits")
        if not _has_grad(grad_gate):
            raise Mistake("no_gradient", "no gradient reaches the gate logits",
                          "Use torch.sigmoid on the gate logits, without .detach().")
        if routed.shape[0] == 5:   # DeepSeek-style: no gate at all
            plain = _expect_tensor(_call(fn, routed.clone(), shared.clone(), None), routed.shape,
                                   "With gate_logits None the output is the plain sum of the two outputs.")
            if not _close(plain, routed + shared):
                raise Mistake("no_gate_case", "with gate_logits=None your output is not the plain sum of the two",
                              "Without a gate (DeepSeekMoE) the shared output is added as it is.")


# ----------------------------------------------------------------------------- task 4: group-limited mask
def _group_cases():
    cases = []
    for seed, (tokens, experts, n_group, topk_group) in enumerate([(6, 12, 4, 2), (5, 12, 3, 1), (4, 8, 2, 1)]):
        with _seeded(140 + seed):
            cases.append((torch.rand(tokens, experts) - 0.3, n_group, topk_group))  # some scores negative
    return cases


def _mask_from_group_scores(group_scores: torch.Tensor, experts: int, topk_group: int) -> torch.Tensor:
    n_group = group_scores.shape[-1]
    best = group_scores.topk(topk_group, dim=-1).indices
    mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best, True)
    return mask.repeat_interleave(experts // n_group, dim=1)


def _check_group_mask(fn):
    messages = {
        "group_score_max": ("your groups are ranked by their single best score",
                            "A group's score is the sum of its two highest expert scores."),
        "group_score_sum": ("your groups are ranked by the sum of all their scores",
                            "Sum only each group's two highest scores, not all of them."),
        "wrong_grouping": ("your groups interleave the experts (expert e in group e % n_group)",
                           "Groups are contiguous: experts 0..E/n_group-1 are group 0, the next E/n_group "
                           "group 1, and so on."),
    }
    suspects = None      # mistakes consistent with every case seen so far (two can agree on one case)
    for scores, n_group, topk_group in _group_cases():
        tokens, experts = scores.shape
        out = _call(fn, scores.clone(), n_group, topk_group)
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (tokens, n_group):
            raise Mistake("group_mask_only", f"your mask has shape {list(out.shape)}: one entry per group",
                          "Expand the group mask to the experts: each group's entry repeated E / n_group times.")
        _expect_tensor(out, (tokens, experts), "The mask is [tokens, num_experts].")
        if out.dtype != torch.bool:
            raise Mistake("not_bool", f"the mask should be a bool tensor, got {out.dtype}",
                          "Compare or convert: mask.bool(), so it can be used with masked_fill(~mask, -inf).")
        candidates = _group_mask_candidates(scores, n_group, topk_group)
        matching = {label for label, candidate in candidates.items() if torch.equal(out, candidate)}
        if not torch.equal(out, group_limited_mask(scores, n_group, topk_group)):
            suspects = matching if suspects is None else suspects & matching
            if len(suspects) <= 1:
                break
        elif suspects is not None:
            suspects &= matching
    if suspects is None:
        return
    if suspects:
        label = next(label for label in messages if label in suspects)
        raise Mistake(label, *messages[label])
    raise Mistake("wrong_values", "some token's allowed experts are not those of its best groups",
                  "Score each group by the sum of its two highest scores, keep the topk_group best "
                  "groups per token, and mark all experts of those groups True.")


def _group_mask_candidates(scores: torch.Tensor, n_group: int, topk_group: int) -> dict:
    """The masks the common wrong versions give on this case."""
    tokens, experts = scores.shape
    grouped = scores.view(tokens, n_group, experts // n_group)
    interleaved = scores.view(tokens, experts // n_group, n_group).transpose(1, 2)   # group g = e % n_group
    interleaved_mask = _mask_from_group_scores(interleaved.topk(2, dim=-1).values.sum(-1), experts, topk_group)
    return {
        "group_score_max": _mask_from_group_scores(grouped.max(-1).values, experts, topk_group),
        "group_score_sum": _mask_from_group_scores(grouped.sum(-1), experts, topk_group),
        "wrong_grouping": interleaved_mask.view(tokens, n_group, -1).transpose(1, 2).reshape(tokens, experts),
    }


register("10_modern_moe", {
    "centred_bias_update": _check_bias_update,
    "expert_choice_select": _check_expert_choice,
    "shared_expert_combine": _check_shared_combine,
    "group_limited_mask": _check_group_mask,
})
