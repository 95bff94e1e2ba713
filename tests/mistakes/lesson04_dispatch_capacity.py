"""Planted mistakes for exercise notebook 04_dispatch_capacity: (diagnosis key, wrong function) per task."""

import math

import torch
import torch.nn.functional as F


def capacity_without_num_experts(num_tokens, num_experts, top_k, capacity_factor):
    return math.ceil(capacity_factor * num_tokens * top_k)


def capacity_without_top_k(num_tokens, num_experts, top_k, capacity_factor):
    return math.ceil(capacity_factor * num_tokens / num_experts)


def capacity_floor(num_tokens, num_experts, top_k, capacity_factor):
    return int(capacity_factor * num_tokens * top_k / num_experts)


def capacity_rounded_per_token(num_tokens, num_experts, top_k, capacity_factor):
    return math.ceil(capacity_factor * num_tokens / num_experts) * top_k


def capacity_tensor(num_tokens, num_experts, top_k, capacity_factor):
    return torch.tensor(capacity_factor * num_tokens * top_k / num_experts).ceil().long()


def capacity_plus_one(num_tokens, num_experts, top_k, capacity_factor):
    """No named diagnosis: gets the generic hint."""
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts) + 1


def _positions(order, num_experts):
    one_hot = F.one_hot(order, num_experts)
    return ((one_hot.cumsum(0) - one_hot) * one_hot).sum(-1)


def keep_token_major(expert_indices, num_experts, capacity):
    """Serves (token, slot) pairs row by row: a token's 2nd choice before the next token's 1st."""
    return (_positions(expert_indices.reshape(-1), num_experts) < capacity).view_as(expert_indices)


def keep_off_by_one(expert_indices, num_experts, capacity):
    num_tokens, k = expert_indices.shape
    return (_positions(expert_indices.T.reshape(-1), num_experts) <= capacity).view(k, num_tokens).T


def keep_reshaped_without_transpose(expert_indices, num_experts, capacity):
    """Right order of service, but the column-major result is viewed straight as [T, k]."""
    return (_positions(expert_indices.T.reshape(-1), num_experts) < capacity).view_as(expert_indices)


def keep_as_int64(expert_indices, num_experts, capacity):
    """Right decisions, returned as 0/1 int64 (a .long() 'to be safe')."""
    num_tokens, k = expert_indices.shape
    return (_positions(expert_indices.T.reshape(-1), num_experts) < capacity).view(k, num_tokens).T.long()


def keep_drop_whole_expert(expert_indices, num_experts, capacity):
    """Drops every assignment of an over-full expert instead of only the overflow."""
    counts = torch.bincount(expert_indices.reshape(-1), minlength=num_experts)
    return counts[expert_indices] <= capacity


def keep_later_tokens_first(expert_indices, num_experts, capacity):
    """Within a choice, serves the last token first: right counts, wrong assignments."""
    flipped = expert_indices.flip(0)
    num_tokens, k = flipped.shape
    kept = (_positions(flipped.T.reshape(-1), num_experts) < capacity).view(k, num_tokens).T
    return kept.flip(0)


def _dispatch(x, experts, expert_indices, weights):
    outputs = torch.stack([expert(x) for expert in experts], dim=1)                  # [T, E, O]
    chosen = outputs[torch.arange(x.shape[0])[:, None], expert_indices]            # [T, k, O]
    return (chosen * weights.unsqueeze(-1)).sum(1)


def dispatch_dropped_passthrough(x, experts, expert_indices, expert_weights, kept):
    """A dropped assignment passes the token through as x * p (a bug public code shipped)."""
    outputs = torch.stack([expert(x) for expert in experts], dim=1)
    chosen = outputs[torch.arange(x.shape[0])[:, None], expert_indices]
    chosen = torch.where(kept.unsqueeze(-1), chosen, x.unsqueeze(1))
    return (chosen * expert_weights.unsqueeze(-1)).sum(1)


def dispatch_ignores_kept(x, experts, expert_indices, expert_weights, kept):
    return _dispatch(x, experts, expert_indices, expert_weights)


def dispatch_renormalised_after_drop(x, experts, expert_indices, expert_weights, kept):
    weights = expert_weights * kept
    return _dispatch(x, experts, expert_indices, weights / weights.sum(-1, keepdim=True).clamp(min=1e-9))


def dispatch_kept_inverted(x, experts, expert_indices, expert_weights, kept):
    return _dispatch(x, experts, expert_indices, expert_weights * ~kept)


