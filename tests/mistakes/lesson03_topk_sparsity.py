"""Planted mistakes for exercise notebook 03_topk_sparsity: (diagnosis key, wrong function) per task."""

import torch


def topk_not_renormalised(logits, k):
    return torch.softmax(logits, dim=-1).topk(k, dim=-1)


def topk_softmax_over_tokens(logits, k):
    weights, indices = torch.softmax(logits, dim=0).topk(k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), indices


def topk_smallest(logits, k):
    weights, indices = torch.softmax(logits, dim=-1).topk(k, dim=-1, largest=False)
    return weights / weights.sum(-1, keepdim=True), indices


def topk_logits_as_weights(logits, k):
    return logits.topk(k, dim=-1)


def topk_with_temperature(logits, k):
    """Right experts, weights from a softmax at temperature 2: gets the generic hint."""
    weights, indices = torch.softmax(logits / 2, dim=-1).topk(k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), indices


def topk_returns_three(logits, k):
    probs = torch.softmax(logits, dim=-1)
    weights, indices = probs.topk(k, dim=-1)
    return probs, weights / weights.sum(-1, keepdim=True), indices


def topk_renormalised_only_when_k_above_one(logits, k):
    """Treats k = 1 as Switch routing: keeps the raw probability instead of renormalising it to 1."""
    weights, indices = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    return (weights / weights.sum(-1, keepdim=True) if k > 1 else weights), indices


def switch_renormalised(logits):
    weights, indices = torch.softmax(logits, dim=-1).topk(1, dim=-1)
    return weights / weights.sum(-1, keepdim=True), indices


def switch_softmax_over_kept_logit(logits):
    values, indices = logits.topk(1, dim=-1)
    return torch.softmax(values, dim=-1), indices


def switch_softmax_over_tokens(logits):
    probs = torch.softmax(logits, dim=0)
    indices = logits.argmax(-1, keepdim=True)
    return probs.gather(1, indices), indices


def switch_detached(logits):
    weights, indices = torch.softmax(logits, dim=-1).max(-1, keepdim=True)
    return weights.detach(), indices


def switch_squared_probability(logits):
    """No named diagnosis: gets the generic hint."""
    weights, indices = torch.softmax(logits, dim=-1).max(-1, keepdim=True)
    return weights ** 2, indices


def _route(x, router_weight, k):
    weights, indices = torch.softmax(x @ router_weight.T, dim=-1).topk(k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), indices


def sparse_dense_mixture(x, router_weight, experts, k):
    probs = torch.softmax(x @ router_weight.T, dim=-1)
    return (probs.unsqueeze(-1) * torch.stack([expert(x) for expert in experts], dim=1)).sum(1)


def sparse_mask_not_exactly_zero(x, router_weight, experts, k):
    """Compute every expert, then 'mask' unchosen ones with a tiny weight instead of zero."""
    weights, indices = _route(x, router_weight, k)
    dense = torch.full((x.shape[0], len(experts)), 1e-9).scatter(1, indices, weights)
    return (dense.unsqueeze(-1) * torch.stack([expert(x) for expert in experts], dim=1)).sum(1)


def sparse_mask_and_compute_all(x, router_weight, experts, k):
    """Right values and gradients: every expert runs on every token, unchosen ones weighted by exactly 0."""
    weights, indices = _route(x, router_weight, k)
    dense = torch.zeros(x.shape[0], len(experts)).scatter(1, indices, weights)
    return (dense.unsqueeze(-1) * torch.stack([expert(x) for expert in experts], dim=1)).sum(1)


def sparse_not_renormalised(x, router_weight, experts, k):
    weights, indices = torch.softmax(x @ router_weight.T, dim=-1).topk(k, dim=-1)
    outputs = torch.stack([expert(x) for expert in experts], dim=1)
    dense = torch.zeros(x.shape[0], len(experts)).scatter(1, indices, weights)
    return (dense.unsqueeze(-1) * outputs).sum(1)


def sparse_first_choice_only(x, router_weight, experts, k):
    weights, indices = _route(x, router_weight, k)
    out = torch.zeros(x.shape[0], experts[0].output_dim)
    for e, expert in enumerate(experts):
        tokens = (indices[:, 0] == e).nonzero().reshape(-1)
        if len(tokens):
            out = out.index_add(0, tokens, weights[tokens, :1] * expert(x[tokens]))
    return out


def sparse_with_temperature(x, router_weight, experts, k):
    """No named diagnosis: gets the generic hint."""
    weights, indices = _route(x / 2, router_weight, k)
    outputs = torch.stack([expert(x) for expert in experts], dim=1)
    dense = torch.zeros(x.shape[0], len(experts)).scatter(1, indices, weights)
    return (dense.unsqueeze(-1) * outputs).sum(1)


MISTAKES = {
    "top_k_routing": [("not_renormalised", topk_not_renormalised),
                      ("softmax_wrong_dim", topk_softmax_over_tokens),
                      ("picked_smallest", topk_smallest), ("weights_are_logits", topk_logits_as_weights),
                      ("wrong_values", topk_with_temperature), ("return_format", topk_returns_three),
                      ("not_renormalised", topk_renormalised_only_when_k_above_one)],
    "switch_routing": [("renormalised_top1", switch_renormalised),
                       ("renormalised_top1", switch_softmax_over_kept_logit),
                       ("softmax_wrong_dim", switch_softmax_over_tokens), ("no_gradient", switch_detached),
                       ("wrong_values", switch_squared_probability)],
    "sparse_moe_forward": [("dense_mixture", sparse_dense_mixture),
                           ("gradient_leak", sparse_mask_not_exactly_zero),
                           ("not_renormalised", sparse_not_renormalised),
                           ("first_choice_only", sparse_first_choice_only),
                           ("wrong_values", sparse_with_temperature),
                           ("computes_unchosen", sparse_mask_and_compute_all)],
}
