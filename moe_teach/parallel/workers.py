"""The tasks worker processes run: ``task(rank, world_size, **kwargs)``, rank 0 returns the result.

Each task runs inside a process group set up by :func:`~moe_teach.parallel.launch.run_workers`.
They live in the package (not in a notebook) because a spawned process can only run
functions it can import.

* :func:`forward_task`: one forward pass of a given :class:`~moe_teach.moe_layer.MoELayer`,
  split over the ranks; returns the outputs and what each rank received.
* :func:`check_task`: outputs and gradients of the expert-parallel layer against the
  one-process layer with the same weights, for a list of cases.
* :func:`train_task`: a few steps of data-plus-expert-parallel training next to one-process
  training from the same start.
* :func:`measure_task`: bytes and time per phase on every rank.
* :func:`fail_task`: a rank that raises or hangs on purpose (to see the launcher end the run).
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import torch
import torch.distributed as dist

from ..moe_layer import MoELayer
from ..routing import apply_capacity
from .layer import all_reduce_replicated_grads, shard_moe_layer


def _device() -> torch.device:
    """This rank's GPU with the nccl backend (set by the launcher), else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _to_cpu(value):
    """``value`` with every tensor in it (in dicts, lists, tuples) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _gather(value) -> list:
    """Every rank's ``value`` (any picklable object, tensors moved to the CPU), in rank order."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, _to_cpu(value))
    return gathered


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max()) if a.numel() else 0.0


def _expert_grads(experts, first: int) -> dict:
    """``{global expert id: {parameter name: gradient}}`` (zeros for a parameter without one)."""
    return {first + i: {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
                        for name, p in expert.named_parameters()}
            for i, expert in enumerate(experts)}


# ----------------------------------------------------------------------------- forward


def forward_task(rank: int, world_size: int, layer: MoELayer, x: torch.Tensor) -> dict:
    """Rank ``r`` runs its shard on rows ``r*T .. (r+1)*T - 1`` of ``x`` ``[W*T, D]``.

    Returns ``output [W*T, O]`` and, per rank, the rows sent to and received from each rank
    and ``expert_inputs``: for each of its experts (global id), the token rows it ran on.
    """
    shard = shard_moe_layer(layer.to(_device()), rank, world_size)
    chunk = x.to(_device()).chunk(world_size)[rank]
    expert_inputs = {}

    def keep_input(expert_id):
        def hook(module, args, output):
            expert_inputs[expert_id] = args[0].clone()          # returns None: the output is unchanged
        return hook

    for i, expert in enumerate(shard.experts):
        expert.register_forward_hook(keep_input(shard.first_expert + i))
    with torch.no_grad():
        output = shard(chunk)
    stats = shard.last_exchange
    gathered = _gather({"output": output, "recv_rows": stats.recv_rows, "send_rows": stats.send_rows,
                        "expert_inputs": expert_inputs})
    return {"output": torch.cat([g["output"] for g in gathered]),
            "recv_rows": [g["recv_rows"] for g in gathered], "send_rows": [g["send_rows"] for g in gathered],
            "expert_inputs": {e: rows for g in gathered for e, rows in g["expert_inputs"].items()}}


# ----------------------------------------------------------------------------- equality check


def make_case(case: dict, world_size: int):
    """The layer, the batch ``x [W*T, D]`` and the upstream gradient of one check case (seeded).

    ``avoid_ranks`` makes the router never choose those ranks' experts (their router rows are
    set to a large negative constant and the inputs made positive), so those ranks receive
    no tokens at all.
    """
    generator = torch.Generator().manual_seed(case.get("seed", 0))
    torch.manual_seed(case.get("seed", 0))
    dim, tokens = case.get("dim", 8), case.get("tokens_per_rank", 12) * world_size
    layer = MoELayer(dim, num_experts=case["num_experts"], top_k=case["top_k"], hidden_dim=case.get("hidden", 16),
                     capacity_factor=case.get("capacity_factor"))
    x = torch.randn(tokens, dim, generator=generator)
    upstream = torch.randn(tokens, dim, generator=generator)
    avoid = case.get("avoid_ranks", ())
    if avoid:
        x = x.abs() + 0.1
        local = case["num_experts"] // world_size
        with torch.no_grad():
            for r in avoid:
                layer.router.proj.weight[r * local:(r + 1) * local] = -5.0
    return layer, x, upstream


def reference_forward(layer: MoELayer, x: torch.Tensor, world_size: int) -> torch.Tensor:
    """The one-process result the expert-parallel layer must equal.

    Dropless: the layer on the whole batch. With a capacity factor: the layer on each rank's
    tokens as one batch, because capacity is decided per source rank.
    """
    if layer.capacity_factor is None:
        return layer(x)
    return torch.cat([layer(chunk) for chunk in x.chunk(world_size)])


