"""``moe-teach bench``: time each dispatch path against dense feed-forwards.

Forward plus backward in float32 at 4096 tokens, width 256, expert hidden size 1024,
8 experts, top-2 (defaults; all adjustable). Compared with:

* ``dense_active``: one feed-forward with hidden size ``top_k * expert_hidden`` (2048), the
  same parameters a token actually uses in the MoE layer;
* ``all_experts``: every expert on every token (the ``mask`` reference path).

Every path uses the same routing decision (the router is computed once outside the timed
region), so the timings compare dispatch and expert compute only. The last printed line is
``grouped_vs_dense_active=R1 all_experts_vs_grouped=R2`` (ratios of medians from this run).
"""

from __future__ import annotations

import argparse

import torch

from ..dispatch import DISPATCHERS
from ..experts import ACTIVATIONS, Expert, make_experts
from ..lessons.timing import compare
from ..routing import topk_softmax
from ..validation import check_choice, check_positive_int, check_top_k


def case_name(dispatch: str) -> str:
    """Benchmark row of a dispatch path: ``moe_<name>``; the compute-all path is ``moe_all_experts``."""
    return "moe_all_experts" if dispatch == "mask" else f"moe_{dispatch}"


def make_cases(tokens: int, width: int, hidden: int, num_experts: int, top_k: int, activation: str, seed: int):
    """Name -> zero-argument callable doing one forward+backward, all on the same inputs and routing."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, width, generator=generator, requires_grad=True)
    logits = torch.randn(tokens, num_experts, generator=generator)
    _, weights, indices = topk_softmax(logits, top_k, renormalize=True)
    weights.requires_grad_(True)
    torch.manual_seed(seed)
    experts = make_experts(num_experts, width, hidden, width, activation, bias=False)
    dense = Expert(width, top_k * hidden, width, activation, bias=False)

    def moe_step(dispatch):
        def step():
            out = dispatch(x, experts, indices, weights)
            out.backward(torch.ones_like(out))
        return step

    def dense_step():
        out = dense(x)
        out.backward(torch.ones_like(out))

    cases = {case_name(name): moe_step(fn) for name, fn in DISPATCHERS.items()}
    cases["dense_active"] = dense_step
    return cases


def run_benchmark(tokens=4096, width=256, hidden=1024, num_experts=8, top_k=2, activation="relu",
                  repeats=10, seed=0, rounds=3, progress=False) -> dict[str, float]:
    """Median forward+backward seconds per case. Cases are interleaved over ``rounds`` to share noise."""
    check_positive_int("tokens", tokens)
    check_positive_int("width", width)
    check_positive_int("hidden", hidden)
    check_positive_int("num_experts", num_experts)
    check_top_k(top_k, num_experts)
    check_choice("activation", activation, ACTIVATIONS)
    check_positive_int("repeats", repeats)
    cases = make_cases(tokens, width, hidden, num_experts, top_k, activation, seed)
    timings = compare(cases, repeats=repeats, warmup=1, rounds=rounds, seed=None, progress=progress)
    return {name: timing.median for name, timing in timings.items()}


def format_report(times: dict[str, float], top_k: int, num_experts: int) -> str:
    """A table of times and the final ratio line."""
    dense = times["dense_active"]
    lines = [f"{'case':<17}{'ms (fwd+bwd)':>14}{'time / dense_active':>21}"]
    for name, seconds in times.items():
        lines.append(f"{name:<17}{seconds * 1e3:>14.1f}{seconds / dense:>21.2f}")
    ratio_dense = times["moe_grouped"] / dense
    ratio_all = times["moe_all_experts"] / times["moe_grouped"]
    lines.append(f"(time ratios: > 1 means slower than the reference. moe_all_experts runs all {num_experts} "
                 f"experts on every token and masks (the reference path); moe_loop loops over experts; "
                 f"moe_grouped sorts tokens by expert. FLOP limits: all_experts/grouped = E/k = "
                 f"{num_experts / top_k:.1f}, grouped/dense_active = 1.0)")
    lines.append(f"grouped_vs_dense_active={ratio_dense:.3f} all_experts_vs_grouped={ratio_all:.3f}")
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per batch")
    parser.add_argument("--width", type=int, default=256, help="model width (dim) of the tokens")
    parser.add_argument("--hidden", type=int, default=1024,
                        help="expert hidden size (the dense_active baseline uses top_k times this)")
    parser.add_argument("--experts", type=int, default=8, help="number of experts E")
    parser.add_argument("--top-k", type=int, default=2, help="experts per token k")
    parser.add_argument("--activation", default="relu", choices=ACTIVATIONS, help="expert activation")
    parser.add_argument("--repeats", type=int, default=12, help="timed repeats per case")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(check_positive_int("threads", args.threads))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, forward+backward, "
          f"{args.tokens} tokens, width {args.width}, expert hidden {args.hidden}, "
          f"{args.experts} experts, top-{args.top_k}, {args.activation}", flush=True)
    times = run_benchmark(args.tokens, args.width, args.hidden, args.experts, args.top_k, args.activation,
                          args.repeats, args.seed)
    print(format_report(times, args.top_k, args.experts))
    return 0
