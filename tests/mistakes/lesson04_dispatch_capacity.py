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
}
