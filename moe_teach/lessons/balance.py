"""Load-balancing experiments (lesson 05): expert collapse, reproduced and cured.

The task: points drawn around ``num_clusters`` cluster centres, all shifted along one shared
direction; each cluster has its own target map, plus a part shared by every cluster. One
expert that learns the shared part early is better than the others for *every* token, so the
router sends it more tokens, it learns more, ... (rich get richer). The router starts with a
slight lean towards expert 0 along the shared direction (``router_lean``), the way a small
accident of initialisation starts real collapses.

Each step trains one :class:`~moe_teach.MoELayer` full-batch with Adam on::

    loss = mse(layer(x), y) + switch_coef * switch_loss + z_coef * z_loss

and records the share of routing assignments each expert received (before capacity
dropping), so collapse can be plotted over steps. Everything is seeded: the same config gives
the same numbers (up to float rounding with a different number of threads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..moe_layer import MoELayer
from ..routing import RoutingRecord, apply_capacity, expert_capacity
from ..validation import (
    check_bool,
    check_float_tensor,
    check_index_tensor,
    check_instance,
    check_module,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
    check_seed,
    check_text,
    check_top_k,
)
from .plots import axes_or_new
from .timing import torch_threads

MAX_POINTS = 10_000_000


@dataclass
class ClusterTask:
    """A clustered regression task.

    Attributes:
        x: ``[N, dim]`` float32 inputs.
        y: ``[N, output_dim]`` float32 targets.
        cluster: ``[N]`` int64 cluster id of each point.
        shared_direction: ``[dim]`` unit vector every point is shifted along.
    """

    x: torch.Tensor
    y: torch.Tensor
    cluster: torch.Tensor
    shared_direction: torch.Tensor

    def __post_init__(self):
        check_float_tensor("x", self.x, min_dims=2)
        check_float_tensor("y", self.y, min_dims=2)
        check_index_tensor("cluster", self.cluster, num_rows=self.x.shape[0], dims=1)
        check_float_tensor("shared_direction", self.shared_direction, last_dim=self.x.shape[1])
        if self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"y must have {self.x.shape[0]} rows (one per point of x), got {self.y.shape[0]}")

    def __len__(self) -> int:
        return self.x.shape[0]


def make_cluster_task(num_points: int = 256, dim: int = 8, num_clusters: int = 16, output_dim: int = 4,
                      shared: float = 1.0, seed: int = 0) -> ClusterTask:
    """Sample the task with its own generator (the global seed is neither read nor changed).

    ``y = tanh(x A_c) + shared * tanh(x S)``: ``A_c`` is cluster ``c``'s own map, ``S`` is shared.
    The same ``seed`` gives the same points; use :func:`split_task` for a held-out batch of
    the same task (a different seed is a different task).
    """
    check_positive_int("num_points", num_points, maximum=MAX_POINTS)
    check_seed("seed", seed)
    check_positive_int("dim", dim)
    check_positive_int("num_clusters", num_clusters)
    check_positive_int("output_dim", output_dim)
    check_non_negative_float("shared", shared)
    generator = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(num_clusters, dim, generator=generator)
    direction = torch.randn(dim, generator=generator)
    direction = direction / direction.norm()
    own_maps = torch.randn(num_clusters, dim, output_dim, generator=generator) / math.sqrt(dim)
    shared_map = torch.randn(dim, output_dim, generator=generator) / math.sqrt(dim)
    cluster = torch.randint(0, num_clusters, (num_points,), generator=generator)
    x = centres[cluster] + 2.0 * direction + 0.3 * torch.randn(num_points, dim, generator=generator)
    y = torch.tanh(torch.einsum("nd,ndo->no", x, own_maps[cluster])) + shared * torch.tanh(x @ shared_map)
    return ClusterTask(x, y, cluster, direction)


def split_task(task: ClusterTask, train_fraction: float = 0.5) -> tuple[ClusterTask, ClusterTask]:
    """The first ``train_fraction`` of the points for training, the rest held out."""
    check_instance("task", task, ClusterTask)
    check_positive_float("train_fraction", train_fraction)
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be between 0 and 1 (exclusive), got {train_fraction}")
    cut = max(1, min(len(task) - 1, round(len(task) * train_fraction)))
    parts = [slice(0, cut), slice(cut, None)]
    return tuple(ClusterTask(task.x[p], task.y[p], task.cluster[p], task.shared_direction) for p in parts)


@dataclass
class BalanceConfig:
    """One training run of the collapse experiment."""

    num_experts: int = 4
    top_k: int = 1
    hidden_dim: int = 16
    steps: int = 80
    lr: float = 2e-2
    switch_coef: float = 0.0
    z_coef: float = 0.0
    capacity_factor: float | None = None
    router_lean: float = 0.2
    seed: int = 0

    def __post_init__(self):
        check_positive_int("num_experts", self.num_experts)
        check_top_k(self.top_k, self.num_experts)
        check_positive_int("hidden_dim", self.hidden_dim)
        check_positive_int("steps", self.steps)
        check_positive_float("lr", self.lr)
        check_non_negative_float("switch_coef", self.switch_coef)
        check_non_negative_float("z_coef", self.z_coef)
        if self.capacity_factor is not None:
            check_positive_float("capacity_factor", self.capacity_factor)
        check_non_negative_float("router_lean", self.router_lean)
        check_seed("seed", self.seed)


@dataclass
class BalanceRun:
    """What one run recorded at every step (before that step's update).

    Attributes:
        config: the :class:`BalanceConfig` of the run.
        shares: ``[steps, E]`` fraction of the ``T * k`` assignments routed to each expert (rows sum to 1).
        drop_rate: ``[steps]`` fraction of assignments dropped by capacity (0 when dropless).
        task_loss, switch_loss, z_loss: ``[steps]`` each.
        layer: the trained :class:`~moe_teach.MoELayer` (eval mode).
    """

    config: BalanceConfig
    shares: torch.Tensor
    drop_rate: torch.Tensor
    task_loss: torch.Tensor
    switch_loss: torch.Tensor
    z_loss: torch.Tensor
    layer: MoELayer = field(repr=False)

    def __post_init__(self):
        check_instance("config", self.config, BalanceConfig)
        for name in ("shares", "drop_rate", "task_loss", "switch_loss", "z_loss"):
            check_float_tensor(name, getattr(self, name))
        check_module("layer", self.layer, MoELayer)

    @property
    def final_shares(self) -> torch.Tensor:
        """``[E]`` shares at the last recorded step."""
        return self.shares[-1]

    @property
    def max_share(self) -> float:
        """Largest expert share at the last step (``1/E`` is perfect balance, 1 is total collapse)."""
        return float(self.final_shares.max())


def build_layer(task: ClusterTask, config: BalanceConfig) -> MoELayer:
    """The seeded layer of a run: router row 0 leaned towards the shared direction by ``router_lean``.

    The global random state is left as it was.
    """
    check_instance("task", task, ClusterTask)
    check_instance("config", config, BalanceConfig)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        layer = MoELayer(task.x.shape[1], task.y.shape[1], num_experts=config.num_experts, top_k=config.top_k,
                         hidden_dim=config.hidden_dim, capacity_factor=config.capacity_factor)
    with torch.no_grad():
        layer.router.proj.weight[0] += config.router_lean * task.shared_direction
    return layer


def expert_shares(record: RoutingRecord) -> torch.Tensor:
    """``[E]`` fraction of the record's ``T * k`` assignments routed to each expert (before dropping)."""
    check_instance("record", record, RoutingRecord)
    return record.routed_per_expert.float() / record.expert_indices.numel()


def train_balance(task: ClusterTask, config: BalanceConfig | None = None, progress: bool = False,
                  desc: str = "training") -> BalanceRun:
    """Train a fresh layer full-batch on ``task`` (on one thread) and record utilisation at every step."""
    check_instance("task", task, ClusterTask)
    config = BalanceConfig() if config is None else check_instance("config", config, BalanceConfig)
    check_bool("progress", progress)
    check_text("desc", desc)
    with torch_threads(1):
        return _train(task, config, progress, desc)


def _train(task: ClusterTask, config: BalanceConfig, progress: bool, desc: str) -> BalanceRun:
    layer = build_layer(task, config)
    optimizer = torch.optim.Adam(layer.parameters(), lr=config.lr, foreach=True)
    rows = {"shares": [], "drop_rate": [], "task_loss": [], "switch_loss": [], "z_loss": []}
    layer.train()
    for _ in tqdm(range(config.steps), desc=desc, disable=not progress, leave=False):
        output, record = layer(task.x, return_record=True)
        task_loss = F.mse_loss(output, task.y)
        aux = record.aux_losses
        loss = task_loss + config.switch_coef * aux["switch"] + config.z_coef * aux["z"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rows["shares"].append(expert_shares(record))
        rows["drop_rate"].append(torch.tensor(record.drop_rate))
        for name, value in (("task_loss", task_loss), ("switch_loss", aux["switch"]), ("z_loss", aux["z"])):
            rows[name].append(value.detach())
    layer.eval()
    recorded = {name: torch.stack(values) for name, values in rows.items()}
    return BalanceRun(config=config, layer=layer, **recorded)


@torch.no_grad()
def route(layer: MoELayer, x: torch.Tensor) -> RoutingRecord:
    """The routing record of ``layer`` on ``x`` ``[N, D]`` in eval mode (no gradient)."""
    check_module("layer", layer, MoELayer)
    layer.eval()
    return layer(x, return_record=True)[1]


def capacity_drops(expert_indices: torch.Tensor, num_experts: int,
                   capacity_factor: float | None) -> tuple[torch.Tensor, int | None]:
    """``(kept [T, k] bool, capacity)`` of a routing decision under ``capacity_factor`` (None = dropless)."""
    check_index_tensor("expert_indices", expert_indices)
    if capacity_factor is None:
        return torch.ones_like(expert_indices, dtype=torch.bool), None
    num_tokens, top_k = expert_indices.shape
    capacity = expert_capacity(num_tokens, num_experts, top_k, capacity_factor)
    return apply_capacity(expert_indices, num_experts, capacity), capacity


# ----------------------------------------------------------------------------- plots
def plot_utilisation(run: BalanceRun, ax=None, title: str = "Expert utilisation during training"):
    """Each expert's share of the routing assignments at every step, with the ``1/E`` line."""
    ax = axes_or_new(ax, figsize=(5.5, 3.6))
    shares = run.shares.numpy()
    for expert in range(shares.shape[1]):
        ax.plot(shares[:, expert], label=f"expert {expert}")
    ax.axhline(1 / shares.shape[1], color="black", linestyle="--", linewidth=1, label="perfect balance 1/E")
    ax.set(xlabel="training step", ylabel="share of assignments", ylim=(0, 1.02), title=title)
    ax.legend(fontsize=8, loc="upper right")
    return ax


def plot_token_expert_heatmap(record: RoutingRecord, ax=None, max_tokens: int | None = None,
                              title: str = "Token-by-expert combine weights"):
    """Rows tokens, columns experts: colour = combine weight; a red x marks a dropped assignment.

    Shows the first ``max_tokens`` tokens of the record (all of them when ``None``). Tokens stay
    in batch order, because the capacity queue is in token order: drops gather at the end.
    """
    ax = axes_or_new(ax, figsize=(4, 6))
    tokens = record.num_tokens if max_tokens is None else min(max_tokens, record.num_tokens)
    weights = record.dense_weights()[:tokens].detach()                         # [tokens, E]
    image = ax.imshow(weights.numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1,
                      interpolation="nearest")
    dropped_token, dropped_slot = torch.where(~record.kept[:tokens])
    if dropped_token.numel():
        ax.scatter(record.expert_indices[dropped_token, dropped_slot], dropped_token, marker="x", color="red",
                   s=60, linewidths=2, label=f"dropped (over capacity): {dropped_token.numel()}")
        ax.legend(loc="upper right", fontsize=8, framealpha=0.95)
    ax.figure.colorbar(image, ax=ax, label="combine weight", shrink=0.8)
    ax.set_xticks(range(weights.shape[1]), [str(e) for e in range(weights.shape[1])])
    ax.set(xlabel="expert", ylabel="token (batch order)", title=title)
    return ax


def plot_cluster_expert_heatmap(record: RoutingRecord, cluster: torch.Tensor, ax=None,
                                title: str = "Where each cluster's tokens go"):
    """Rows clusters, columns experts: share of each cluster's assignments routed to each expert.

    A token's ``k`` choices are distinct experts, so one expert holds at most ``1/k`` of a cluster's
    assignments: the colour scale runs from 0 to ``1/k``.
    """
    ax = axes_or_new(ax, figsize=(4, 5))
    num_clusters = int(cluster.max()) + 1
    counts = torch.zeros(num_clusters, record.num_experts)
    counts.index_put_((cluster.repeat_interleave(record.top_k), record.expert_indices.reshape(-1)),
                      torch.ones(record.expert_indices.numel()), accumulate=True)
    shares = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    image = ax.imshow(shares.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1 / record.top_k,
                      interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label="share of the cluster's assignments", shrink=0.8)
    ax.set_xticks(range(record.num_experts), [str(e) for e in range(record.num_experts)])
    ax.set(xlabel="expert", ylabel="cluster", title=title)
    return ax
