"""Planted mistakes for exercise notebook 10_modern_moe: (diagnosis key, wrong function) per task."""

import torch


# ----------------------------------------------------------------------------- bias_update
def bias_update_wrong_direction(bias, load, rate):
    delta = rate * torch.sign(load - load.mean())
    return bias + delta - delta.mean()


def bias_update_not_centred(bias, load, rate):
    return bias + rate * torch.sign(load.mean() - load)


def bias_update_proportional(bias, load, rate):
    return bias + rate * (load.mean() - load)


def bias_update_forgot_bias(bias, load, rate):
    delta = rate * torch.sign(load.mean() - load)
    return delta - delta.mean()


def bias_update_median(bias, load, rate):
    """Compares with the median load instead of the mean: no named diagnosis, gets the generic hint."""
    delta = rate * torch.sign(load.median() - load)
    return bias + delta - delta.mean()


# ----------------------------------------------------------------------------- expert_choice_select
def expert_choice_over_experts(probs, capacity):
    weights, ids = probs.topk(capacity, dim=-1)
    return ids, weights


def expert_choice_renormalised(probs, capacity):
    weights, ids = probs.t().topk(capacity, dim=-1)
    return ids, weights / weights.sum(dim=-1, keepdim=True)


def expert_choice_hard_weights(probs, capacity):
    _, ids = probs.t().topk(capacity, dim=-1)
    return ids, torch.ones(ids.shape)


def expert_choice_lowest(probs, capacity):
    weights, ids = probs.t().topk(capacity, dim=-1, largest=False)
    return ids, weights


def expert_choice_detached(probs, capacity):
    weights, ids = probs.detach().t().topk(capacity, dim=-1)
    return ids, weights


# ----------------------------------------------------------------------------- shared_expert_combine
def shared_combine_softmax_gate(routed, shared, gate_logits):
    if gate_logits is None:
        return routed + shared
    return routed + torch.softmax(gate_logits, dim=-1) * shared


def shared_combine_raw_gate(routed, shared, gate_logits):
    if gate_logits is None:
        return routed + shared
    return routed + gate_logits * shared


def shared_combine_gate_everything(routed, shared, gate_logits):
    if gate_logits is None:
        return routed + shared
    return torch.sigmoid(gate_logits) * (routed + shared)


def shared_combine_no_gate_branch(routed, shared, gate_logits):
    """Breaks on gate_logits=None: torch.sigmoid(None) raises a TypeError."""
    return routed + torch.sigmoid(gate_logits) * shared


# ----------------------------------------------------------------------------- group_limited_mask
def _expand(group_scores, num_experts, topk_group):
    best = group_scores.topk(topk_group, dim=-1).indices
    mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best, True)
    return mask.repeat_interleave(num_experts // group_scores.shape[-1], dim=1)


def group_mask_by_max(scores, n_group, topk_group):
    tokens, experts = scores.shape
    return _expand(scores.view(tokens, n_group, -1).max(dim=-1).values, experts, topk_group)


def group_mask_by_sum(scores, n_group, topk_group):
    tokens, experts = scores.shape
    return _expand(scores.view(tokens, n_group, -1).sum(dim=-1), experts, topk_group)


def group_mask_interleaved(scores, n_group, topk_group):
    tokens, experts = scores.shape
    grouped = scores.view(tokens, experts // n_group, n_group).transpose(1, 2)   # group g = e % n_group
    mask = _expand(grouped.topk(2, dim=-1).values.sum(-1), experts, topk_group)
    return mask.view(tokens, n_group, -1).transpose(1, 2).reshape(tokens, experts)


def group_mask_per_group(scores, n_group, topk_group):
    tokens, _ = scores.shape
    group_scores = scores.view(tokens, n_group, -1).topk(2, dim=-1).values.sum(-1)
    best = group_scores.topk(topk_group, dim=-1).indices
    return torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best, True)


def group_mask_float(scores, n_group, topk_group):
    tokens, experts = scores.shape
    return _expand(scores.view(tokens, n_group, -1).topk(2, dim=-1).values.sum(-1), experts, topk_group).float()


MISTAKES = {
    "centred_bias_update": [("wrong_direction", bias_update_wrong_direction),
                            ("not_mean_centred", bias_update_not_centred),
                            ("no_sign", bias_update_proportional), ("forgot_bias", bias_update_forgot_bias),
                            ("wrong_values", bias_update_median)],
    "expert_choice_select": [("wrong_dim", expert_choice_over_experts), ("renormalised", expert_choice_renormalised),
                             ("weights_ones", expert_choice_hard_weights), ("wrong_tokens", expert_choice_lowest),
                             ("no_gradient", expert_choice_detached)],
    "shared_expert_combine": [("gate_ignored", shared_combine_softmax_gate), ("raw_gate", shared_combine_raw_gate),
                              ("gate_on_routed", shared_combine_gate_everything),
                              ("raised", shared_combine_no_gate_branch)],
    "group_limited_mask": [("group_score_max", group_mask_by_max), ("group_score_sum", group_mask_by_sum),
                           ("wrong_grouping", group_mask_interleaved), ("group_mask_only", group_mask_per_group),
                           ("not_bool", group_mask_float)],
}
