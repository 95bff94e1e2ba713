"""An expert-parallel MoE layer: ``W`` processes, each holding ``E / W`` experts.

Every rank holds a copy of the router and its own block of experts (rank ``r`` owns experts
``r*L .. r*L + L - 1`` with ``L = E / W``). Each rank routes its own tokens, sends every
(token, expert) assignment to the rank that owns the expert, runs its experts on what
arrives, and sends the results back (see :mod:`moe_teach.parallel.exchange`).

Two modes, as in production:

* dropless (``capacity_factor=None``, torchtitan, Megatron-LM): uneven exchanges whose sizes
  come from a first exchange of the per-expert counts;
* capacity (``capacity_factor=C``, GShard, DeepSpeed-MoE): every expert takes at most
  ``ceil(C * T * k / E)`` assignments *from each rank* (``T`` = that rank's tokens), the
  assignments are written into fixed-size zero-padded buffers ``[E, capacity, D]`` and every
  exchange has the same size, so no counts need to be exchanged. The capacity is decided
  per source rank (GShard's "groups"), so it matches the one-process layer run on each
  rank's tokens as one batch.

Gradients flow through both exchanges (:class:`~moe_teach.parallel.exchange.AllToAll`). Each
expert's gradient is complete on its owner rank; the replicated router's gradient is a sum
over ranks (:func:`all_reduce_replicated_grads`), as in data parallelism.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from ..experts import check_expert_input
from ..moe_layer import MoELayer
from ..routing import apply_capacity, expert_capacity, position_in_expert
from ..validation import check_non_negative_int, check_positive_float, check_positive_int
from .exchange import (
    all_to_all,
    arrival_permutation,
    exchange_counts,
    expert_counts,
    inverse_permutation,
    local_expert_counts,
    send_splits,
)


def check_world(num_experts: int, world_size: int, rank: int) -> int:
    """``E / W`` experts per rank; a clear error when ``E`` is not divisible by ``W``."""
    check_positive_int("num_experts", num_experts)
    check_positive_int("world_size", world_size)
    check_non_negative_int("rank", rank)
    if num_experts % world_size:
        raise ValueError(f"num_experts ({num_experts}) must be divisible by world_size ({world_size}): "
                         f"each process holds num_experts / world_size experts")
    if rank >= world_size:
        raise ValueError(f"rank must be between 0 and world_size - 1 = {world_size - 1}, got {rank}")
    return num_experts // world_size


@dataclass
class ExchangeStats:
    """What one forward pass sent and received on this rank.

    Attributes:
        send_rows: ``[W]`` token rows sent to each rank (to itself included).
        recv_rows: ``[W]`` token rows received from each rank.
        tokens_per_local_expert: ``[L]`` rows each local expert processed (padding included).
        input_bytes, output_bytes: bytes of one token row going out, of one result row coming back.
        count_bytes: bytes of the count exchange this rank sent (0 in capacity mode).
        dropped: this rank's (token, expert) assignments dropped by capacity (0 when dropless).
        times: seconds per phase (``routing``, ``exchange``, ``experts``, ``combine``) when timed.
    """

    rank: int
    send_rows: list[int]
    recv_rows: list[int]
    tokens_per_local_expert: list[int]
    input_bytes: int
    output_bytes: int
    count_bytes: int = 0
    dropped: int = 0
    times: dict = field(default_factory=dict)

    def bytes_sent(self, include_self: bool = False) -> int:
        """Bytes this rank sends in both exchanges (tokens out, results back), counts included."""
        keep = [include_self or j != self.rank for j in range(len(self.send_rows))]
        tokens_out = sum(n for n, k in zip(self.send_rows, keep) if k) * self.input_bytes
        results_back = sum(n for n, k in zip(self.recv_rows, keep) if k) * self.output_bytes
        return tokens_out + results_back + self.count_bytes

    def bytes_received(self, include_self: bool = False) -> int:
        """Bytes this rank receives in both exchanges; equal to what it sends when the load is even."""
        keep = [include_self or j != self.rank for j in range(len(self.recv_rows))]
        tokens_in = sum(n for n, k in zip(self.recv_rows, keep) if k) * self.input_bytes
        results_in = sum(n for n, k in zip(self.send_rows, keep) if k) * self.output_bytes
        return tokens_in + results_in + self.count_bytes


class _PhaseTimer:
    """Wall-clock seconds per phase, added up over a forward pass (only when enabled)."""

    def __init__(self, enabled: bool):
        self.enabled, self.times, self._start = enabled, {}, time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.enabled:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()            # GPU work is asynchronous: wait before reading the clock
            now = time.perf_counter()
            self.times[phase] = self.times.get(phase, 0.0) + now - self._start
            self._start = now


class ExpertParallelMoE(nn.Module):
    """The expert-parallel twin of :class:`~moe_teach.moe_layer.MoELayer` (one per rank).

    Args:
        router: the router (the same weights on every rank), e.g. ``moe_layer.router``.
        experts: this rank's ``L = E / W`` experts, in global order.
        num_experts: ``E`` over all ranks.
        rank, world_size: this process and the number of processes in ``group``.
        capacity_factor: ``None`` for dropless, else a number > 0 (capacity per source rank).
        group: the process group (``None`` = the default group).

    Build it from a full one-process layer with :func:`shard_moe_layer`. Call it on this
    rank's tokens ``[..., D]``; it returns ``[..., O]`` for those tokens. Every rank must call
    it (and run backward) the same number of times: the exchanges are collective.
    """

    def __init__(self, router: nn.Module, experts, num_experts: int, rank: int, world_size: int,
                 capacity_factor: float | None = None, group=None):
        super().__init__()
        self.local_count = check_world(num_experts, world_size, rank)
        if len(experts) != self.local_count:
            raise ValueError(f"experts must hold num_experts / world_size = {self.local_count} experts, "
                             f"got {len(experts)}")
        if capacity_factor is not None:
            check_positive_float("capacity_factor", capacity_factor)
        self.router, self.experts = router, nn.ModuleList(experts)
        self.num_experts, self.rank, self.world_size = num_experts, rank, world_size
        self.capacity_factor, self.group = capacity_factor, group
        self.input_dim, self.output_dim = experts[0].input_dim, experts[0].output_dim
        self.first_expert = rank * self.local_count
        self.last_exchange: ExchangeStats | None = None
        self.time_phases = False

    @property
    def top_k(self) -> int:
        return self.router.top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., D]`` (this rank's tokens) -> ``[..., O]``."""
        check_expert_input(x, self.input_dim)
        timer = _PhaseTimer(self.time_phases)
        tokens = x.reshape(-1, self.input_dim)                                     # [T, D]
        routed = self.router(tokens)
        timer.lap("routing")
        if self.capacity_factor is None:
            output = self._dropless(tokens, routed.expert_indices, routed.expert_weights, timer)
        else:
            output = self._with_capacity(tokens, routed.expert_indices, routed.expert_weights, timer)
        self.last_exchange.times = timer.times
        return output.reshape(*x.shape[:-1], self.output_dim)

    def _run_local_experts(self, rows: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """``[M, D]`` rows grouped by local expert -> ``[M, O]``.

        Every local expert runs, even on zero rows, so that the result stays connected to the
        received rows in the autograd graph: the backward all-to-all is collective and must
        run on every rank, including one that received nothing.
        """
        return torch.cat([expert(chunk) for expert, chunk in zip(self.experts, rows.split(counts))])

    def _dropless(self, tokens, expert_indices, expert_weights, timer) -> torch.Tensor:
        num_tokens, top_k = expert_indices.shape
        order = torch.argsort(expert_indices.reshape(-1), stable=True)              # [T*k] by expert
        send_counts = expert_counts(expert_indices, self.num_experts)              # [E]
        recv_counts = exchange_counts(send_counts, self.group)                      # [E] = [W, L]
        input_splits = send_splits(send_counts, self.world_size)
        output_splits = send_splits(recv_counts, self.world_size)
        sent = tokens.index_select(0, order // top_k)                               # [T*k, D]
        received = all_to_all(sent, output_splits, input_splits, self.group)       # [M, D]
        timer.lap("exchange")
        perm = arrival_permutation(recv_counts, self.world_size)                    # [M]
        per_expert = local_expert_counts(recv_counts, self.world_size)
        results = self._run_local_experts(received.index_select(0, perm), per_expert)
        in_arrival_order = results.index_select(0, inverse_permutation(perm))
        timer.lap("experts")
        returned = all_to_all(in_arrival_order, input_splits, output_splits, self.group)  # [T*k, O]
        timer.lap("exchange")
        weights = expert_weights.reshape(-1).index_select(0, order).to(returned.dtype)
        slot_outputs = returned.new_zeros(num_tokens * top_k, returned.shape[-1])
        slot_outputs = slot_outputs.index_copy(0, order, returned * weights.unsqueeze(1))
        timer.lap("combine")
        self.last_exchange = ExchangeStats(
            self.rank, input_splits, output_splits, per_expert,
            input_bytes=tokens.shape[1] * tokens.element_size(),
            output_bytes=returned.shape[1] * returned.element_size(),
            count_bytes=(self.num_experts - self.local_count) * send_counts.element_size())
        return slot_outputs.view(num_tokens, top_k, -1).sum(dim=1)

    def capacity(self, num_tokens: int) -> int:
        """Assignments each expert takes from each rank holding ``num_tokens`` tokens."""
        return expert_capacity(num_tokens, self.num_experts, self.top_k, self.capacity_factor)

    def _with_capacity(self, tokens, expert_indices, expert_weights, timer) -> torch.Tensor:
        num_tokens, top_k = expert_indices.shape
        world, local, dim = self.world_size, self.local_count, tokens.shape[1]
        capacity = self.capacity(num_tokens)
        kept = apply_capacity(expert_indices, self.num_experts, capacity)           # [T, k]
        token_ids, slot_ids = kept.nonzero(as_tuple=True)
        position = position_in_expert(expert_indices, self.num_experts)[token_ids, slot_ids]
        buffer_row = expert_indices[token_ids, slot_ids] * capacity + position      # row in [E * C]
        buffer = tokens.new_zeros(self.num_experts * capacity, dim)
        buffer = buffer.index_copy(0, buffer_row, tokens.index_select(0, token_ids))
        splits = [local * capacity] * world
        received = all_to_all(buffer, splits, splits, self.group)                  # [W*L*C, D]
        timer.lap("exchange")
        by_expert = received.view(world, local, capacity, dim).transpose(0, 1)      # [L, W, C, D]
        by_expert = by_expert.reshape(local, world * capacity, dim)
        results = torch.stack([expert(rows) for expert, rows in zip(self.experts, by_expert)])  # [L, W*C, O]
        out_dim = results.shape[-1]
        in_arrival_order = results.view(local, world, capacity, out_dim).transpose(0, 1).reshape(-1, out_dim)
        timer.lap("experts")
        returned = all_to_all(in_arrival_order, splits, splits, self.group)        # [E*C, O]
        timer.lap("exchange")
        weights = expert_weights[token_ids, slot_ids].to(returned.dtype).unsqueeze(1)
        kept_outputs = returned.index_select(0, buffer_row) * weights
        slot_outputs = returned.new_zeros(num_tokens * top_k, out_dim)
        slot_outputs = slot_outputs.index_copy(0, token_ids * top_k + slot_ids, kept_outputs)
        timer.lap("combine")
        self.last_exchange = ExchangeStats(
            self.rank, splits, splits, [world * capacity] * local,
            input_bytes=dim * tokens.element_size(), output_bytes=out_dim * returned.element_size(),
            dropped=int((~kept).sum()))
        return slot_outputs.view(num_tokens, top_k, out_dim).sum(dim=1)

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, world_size={self.world_size}, num_experts={self.num_experts}, "
                f"local_experts={self.first_expert}..{self.first_expert + self.local_count - 1}, "
                f"top_k={self.top_k}, capacity_factor={self.capacity_factor}")


def shard_moe_layer(layer: MoELayer, rank: int, world_size: int, group=None,
                    capacity_factor: float | None | str = "same") -> ExpertParallelMoE:
    """Rank ``rank``'s shard of a one-process ``layer``: a copy of its router and its experts
    ``rank*L .. rank*L + L - 1``. ``capacity_factor`` defaults to the layer's."""
    if not isinstance(layer, MoELayer):
        raise TypeError(f"layer must be a moe_teach.MoELayer, got {type(layer).__name__}")
    local = check_world(layer.num_experts, world_size, rank)
    if isinstance(capacity_factor, str) and capacity_factor != "same":
        raise ValueError(f"capacity_factor must be 'same' (the layer's), None (dropless) or a number > 0, "
                         f"got {capacity_factor!r}")
    factor = layer.capacity_factor if capacity_factor == "same" else capacity_factor
    experts = [copy.deepcopy(layer.experts[e]) for e in range(rank * local, (rank + 1) * local)]
    return ExpertParallelMoE(copy.deepcopy(layer.router), experts, layer.num_experts, rank, world_size,
                             capacity_factor=factor, group=group)


def all_reduce_replicated_grads(module: ExpertParallelMoE) -> None:
    """Sum the replicated router's gradients over ranks (experts' gradients are already complete)."""
    for param in module.router.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM, group=module.group)
