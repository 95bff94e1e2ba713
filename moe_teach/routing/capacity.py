"""Capacity (Switch/GShard): how many assignments each expert may process, and which are dropped.

Each expert processes at most ``ceil(capacity_factor * tokens * top_k / num_experts)``
assignments. Every token's first choice is served before any second choice (GShard), in token
order within a choice; assignments over capacity are dropped and contribute nothing (the
residual carries the token).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..validation import check_index_tensor, check_mask, check_positive_float, check_positive_int, check_top_k


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Assignments one expert may process: ``ceil(capacity_factor * num_tokens * top_k / num_experts)``."""
    check_positive_int("num_tokens", num_tokens)
    check_positive_int("num_experts", num_experts)
    check_top_k(top_k, num_experts)
    check_capacity_factor(capacity_factor)
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts)


MAX_CAPACITY_FACTOR = 1e6
"""Any factor >= num_experts / top_k is already dropless; larger ones only risk overflow."""


def check_capacity_factor(capacity_factor) -> float:
    """A finite number in ``(0, MAX_CAPACITY_FACTOR]``."""
    return check_positive_float("capacity_factor", capacity_factor, maximum=MAX_CAPACITY_FACTOR)


def check_routing_indices(expert_indices, num_experts, valid=None) -> None:
    """``expert_indices`` ``[T, k]`` int64 in ``0..num_experts-1``; ``valid`` a ``[T, k]`` bool mask or None."""
    check_positive_int("num_experts", num_experts)
    check_index_tensor("expert_indices", expert_indices)
    if expert_indices.numel() and not _in_range(expert_indices, num_experts):
        raise ValueError(f"expert_indices must lie in 0..{num_experts - 1} (num_experts={num_experts})")
    if valid is not None:
        check_mask("valid", valid, expert_indices.shape)


def _in_range(expert_indices: torch.Tensor, num_experts: int) -> bool:
    smallest, largest = torch.aminmax(expert_indices)  # one pass over the indices, not two
    return 0 <= int(smallest) and int(largest) < num_experts


def position_in_expert(expert_indices: torch.Tensor, num_experts: int,
                       valid: torch.Tensor | None = None) -> torch.Tensor:
    """``[T, k]`` queue position of each assignment at its expert (0 = served first).

    Priority is slot-major: all first choices (in token order), then all second choices, ...
    A cumulative sum over a one-hot of the chosen expert counts how many assignments to the
    same expert came earlier. Slots with ``valid`` False (``[T, k]`` bool) take no place.
    """
    check_routing_indices(expert_indices, num_experts, valid)
    num_tokens, top_k = expert_indices.shape
    slot_major = expert_indices.t().reshape(-1)                        # [k*T]
    one_hot = F.one_hot(slot_major, num_experts)                       # [k*T, E]
    if valid is not None:
        one_hot = one_hot * valid.t().reshape(-1, 1)
    earlier = (one_hot.cumsum(dim=0) - one_hot)                        # assignments before this one
    position = (earlier * one_hot).sum(dim=-1)                         # [k*T]
    return position.view(top_k, num_tokens).t()


def apply_capacity(expert_indices: torch.Tensor, num_experts: int, capacity: int | None,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """``[T, k]`` bool mask of kept assignments under ``capacity`` (``None``: dropless).

    Slots with ``valid`` False are never kept.
    """
    check_routing_indices(expert_indices, num_experts, valid)
    if capacity is None:
        kept = torch.ones_like(expert_indices, dtype=torch.bool)
    else:
        check_positive_int("capacity", capacity)
        kept = position_in_expert(expert_indices, num_experts, valid) < capacity
    return kept if valid is None else kept & valid
