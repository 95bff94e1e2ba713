"""``moe-teach bench``: time the MoE layer against dense feed-forwards, at two scales.

**Bench shape** (defaults; all adjustable): forward plus backward in float32 at 4096 tokens,
width 256, expert hidden size 1024, 8 experts, top-2, compared with

* ``dense_active``: one feed-forward with hidden size ``top_k * expert_hidden`` (2048), the
  same parameters a token actually uses in the MoE layer;
* ``all_experts``: every expert on every token (the ``mask`` reference path);
* ``grouped_e32``: the grouped path with 32 experts of the same size (same active parameters).

Every dispatch path uses the same routing decision (the router is computed once outside the
timed region), so these rows compare dispatch and expert compute only. Each row also gets the
peak memory allocated during one forward+backward (torch profiler), gradients included.

**Lesson shape** (lesson 07's language model: 2 layers, width 64, hidden 64, E=4, top-2,
batch 16 x 48 tokens, one thread): whole training steps (forward, losses, backward, clipping,
AdamW) of the MoE model and of its dense-active and dense-total twins, through ``train_model``.

**Hugging Face** (only when ``transformers`` is importable): its ``MixtralSparseMoeBlock``
with our SwiGLU experts' weights, in each experts implementation it offers, against our
whole ``MoELayer`` (router included on both sides).

``--contention`` repeats the bench shape with a second CPU-bound process running (and, when
torch uses several threads, once more on one thread under the same load: the grouped path's
many small operations are each a parallel region whose threads wait for each other, so a
busy core slows it far more than the dense path's few large ones). The last
printed line is machine-readable: ``grouped_vs_dense_active=R1 all_experts_vs_grouped=R2
lesson_moe_vs_dense_active=R3 lesson_moe_vs_dense_total=R4 hf_grouped_mm_vs_ours=R5`` (R5
only when measured). All ratios are of medians from this run, cases measured in interleaved rounds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile

from ..dispatch import DISPATCHERS
from ..experts import ACTIVATIONS, Expert, make_experts
from ..lessons.timing import CLOCKS, compare, torch_threads
from ..lm.model import LMConfig
from ..lm.training import TrainConfig, build_model, model_config, prepare_data, train_model
from ..moe_layer import MoELayer
from ..routing import topk_softmax
from ..transformer import BlockConfig, MoEConfig
from ..validation import check_choice, check_positive_int, check_top_k

LESSON_CASES = {"moe": "lesson_moe", "dense-active": "lesson_dense_active", "dense-total": "lesson_dense_total"}


def case_name(dispatch: str) -> str:
    """Benchmark row of a dispatch path: ``moe_<name>``; the compute-all path is ``moe_all_experts``."""
    return "moe_all_experts" if dispatch == "mask" else f"moe_{dispatch}"


def _routing(tokens: int, num_experts: int, top_k: int, generator: torch.Generator):
    logits = torch.randn(tokens, num_experts, generator=generator)
    _, weights, indices = topk_softmax(logits, top_k, renormalize=True)
    return indices, weights.requires_grad_(True)


def _check_wide_experts(wide_experts, top_k: int) -> None:
    if check_positive_int("wide_experts", wide_experts, maximum=MAX_EXPERTS) < top_k:
        raise ValueError(f"wide_experts must be at least top_k={top_k} (or 0 for no such row), got {wide_experts}")


def make_cases(tokens: int, width: int, hidden: int, num_experts: int, top_k: int, activation: str, seed: int,
               wide_experts: int | None = 32):
    """Name -> zero-argument callable doing one forward+backward, all on the same inputs.

    Rows: each dispatch path with ``num_experts`` experts, ``dense_active``, and (unless
    ``wide_experts`` is None) ``moe_grouped_e{wide_experts}``: the grouped path with that many
    experts of the same size, same ``top_k`` (same active parameters).
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, width, generator=generator, requires_grad=True)
    indices, weights = _routing(tokens, num_experts, top_k, generator)
    torch.manual_seed(seed)
    experts = make_experts(num_experts, width, hidden, width, activation, bias=False)
    dense = Expert(width, top_k * hidden, width, activation, bias=False)

    def moe_step(dispatch, experts, indices, weights):
        def step():
            out = dispatch(x, experts, indices, weights)
            out.backward(torch.ones_like(out))
        return step

    def dense_step():
        out = dense(x)
        out.backward(torch.ones_like(out))

    cases = {case_name(name): moe_step(fn, experts, indices, weights) for name, fn in DISPATCHERS.items()}
    cases["dense_active"] = dense_step
    if wide_experts is not None:
        _check_wide_experts(wide_experts, top_k)
        wide_indices, wide_weights = _routing(tokens, wide_experts, top_k, generator)
        wide = make_experts(wide_experts, width, hidden, width, activation, bias=False)
        cases[f"moe_grouped_e{wide_experts}"] = moe_step(DISPATCHERS["grouped"], wide, wide_indices, wide_weights)
    return cases


