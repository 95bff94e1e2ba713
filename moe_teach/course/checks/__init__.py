"""Instant feedback for the exercise notebooks: ``check("task name", your_function)``.

:mod:`.core` holds the machinery (verdicts, the registry the grader reads, helpers for
checkers); each ``lessonNN_*`` module holds one exercise notebook's checkers and registers
them. A new lesson's checks are one new module plus one import line here.
"""

from . import (  # noqa: F401  (each registers its tasks)
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
from .core import (
    DONE,
    FAILED,
    NOT_DONE,
    TASKS,
    CheckResult,
    Mistake,
    check,
    reset_results,
    results,
    run_checker,
    summary,
)

__all__ = ["DONE", "FAILED", "NOT_DONE", "TASKS", "CheckResult", "Mistake", "check", "reset_results", "results",
           "run_checker", "summary"]
