"""Wrong implementations a learner is likely to write, one list per exercise task.

Each entry is ``(key, function)``: ``check(task, function)`` must fail with that mistake key,
so the learner gets the hint meant for that mistake. Several come from bugs that public MoE
implementations shipped (listed in the README's "Sources" and in each lesson's sources):
renormalised top-1, P_i from the top-k weights, f_i not divided by k, dropped tokens passed
through, capacity without /E or k, softmax over the wrong dimension, gradient leaking into
unchosen experts, z-loss without the square or with max. Others come from learners: P_i from
the renormalised top-k weights, f_i from first choices only, the square of the mean
logsumexp, a logsumexp that overflows on large logits.

One module per exercise notebook (``lessonNN_*``), each with its ``MISTAKES`` table; a new
lesson adds one module and its name in the import below. The wrong functions are reachable as
``mistakes.<name>``.
"""

from . import (  # noqa: F401  (LESSONS below collects every lesson module imported here)
    lesson01_experts,
    lesson02_gating,
    lesson03_topk_sparsity,
    lesson04_dispatch_capacity,
    lesson05_load_balancing,
    lesson06_transformer_block,
    lesson07_training_lm,
    lesson08_performance,
    lesson09_routing_dashboard,
    lesson10_modern_moe,
    lesson11_expert_parallelism,
)

LESSONS = tuple(module for name, module in sorted(globals().items()) if name.startswith("lesson"))
MISTAKES = {task: wrong for lesson in LESSONS for task, wrong in lesson.MISTAKES.items()}


def __getattr__(name: str):
    for lesson in LESSONS:
        if hasattr(lesson, name):
            return getattr(lesson, name)
    raise AttributeError(f"no planted mistake named {name!r}")