def peak_memory_bytes(fn) -> int:
    """Peak bytes allocated by tensors created during ``fn()`` (CPU; gradients included).

    Read from the torch profiler's memory timeline: every tensor created or freed during the
    call, in order; tensors that existed before (parameters, inputs) are not counted.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action.name == "CREATE":
            live += size
        elif action.name == "DESTROY":
            live -= size
        peak = max(peak, live)
    return peak


def measure_peak_memory(cases: dict) -> dict[str, int]:
    """Peak bytes of each case's forward+backward, gradients freshly allocated (set to None first)."""
    peaks = {}
    for name, fn in cases.items():
        for tensor in _graph_leaves(fn):
            tensor.grad = None
        peaks[name] = peak_memory_bytes(fn)
    return peaks


def _graph_leaves(fn) -> list[torch.Tensor]:
    """Tensors with ``requires_grad`` that ``fn`` closes over (inputs, weights, expert parameters)."""
    leaves = []
    for cell in fn.__closure__ or ():
        value = cell.cell_contents
        if isinstance(value, torch.Tensor) and value.requires_grad:
            leaves.append(value)
        elif isinstance(value, torch.nn.Module):
            leaves.extend(value.parameters())
    return leaves


FLAG_NAMES = {"num_experts": "--experts", "wide_experts": "--wide-experts"}   # for the CLI's error line
MAX_TOKENS = 2**18      # 262,144 tokens: the activations alone are then about 1 GB at width 1024
MAX_WIDTH = 2**14       # width and expert hidden size
MAX_EXPERTS = 1024


def run_benchmark(tokens=4096, width=256, hidden=1024, num_experts=8, top_k=2, activation="relu",
                  repeats=10, seed=0, rounds=3, progress=False, wide_experts: int | None = 32,
                  clock: str = "wall") -> dict[str, float]:
    """Median forward+backward seconds per case. Cases are interleaved over ``rounds`` to share noise."""
    _check_sizes(tokens, width, hidden, num_experts, top_k, activation, repeats)
    cases = make_cases(tokens, width, hidden, num_experts, top_k, activation, seed, wide_experts)
    timings = compare(cases, repeats=repeats, warmup=1, rounds=rounds, seed=None, progress=progress, clock=clock)
    return {name: timing.median for name, timing in timings.items()}


def _check_sizes(tokens, width, hidden, num_experts, top_k, activation, repeats) -> None:
    check_positive_int("tokens", tokens, maximum=MAX_TOKENS)
    check_positive_int("width", width, maximum=MAX_WIDTH)
    check_positive_int("hidden", hidden, maximum=MAX_WIDTH)
    check_positive_int("num_experts", num_experts, maximum=MAX_EXPERTS)
    check_top_k(top_k, num_experts)
    check_choice("activation", activation, ACTIVATIONS)
    check_positive_int("repeats", repeats)


