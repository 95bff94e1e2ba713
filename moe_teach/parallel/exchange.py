"""The token exchange of expert parallelism, step by step.

Notation (used in every docstring here): ``W`` ranks (processes), ``E`` experts, ``L = E / W``
experts per rank (rank ``r`` owns experts ``r*L .. r*L + L - 1``), ``T`` tokens on this rank,
``k`` experts per token, ``D`` token width, ``O`` output width.

Dropless (torchtitan, Megatron-LM), on every rank at once:

1. sort this rank's ``T * k`` assignments by expert and count them per expert
   (``send_counts [E]``, with ``torch.bincount(minlength=E)``);
2. exchange the counts with ``all_to_all_single`` (``L`` numbers to each rank): rank ``r``
   learns ``recv_counts [E]`` laid out ``[source rank][local expert]``;
3. the split sizes follow: send ``send_counts.view(W, L).sum(1)`` rows to each rank, receive
   ``recv_counts.view(W, L).sum(1)`` rows from each rank;
4. exchange the sorted tokens; they arrive grouped ``[source rank][local expert]``;
5. re-sort them by local expert (:func:`arrival_permutation`), run the local experts, undo the
   re-sort (:func:`inverse_permutation`);
6. the reverse exchange with the split sizes swapped brings each result back to its source.

The functions without ``dist`` in their name are plain tensor maths, so a lesson can run
them for ``W`` simulated ranks in one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..routing.capacity import check_routing_indices
from ..validation import check_index_tensor, check_positive_int


def check_counts(name: str, counts, world_size) -> torch.Tensor:
    """``counts`` must be a 1-D int64 tensor whose length is a multiple of ``world_size`` (experts in rank blocks)."""
    check_positive_int("world_size", world_size)
    check_index_tensor(name, counts, dims=1)
    if counts.numel() % world_size:
        raise ValueError(f"world_size={world_size} must divide the {counts.numel()} entries of {name}")
    return counts


def expert_counts(expert_indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``[T, k]`` chosen experts -> ``[E]`` int64 number of assignments per expert."""
    check_routing_indices(expert_indices, num_experts)
    return torch.bincount(expert_indices.reshape(-1), minlength=num_experts)


def send_splits(send_counts: torch.Tensor, world_size: int) -> list[int]:
    """``[E]`` assignments per expert -> ``[W]`` rows to send to each rank (experts in rank blocks)."""
    check_counts("send_counts", send_counts, world_size)
    return send_counts.view(world_size, -1).sum(dim=1).tolist()


def arrival_local_experts(recv_counts: torch.Tensor, world_size: int) -> torch.Tensor:
    """``[M]`` local expert id of every received row, for rows laid out ``[source][local expert]``.

    ``recv_counts`` ``[E]`` is viewed as ``[W, L]``: entry ``(s, l)`` rows from source ``s`` for
    local expert ``l``.
    """
    check_counts("recv_counts", recv_counts, world_size)
    local_experts = recv_counts.numel() // world_size
    ids = torch.arange(local_experts, device=recv_counts.device).repeat(world_size)     # [W*L]
    return torch.repeat_interleave(ids, recv_counts.reshape(-1))


def arrival_permutation(recv_counts: torch.Tensor, world_size: int) -> torch.Tensor:
    """``[M]`` order that regroups rows from ``[source][local expert]`` to ``[local expert][source]``.

    ``received[perm]`` lists local expert 0's rows first (from source 0, then 1, ...), then
    local expert 1's, and so on. A stable sort keeps each source's rows in order.
    """
    return torch.argsort(arrival_local_experts(recv_counts, world_size), stable=True)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``y[perm][inv] == y``: puts re-sorted rows back in arrival order."""
    check_index_tensor("perm", perm, dims=1)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return inverse


def local_expert_counts(recv_counts: torch.Tensor, world_size: int) -> list[int]:
    """``[E]`` received counts ``[source][local expert]`` -> ``[L]`` rows per local expert."""
    check_counts("recv_counts", recv_counts, world_size)
    return recv_counts.view(world_size, -1).sum(dim=0).tolist()


# ----------------------------------------------------------------------------- collectives


def exchange_counts(send_counts: torch.Tensor, group=None) -> torch.Tensor:
    """All-to-all of the per-expert counts: ``[E]`` mine per expert -> ``[E]`` ``[source][local expert]``."""
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    return recv_counts


class AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with uneven splits whose backward is the reverse all-to-all.

    Forward sends ``input_splits[j]`` rows to rank ``j`` and receives ``output_splits[j]`` rows
    from it; backward sends the gradient of each received row back where the row came from,
    which is the same collective with the two split lists swapped.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, output_splits: list[int], input_splits: list[int], group=None):
        ctx.output_splits, ctx.input_splits, ctx.group = output_splits, input_splits, group
        out = x.new_empty(sum(output_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_in = grad_out.new_empty(sum(ctx.input_splits), *grad_out.shape[1:])
        dist.all_to_all_single(grad_in, grad_out.contiguous(), ctx.input_splits, ctx.output_splits,
                               group=ctx.group)
        return grad_in, None, None, None


def all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int], group=None) -> torch.Tensor:
    """Differentiable uneven all-to-all of the rows of ``x`` (see :class:`AllToAll`)."""
    return AllToAll.apply(x, list(output_splits), list(input_splits), group)