def check_task(rank: int, world_size: int, cases: list[dict]) -> list[dict]:
    """For each case: max differences of outputs, input gradients, every expert's weight
    gradients and the router's gradient, expert-parallel versus one process."""
    results = []
    for case in cases:
        layer, x, upstream = make_case(case, world_size)
        layer, x, upstream = layer.to(_device()), x.to(_device()), upstream.to(_device())
        shard = shard_moe_layer(layer, rank, world_size)
        chunk = x.chunk(world_size)[rank].clone().requires_grad_()
        output = shard(chunk)
        (output * upstream.chunk(world_size)[rank]).sum().backward()
        all_reduce_replicated_grads(shard)
        mine = {"output": output.detach(), "input_grad": chunk.grad,
                "experts": _expert_grads(shard.experts, shard.first_expert),
                "router": shard.router.proj.weight.grad.clone(), "received": sum(shard.last_exchange.recv_rows)}
        gathered = _gather(mine)
        if rank != 0:
            continue
        reference = x.clone().requires_grad_()
        expected = reference_forward(layer, reference, world_size)
        (expected * upstream).sum().backward()
        expected_experts = _expert_grads(layer.experts, 0)
        dropped = 0
        if layer.capacity_factor is not None:
            with torch.no_grad():
                for part in x.chunk(world_size):
                    chosen = layer.router(part).expert_indices.cpu()
                    dropped += int((~apply_capacity(chosen, layer.num_experts, layer.capacity(len(part)))).sum())
        expert_diff = max(_max_diff(g["experts"][e][name], expected_experts[e][name])
                          for g in gathered for e in g["experts"] for name in g["experts"][e])
        results.append({
            **case, "world_size": world_size,
            "output_diff": _max_diff(torch.cat([g["output"] for g in gathered]), expected),
            "input_grad_diff": _max_diff(torch.cat([g["input_grad"] for g in gathered]), reference.grad),
            "expert_grad_diff": expert_diff,
            "router_grad_diff": max(_max_diff(g["router"], layer.router.proj.weight.grad) for g in gathered),
            "experts_checked": sorted(e for g in gathered for e in g["experts"]),
            "received_per_rank": [g["received"] for g in gathered], "dropped": dropped,
            "output_scale": float(expected.detach().abs().max()),
        })
    return results


# ----------------------------------------------------------------------------- training


def _teacher_batch(step: int, tokens: int, dim: int, seed: int):
    """A regression batch: inputs ``[tokens, D]`` and targets from a fixed random teacher."""
    teacher = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)) / math.sqrt(dim)
    x = torch.randn(tokens, dim, generator=torch.Generator().manual_seed(seed * 1000 + step + 1))
    return x, torch.tanh(x @ teacher) + torch.sin(2 * x)


def _sgd_step(module: torch.nn.Module, lr: float) -> None:
    """Plain SGD, ``p -= lr * grad``, then clear the gradients. (Written out: the first step of
    ``torch.optim.SGD`` imports torch's compiler stack, seconds of start-up in every process.)"""
    with torch.no_grad():
        for param in module.parameters():
            if param.grad is not None:
                param -= lr * param.grad
                param.grad = None


def train_task(rank: int, world_size: int, steps: int = 5, num_experts: int = 4, top_k: int = 2,
               capacity_factor: float | None = None, tokens_per_rank: int = 32, dim: int = 16, hidden: int = 32,
               lr: float = 0.05, seed: int = 0) -> dict:
    """Train ``x + MoE(x)`` with SGD on a regression target, data plus expert parallel, from the same
    start as a one-process copy trained on the whole batch (rank 0).

    Each rank takes its slice of every batch (data parallel); the loss is the mean squared
    error over the *whole* batch, so each rank divides its sum by the global count. Expert
    gradients arrive complete through the exchange; the router's are summed over ranks.
    Returns both loss curves and the largest difference of the final expert weights.
    """
    torch.manual_seed(seed)
    layer = MoELayer(dim, num_experts=num_experts, top_k=top_k, hidden_dim=hidden,
                     capacity_factor=capacity_factor).to(_device())
    reference = copy.deepcopy(layer)
    shard = shard_moe_layer(layer, rank, world_size)
    losses, reference_losses, step_seconds = [], [], []
    total = world_size * tokens_per_rank * dim
    for step in range(steps):
        x, y = (t.to(_device()) for t in _teacher_batch(step, world_size * tokens_per_rank, dim, seed))
        started = time.perf_counter()
        chunk, target = x.chunk(world_size)[rank], y.chunk(world_size)[rank]
        loss = ((chunk + shard(chunk) - target) ** 2).sum() / total
        loss.backward()
        all_reduce_replicated_grads(shard)
        _sgd_step(shard, lr)
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        step_seconds.append(time.perf_counter() - started)
        losses.append(float(global_loss))
        if rank == 0:
            reference_loss = ((x + reference_forward(reference, x, world_size) - y) ** 2).sum() / total
            reference_loss.backward()
            _sgd_step(reference, lr)
            reference_losses.append(float(reference_loss.detach()))
    weights = _gather({shard.first_expert + i: {n: p.detach() for n, p in e.named_parameters()}
                       for i, e in enumerate(shard.experts)})
    router_weights = _gather(shard.router.proj.weight.detach())
    if rank != 0:
        return {}
    reference_state = {i: dict(e.named_parameters()) for i, e in enumerate(reference.experts)}
    weight_diff = max(_max_diff(p, reference_state[e][n]) for g in weights for e in g for n, p in g[e].items())
    router_diff = max(_max_diff(w, reference.router.proj.weight) for w in router_weights)
    return {"losses": losses, "reference_losses": reference_losses, "expert_weight_diff": weight_diff,
            "router_weight_diff": router_diff, "step_seconds": statistics.median(step_seconds)}