# ----------------------------------------------------------------------------- the lesson shape
def lesson_config(vocab_size: int) -> LMConfig:
    """Lesson 07's MoE language model: 2 layers, width 64, 4 heads, expert hidden 64, E=4, top-2."""
    block = BlockConfig(dim=64, num_heads=4, hidden_dim=64, moe=MoEConfig(num_experts=4, top_k=2))
    return LMConfig(vocab_size=vocab_size, max_seq_len=48, num_layers=2, block=block)


def run_lesson_benchmark(repeats: int = 10, steps_per_call: int = 4, rounds: int = 5, seed: int = 0,
                         documents_per_domain: int = 300, clock: str = "wall") -> dict[str, float]:
    """Median seconds per training step of lesson 07's three models (batch 16 x 48 tokens, one thread).

    Each timed call is ``train_model`` for ``steps_per_call`` steps (the loop lesson 07 runs:
    forward, task + auxiliary losses, backward, clipping, AdamW, the per-step history).
    """
    check_positive_int("repeats", repeats)
    check_positive_int("steps_per_call", steps_per_call)
    prepared = prepare_data(documents_per_domain=documents_per_domain, seed=seed, max_seq_len=48)
    base = lesson_config(len(prepared.tokenizer))
    train = TrainConfig(steps=steps_per_call, batch_size=16, warmup_steps=1, seed=seed)

    def step(model):
        return lambda: train_model(model, prepared.train, train, progress=False)

    with torch_threads(1):
        cases = {LESSON_CASES[kind]: step(build_model(model_config(kind, base), seed)) for kind in LESSON_CASES}
        timings = compare(cases, repeats=repeats, warmup=1, rounds=rounds, seed=None, clock=clock)
    return {name: timing.median / steps_per_call for name, timing in timings.items()}


# ----------------------------------------------------------------------------- Hugging Face
def hf_mixtral_cases(tokens: int, width: int, hidden: int, num_experts: int, top_k: int, seed: int = 0):
    """Our SwiGLU ``MoELayer`` and transformers' ``MixtralSparseMoeBlock`` with the same weights.

    Returns name -> forward+backward callable (``ours_swiglu`` and ``hf_<implementation>`` for
    each experts implementation the installed transformers offers), or ``{}`` when transformers
    is not importable. Raises if the two blocks disagree on the output.
    """
    try:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    except ImportError:
        return {}
    torch.manual_seed(seed)
    ours = MoELayer(width, num_experts=num_experts, top_k=top_k, hidden_dim=hidden, activation="swiglu", bias=False)
    x = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    cases = {"ours_swiglu": _forward_backward(lambda: ours(x))}
    for implementation in _hf_experts_implementations():
        config = MixtralConfig(hidden_size=width, intermediate_size=hidden, num_local_experts=num_experts,
                               num_experts_per_tok=top_k, router_jitter_noise=0.0)
        config._experts_implementation = implementation
        block = MixtralSparseMoeBlock(config)
        _copy_weights_to_hf(ours, block)
        with torch.no_grad():
            expected, got = ours(x), _hf_output(block(x))
        if not torch.allclose(expected, got, atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"transformers' Mixtral block ({implementation}) disagrees with MoELayer")
        cases[f"hf_{implementation}"] = _forward_backward(lambda block=block: _hf_output(block(x)))
    return cases


def _hf_experts_implementations() -> list[str]:
    """``eager`` (a loop over experts), plus ``grouped_mm`` when the installed transformers has it.

    Its ``batched_mm`` is left out: it gathers one ``[2H, D]`` weight copy per (token, slot),
    17 GB at the bench shape (it is meant for a few tokens at a time, as in decoding).
    """
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:
        return ["eager"]
    return ["eager"] + (["grouped_mm"] if "grouped_mm" in ALL_EXPERTS_FUNCTIONS else [])


