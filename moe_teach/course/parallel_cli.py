"""``moe-teach parallel``: run the expert-parallel MoE layer on N processes of this machine.

    moe-teach parallel --nproc 2 --experts 4 --check        # equal to the one-process layer?
    moe-teach parallel --nproc 4 --experts 8 --steps 5      # data + expert parallel training
    moe-teach parallel --nproc 2 --experts 4                # bytes and time per rank

With ``--check`` the last line printed is ``max_output_diff=X max_grad_diff=Y`` (outputs, and
the largest difference over input, router and every expert's weight gradients).
"""

from __future__ import annotations

import argparse
import sys

from ..parallel import BACKENDS, WorkerError, run_workers
from ..validation import check_non_negative_int, check_positive_float, check_positive_int


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=2, help="processes (ranks) to start on this machine (>= 1)")
    parser.add_argument("--experts", type=int, default=4, help="experts in total, divisible by --nproc")
    parser.add_argument("--top-k", type=int, default=2, help="experts per token (1 to --experts)")
    parser.add_argument("--capacity-factor", type=float, default=None,
                        help="capacity factor (> 0) for fixed-size exchanges; default: dropless")
    parser.add_argument("--check", action="store_true",
                        help="compare outputs and gradients with the one-process MoELayer")
    parser.add_argument("--steps", type=int, default=0, help="train this many steps next to one-process training")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per rank (>= 1)")
    parser.add_argument("--backend", default="gloo", help=f"torch.distributed backend: {', '.join(BACKENDS)}")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before every worker is ended")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the batches")


def check_args(args: argparse.Namespace) -> None:
    """One clear error naming the flag, before any process starts."""
    check_positive_int("--nproc", args.nproc)
    check_positive_int("--experts", args.experts)
    check_positive_int("--tokens", args.tokens)
    check_non_negative_int("--steps", args.steps)
    if isinstance(args.top_k, bool) or not isinstance(args.top_k, int) or not 1 <= args.top_k <= args.experts:
        raise ValueError(f"--top-k must be between 1 and --experts ({args.experts}), got {args.top_k}")
    if args.experts % args.nproc:
        raise ValueError(f"--experts ({args.experts}) must be divisible by --nproc ({args.nproc}): "
                         "each process holds experts / nproc experts")
    if args.capacity_factor is not None:
        check_positive_float("--capacity-factor", args.capacity_factor)
    if args.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {args.backend!r}")
    check_positive_float("--timeout", args.timeout)


def _launch(task: str, args, **kwargs):
    return run_workers(task, args.nproc, backend=args.backend, timeout=args.timeout, **kwargs)


def _measure(args) -> None:
    ranks = _launch("measure", args, tokens_per_rank=args.tokens, num_experts=args.experts, top_k=args.top_k,
                    capacity_factor=args.capacity_factor, seed=args.seed)
    print(f"{args.nproc} process(es), {args.experts} experts, top-{args.top_k}, {args.tokens} tokens per rank, "
          f"capacity factor {args.capacity_factor or 'none (dropless)'}")
    print(f"{'rank':>4}{'rows in':>9}{'KB sent':>9}{'KB recv':>9}{'route ms':>10}{'exch ms':>9}{'expert ms':>11}"
          f"{'step ms':>9}")
    for r in ranks:
        t = r["times"]
        print(f"{r['rank']:>4}{sum(r['recv_rows']):>9}{r['bytes_sent'] / 1e3:>9.1f}{r['bytes_received'] / 1e3:>9.1f}"
              f"{t['routing'] * 1e3:>10.2f}{t['exchange'] * 1e3:>9.2f}{t['experts'] * 1e3:>11.2f}"
              f"{r['step_seconds'] * 1e3:>9.2f}")
    print("bytes: forward pass, both exchanges, to and from other ranks; times: medians, forward phases "
          "and the whole forward + backward step")


def _train(args) -> None:
    result = _launch("train", args, steps=args.steps, num_experts=args.experts, top_k=args.top_k,
                     capacity_factor=args.capacity_factor, tokens_per_rank=args.tokens, seed=args.seed)
    print(f"{'step':>4}{'loss (' + str(args.nproc) + ' processes)':>24}{'loss (one process)':>20}{'difference':>12}")
    for step, (mine, reference) in enumerate(zip(result["losses"], result["reference_losses"])):
        print(f"{step:>4}{mine:>24.6f}{reference:>20.6f}{abs(mine - reference):>12.2e}")
    print(f"after {args.steps} steps: largest difference of expert weights {result['expert_weight_diff']:.2e}, "
          f"router weights {result['router_weight_diff']:.2e}")


def _check(args) -> None:
    case = {"num_experts": args.experts, "top_k": args.top_k, "capacity_factor": args.capacity_factor,
            "tokens_per_rank": args.tokens, "seed": args.seed}
    (result,) = _launch("check", args, cases=[case])
    grad_diff = max(result["input_grad_diff"], result["expert_grad_diff"], result["router_grad_diff"])
    print(f"tokens received per rank: {result['received_per_rank']}; experts compared: "
          f"{len(result['experts_checked'])} of {args.experts}")
    print(f"input gradients {result['input_grad_diff']:.2e}, expert weight gradients "
          f"{result['expert_grad_diff']:.2e}, router gradients {result['router_grad_diff']:.2e}")
    print(f"max_output_diff={result['output_diff']:.3g} max_grad_diff={grad_diff:.3g}")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    try:
        if args.steps:
            _train(args)
        if args.check:
            _check(args)
        if not (args.check or args.steps):
            _measure(args)
    except WorkerError as error:
        print(f"moe-teach parallel: error: {error}", file=sys.stderr)
        return 1
    return 0
