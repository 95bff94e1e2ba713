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
  with the two weights concatenated (tried);
* ``masked_losses``: the Switch and z losses of a padded batch, padding dropped by boolean
  indexing (before, :func:`switch_z_boolean_indexed`) or weighted by 0 (after), fwd+bwd;
* ``optimizer``: one AdamW step over the MoE layer's parameters, a loop of about ten small
  operations per parameter tensor (before) or one fused kernel (after, ``fused=True``).

:func:`aten_op_counts` counts the tensor operations of a forward+backward (a dispatch mode):
at small sizes each one costs microseconds whatever its size, which is most of what is left.
:func:`expert_loop_floor` times the experts' matmuls alone (routing and dispatch free), as a
loop over experts and as one batched matmul, against the dense-active feed-forward.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ..dispatch import SortedAssignments, combine, run_experts, sort_by_expert
from ..experts import Expert
from ..losses import router_z_loss, switch_load_balancing_loss
from ..moe_layer import MoELayer
from .timing import compare

GAP_CASES = ("aux_train", "aux_eval", "combine", "fused_swiglu", "masked_losses", "optimizer")


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


def switch_z_boolean_indexed(probs: torch.Tensor, logits: torch.Tensor, expert_indices: torch.Tensor,
                             token_mask: torch.Tensor) -> torch.Tensor:
    """Switch + z loss over the real tokens, padding removed first by boolean indexing.

    ``probs``/``logits`` ``[T, E]``, ``expert_indices`` ``[T, k]``, ``token_mask`` ``[T]``.
    Each ``tensor[token_mask]`` counts the True entries and copies the rows it keeps; the
    package's losses weight each token by 0 or 1 instead.
    """
    probs, logits, expert_indices = probs[token_mask], logits[token_mask], expert_indices[token_mask]
    return switch_load_balancing_loss(probs, expert_indices) + router_z_loss(logits)


def _masked_losses(layer: MoELayer, x: torch.Tensor, boolean_indexed: bool, seed: int):
    token_mask = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(seed)) > 0.2  # 20% padding
    with torch.no_grad():
        routed = layer.router(x)
    logits = routed.logits.detach().requires_grad_(True)

    def run():
        probs = logits.softmax(dim=-1)
        if boolean_indexed:
            loss = switch_z_boolean_indexed(probs, logits, routed.expert_indices, token_mask)
        else:
            loss = (switch_load_balancing_loss(probs, routed.expert_indices, token_mask)
                    + router_z_loss(logits, token_mask))
        loss.backward()
    return run


def _optimizer_step(layer: MoELayer, fused: bool):
    parameters = [torch.nn.Parameter(p.detach().clone()) for p in layer.parameters()]
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter)
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=fused)
    return optimizer.step


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
    """Median seconds ``{case: {"before": s, "after": s, "noise": r}}`` for each of :data:`GAP_CASES`.

    ``noise`` is the larger of the two ways' interquartile range over their median
    (:func:`relative_iqr`): an after/before ratio closer to 1 than that is not an effect.

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
        "masked_losses": (_masked_losses(layer, x, True, seed), _masked_losses(layer, x, False, seed)),
        "optimizer": (_optimizer_step(layer, fused=False), _optimizer_step(layer, fused=True)),
    }
    cases = {(name, when): fn for name, pair in ways.items() for when, fn in zip(("before", "after"), pair)}
    cases[("dense_active", "after")] = _dense_step(dense, x)
    timings = compare(cases, repeats=repeats, warmup=2, rounds=repeats, seed=seed)
    result = {name: {when: timings[(name, when)].median for when in ("before", "after")} for name in ways}
    for name, measured in result.items():
        measured["noise"] = max(relative_iqr(timings[(name, when)].times) for when in ("before", "after"))
    result["moe_vs_dense"] = {"moe": result["aux_train"]["after"],
                              "dense_active": timings[("dense_active", "after")].median}
    return result


def relative_iqr(times: list[float]) -> float:
    """``(75th - 25th percentile) / median`` of repeated timings: how much one run's repeats wander."""
    if len(times) < 2:
        return 0.0
    q1, q2, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return (q3 - q1) / q2 if q2 > 0 else 0.0


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


def stack_expert_weights(experts) -> dict[str, torch.Tensor]:
    """Copies of gate-less (GELU or ReLU) :class:`Expert` weights stacked for ``torch.baddbmm``, as new leaves.

    ``up_w`` ``[E, D, H]``, ``up_b`` ``[E, 1, H]``, ``down_w`` ``[E, H, O]``, ``down_b`` ``[E, 1, O]``.
    """
    def stack(tensors):
        return torch.stack([t.detach() for t in tensors]).requires_grad_(True)
    return {"up_w": stack(e.up.weight.t() for e in experts), "up_b": stack(e.up.bias.unsqueeze(0) for e in experts),
            "down_w": stack(e.down.weight.t() for e in experts),
            "down_b": stack(e.down.bias.unsqueeze(0) for e in experts)}


def batched_experts(weights: dict[str, torch.Tensor], chunks: torch.Tensor) -> torch.Tensor:
    """GELU experts, each on its own equal slice, at once: ``chunks`` ``[E, n, D]`` -> ``[E, n, O]``."""
    hidden_out = F.gelu(torch.baddbmm(weights["up_b"], chunks, weights["up_w"]))     # [E, n, H]
    return torch.baddbmm(weights["down_b"], hidden_out, weights["down_w"])


def expert_loop_floor(tokens: int = 1024, dim: int = 128, hidden: int = 128, num_experts: int = 8, top_k: int = 2,
                      repeats: int = 12, seed: int = 0) -> dict[str, float]:
    """Median seconds, forward+backward, of the same expert FLOPs done three ways, plus the whole layer.

    * ``"dense_active"``: one GELU feed-forward of width ``top_k * hidden`` on ``tokens`` rows;
    * ``"expert_loop"``: ``num_experts`` :class:`Expert` modules, each on an equal slice of the
      ``tokens * top_k`` rows (:func:`~moe_teach.dispatch.run_experts`, routing and sorting free);
    * ``"batched"``: the same weights stacked (:func:`stack_expert_weights`), one ``torch.baddbmm``
      chain over all slices at once (:func:`batched_experts`);
    * ``"moe_layer"``: the whole layer's training step (it reads the Switch and z losses).

    Timed in interleaved rounds (:func:`~moe_teach.lessons.timing.compare`).
    """
    torch.manual_seed(seed)
    layer = MoELayer(dim, num_experts=num_experts, top_k=top_k, hidden_dim=hidden, activation="gelu")
    dense = Expert(dim, top_k * hidden, dim, "gelu")
    per_expert = tokens * top_k // num_experts                                       # rows per slice
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, dim, generator=generator, requires_grad=True)
    slices = torch.randn(per_expert * num_experts, dim, generator=generator, requires_grad=True)
    sorted_in = SortedAssignments(torch.arange(slices.shape[0]), [per_expert] * num_experts, slices, top_k)
    weights = stack_expert_weights(layer.experts)
    chunks = slices.view(num_experts, per_expert, dim)                               # [E, n, D]
    cases = {"dense_active": _dense_step(dense, x),
             "expert_loop": lambda: run_experts(layer.experts, sorted_in).sum().backward(),
             "batched": lambda: batched_experts(weights, chunks).sum().backward(),
             "moe_layer": _step(layer, x, read_all=False)}
    timings = compare(cases, repeats=repeats, warmup=2, rounds=repeats, seed=seed)
    return {name: timing.median for name, timing in timings.items()}