def _hf_output(result) -> torch.Tensor:
    return result[0] if isinstance(result, tuple) else result


def _copy_weights_to_hf(ours: MoELayer, block) -> None:
    """Mixtral stores ``gate_up_proj [E, 2H, D]`` (gate rows first) and ``down_proj [E, D, H]``."""
    with torch.no_grad():
        block.gate.weight.copy_(ours.router.proj.weight)
        for e, expert in enumerate(ours.experts):
            block.experts.gate_up_proj[e].copy_(torch.cat([expert.gate.weight, expert.up.weight]))
            block.experts.down_proj[e].copy_(expert.down.weight)


def _forward_backward(forward):
    def step():
        out = forward()
        out.backward(torch.ones_like(out))
    return step


# ----------------------------------------------------------------------------- contention
@contextmanager
def cpu_contention():
    """A second process spinning on one core for the duration of the block."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield spinner
    finally:
        spinner.kill()
        spinner.wait()


# ----------------------------------------------------------------------------- the report
def format_report(times: dict[str, float], top_k: int, num_experts: int, peaks: dict[str, int] | None = None,
                  lesson: dict[str, float] | None = None, hf: dict[str, float] | None = None,
                  loaded: dict[str, float] | None = None,
                  loaded_one_thread: dict[str, float] | None = None) -> str:
    """The tables and the final ratio line (see the module docstring)."""
    dense = times["dense_active"]
    peaks = peaks or {}
    lines = [f"{'case':<21}{'ms (fwd+bwd)':>14}{'/ dense_active':>16}{'peak MB':>10}"]
    for name, seconds in times.items():
        peak = f"{peaks[name] / 1e6:>10.1f}" if name in peaks else f"{'':>10}"
        lines.append(f"{name:<21}{seconds * 1e3:>14.1f}{seconds / dense:>16.2f}{peak}")
    ratio_dense = times["moe_grouped"] / dense
    ratio_all = times["moe_all_experts"] / times["moe_grouped"]
    lines.append(f"(time ratios: > 1 means slower than the reference. moe_all_experts runs all {num_experts} "
                 f"experts on every token and masks (the reference path); moe_loop loops over experts; "
                 f"moe_grouped sorts tokens by expert. FLOP limits: all_experts/grouped = E/k = "
                 f"{num_experts / top_k:.1f}, grouped/dense_active = 1.0; peak MB: memory allocated "
                 f"during one forward+backward, gradients included)")
    final = f"grouped_vs_dense_active={ratio_dense:.3f} all_experts_vs_grouped={ratio_all:.3f}"
    if loaded is not None:
        loaded_dense = loaded["moe_grouped"] / loaded["dense_active"]
        lines.append(f"with a second CPU-bound process: grouped/dense_active {loaded_dense:.2f} "
                     f"(quiet {ratio_dense:.2f}, x{loaded_dense / ratio_dense:.2f}), all_experts/grouped "
                     f"{loaded['moe_all_experts'] / loaded['moe_grouped']:.2f} (quiet {ratio_all:.2f})")
    if loaded_one_thread is not None:
        lines.append(f"with it, on one thread: grouped/dense_active "
                     f"{loaded_one_thread['moe_grouped'] / loaded_one_thread['dense_active']:.2f}, all_experts/grouped "
                     f"{loaded_one_thread['moe_all_experts'] / loaded_one_thread['moe_grouped']:.2f} (each of the "
                     f"grouped path's many small operations is a parallel region whose threads wait for each other; "
                     f"a busy core keeps one of them waiting)")
    if lesson is not None:
        lesson_dense = lesson["lesson_dense_active"]
        lines.append(f"{'lesson-07 LM step':<21}{'ms per step':>14}{'/ dense_active':>16}")
        for name, seconds in lesson.items():
            lines.append(f"{name:<21}{seconds * 1e3:>14.2f}{seconds / lesson_dense:>16.2f}")
        final += (f" lesson_moe_vs_dense_active={lesson['lesson_moe'] / lesson_dense:.3f}"
                  f" lesson_moe_vs_dense_total={lesson['lesson_moe'] / lesson['lesson_dense_total']:.3f}")
    if hf:
        lines.append(f"{'SwiGLU, router incl.':<21}{'ms (fwd+bwd)':>14}{'/ ours':>16}")
        for name, seconds in hf.items():
            lines.append(f"{name:<21}{seconds * 1e3:>14.1f}{seconds / hf['ours_swiglu']:>16.2f}")
        if "hf_grouped_mm" in hf:
            final += f" hf_grouped_mm_vs_ours={hf['hf_grouped_mm'] / hf['ours_swiglu']:.3f}"
    lines.append(final)
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per batch")
    parser.add_argument("--width", type=int, default=256, help="model width (dim) of the tokens")
    parser.add_argument("--hidden", type=int, default=1024,
                        help="expert hidden size (the dense_active baseline uses top_k times this)")
    parser.add_argument("--experts", type=int, default=8, help="number of experts E")
    parser.add_argument("--wide-experts", type=int, default=32,
                        help="E of the extra grouped row with more experts of the same size (0: no such row)")
    parser.add_argument("--top-k", type=int, default=2, help="experts per token k")
    parser.add_argument("--activation", default="relu", choices=ACTIVATIONS, help="expert activation")
    parser.add_argument("--repeats", type=int, default=12, help="timed repeats per case")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-lesson", action="store_true", help="skip the lesson-07 language-model rows")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face Mixtral rows")
    parser.add_argument("--contention", action="store_true",
                        help="also time the bench shape with a second CPU-bound process running")
    parser.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                        help="wall: elapsed time; cpu: this process's CPU time (steadier on a busy machine "
                             "with --threads 1)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(check_positive_int("threads", args.threads))
    wide = None if args.wide_experts == 0 else args.wide_experts
    if wide is not None:
        _check_wide_experts(wide, args.top_k)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, forward+backward, "
          f"{args.tokens} tokens, width {args.width}, expert hidden {args.hidden}, "
          f"{args.experts} experts, top-{args.top_k}, {args.activation}, {args.clock} clock", flush=True)
    times = run_benchmark(args.tokens, args.width, args.hidden, args.experts, args.top_k, args.activation,
                          args.repeats, args.seed, wide_experts=wide, clock=args.clock)
    cases = make_cases(args.tokens, args.width, args.hidden, args.experts, args.top_k, args.activation,
                       args.seed, wide)
    peaks = measure_peak_memory(cases)
    loaded = loaded_one_thread = None
    if args.contention:
        with cpu_contention():
            loaded = run_benchmark(args.tokens, args.width, args.hidden, args.experts, args.top_k,
                                   args.activation, args.repeats, args.seed, wide_experts=None, clock=args.clock)
            if torch.get_num_threads() > 1:  # is it the threads waiting for each other?
                with torch_threads(1):
                    loaded_one_thread = run_benchmark(args.tokens, args.width, args.hidden, args.experts,
                                                      args.top_k, args.activation, args.repeats, args.seed,
                                                      wide_experts=None, clock=args.clock)
    lesson = None if args.no_lesson else run_lesson_benchmark(repeats=args.repeats, seed=args.seed,
                                                              clock=args.clock)
    hf = None
    if not args.no_hf:
        hf_cases = hf_mixtral_cases(args.tokens, args.width, args.hidden, args.experts, args.top_k, args.seed)
        if hf_cases:
            hf = {name: t.median for name, t in compare(hf_cases, repeats=args.repeats, warmup=1, rounds=3,
                                                         seed=None, clock=args.clock).items()}
        else:
            print("(transformers not importable: no Hugging Face rows)")
    print(format_report(times, args.top_k, args.experts, peaks, lesson, hf, loaded, loaded_one_thread))
    return 0
