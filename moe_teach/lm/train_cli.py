"""``moe-teach train``: train the language model outside a notebook, or (``--compare``) run
lesson 07's comparison of arms; arguments and ``--out`` are checked before any training.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from ..moe_layer import MoEConfig
from ..transformer import BlockConfig
from ..validation import (
    check_instance,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    check_seed,
)
from .checkpoints import check_path, save_checkpoint
from .data import MAX_DOCUMENTS_PER_DOMAIN
from .evaluation import evaluate
from .model import MAX_LAYERS, LMConfig
from .training import (
    MAX_BATCH_SIZE,
    MODEL_KINDS,
    TrainConfig,
    build_model,
    check_scheduled_rows,
    model_config,
    prepare_data,
    train_model,
)

# ----------------------------------------------------------------------------- command line
MIN_DOCUMENTS_PER_DOMAIN = 10


def configure_parser(parser: argparse.ArgumentParser) -> None:
    check_instance("parser", parser, argparse.ArgumentParser)
    parser.add_argument("--model", default="moe", choices=MODEL_KINDS, help="which model to train")
    parser.add_argument(
        "--steps", type=int, default=None,
        help=f"optimizer steps (>= 1; default {DEFAULT_STEPS}, with --compare {DEFAULT_COMPARE_STEPS})",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="documents per step (>= 1)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (> 0)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the corpus, the weights and the batches"
    )
    parser.add_argument(
        "--documents-per-domain",
        type=int,
        default=300,
        help=f"generated documents per domain, 20%% held out for validation (>= {MIN_DOCUMENTS_PER_DOMAIN})",
    )
    parser.add_argument("--experts", type=int, default=4, help="experts per MoE layer (>= 1)")
    parser.add_argument("--top-k", type=int, default=2, help="experts per token (1 to --experts)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (>= 1)")
    parser.add_argument("--out", default="runs/lm.pt", help="checkpoint file to write (folders are created)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (>= 1); this model is so small that 1 thread is usually fastest",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--compare", action="store_true",
        help="run lesson 07's comparison on the knowledge corpus instead (upcycled MoE, continued dense, "
        "MoE from scratch, dense-active, dense-total); the last line gives each one's validation "
        "answer-token loss. Uses --steps, --upcycle-at, --seed (weights, routers and batches; the corpus "
        "stays the lesson's), --threads, --no-progress",
    )
    parser.add_argument(
        "--upcycle-at", type=int, default=None,
        help="with --compare: the dense step at which the MoE is upcycled (default: a third of --steps)",
    )


DEFAULT_STEPS, DEFAULT_COMPARE_STEPS = 600, 450
COMPARE_IGNORES = ("model", "batch_size", "lr", "documents_per_domain", "experts", "top_k", "layers", "out")


def check_compare_args(args: argparse.Namespace) -> tuple[int, int]:
    """Validate ``--compare``'s arguments; returns ``(steps, upcycle_at)``."""
    check_instance("args", args, argparse.Namespace)
    defaults = build_defaults()
    for name in COMPARE_IGNORES:
        if getattr(args, name) != defaults[name]:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to --compare (it trains lesson 07's "
                             "fixed knowledge-corpus models); leave it out")
    steps = DEFAULT_COMPARE_STEPS if args.steps is None else args.steps
    check_positive_int("--steps", steps)
    check_positive_int("--threads", args.threads)
    check_non_negative_int("--seed", args.seed)
    if steps < 2:
        raise ValueError(f"--steps must be at least 2 with --compare (steps before and after upcycling), got {steps}")
    upcycle_at = max(1, steps // 3) if args.upcycle_at is None else args.upcycle_at
    check_positive_int("--upcycle-at", upcycle_at)
    if upcycle_at >= steps:
        raise ValueError(f"--upcycle-at must be between 1 and --steps - 1 = {steps - 1}, got {upcycle_at}")
    return steps, upcycle_at


def build_defaults() -> dict:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return vars(parser.parse_args([]))


def check_args(args: argparse.Namespace) -> Path:
    """Validate every argument before any training; returns the checked ``--out`` path."""
    check_instance("args", args, argparse.Namespace)
    if args.upcycle_at is not None:
        raise ValueError("--upcycle-at only applies with --compare")
    if args.steps is None:
        args.steps = DEFAULT_STEPS
    for name in ("steps", "batch_size", "experts", "layers", "threads"):
        check_positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    check_positive_int("--batch-size", args.batch_size, maximum=MAX_BATCH_SIZE)
    check_positive_int("--layers", args.layers, maximum=MAX_LAYERS)
    check_scheduled_rows(args.steps, args.batch_size)
    check_positive_float("--lr", args.lr)
    check_seed("--seed", args.seed)
    check_positive_int("--top-k", args.top_k)
    if not 1 <= args.top_k <= args.experts:
        raise ValueError(f"--top-k must be between 1 and --experts={args.experts}, got {args.top_k}")
    check_positive_int("--documents-per-domain", args.documents_per_domain, maximum=MAX_DOCUMENTS_PER_DOMAIN)
    if args.documents_per_domain < MIN_DOCUMENTS_PER_DOMAIN:
        raise ValueError(
            f"--documents-per-domain must be at least {MIN_DOCUMENTS_PER_DOMAIN}, "
            f"got {args.documents_per_domain}"
        )
    return check_writable(args.out)


def check_writable(out) -> Path:
    """Create ``out``'s folder and check a file can be written there, so a run cannot fail at the end."""
    path = check_path("--out", out)
    if path.is_dir():
        raise ValueError(f"--out must be a file path, but {path} is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out: cannot create the folder {path.parent} ({error.strerror})") from None
    if path.exists() and not path.is_file():
        raise ValueError(f"--out must be a regular file path, but {path} is a device or another special file")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"--out: {path} is not writable (check the folder's permissions)")
    try:  # really write: permissions can pass while the disk is full or the file system refuses writes
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise ValueError(f"--out: cannot write a file next to {path} ({error.strerror or error})") from None
    return path


