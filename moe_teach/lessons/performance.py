"""Lesson 08: what an MoE layer costs, counted and measured on this machine.

* Counted (exact, machine-independent): parameters (total and active per token) and FLOPs
  per token, from :mod:`moe_teach.counting`.
* Measured (this machine, noisy): median wall time of a forward pass and of a forward plus
  backward pass, every layer timed in interleaved rounds (:func:`interleaved_timings`) so a
  burst of background load hits all of them alike.
* Memory: :func:`training_memory_bytes` adds up parameters, their gradients and every tensor
  autograd saves for the backward pass (through ``torch.autograd.graph.saved_tensors_hooks``).
  It is deterministic and counts what a training step must hold; it leaves out short-lived
  temporaries and the allocator's overhead, so it is a lower bound on the process's peak.

Every MoE layer is compared with two dense feed-forwards: ``dense-active`` (hidden width
``top_k * hidden``: the same parameters per token) and ``dense-total`` (width
``num_experts * hidden``: the same parameters in total).
"""

from __future__ import annotations

import torch

from ..counting import active_parameters, count_parameters, ffn_flops_per_token, moe_flops_per_token
from ..dispatch import combine, run_experts, sort_by_expert
from ..experts import Expert, expert_parameter_count
from ..lm.model import LanguageModel, LMConfig
from ..moe_layer import MoEConfig, MoELayer
from ..routing import apply_capacity
from ..transformer import BlockConfig
from ..validation import (
    check_bool,
    check_float_tensor,
    check_instance,
    check_module,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    check_seed,
    check_top_k,
)
from .timing import compare, time_callable

MAX_REPEATS = 100_000
MAX_TOKENS = 1_000_000      # rows of one timed input; 10**9 would not fit in memory
MAX_WIDTH = 65_536          # dim / hidden of a timed layer
MAX_MATMUL_N = 16_384


def check_sizes(**sizes) -> None:
    """Each keyword must be a positive int of at most :data:`MAX_WIDTH` (``tokens``: :data:`MAX_TOKENS`)."""
    for name, value in sizes.items():
        check_positive_int(name, value, maximum=MAX_TOKENS if name == "tokens" else MAX_WIDTH)


def check_int_tuple(name: str, values, maximum: int = MAX_WIDTH) -> tuple[int, ...]:
    """``values`` must be a non-empty tuple or list of positive ints."""
    if isinstance(values, str) or not isinstance(values, (tuple, list)) or not values:
        raise TypeError(f"{name} must be a non-empty tuple of positive ints, got {values!r:.60}")
    for value in values:
        check_positive_int(f"{name} entry", value, maximum=maximum)
    return tuple(values)


def check_repeats(repeats, warmup=0) -> None:
    check_positive_int("repeats", repeats, maximum=MAX_REPEATS)
    check_non_negative_int("warmup", warmup, maximum=MAX_REPEATS)


