"""Dispatch: three ways to compute the same MoE forward pass.

All three take the same routing decision and return the same ``[T, output_dim]`` tensor
(to float tolerance) and the same gradients:

* :func:`dispatch_dense_mask` (the reference): run **every** expert on **every** token,
  then multiply by a ``[T, E]`` weight matrix that is zero for unchosen experts. Simple,
  and ``E / k`` times the necessary work.
* :func:`dispatch_loop`: for each expert, gather its tokens, run it, write the weighted
  result back. Only the needed work, but many small gathers.
* :func:`dispatch_grouped`: sort all (token, slot) assignments by expert so each expert's
  tokens sit in one contiguous slice, then run one matmul chain per expert on its slice
  (what production "grouped GEMM" kernels do in one launch).

Arguments shared by all three:
    x: ``[T, D]`` tokens.  experts: ``E`` modules ``[*, D] -> [*, O]``.
    expert_indices: ``[T, k]`` int64.  expert_weights: ``[T, k]``.
    kept: optional ``[T, k]`` bool; False assignments (dropped by capacity) contribute zero.
Results are summed over the ``k`` slots of a ``[T, k, O]`` tensor rather than accumulated
with ``index_add_``, which is not deterministic on CUDA with repeated indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .routing import scatter_to_experts
from .routing.capacity import check_routing_indices
from .validation import check_float_tensor, check_index_tensor, check_instance, check_mask, check_positive_int


def check_dispatch_args(x, experts, expert_indices, expert_weights, kept) -> None:
    """Raise a clear ValueError/TypeError for inputs the dispatch functions cannot use."""
    check_float_tensor("x", x, min_dims=2)
    if x.dim() != 2:
        raise ValueError(f"x must have shape [tokens, input_dim], got {tuple(x.shape)}; "
                         "flatten it with x.reshape(-1, x.shape[-1])")
    check_experts(experts)
    check_routing_indices(expert_indices, len(experts))
    if expert_indices.shape[0] != x.shape[0]:
        raise ValueError(f"expert_indices must have shape [{x.shape[0]}, k], got {tuple(expert_indices.shape)}")
    check_float_tensor("expert_weights", expert_weights, min_dims=2)
    if expert_weights.shape != expert_indices.shape:
        raise ValueError(f"expert_weights must have the shape of expert_indices {tuple(expert_indices.shape)}, "
                         f"got {tuple(expert_weights.shape)}")
    if kept is not None:
        check_mask("kept", kept, expert_indices.shape)


def check_experts(experts) -> None:
    """``experts`` must be a non-empty sequence of modules."""
    if (not isinstance(experts, (nn.ModuleList, list, tuple)) or len(experts) == 0
            or not all(isinstance(e, nn.Module) for e in experts)):
        raise TypeError(f"experts must be a non-empty nn.ModuleList of expert modules, got {type(experts).__name__}")


def _combine_weights(expert_weights, kept, dtype):
    weights = expert_weights if kept is None else expert_weights * kept
    return weights.to(dtype)


def dispatch_dense_mask(x: torch.Tensor, experts: nn.ModuleList, expert_indices: torch.Tensor,
                        expert_weights: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: all experts on all tokens, then a weighted sum with a sparse ``[T, E]`` matrix."""
    check_dispatch_args(x, experts, expert_indices, expert_weights, kept)
    weights = _combine_weights(expert_weights, kept, x.dtype)                       # [T, k]
    dense = scatter_to_experts(expert_indices, weights, len(experts))               # [T, E]
    all_outputs = torch.stack([expert(x) for expert in experts], dim=1)           # [T, E, O]
    return torch.einsum("te,teo->to", dense, all_outputs)


