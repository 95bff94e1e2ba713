"""Lesson 08, "closing the gap": what each change to the MoE layer bought, measured here.

Each measurement times the same work done two ways, the way the layer used to do it
(``before``) and the way it does it now (``after``), in interleaved rounds
(:func:`~moe_teach.lessons.timing.compare`):

* ``aux_train``: a training step reading the two losses lesson 07 adds (Switch and z), with
  every loss the router declares computed on each forward pass (before) or each one computed
  when read (after, :class:`~moe_teach.losses.LazyAuxLosses`);
* ``aux_eval``: a forward pass in evaluation, all four losses computed (before) or none (after);
* ``combine``: the grouped dispatch's last stage, filling zeros and copying the outputs into
  them (before) or gathering them with the inverse permutation (after);
* ``fused_swiglu``: SwiGLU's gate and up projections as two matmuls (kept) or as one matmul
  with the two weights concatenated (tried).

:func:`aten_op_counts` counts the tensor operations of a forward+backward (a dispatch mode):
at small sizes each one costs microseconds whatever its size, which is most of what is left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ..dispatch import SortedAssignments, combine, run_experts, sort_by_expert
from ..experts import Expert
from ..moe_layer import MoELayer
from .timing import compare

GAP_CASES = ("aux_train", "aux_eval", "combine", "fused_swiglu")


def combine_zero_fill(sorted_out: torch.Tensor, sorted_in: SortedAssignments, weights: torch.Tensor) -> torch.Tensor:
    """The grouped dispatch's combine stage as it was: weight, copy into zeros, sum over slots.

    Three passes over a ``[T*k, O]`` tensor (fill the zeros, copy them, scatter into the
    copy) where :func:`~moe_teach.dispatch.combine` makes one gather.
    """
    num_tokens, top_k = weights.shape
    flat_weights = weights.reshape(-1).index_select(0, sorted_in.order).unsqueeze(1)  # [N, 1]
    slot_outputs = sorted_out.new_zeros(num_tokens * top_k, sorted_out.shape[-1])     # [T*k, O]
    slot_outputs = slot_outputs.index_copy(0, sorted_in.order, sorted_out * flat_weights)
    return slot_outputs.view(num_tokens, top_k, -1).sum(dim=1)


def swiglu_fused(expert: Expert, x: torch.Tensor) -> torch.Tensor:
    """``expert``'s SwiGLU output with gate and up as one matmul on the concatenated ``[2H, D]`` weight."""
    gate, up = F.linear(x, torch.cat([expert.gate.weight, expert.up.weight])).chunk(2, dim=-1)
    return expert.down(F.silu(gate) * up)


def _step(layer: MoELayer, x: torch.Tensor, read_all: bool):
    def run():
        out = layer(x)
        losses = layer.last_record.aux_losses
        if read_all:
            dict(losses)  # what every forward pass used to compute
        (out.sum() + losses["switch"] + losses["z"]).backward()
    return run


def _eval_forward(layer: MoELayer, x: torch.Tensor, read_all: bool):
    def run():
        with torch.no_grad():
            layer(x)
            if read_all:
                dict(layer.last_record.aux_losses)
    return run


def _dispatch(layer: MoELayer, x: torch.Tensor, combine_fn):
    routed = layer.router(x)
    indices, weights = routed.expert_indices, routed.expert_weights.detach().requires_grad_(True)

    def run():
        sorted_in = sort_by_expert(x, indices, layer.num_experts)
        combine_fn(run_experts(layer.experts, sorted_in), sorted_in, weights).sum().backward()
    return run


def _swiglu(expert: Expert, x: torch.Tensor, fused: bool):
    def run():
        (swiglu_fused(expert, x) if fused else expert(x)).sum().backward()
    return run


def gap_measurements(tokens: int = 1024, dim: int = 128, hidden: int = 128, num_experts: int = 8, top_k: int = 2,
                     repeats: int = 20, seed: int = 0) -> dict[str, dict[str, float]]:
    """Median seconds ``{case: {"before": s, "after": s}}`` for each of :data:`GAP_CASES`.

    Also ``"moe_vs_dense"``: ``{"moe": s, "dense_active": s}``, the layer's training step as it
    is now (``aux_train``'s ``after``) and the dense-active feed-forward's, timed in the same
    rounds. The MoE layer has GELU experts (as lesson 08's sweep); the SwiGLU case uses one
    expert of hidden width ``top_k * hidden`` on all ``tokens``.
    """
    torch.manual_seed(seed)
    layer = MoELayer(dim, num_experts=num_experts, top_k=top_k, hidden_dim=hidden, activation="gelu")
    dense = Expert(dim, top_k * hidden, dim, "gelu")
    swiglu = Expert(dim, top_k * hidden, dim, "swiglu", bias=False)
    x = torch.randn(tokens, dim, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    ways = {
        "aux_train": (_step(layer, x, read_all=True), _step(layer, x, read_all=False)),
        "aux_eval": (_eval_forward(layer, x, read_all=True), _eval_forward(layer, x, read_all=False)),
        "combine": (_dispatch(layer, x, combine_zero_fill), _dispatch(layer, x, combine)),
        "fused_swiglu": (_swiglu(swiglu, x, fused=False), _swiglu(swiglu, x, fused=True)),
    }
    cases = {(name, when): fn for name, pair in ways.items() for when, fn in zip(("before", "after"), pair)}
    cases[("dense_active", "after")] = _dense_step(dense, x)
    timings = compare(cases, repeats=repeats, warmup=2, rounds=repeats, seed=seed)
    result = {name: {when: timings[(name, when)].median for when in ("before", "after")} for name in ways}
    result["moe_vs_dense"] = {"moe": result["aux_train"]["after"],
                              "dense_active": timings[("dense_active", "after")].median}
    return result


def _dense_step(dense: Expert, x: torch.Tensor):
    def run():
        dense(x).sum().backward()
    return run


def aten_op_counts(tokens: int = 1024, dim: int = 128, hidden: int = 128, num_experts: int = 8,
                   top_k: int = 2, seed: int = 0) -> dict[str, int]:
    """Tensor operations (``aten`` kernels called) of one forward+backward.

    Keys: ``"moe"`` (the layer, reading the Switch and z losses) and ``"dense-active"``.
    """
    torch.manual_seed(seed)
    layer = MoELayer(dim, num_experts=num_experts, top_k=top_k, hidden_dim=hidden, activation="gelu")
    dense = Expert(dim, top_k * hidden, dim, "gelu")
    x = torch.randn(tokens, dim, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    return {"moe": count_aten_ops(_step(layer, x, read_all=False)),
            "dense-active": count_aten_ops(_dense_step(dense, x))}


class _OpCounter(TorchDispatchMode):
    """Counts every tensor operation that reaches the kernels (backward ones included)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_aten_ops(fn) -> int:
    """How many ``aten`` operations ``fn()`` runs, forward and backward (after one uncounted call)."""
    fn()
    with _OpCounter() as counter:
        fn()
    return counter.count