# ----------------------------------------------------------------------------- measuring
def median_seconds(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    if not callable(fn):
        raise TypeError(f"fn must be a function to time, got {type(fn).__name__}")
    check_repeats(repeats, warmup)
    return time_callable(fn, repeats=repeats, warmup=warmup).median


def training_memory_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of parameters + gradients + tensors saved for backward, for one step on ``x``.

    Saved tensors are counted once per storage (a view of a saved tensor is free), and
    parameters saved by a layer are not counted again.
    """
    check_module("module", module)
    check_float_tensor("x", x)
    param_storages = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in param_storages:
            saved[ptr] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = module(x)
    out.sum().backward()
    module.zero_grad(set_to_none=True)
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    return 2 * param_bytes + sum(saved.values())


def make_layers(
    dim: int, hidden: int, num_experts: int, top_k: int, seed: int = 0
) -> dict[str, torch.nn.Module]:
    """The MoE layer and its two dense twins (GELU experts with biases, dropless grouped dispatch)."""
    check_sizes(dim=dim, hidden=hidden, num_experts=num_experts)
    check_top_k(top_k, num_experts)
    check_seed("seed", seed)
    torch.manual_seed(seed)
    return {
        "moe": MoELayer(dim, dim, num_experts, top_k, hidden, activation="gelu"),
        "dense-active": Expert(dim, top_k * hidden, dim, "gelu"),
        "dense-total": Expert(dim, num_experts * hidden, dim, "gelu"),
    }


def layer_counts(dim: int, hidden: int, num_experts: int, top_k: int) -> dict[str, dict[str, int]]:
    """Parameters (total, active) and FLOPs per token of the three layers, by formula."""
    check_sizes(dim=dim, hidden=hidden, num_experts=num_experts)
    check_top_k(top_k, num_experts)
    experts_total = num_experts * expert_parameter_count(dim, hidden, dim, "gelu")
    router = dim * num_experts
    return {
        "moe": {
            "params": experts_total + router,
            "active_params": top_k * expert_parameter_count(dim, hidden, dim, "gelu") + router,
            "flops_per_token": moe_flops_per_token(dim, hidden, num_experts, top_k, activation="gelu"),
        },
        "dense-active": _dense_counts(dim, top_k * hidden),
        "dense-total": _dense_counts(dim, num_experts * hidden),
    }


def _dense_counts(dim: int, width: int) -> dict[str, int]:
    params = expert_parameter_count(dim, width, dim, "gelu")
    return {
        "params": params,
        "active_params": params,
        "flops_per_token": ffn_flops_per_token(dim, width, dim, "gelu"),
    }


def interleaved_timings(
    cases: dict,
    repeats: int = 5,
    rounds: int | None = None,
    warmup: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Time every callable of ``cases`` (key -> fn) in ``rounds`` interleaved rounds.

    Each case is warmed up ``warmup`` times, then every round times each case
    ``repeats // rounds`` times (``rounds`` defaults to ``repeats``: one call per round), so a
    slow moment of the machine is shared by all cases instead of hitting one of them. The
    order of the cases is shuffled each round (seeded), so no case always runs right after
    the same (say, a much larger) one. Returns key -> :class:`~moe_teach.lessons.timing.Timing`.
    """
    if not isinstance(cases, dict) or not cases or not all(callable(fn) for fn in cases.values()):
        raise TypeError(f"cases must be a non-empty dict of key -> function, got {cases!r:.60}")
    check_repeats(repeats, warmup)
    if rounds is not None:
        check_positive_int("rounds", rounds, maximum=repeats)
    check_seed("seed", seed)
    check_bool("progress", progress)
    rounds = repeats if rounds is None else rounds
    return compare(cases, repeats=repeats, warmup=warmup, rounds=rounds, seed=seed, progress=progress)


def _forward(layer: torch.nn.Module, x: torch.Tensor):
    def run():
        with torch.no_grad():
            layer(x)

    return run


def _forward_backward(layer: torch.nn.Module, x: torch.Tensor):
    def run():
        layer(x).sum().backward()

    return run


def measure_layers(
    layers: dict, x: torch.Tensor, repeats: int = 5, rounds: int | None = None, progress: bool = False
) -> dict:
    """key -> median seconds and spread of forward (no grad) and forward + backward, and training memory.

    All layers are timed together in interleaved rounds (:func:`interleaved_timings`).
    ``spread`` is ``(max - min) / median`` of the repeats: large values mean a noisy machine.
    """
    if not isinstance(layers, dict) or not layers:
        raise TypeError(f"layers must be a non-empty dict of key -> nn.Module, got {layers!r:.60}")
    for layer in layers.values():
        check_module("layers entry", layer)
    check_float_tensor("x", x)
    cases = {}
    for key, layer in layers.items():
        cases[(key, "forward")] = _forward(layer, x)
        cases[(key, "forward_backward")] = _forward_backward(layer, x)
    timings = interleaved_timings(cases, repeats, rounds, progress=progress)
    result = {}
    for key, layer in layers.items():
        forward, backward = timings[(key, "forward")], timings[(key, "forward_backward")]
        result[key] = {
            "forward_s": forward.median,
            "forward_backward_s": backward.median,
            "forward_spread": forward.spread,
            "forward_backward_spread": backward.spread,
            "memory_bytes": training_memory_bytes(layer, x),
        }
    return result


def sweep(
    experts=(2, 4, 8, 16, 32),
    top_ks=(1, 2, 4),
    tokens: int = 1024,
    dim: int = 64,
    hidden: int = 64,
    repeats: int = 5,
    rounds: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """One row per (model, num_experts, top_k) with counts and measurements; ``k > E`` is skipped.

    Dense layers depend only on their width, so each width is measured once and reused. All
    layers are timed together in interleaved rounds, so their times can be compared.
    """
    check_int_tuple("experts", experts)
    check_int_tuple("top_ks", top_ks)
    check_sizes(tokens=tokens, dim=dim, hidden=hidden)
    check_repeats(repeats)
    check_seed("seed", seed)
    check_bool("progress", progress)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, dim, generator=generator, requires_grad=True)
    pairs = [(e, k) for e in experts for k in top_ks if k <= e]
    layers: dict[tuple, torch.nn.Module] = {}
    specs = []
    for num_experts, top_k in pairs:
        counts = layer_counts(dim, hidden, num_experts, top_k)
        for name, layer in make_layers(dim, hidden, num_experts, top_k, seed).items():
            key = (name, num_experts, top_k) if name == "moe" else ("dense", layer.hidden_dim)
            layers.setdefault(key, layer)
            specs.append((name, num_experts, top_k, counts[name], key))
    measured = measure_layers(layers, x, repeats, rounds, progress)
    return [
        {"model": name, "num_experts": e, "top_k": k, "tokens": tokens, **counts, **measured[key]}
        for name, e, k, counts, key in specs
    ]


# ----------------------------------------------------------------------------- the gap
STAGES = ("router", "sort_gather", "experts", "combine", "record_aux")


@torch.no_grad()
def moe_forward_breakdown(
    tokens: int = 2048,
    dim: int = 64,
    hidden: int = 64,
    num_experts: int = 8,
    top_k: int = 2,
    repeats: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """Median seconds of each stage of a grouped MoE forward, of the whole layer and of dense-active.

    The stages (:data:`STAGES`) are the very functions ``MoELayer.forward`` runs, one at a time:

    * ``router``: logits, softmax, top-k (``moe.router``);
    * ``sort_gather``: :func:`~moe_teach.dispatch.sort_by_expert` (argsort assignments by
      expert, count them, gather tokens in that order);
    * ``experts``: :func:`~moe_teach.dispatch.run_experts` (one matmul chain per expert slice);
    * ``combine``: :func:`~moe_teach.dispatch.combine` (weight the outputs, put them back in
      their slots, sum over the k slots);
    * ``record_aux``: capacity, the :class:`~moe_teach.routing.RoutingRecord` and the two
      auxiliary losses a training step reads from it (switch and z; the record computes a loss
      only when it is read, so an evaluation pass pays only for the record).

    ``moe_total`` is the whole layer and ``dense_active`` the dense feed-forward doing the
    same expert FLOPs in one matmul chain. All are timed in interleaved rounds. The stages add
    up to about ``moe_total``; what is left is argument checks, reshapes and Python calls.
    """
    check_sizes(tokens=tokens)
    check_repeats(repeats)
    layers = make_layers(dim, hidden, num_experts, top_k, seed)
    moe, dense = layers["moe"], layers["dense-active"]
    x = torch.randn(tokens, dim, generator=torch.Generator().manual_seed(seed))
    routed = moe.router(x)
    sorted_in = sort_by_expert(x, routed.expert_indices, num_experts)
    sorted_out = run_experts(moe.experts, sorted_in)

    def record_aux():
        capacity = moe.capacity(tokens)
        record = moe.make_record(routed, apply_capacity(routed.expert_indices, num_experts, capacity), capacity)
        return record.aux_losses["switch"] + record.aux_losses["z"]

    cases = {
        "router": lambda: moe.router(x),
        "sort_gather": lambda: sort_by_expert(x, routed.expert_indices, num_experts),
        "experts": lambda: run_experts(moe.experts, sorted_in),
        "combine": lambda: combine(sorted_out, sorted_in, routed.expert_weights),
        "record_aux": record_aux,
        "moe_total": lambda: moe(x),
        "dense_active": lambda: dense(x),
    }
    return {name: timing.median for name, timing in interleaved_timings(cases, repeats).items()}


def stage_sum(breakdown: dict[str, float]) -> float:
    """Sum of the :data:`STAGES` of a :func:`moe_forward_breakdown` result (seconds)."""
    if not isinstance(breakdown, dict):
        raise TypeError(f"breakdown must be a dict stage -> seconds, got {type(breakdown).__name__}")
    missing = [name for name in STAGES if name not in breakdown]
    if missing:
        raise ValueError(f"breakdown must contain the stages {', '.join(STAGES)}; "
                         f"missing {', '.join(missing)}")
    return sum(breakdown[name] for name in STAGES)


@torch.no_grad()
def matmul_throughput(
    row_counts=(16, 64, 256, 1024, 4096), dim: int = 64, hidden: int = 64, repeats: int = 7, seed: int = 0
) -> dict[int, float]:
    """GFLOP/s of one expert (GELU FFN) forward on ``rows`` tokens: small slices run less efficiently."""
    check_int_tuple("row_counts", row_counts, maximum=MAX_TOKENS)
    check_sizes(dim=dim, hidden=hidden)
    check_repeats(repeats)
    check_seed("seed", seed)
    torch.manual_seed(seed)
    expert = Expert(dim, hidden, dim, "gelu")
    result = {}
    for rows in row_counts:
        x = torch.randn(rows, dim)
        seconds = median_seconds(lambda: expert(x), repeats)
        result[rows] = rows * ffn_flops_per_token(dim, hidden, dim, "gelu") / seconds / 1e9
    return result


# ----------------------------------------------------------------------------- claims
def flop_saving(
    num_experts: int, top_k: int, dim: int, hidden: int, seq_len: int | None = None
) -> dict[str, float]:
    """Fraction of FLOPs an MoE layer saves against each dense twin (1 - moe / dense).

    With ``seq_len`` the attention of a whole block is added to both sides (it is the same in
    both, so the saving shrinks).
    """
    counts = layer_counts(dim, hidden, num_experts, top_k)
    extra = 0
    if seq_len is not None:
        check_positive_int("seq_len", seq_len)
        from ..counting import attention_flops_per_token

        extra = attention_flops_per_token(dim, seq_len)
    moe = counts["moe"]["flops_per_token"] + extra
    return {
        name: 1 - moe / (counts[name]["flops_per_token"] + extra) for name in ("dense-active", "dense-total")
    }


def lm_parameter_formula(config: LMConfig) -> tuple[int, int]:
    """``(total, active)`` parameters of :class:`~moe_teach.lm.model.LanguageModel` by formula (tied head)."""
    check_instance("config", config, LMConfig)
    block = config.block
    d = block.dim
    expert = expert_parameter_count(d, block.hidden_dim, d, block.activation)
    attention = 4 * d * d + 4 * d
    norms = 4 * d
    if block.moe is not None:
        router = d * block.moe.num_experts
        total_ffn, active_ffn = block.moe.num_experts * expert + router, block.moe.top_k * expert + router
    else:
        total_ffn = active_ffn = expert
    shared = config.vocab_size * d + config.max_seq_len * d + 2 * d
    if not config.tie_weights:
        shared += config.vocab_size * d
    per_layer = attention + norms
    layers = config.num_layers
    return shared + layers * (per_layer + total_ffn), shared + layers * (per_layer + active_ffn)


def counted_on_meta(config: LMConfig) -> tuple[int, int]:
    """``(total, active)`` from :mod:`moe_teach.counting` on a model built on the meta device (no memory)."""
    check_instance("config", config, LMConfig)
    with torch.device("meta"):
        model = LanguageModel(config)
    return count_parameters(model), active_parameters(model)


def find_config(
    active_target: float = 12e6, total_target: float = 100e6, vocab_size: int = 8192, max_seq_len: int = 512
) -> LMConfig:
    """The LM configuration of a small grid whose total and active parameters come closest to the targets."""
    check_positive_float("active_target", active_target)
    check_positive_float("total_target", total_target)
    check_positive_int("vocab_size", vocab_size)
    check_positive_int("max_seq_len", max_seq_len)
    best, best_error = None, float("inf")
    for dim in (256, 384, 512, 768):
        for num_layers in (4, 6, 8, 12):
            for num_experts in (8, 16, 32, 64):
                for top_k in (1, 2):
                    for hidden in range(256, 4097, 256):
                        block = BlockConfig(dim=dim, num_heads=8, hidden_dim=hidden,
                                            moe=MoEConfig(num_experts=num_experts, top_k=top_k))
                        config = LMConfig(vocab_size=vocab_size, max_seq_len=max_seq_len,
                                          num_layers=num_layers, block=block)
                        total, active = lm_parameter_formula(config)
                        error = abs(total / total_target - 1) + abs(active / active_target - 1)
                        if error < best_error:
                            best, best_error = config, error
    return best
