"""Matplotlib helpers for the lessons: the toy task, gate partitions, experts, gate probabilities.

Every function draws on an ``ax`` you pass (or a new one), labels its axes and title, and
returns the axes (or figure) so a lesson can add to it. Colours suit a light background.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from ..validation import check_top_k
from .toy import REGION_NAMES, ToyData, input_grid

EXPERT_COLOURS = plt.get_cmap("tab10").colors
ACCENT = "#d9480f"   # highlighted bars (chosen experts), also used by the explorers' SVG charts
MUTED = "#adb5bd"    # other bars


def axes_or_new(ax, figsize=(4.5, 4)):
    """``ax`` itself, or the axes of a new figure of ``figsize`` when ``ax`` is None."""
    return plt.subplots(figsize=figsize)[1] if ax is None else ax


def draw_region_boundaries(ax, names: bool = True, colour: str = "black"):
    """Dashed quadrant boundaries of the toy task, with each region's id and rule name.

    ``colour``: the lines' colour; use ``"white"`` on a dark image.
    """
    ax.axhline(0, color=colour, linestyle="--", linewidth=1.2)
    ax.axvline(0, color=colour, linestyle="--", linewidth=1.2)
    if names:
        corners = [(0.5, 0.9), (-0.5, 0.9), (-0.5, -0.9), (0.5, -0.9)]
        for region, ((x1, x2), name) in enumerate(zip(corners, REGION_NAMES)):
            ax.text(x1, x2, f"{region}: {name}", ha="center", va="center", fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
    return ax


def plot_toy_task(data: ToyData, ax=None, title: str = "Toy task: target value of each point",
                  vmin=None, vmax=None):
    """Scatter of the ``[N, 2]`` points coloured by their target, with the region boundaries.

    Pass the same ``vmin``/``vmax`` to neighbouring panels so equal colours mean equal values.
    """
    ax = axes_or_new(ax)
    points = ax.scatter(data.x[:, 0], data.x[:, 1], c=data.y[:, 0], cmap="viridis", s=6, vmin=vmin, vmax=vmax)
    ax.figure.colorbar(points, ax=ax, label="target y")
    ax.set(xlabel="x1", ylabel="x2", title=title)
    return draw_region_boundaries(ax)


@torch.no_grad()
def plot_on_grid(fn, ax=None, title: str = "", resolution: int = 101, vmin=None, vmax=None,
                 colorbar_label: str = "output", names: bool = False, boundary_colour: str = "black"):
    """Heatmap over ``[-1, 1]^2`` of ``fn([R*R, 2]) -> [R*R, 1]`` (a model or ``toy_target``).

    ``boundary_colour``: colour of the dashed region boundaries (``"white"`` suits a dark image).
    """
    ax = axes_or_new(ax)
    _, _, points = input_grid(resolution)
    values = fn(points)[:, 0].reshape(resolution, resolution)
    image = ax.imshow(values, origin="lower", extent=(-1, 1, -1, 1), cmap="viridis", vmin=vmin, vmax=vmax)
    ax.figure.colorbar(image, ax=ax, label=colorbar_label, shrink=0.8)
    ax.set(xlabel="x1", ylabel="x2", title=title)
    return draw_region_boundaries(ax, names=names, colour=boundary_colour)


@torch.no_grad()
def gate_probabilities_on_grid(layer, resolution: int = 101) -> torch.Tensor:
    """``[R, R, E]`` router probabilities of an :class:`~moe_teach.MoELayer` with ``input_dim=2``."""
    layer.eval()
    _, _, points = input_grid(resolution)
    return layer.router(points).probs.reshape(resolution, resolution, -1)


def plot_gate_partition(layer, ax=None, resolution: int = 101,
                        title: str = "Gate partition: most probable expert"):
    """Colour each point of the plane by the expert the gate gives the highest probability."""
    ax = axes_or_new(ax)
    probs = gate_probabilities_on_grid(layer, resolution)
    num_experts = probs.shape[-1]
    colours = ListedColormap(EXPERT_COLOURS[:num_experts])
    ax.imshow(probs.argmax(-1), origin="lower", extent=(-1, 1, -1, 1), cmap=colours,
              vmin=-0.5, vmax=num_experts - 0.5, alpha=0.85)
    ax.legend(handles=[Patch(color=EXPERT_COLOURS[e], label=f"expert {e}") for e in range(num_experts)],
              loc="upper left", bbox_to_anchor=(1.02, 1), title="winner")
    ax.set(xlabel="x1", ylabel="x2", title=title)
    return draw_region_boundaries(ax)


SLIVER = 0.05
"""An expert region smaller than this share of the plane is marked with a star in :func:`plot_expert_outputs`."""


@torch.no_grad()
def plot_expert_outputs(layer, resolution: int = 101, weighted: bool = False, limit: float = 1.5):
    """One heatmap per expert over the whole plane (the layer's ``output_dim`` must be 1).

    ``weighted=False`` shows ``expert_e(x)``; ``weighted=True`` shows its contribution to the
    mixture, ``p_e(x) * expert_e(x)`` (these sum to the soft mixture's output). All panels share
    one colour scale, clipped to ``[-limit, limit]`` (the toy targets' range): an expert may output
    much larger values where the gate ignores it, and those would wash out everything else.
    A thick white line with a black edge outlines where the gate picks that expert (its argmax
    region); outside it the panel is faded. A region under ``SLIVER`` of the plane, too thin to
    see, is marked by a star at its centre and named in the panel's title.
    """
    num_experts = len(layer.experts)
    fig, axes = plt.subplots(1, num_experts, figsize=(3.3 * num_experts, 3.5), constrained_layout=True)
    x1, x2, points = input_grid(resolution)
    probs = gate_probabilities_on_grid(layer, resolution)                       # [R, R, E]
    values = torch.stack([expert(points)[:, 0] for expert in layer.experts], -1)         # [R*R, E]
    values = values.reshape(resolution, resolution, num_experts)
    if weighted:
        values = values * probs
    winner = probs.argmax(-1)                                                   # [R, R]
    for expert_id, ax in enumerate(axes):
        image = ax.imshow(values[..., expert_id], origin="lower", extent=(-1, 1, -1, 1), cmap="viridis",
                          vmin=-limit, vmax=limit)
        draw_region_boundaries(ax, names=False, colour="lightgrey")
        owned = (winner == expert_id).float()
        faded = torch.zeros(resolution, resolution, 4)                          # RGBA overlay
        faded[..., :3], faded[..., 3] = 1.0, 0.55 * (1 - owned)                 # white veil outside
        ax.imshow(faded, origin="lower", extent=(-1, 1, -1, 1))
        if owned.any():   # a black line under a white one: visible on dark and on light colours
            ax.contour(x1, x2, owned, levels=[0.5], colors="black", linewidths=4)
            ax.contour(x1, x2, owned, levels=[0.5], colors="white", linewidths=2)
        share = float(owned.mean())
        title = f"expert {expert_id} (wins {share:.0%} of the plane)"
        if 0 < share < SLIVER:   # a region too thin to see: mark where it is
            ax.plot(x1[owned.bool()].mean(), x2[owned.bool()].mean(), marker="*", markersize=16,
                    color="white", markeredgecolor="black")
            title = f"expert {expert_id} (wins {share:.1%}: the star)"
        ax.set(xlabel="x1", ylabel="x2", title=title)
    label = "gate probability x expert output" if weighted else "expert output"
    fig.colorbar(image, ax=axes, label=f"{label} (clipped to ±{limit:g})", shrink=0.8, extend="both")
    what = "What each expert contributes to the mixture" if weighted else "What each expert computes"
    fig.suptitle(f"{what}. Full colour, inside the white line: where the gate picks that expert; "
                 "faded: where another expert wins")
    return fig


def plot_top_k_choices(probs, top_k: int, labels=None, title: str = "Gate probabilities and the top-k"):
    """One bar chart per token of ``[T, E]`` gate probabilities, its ``top_k`` experts highlighted."""
    probs = torch.as_tensor(probs, dtype=torch.float32).detach()
    num_tokens = probs.shape[0]
    check_top_k(top_k, probs.shape[1])
    fig, axes = plt.subplots(1, num_tokens, figsize=(3.6 * num_tokens, 3.2), constrained_layout=True,
                             squeeze=False)
    chosen = probs.topk(top_k, dim=-1).indices                                  # [T, k]
    for token, ax in enumerate(axes[0]):
        name = labels[token] if labels is not None else f"token {token}"
        plot_gate_probabilities(probs[token], chosen[token], ax=ax, title=name)
        ax.set_xticks(range(probs.shape[1]), [str(e) for e in range(probs.shape[1])])
        ax.set_xlabel("expert")
        for text in ax.texts:   # the bar labels: small enough for 8 bars side by side
            text.set_fontsize(7)
        if token > 0 and ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.suptitle(f"{title} (top-{top_k} of {probs.shape[1]} highlighted)")
    return fig


def plot_gate_probabilities(probs, chosen=(), ax=None, title: str = "Gate probabilities"):
    """Bar chart of one token's ``[E]`` gate probabilities; experts in ``chosen`` highlighted."""
    ax = axes_or_new(ax)
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
    ax = axes_or_new(ax)
    for label, losses in curves.items():
        ax.plot(losses, label=label)
    ax.set(xlabel="step", ylabel="mean squared error", yscale="log", title=title)
    ax.legend()
    return ax
