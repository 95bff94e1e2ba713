"""Reading lesson 08's sweep: the figure by k, where the MoE is slower than dense-total, the bytes
moved besides the arithmetic, the per-call overhead of an expert, and the matmul yardstick.
"""

from __future__ import annotations

import torch

from ..experts import Expert, expert_parameter_count
from ..validation import (
    check_positive_float,
    check_positive_int,
    check_seed,
    check_text,
    check_top_k,
)
from .performance import MAX_MATMUL_N, check_repeats, check_sizes
from .timing import time_callable

SWEEP_STYLES = {   # model -> (colour, line style, marker, marker face): MoE drawn last, hollow, on top
    "dense-total": ("tab:red", ":", "^", "tab:red"),
    "dense-active": ("tab:green", "--", "s", "tab:green"),
    "moe": ("tab:blue", "-", "o", "none"),
}


def plot_sweep(rows: list[dict], panels: list[tuple[str, str, float]], top_ks=(1, 2, 4)):
    """One row of panels per ``k``, one column per ``(key, label, scale)``, three lines per panel.

    Each panel shows the MoE layer and its two dense twins at that ``k`` against ``E``, so no
    panel holds more than three series; the MoE line is drawn last with hollow markers, so it
    stays visible where it lies on a dense line (active parameters, FLOPs). One legend for all.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    experts = sorted({r["num_experts"] for r in rows})
    fig, axes = plt.subplots(len(top_ks), len(panels), figsize=(3.3 * len(panels), 2.6 * len(top_ks)),
                             squeeze=False, constrained_layout=True)
    for i, k in enumerate(top_ks):
        for j, (key, label, scale) in enumerate(panels):
            ax = axes[i][j]
            for model, (colour, style, marker, face) in SWEEP_STYLES.items():
                picked = [r for r in rows if r["model"] == model and r["top_k"] == k]
                ax.plot([r["num_experts"] for r in picked], [r[key] * scale for r in picked], linestyle=style,
                        marker=marker, color=colour, markerfacecolor=face, markersize=8 if model == "moe" else 5,
                        linewidth=2 if model == "moe" else 1.5, label=model, zorder=3 if model == "moe" else 2)
            ax.set(xscale="log", yscale="log")
            ax.set_xticks(experts, [str(e) for e in experts])
            ax.xaxis.set_minor_locator(NullLocator())   # log-scale minor labels would print over the E ticks
            if i == 0:
                ax.set_title(label)
            if i == len(top_ks) - 1:
                ax.set_xlabel("number of experts E")
            if j == 0:
                ax.set_ylabel(f"top-{k}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    names = {"moe": "MoE (top-k of E)", "dense-active": "dense-active (width k*H)",
             "dense-total": "dense-total (width E*H)"}
    fig.legend(handles, [names[label] for label in labels], loc="outside upper center", ncols=3)
    return fig


def slower_than_dense_total(rows: list[dict], key: str = "forward_s", min_flop_ratio: float = 2.0) -> list[dict]:
    """MoE rows that took longer than their dense-total twin although it does ``min_flop_ratio``x their FLOPs.

    Each result: ``num_experts``, ``top_k``, ``flop_ratio`` (dense-total / MoE FLOPs) and
    ``time_ratio`` (MoE time / dense-total time, above 1: the MoE was slower).
    """
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"rows must be a list of dicts (the rows of sweep()), got {rows!r:.60}")
    check_text("key", key)
    if any(key not in r for r in rows):
        raise ValueError(f"key must be a measurement of every row (such as 'forward_s'), got {key!r}")
    check_positive_float("min_flop_ratio", min_flop_ratio)
    dense = {(r["num_experts"], r["top_k"]): r for r in rows if r["model"] == "dense-total"}
    found = []
    for r in (r for r in rows if r["model"] == "moe"):
        twin = dense[(r["num_experts"], r["top_k"])]
        flop_ratio = twin["flops_per_token"] / r["flops_per_token"]
        time_ratio = r[key] / twin[key]
        if flop_ratio >= min_flop_ratio and time_ratio > 1:
            found.append({"num_experts": r["num_experts"], "top_k": r["top_k"], "flop_ratio": flop_ratio,
                          "time_ratio": time_ratio})
    return found


def bytes_moved_per_forward(tokens: int, dim: int, hidden: int, num_experts: int, top_k: int) -> dict[str, int]:
    """Counted float32 bytes one forward pass must read or write besides its arithmetic.

    ``moe_weights`` and ``dense_active_weights``: every weight of the layer is read once
    (each expert that receives a token reads all its weights; with ``tokens * top_k >=
    num_experts`` we count all experts). ``gather_scatter``: the MoE copies ``tokens * top_k``
    rows of width ``dim`` into expert order and back (two copies), which a dense layer never does.
    """
    check_sizes(tokens=tokens, dim=dim, hidden=hidden, num_experts=num_experts)
    check_top_k(top_k, num_experts)
    experts_hit = min(num_experts, tokens * top_k)
    return {
        "moe_weights": 4 * experts_hit * expert_parameter_count(dim, hidden, dim, "gelu"),
        "dense_active_weights": 4 * expert_parameter_count(dim, top_k * hidden, dim, "gelu"),
        "gather_scatter": 4 * 2 * tokens * top_k * dim,
    }


def expert_call_overhead(dim: int = 64, hidden: int = 64, repeats: int = 200, seed: int = 0) -> float:
    """Median seconds of one expert call on a single token: almost nothing but per-call overhead."""
    check_sizes(dim=dim, hidden=hidden)
    check_repeats(repeats)
    check_seed("seed", seed)
    torch.manual_seed(seed)
    expert = Expert(dim, hidden, dim, "gelu")
    one = torch.randn(1, dim)
    with torch.no_grad():
        return time_callable(lambda: expert(one), repeats=repeats, warmup=10).median


def square_matmul_gflops(n: int = 512, repeats: int = 5) -> float:
    """GFLOP/s of an ``n x n`` by ``n x n`` matmul (median after one warm-up), as lesson 00 measures it."""
    check_positive_int("n", n, maximum=MAX_MATMUL_N)
    check_repeats(repeats)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / time_callable(lambda: a @ b, repeats=repeats, warmup=1).median / 1e9
