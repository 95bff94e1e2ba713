"""Matplotlib helpers for the lessons: the toy task, gate partitions, experts, gate probabilities.

Every function draws on an ``ax`` you pass (or a new one), labels its axes and title, and
returns the axes (or figure) so a lesson can add to it. Colours suit a light background.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from .toy import REGION_NAMES, ToyData, input_grid
from .widgets.common import ACCENT, MUTED

EXPERT_COLOURS = plt.get_cmap("tab10").colors


def _axes(ax):
    return plt.subplots(figsize=(4.5, 4))[1] if ax is None else ax


def draw_region_boundaries(ax, names: bool = True):
    """Dashed quadrant boundaries of the toy task, with each region's id and rule name."""
    ax.axhline(0, color="black", linestyle="--", linewidth=1)
    ax.axvline(0, color="black", linestyle="--", linewidth=1)
    if names:
        corners = [(0.5, 0.9), (-0.5, 0.9), (-0.5, -0.9), (0.5, -0.9)]
        for region, ((x1, x2), name) in enumerate(zip(corners, REGION_NAMES)):
            ax.text(x1, x2, f"{region}: {name}", ha="center", va="center", fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
    return ax


def plot_toy_task(data: ToyData, ax=None, title: str = "Toy task: target value of each point"):
    """Scatter of the ``[N, 2]`` points coloured by their target, with the region boundaries."""
    ax = _axes(ax)
    points = ax.scatter(data.x[:, 0], data.x[:, 1], c=data.y[:, 0], cmap="viridis", s=6)
    ax.figure.colorbar(points, ax=ax, label="target y")
    ax.set(xlabel="x1", ylabel="x2", title=title)
    return draw_region_boundaries(ax)


@torch.no_grad()
def plot_on_grid(fn, ax=None, title: str = "", resolution: int = 101, vmin=None, vmax=None,
                 colorbar_label: str = "output", names: bool = False):
    """Heatmap over ``[-1, 1]^2`` of ``fn([R*R, 2]) -> [R*R, 1]`` (a model or ``toy_target``)."""
    ax = _axes(ax)
    _, _, points = input_grid(resolution)
    values = fn(points)[:, 0].reshape(resolution, resolution)
    image = ax.imshow(values, origin="lower", extent=(-1, 1, -1, 1), cmap="viridis", vmin=vmin, vmax=vmax)
    ax.figure.colorbar(image, ax=ax, label=colorbar_label, shrink=0.8)
    ax.set(xlabel="x1", ylabel="x2", title=title)
    return draw_region_boundaries(ax, names=names)


@torch.no_grad()
def gate_probabilities_on_grid(layer, resolution: int = 101) -> torch.Tensor:
    """``[R, R, E]`` router probabilities of an :class:`~moe_teach.MoELayer` with ``input_dim=2``."""
    layer.eval()
    _, _, points = input_grid(resolution)
    return layer.router(points).probs.reshape(resolution, resolution, -1)


def plot_gate_partition(layer, ax=None, resolution: int = 101,
                        title: str = "Gate partition: most probable expert"):
    """Colour each point of the plane by the expert the gate gives the highest probability."""
    ax = _axes(ax)
    probs = gate_probabilities_on_grid(layer, resolution)
    num_experts = probs.shape[-1]
    colours = ListedColormap(EXPERT_COLOURS[:num_experts])
    ax.imshow(probs.argmax(-1), origin="lower", extent=(-1, 1, -1, 1), cmap=colours,
              vmin=-0.5, vmax=num_experts - 0.5, alpha=0.85)
    ax.legend(handles=[Patch(color=EXPERT_COLOURS[e], label=f"expert {e}") for e in range(num_experts)],
              loc="upper left", bbox_to_anchor=(1.02, 1), title="winner")
    ax.set(xlabel="x1", ylabel="x2", title=title)
    return draw_region_boundaries(ax)


@torch.no_grad()
def plot_expert_outputs(layer, resolution: int = 101, weighted: bool = False):
    """One heatmap per expert over the whole plane (the layer's ``output_dim`` must be 1).

    ``weighted=False`` shows ``expert_e(x)``; ``weighted=True`` shows its contribution to the
    mixture, ``p_e(x) * expert_e(x)`` (these sum to the soft mixture's output). The white
    outline marks where the gate gives that expert the highest probability. All panels share
    one colour scale, clipped at the 98th percentile of the absolute values.
    """
    num_experts = len(layer.experts)
    fig, axes = plt.subplots(1, num_experts, figsize=(3.3 * num_experts, 3.3), constrained_layout=True)
    x1, x2, points = input_grid(resolution)
    probs = gate_probabilities_on_grid(layer, resolution)                       # [R, R, E]
    values = torch.stack([expert(points)[:, 0] for expert in layer.experts], -1)         # [R*R, E]
    values = values.reshape(resolution, resolution, num_experts)
    if weighted:
        values = values * probs
    limit = float(values.abs().flatten().quantile(0.98))
    winner = probs.argmax(-1)
    for expert_id, ax in enumerate(axes):
        image = ax.imshow(values[..., expert_id], origin="lower", extent=(-1, 1, -1, 1), cmap="viridis",
                          vmin=-limit, vmax=limit)
        if (winner == expert_id).any():
            ax.contour(x1, x2, (winner == expert_id).float(), levels=[0.5], colors="white", linewidths=2)
        draw_region_boundaries(ax, names=False)
        ax.set(xlabel="x1", ylabel="x2", title=f"expert {expert_id}")
    label = "gate probability x expert output" if weighted else "expert output"
    fig.colorbar(image, ax=axes, label=label, shrink=0.8)
    what = "What each expert contributes to the mixture" if weighted else "What each expert computes"
    fig.suptitle(f"{what} (white outline: where the gate picks it)")
    return fig


def plot_gate_probabilities(probs, chosen=(), ax=None, title: str = "Gate probabilities"):
    """Bar chart of one token's ``[E]`` gate probabilities; experts in ``chosen`` highlighted."""
    ax = _axes(ax)
    probs = torch.as_tensor(probs, dtype=torch.float32).detach()
    chosen = {int(i) for i in torch.as_tensor(chosen).reshape(-1).tolist()}
    colours = [ACCENT if e in chosen else MUTED for e in range(len(probs))]
    bars = ax.bar(range(len(probs)), probs, color=colours)
    ax.bar_label(bars, fmt="%.2f")
    ax.set_xticks(range(len(probs)), [f"expert {e}" for e in range(len(probs))])
    ax.set(ylabel="gate probability", ylim=(0, 1.05), title=title)
    if chosen:
        ax.legend(handles=[Patch(color=ACCENT, label="chosen (top-k)"),
                           Patch(color=MUTED, label="not chosen")])
    return ax


def plot_losses(curves: dict, ax=None, title: str = "Training loss"):
    """Loss curves ``{label: [loss per step]}`` on a log scale."""
    ax = _axes(ax)
    for label, losses in curves.items():
        ax.plot(losses, label=label)
    ax.set(xlabel="step", ylabel="mean squared error", yscale="log", title=title)
    ax.legend()
    return ax