def run_compare(args: argparse.Namespace) -> int:
    """``moe-teach train --compare``: lesson 07's five arms for one seed; the last line is machine-readable."""
    from .compare import prepare_knowledge, run_comparison  # compare imports this module

    steps, upcycle_at = check_compare_args(args)
    torch.set_num_threads(args.threads)
    prepared = prepare_knowledge(seed=0)  # the lesson's corpus; --seed varies weights, routers and batches
    comparison = run_comparison(prepared, seed=args.seed, steps=steps, upcycle_at=upcycle_at,
                                progress=not args.no_progress)
    print(f"seed {args.seed}, {steps} steps, upcycled at step {upcycle_at}; validation answer-token loss "
          "(perplexity, answer accuracy):")
    for name, arm in comparison.arms.items():
        scores = arm.scores
        print(f"  {name:<16}{scores['answer_loss']['all']:.4f}  ({scores['perplexity']['all']:.3f}, "
              f"{scores['answer_accuracy']['all']:.1%}), {arm.ms_per_step:.1f} ms per step")
    print(comparison.last_line())
    return 0


def run(args: argparse.Namespace) -> int:
    check_instance("args", args, argparse.Namespace)
    if args.compare:
        return run_compare(args)
    out = check_args(args)
    torch.set_num_threads(args.threads)
    prepared = prepare_data(args.documents_per_domain, seed=args.seed)
    block = BlockConfig(dim=64, num_heads=4, hidden_dim=64, moe=MoEConfig(num_experts=args.experts, top_k=args.top_k))
    base = LMConfig(vocab_size=len(prepared.tokenizer), num_layers=args.layers, block=block)
    model = build_model(model_config(args.model, base), seed=args.seed)
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=max(1, args.steps // 10),
        seed=args.seed,
    )
    train_model(model, prepared.train, train_config, progress=not args.no_progress, desc=args.model)
    perplexity = evaluate(model, prepared.validation)
    try:
        path = save_checkpoint(out, model, prepared.tokenizer)
    except OSError as error:
        raise ValueError(f"--out: could not write the checkpoint to {out} ({error.strerror or error}); "
                         "nothing was written") from None
    print("validation perplexity: " + ", ".join(f"{k} {v:.2f}" for k, v in perplexity.items()))
    print(f"checkpoint written to {path}")
    return 0