# ----------------------------------------------------------------------------- measurements


def measure_task(rank: int, world_size: int, variants: list[dict] | None = None, **config) -> list:
    """:func:`measure_one` for ``config``, or for each of ``variants`` (overrides of ``config``)
    in one launch: a list of per-rank lists, one per variant."""
    if variants is None:
        return measure_one(rank, world_size, **config)
    return [measure_one(rank, world_size, **{**config, **variant}) for variant in variants]


def measure_one(rank: int, world_size: int, tokens_per_rank: int = 512, num_experts: int = 8, top_k: int = 2,
                 dim: int = 64, hidden: int = 128, capacity_factor: float | None = None, skew: float = 0.0,
                 repeats: int = 5, seed: int = 0) -> list[dict]:
    """Bytes and seconds per phase of forward + backward passes, for every rank.

    ``skew > 0`` pulls tokens towards expert 0 (rank 0's): its router row gets ``skew`` times a
    direction every input leans towards, so rank 0 receives more than its share. Returns one
    dict per rank: rows sent and received, bytes (forward pass, both exchanges, other ranks
    only), median seconds of each forward phase and of the whole forward + backward step.
    """
    torch.manual_seed(seed)
    layer = MoELayer(dim, num_experts=num_experts, top_k=top_k, hidden_dim=hidden, capacity_factor=capacity_factor)
    lean = torch.nn.functional.normalize(torch.ones(dim), dim=0)
    with torch.no_grad():
        layer.router.proj.weight[0] += skew * lean
    shard = shard_moe_layer(layer.to(_device()), rank, world_size)
    shard.time_phases = True
    generator = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn(world_size * tokens_per_rank, dim, generator=generator) + lean).chunk(world_size)[rank]
    x = x.to(_device())
    phases, steps = [], []
    for repeat in range(repeats + 1):                      # the first pass is a warm-up
        dist.barrier()
        started = time.perf_counter()
        output = shard(x)
        output.sum().backward()
        seconds = time.perf_counter() - started
        if repeat:
            phases.append(dict(shard.last_exchange.times))
            steps.append(seconds)
        shard.zero_grad()
    stats = shard.last_exchange
    mine = {"rank": rank, "send_rows": stats.send_rows, "recv_rows": stats.recv_rows,
            "tokens_per_local_expert": stats.tokens_per_local_expert, "dropped": stats.dropped,
            "assignments": tokens_per_rank * top_k,
            "bytes_sent": stats.bytes_sent(), "bytes_received": stats.bytes_received(),
            "bytes_sent_with_self": stats.bytes_sent(include_self=True),
            "times": {name: statistics.median(p[name] for p in phases) for name in phases[0]},
            "step_seconds": statistics.median(steps)}
    return _gather(mine)


# ----------------------------------------------------------------------------- failures


def fail_task(rank: int, world_size: int, fail_rank: int = 1, mode: str = "raise") -> None:
    """Rank ``fail_rank`` raises (``mode="raise"``) or hangs (``"hang"``); the others wait for it."""
    if rank == fail_rank:
        if mode == "hang":
            time.sleep(3600)
        raise RuntimeError(f"deliberate failure on rank {rank}")
    dist.barrier()


WORKER_TASKS = {"forward": forward_task, "check": check_task, "train": train_task, "measure": measure_task,
                "fail": fail_task}