def dispatch_loop(x: torch.Tensor, experts: nn.ModuleList, expert_indices: torch.Tensor,
                  expert_weights: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Loop over experts; each runs only on the tokens routed (and kept) to it."""
    check_dispatch_args(x, experts, expert_indices, expert_weights, kept)
    weights = _combine_weights(expert_weights, kept, x.dtype)
    chosen = expert_indices if kept is None else expert_indices.masked_fill(~kept, -1)
    slot_outputs = None                                                            # [T, k, O]
    for expert_id, expert in enumerate(experts):
        token_ids, slot_ids = torch.where(chosen == expert_id)
        if token_ids.numel() == 0:
            continue
        y = expert(x[token_ids]) * weights[token_ids, slot_ids, None]
        if slot_outputs is None:
            slot_outputs = y.new_zeros(*expert_indices.shape, y.shape[-1])
        slot_outputs.index_put_((token_ids, slot_ids), y)
    if slot_outputs is None:  # every assignment dropped
        return _zero_output(x, experts, weights)
    return slot_outputs.sum(dim=1)


@dataclass
class SortedAssignments:
    """Kept (token, slot) assignments sorted by expert: stage 1 of the grouped dispatch.

    Attributes:
        order: ``[N]`` int64 assignment ids ``token * k + slot``, grouped by expert (stable).
        counts: ``E`` ints, how many of the ``N`` assignments each expert takes.
        tokens: ``[N, D]`` the inputs in that order (expert 0's slice first).
        top_k: slots per token ``k``.
    """

    order: torch.Tensor
    counts: list[int]
    tokens: torch.Tensor
    top_k: int

    def __post_init__(self):
        check_index_tensor("order", self.order, dims=1)
        if not isinstance(self.counts, list) or not all(type(c) is int and c >= 0 for c in self.counts):
            raise TypeError(f"counts must be a list of ints >= 0 (one per expert), got {self.counts!r:.60}")
        check_float_tensor("tokens", self.tokens, min_dims=2)
        if sum(self.counts) != self.order.numel() or self.tokens.shape[0] != self.order.numel():
            raise ValueError(f"counts must add up to the {self.order.numel()} assignments in order and tokens")
        check_positive_int("top_k", self.top_k)


def sort_by_expert(x: torch.Tensor, expert_indices: torch.Tensor, num_experts: int,
                   kept: torch.Tensor | None = None) -> SortedAssignments:
    """Stage 1: sort the kept assignments by expert and gather their tokens ``[N, D]``."""
    check_float_tensor("x", x, min_dims=2)
    check_routing_indices(expert_indices, num_experts)
    if expert_indices.shape[0] != x.shape[0]:
        raise ValueError(f"expert_indices must have shape [{x.shape[0]}, k], got {tuple(expert_indices.shape)}")
    if kept is not None:
        check_mask("kept", kept, expert_indices.shape)
    top_k = expert_indices.shape[1]
    flat_experts = expert_indices.reshape(-1)                                      # [T*k]
    if kept is None or bool(kept.all()):
        order = torch.argsort(flat_experts, stable=True)                          # assignment ids
    else:
        kept_ids = kept.reshape(-1).nonzero().squeeze(1)
        order = kept_ids[torch.argsort(flat_experts[kept_ids], stable=True)]
    kept_experts = flat_experts if kept is None or order.numel() == flat_experts.numel() else flat_experts[order]
    counts = torch.bincount(kept_experts, minlength=num_experts).tolist()  # counting needs no order
    return SortedAssignments(order, counts, x.index_select(0, order // top_k), top_k)


def run_experts(experts: nn.ModuleList, sorted_in: SortedAssignments) -> torch.Tensor:
    """Stage 2: each expert on its contiguous slice, ``[N, D] -> [N, O]`` (needs ``N > 0``)."""
    check_experts(experts)
    check_instance("sorted_in", sorted_in, SortedAssignments)
    if len(sorted_in.counts) != len(experts) or not sorted_in.order.numel():
        raise ValueError(f"sorted_in must hold at least one assignment and one count per expert "
                         f"({len(experts)}), got {len(sorted_in.counts)} counts")
    chunks = sorted_in.tokens.split(sorted_in.counts)
    return torch.cat([expert(chunk) for expert, chunk in zip(experts, chunks) if chunk.shape[0]])


def combine(sorted_out: torch.Tensor, sorted_in: SortedAssignments, weights: torch.Tensor) -> torch.Tensor:
    """Stage 3: put each output back in its (token, slot) place, weight it, sum over slots.

    ``sorted_out`` ``[N, O]``, ``weights`` ``[T, k]`` -> ``[T, O]``.
    """
    check_instance("sorted_in", sorted_in, SortedAssignments)
    check_float_tensor("sorted_out", sorted_out, min_dims=2)
    check_float_tensor("weights", weights, min_dims=2)
    if sorted_out.shape[0] != sorted_in.order.numel() or weights.shape[1] != sorted_in.top_k:
        raise ValueError(f"sorted_out must have {sorted_in.order.numel()} rows and weights "
                         f"{sorted_in.top_k} columns, got {tuple(sorted_out.shape)} and {tuple(weights.shape)}")
    num_tokens, top_k = weights.shape
    if sorted_in.order.numel() == num_tokens * top_k:  # every slot kept: ``order`` is a permutation
        slot_outputs = sorted_out.index_select(0, inverse_permutation(sorted_in.order))  # [T*k, O]
    else:  # dropped slots stay zero
        slot_outputs = sorted_out.new_zeros(num_tokens * top_k, sorted_out.shape[-1])
        slot_outputs = slot_outputs.index_copy(0, sorted_in.order, sorted_out)
    slot_outputs = slot_outputs.view(num_tokens, top_k, -1)                             # [T, k, O]
    return (slot_outputs * weights.unsqueeze(-1).to(slot_outputs.dtype)).sum(dim=1)


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """``inverse`` with ``inverse[order[i]] = i``: where each assignment sits in the sorted order.

    Gathering with it (one pass) undoes the sort; filling zeros and copying into them takes three.
    """
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return inverse


def dispatch_grouped(x: torch.Tensor, experts: nn.ModuleList, expert_indices: torch.Tensor,
                     expert_weights: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Sort assignments by expert, one contiguous slice (one matmul chain) per expert.

    The three stages :func:`sort_by_expert`, :func:`run_experts` and :func:`combine` are
    separate functions so lesson 08 can time each one.
    """
    check_dispatch_args(x, experts, expert_indices, expert_weights, kept)
    weights = _combine_weights(expert_weights, kept, x.dtype)                       # [T, k]
    sorted_in = sort_by_expert(x, expert_indices, len(experts), kept)
    if sorted_in.order.numel() == 0:
        return _zero_output(x, experts, weights)
    return combine(run_experts(experts, sorted_in), sorted_in, weights)


def _zero_output(x: torch.Tensor, experts: nn.ModuleList, weights: torch.Tensor) -> torch.Tensor:
    """``[T, O]`` zeros when every assignment was dropped.

    ``0 * weights.sum()`` keeps the result in the autograd graph (a zero gradient for the
    weights), as the compute-all path does, so ``.backward()`` works on every path.
    """
    output_dim = experts[0](x[:1]).shape[-1]
    return x.new_zeros(x.shape[0], output_dim) + 0 * weights.sum()


DISPATCHERS = {
    "mask": dispatch_dense_mask,
    "loop": dispatch_loop,
    "grouped": dispatch_grouped,
}
"""Dispatch name -> function ``(x, experts, expert_indices, expert_weights, kept) -> [T, O]``.

Adding a path: one function with that signature plus one line here; ``MoELayer(dispatch=...)``,
the benchmark and the tests that compare paths pick it up.
"""