def dispatch_zeroes_weights_in_place(x, experts, expert_indices, expert_weights, kept):
    """Right output, but it zeroes the caller's dropped weights in place (masked_fill_)."""
    expert_weights.masked_fill_(~kept, 0.0)
    return _dispatch(x, experts, expert_indices, expert_weights)


def dispatch_doubled_weights(x, experts, expert_indices, expert_weights, kept):
    """No named diagnosis: gets the generic hint."""
    return _dispatch(x, experts, expert_indices, 2 * expert_weights * kept)


def _sorted(x, experts, expert_indices, expert_weights, token_of="divide", sort_weights=True, unsort=True):
    num_tokens, k = expert_indices.shape
    flat = expert_indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=len(experts)).tolist()
    tokens = order // k if token_of == "divide" else order % k
    sorted_y = torch.cat([expert(chunk) for expert, chunk in zip(experts, x[tokens].split(counts))])
    flat_weights = expert_weights.reshape(-1)
    sorted_y = sorted_y * (flat_weights[order] if sort_weights else flat_weights).unsqueeze(1)
    per_slot = torch.zeros_like(sorted_y).index_copy(0, order, sorted_y) if unsort else sorted_y
    return per_slot.view(num_tokens, k, -1).sum(1)


def sorted_weights_in_token_order(x, experts, expert_indices, expert_weights):
    """Rows sorted by expert, weights left in assignment order."""
    return _sorted(x, experts, expert_indices, expert_weights, sort_weights=False)


def sorted_never_unsorted(x, experts, expert_indices, expert_weights):
    """Sums the expert-ordered rows in groups of k without putting them back first."""
    return _sorted(x, experts, expert_indices, expert_weights, unsort=False)


def sorted_token_from_remainder(x, experts, expert_indices, expert_weights):
    """order % k (the slot) taken for the token."""
    return _sorted(x, experts, expert_indices, expert_weights, token_of="modulo")


def sorted_unweighted(x, experts, expert_indices, expert_weights):
    return _sorted(x, experts, expert_indices, torch.ones_like(expert_weights))


def sorted_one_call_per_assignment(x, experts, expert_indices, expert_weights):
    """Right values, but every assignment calls its expert on one row: nothing is grouped."""
    num_tokens, k = expert_indices.shape
    out = x.new_zeros(num_tokens, experts[0].output_dim)
    for t in range(num_tokens):
        for j in range(k):
            out[t] += expert_weights[t, j] * experts[int(expert_indices[t, j])](x[t:t + 1])[0]
    return out


def sorted_all_experts_on_all_tokens(x, experts, expert_indices, expert_weights):
    """Right values, but each expert runs on every token (the mask path)."""
    return dispatch_ignores_kept(x, experts, expert_indices, expert_weights, None)


def sorted_detached_weights(x, experts, expert_indices, expert_weights):
    return _sorted(x, experts, expert_indices, expert_weights.detach())


MISTAKES = {
    "capacity_per_expert": [("missing_num_experts", capacity_without_num_experts),
                            ("missing_top_k", capacity_without_top_k), ("rounded_down", capacity_floor),
                            ("wrong_capacity", capacity_plus_one),
                            ("rounded_too_early", capacity_rounded_per_token), ("not_int", capacity_tensor)],
    "keep_mask": [("token_major_priority", keep_token_major), ("over_capacity", keep_off_by_one),
                  ("dropped_with_room", keep_drop_whole_expert), ("wrong_priority", keep_later_tokens_first),
                  ("reshape_order", keep_reshaped_without_transpose), ("int_mask", keep_as_int64)],
    "dispatch_with_capacity": [("dropped_passthrough", dispatch_dropped_passthrough),
                               ("ignored_kept", dispatch_ignores_kept),
                               ("renormalised_after_drop", dispatch_renormalised_after_drop),
                               ("kept_inverted", dispatch_kept_inverted),
                               ("wrong_values", dispatch_doubled_weights),
                               ("mutated_input", dispatch_zeroes_weights_in_place)],
    "sorted_dispatch": [("weights_not_sorted", sorted_weights_in_token_order),
                        ("not_unsorted", sorted_never_unsorted), ("wrong_token", sorted_token_from_remainder),
                        ("unweighted", sorted_unweighted), ("not_grouped", sorted_one_call_per_assignment),
                        ("computes_unchosen", sorted_all_experts_on_all_tokens),
                        ("no_gradient", sorted_detached_weights)],
}
