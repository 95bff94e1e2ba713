"""Instant feedback for the exercise notebooks: ``check("task name", your_function)``.

Each task has a checker that runs the learner's function on several seeded inputs (edge
cases included: one token, ``k`` equal to the number of experts, ties) and compares it
with the package's own implementation. The first failing property is reported in words,
with a hint that points the way without giving the solution. Checks are ordered so that a
common mistake gets its own hint: the shape first, then "does it sum to 1?", then "the
right dimension?", then the values, then the gradients.

``check`` shows the verdict (green tick in Jupyter, plain or coloured text in a terminal),
records it in this session's registry (:func:`results`, :func:`summary`), and returns a
:class:`CheckResult` with ``status`` one of ``"done"``, ``"failed"``, ``"not done yet"``. A
function that still raises ``NotImplementedError`` is "not done yet", so exercise notebooks run
top to bottom. Each check has a time limit (:data:`CHECK_TIME_LIMIT` seconds unless
``time_limit`` says otherwise): a function that loops forever is stopped and the task fails with
key ``"time_limit"``. The limit works in a Jupyter kernel and in plain Python; it interrupts
Python code, not a single long call into C (torch), which is stopped once that call returns.

The registry is for the learner's own overview only: ``moe-teach check`` does not read it, it
runs the checks in a process of its own (see :mod:`moe_teach.course.grading`). While it runs the
notebook (``GRADING_RUN_ENV`` is set), ``check`` only validates its arguments, so that no check
runs twice.
"""

from __future__ import annotations

import contextlib
import html
import inspect
import math
import os
import sys
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .time_limit import CHECK_TIME_LIMIT, _Deadline, _TimeLimit, check_time_limit

DONE, FAILED, NOT_DONE = "done", "failed", "not done yet"
GRADING_RUN_ENV = "MOE_TEACH_GRADING_RUN"  # set in every process of a `moe-teach check` run


@dataclass
class CheckResult:
    """The verdict on one task. ``key`` names the diagnosed mistake (e.g. ``"not_renormalised"``)."""

    task: str
    status: str
    message: str
    hint: str = ""
    key: str = ""

    @property
    def passed(self) -> bool:
        return self.status == DONE

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self, color: bool = False) -> str:
        symbol, ansi = {DONE: ("✅", "32"), FAILED: ("❌", "31"), NOT_DONE: ("⏳", "33")}[self.status]
        head = f"{symbol} {self.task}: {self.message}"
        if color:
            head = f"\033[{ansi}m{head}\033[0m"
        return head + (f"\n   Hint: {self.hint}" if self.hint else "")

    def html(self) -> str:
        colour = {DONE: "#2b8a3e", FAILED: "#c92a2a", NOT_DONE: "#e67700"}[self.status]
        symbol = {DONE: "✅", FAILED: "❌", NOT_DONE: "⏳"}[self.status]
        body = (f'<div style="color:{colour};font-weight:bold">{symbol} {html.escape(self.task)}: '
                f"{html.escape(self.message)}</div>")
        if self.hint:
            body += f"<div><b>Hint:</b> {html.escape(self.hint)}</div>"
        return f'<div style="margin:4px 0">{body}</div>'

    def _ipython_display_(self):
        # check() has already shown this result: don't show it again when it is the same cell's value
        if getattr(self, "_shown_in_cell", None) == _execution_count():
            return
        _show(self)


class Mistake(Exception):
    """Raised by a checker: ``key`` identifies the mistake, ``message`` says what is wrong."""

    def __init__(self, key: str, message: str, hint: str = ""):
        super().__init__(message)
        self.key, self.message, self.hint = key, message, hint


class _NotDone(Exception):
    pass


# ----------------------------------------------------------------------------- registry

_RESULTS: dict[str, CheckResult] = {}


def results() -> list[CheckResult]:
    """Every result recorded in this Python session, in the order the tasks were checked."""
    return list(_RESULTS.values())


def reset_results() -> None:
    _RESULTS.clear()



# ----------------------------------------------------------------------------- showing


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _execution_count() -> int | None:
    """The running cell's number in IPython, else None."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else shell.execution_count


def _show(result: CheckResult) -> None:
    if _in_notebook():
        from IPython.display import display

        display({"text/html": result.html(), "text/plain": result.text()}, raw=True)
    else:
        print(result.text(color=sys.stdout.isatty()))


def summary() -> None:
    """Show one line per task checked so far in this session."""
    done = sum(r.passed for r in results())
    lines = [f"{done} of {len(results())} tasks done."] + [r.text().split("\n")[0] for r in results()]
    if _in_notebook():
        from IPython.display import display

        html_lines = "".join(f"<li>{html.escape(line)}</li>" for line in lines[1:])
        display({"text/html": f"<b>{html.escape(lines[0])}</b><ul>{html_lines}</ul>",
                 "text/plain": "\n".join(lines)}, raw=True)
    else:
        print("\n".join(lines))


# ----------------------------------------------------------------------------- helpers for checkers


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch inside the block without disturbing the learner's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _snapshot(args) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(name, tensor, copy)`` for every tensor the learner's function receives (module weights too)."""
    taken = []
    for position, value in enumerate(args):
        name = f"argument {position + 1}"
        if isinstance(value, torch.Tensor):
            taken.append((name, value, value.detach().clone()))
        elif isinstance(value, nn.Module) or (isinstance(value, (list, tuple)) and value
                                              and all(isinstance(v, nn.Module) for v in value)):
            modules = value if isinstance(value, (list, tuple)) else [value]
            for module in modules:
                for tensor in module.state_dict(keep_vars=True).values():
                    taken.append((f"the weights in {name}", tensor, tensor.detach().clone()))
    return taken


def _names(fn, count: int) -> list[str]:
    """The learner's own parameter names, so a message can say `expert_weights` instead of a number."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []
    return params[:count]


def _unchanged(now: torch.Tensor, before: torch.Tensor) -> bool:
    if now.shape != before.shape or now.dtype != before.dtype:
        return False
    return torch.equal(now, before) or (now.is_floating_point() and torch.allclose(now, before, rtol=0, atol=0,
                                                                                   equal_nan=True))


def _check_unchanged(fn, args, taken) -> None:
    names = _names(fn, len(args))
    for name, tensor, copy in taken:
        if _unchanged(tensor.detach(), copy):
            continue
        for position, own in enumerate(names):
            name = name.replace(f"argument {position + 1}", f"`{own}`")
        raise Mistake("mutated_input", f"your function changed its input ({name}) in place",
                      "Leave the caller's tensors as they are: an operation ending in an underscore "
                      "(mul_, zero_, masked_fill_), an augmented assignment such as *= on a tensor "
                      "argument, or writing into a slice changes the caller's tensor. Compute a new "
                      "tensor instead (or work on a .clone()).")


def _call(fn, *args):
    """Call the learner's function; turn its exceptions into verdicts; refuse changed inputs."""
    taken = _snapshot(args)
    try:
        result = fn(*args)
        _check_unchanged(fn, args, taken)
        return result
    except NotImplementedError:
        raise _NotDone from None
    except Mistake:
        raise
    except Exception as error:  # noqa: BLE001 - any learner error becomes a readable failure
        text = str(error).strip().split("\n")[0][:300]
        hint = "Read the error: it usually names the tensor whose shape or type is off. "
        if isinstance(error, AttributeError):
            hint = ("Read the error: it names the attribute that an object lacks; print the objects you "
                    "loop over or index to see what they are.")
        elif "cannot be multiplied" in text:
            hint += ("nn.Linear stores its weight as [out_features, in_features], "
                     "so a layer computes x @ weight.T + bias.")
        else:
            hint += "Try your function on a small input and print the shapes of the intermediate tensors."
        raise Mistake("raised", f"your function raised {type(error).__name__}: {text}", hint) from None


def _expect_tensor(value, shape, hint: str, what: str = "your output"):
    if not isinstance(value, torch.Tensor):
        raise Mistake("not_a_tensor", f"{what} should be a torch.Tensor of shape {list(shape)}, "
                      f"got a {type(value).__name__}",
                      "Return the tensor itself, not a list, a number or a tuple.")
    if tuple(value.shape) != tuple(shape):
        raise Mistake("wrong_shape",
                      f"wrong shape for {what}: expected {list(shape)}, got {list(value.shape)}", hint)
    return value


def _expect_pair(value, what: str):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise Mistake("return_format",
                      f"your function should return a pair {what}, got a {type(value).__name__}",
                      f"Return the two tensors together as a tuple {what}, in this order.")
    return value


def _expect_scalar(value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise Mistake("not_a_tensor",
                      f"the loss should be a scalar torch.Tensor, got a {type(value).__name__}",
                      "Keep the loss a tensor (no .item() or float()) so it can be added to the training "
                      "loss and backpropagated.")
    if value.numel() != 1:
        raise Mistake("not_scalar", f"the loss should be a single number, got shape {list(value.shape)}",
                      "Reduce over tokens and experts to one number (sum or mean, as the spec says).")
    return value.reshape(())


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _diagnose(out, candidates: dict, messages: dict, generic: tuple, keys: dict | None = None):
    """Raise the mistake whose candidate output matches ``out``, else the generic one.

    ``candidates`` and ``messages`` share their labels; ``keys`` maps a label to the mistake key it
    reports when several variants (each with its own message) share one key.
    """
    keys = keys or {}
    for label, value in candidates.items():
        values = value if isinstance(value, list) else [value]
        if any(_close(out, v) for v in values):
            raise Mistake(keys.get(label, label), *messages[label])
    key, message, hint = generic
    raise Mistake(key, message, hint)


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(a).detach().double() - torch.as_tensor(b).detach().double()).abs().max())


def _values_differ(out, expected, reference: str | None = None) -> str:
    """The message for an output of the right shape whose values differ from ``reference``'s."""
    against = f" from {reference}" if reference else ""
    return f"the shape is right but the values differ{against} (largest difference {_max_diff(out, expected):.3g})"


def _has_grad(tensor_or_module) -> bool:
    params = tensor_or_module.parameters() if isinstance(tensor_or_module, nn.Module) else [tensor_or_module]
    return any(p.grad is not None and bool((p.grad != 0).any()) for p in params)


def _backward(out, hint_what: str):
    if not out.requires_grad:
        raise Mistake("no_gradient",
                      f"your output is not connected to {hint_what}: no gradient can flow back",
                      "Don't use torch.no_grad(), .detach(), .item() or .tolist() on the way to the output.")
    with _seeded(99):
        (out * torch.randn_like(out)).sum().backward()


def _clone(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()

def _how_far(value: torch.Tensor, expected: torch.Tensor) -> str:
    """Roughly how far ``value`` is from ``expected`` in words, without giving ``expected`` away."""
    value, expected = float(value.detach()), float(expected.detach())
    if not math.isfinite(value):
        return "not a finite number"
    if expected == 0 or value / expected <= 0:
        return "of the wrong sign or size"
    ratio = value / expected
    direction = "too large" if ratio > 1 else "too small"
    if 0.5 < ratio < 2:
        return f"about {abs(ratio - 1) * 100:.2g}% {direction}"
    return f"about {max(ratio, 1 / ratio):.2g} times {direction}"


# ----------------------------------------------------------------------------- the task table


@dataclass(frozen=True)
class Task:
    lesson: str
    checker: object


TASKS: dict[str, Task] = {}
"""Every task, by name; filled by :func:`register` from one module per lesson."""


def register(lesson: str, checkers: dict) -> None:
    """Add ``checkers`` (task name -> checker function) for ``lesson`` (e.g. ``"01_experts"``)."""
    for name, checker in checkers.items():
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        TASKS[name] = Task(lesson, checker)


def _check_task(task) -> str:
    if not isinstance(task, str):
        raise TypeError(f"check(task, fn): task must be a task name (a str), got {task!r} of type "
                        f"{type(task).__name__}; valid tasks: {', '.join(TASKS)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return task


def _timed_out(task: str, seconds: float) -> CheckResult:
    return CheckResult(task, FAILED, f"your function did not finish within {seconds:g} s, so the check stopped it",
                       "A loop whose condition never becomes false is the usual cause (a while loop that does "
                       "not advance its counter, or a loop over a list you append to). Try your function on "
                       "a tiny input and print inside the loop.", "time_limit")


def run_checker(task: str, fn, time_limit: float = CHECK_TIME_LIMIT) -> CheckResult:
    """Run the checker of ``task`` on ``fn`` and return the verdict, without showing or recording it.

    The checker (with every call of ``fn``) is stopped after ``time_limit`` seconds.
    """
    _check_task(task)
    if not callable(fn):
        raise TypeError(f"check({task!r}, fn): fn must be your function, got {type(fn).__name__}")
    time_limit = check_time_limit("time_limit", time_limit)
    deadline = _Deadline(time_limit)
    try:
        try:
            deadline.start()
            TASKS[task].checker(fn)
        finally:
            deadline.stop()
    except _TimeLimit:
        deadline.stop()  # if the limit struck inside the finally above, before stop() ran
        return _timed_out(task, time_limit)
    except _NotDone:
        return CheckResult(task, NOT_DONE, "not done yet (the function still raises NotImplementedError)")
    except Mistake as mistake:
        return CheckResult(task, FAILED, mistake.message, mistake.hint, mistake.key)
    return CheckResult(task, DONE, "done, all checks pass")


def check(task: str, fn, show: bool = True, time_limit: float = CHECK_TIME_LIMIT) -> CheckResult:
    """Check the learner's ``fn`` for ``task``: show the verdict, record it, return it.

    ``time_limit``: seconds the check may take before it stops ``fn`` and reports a failure.
    """
    if os.environ.get(GRADING_RUN_ENV):
        _check_task(task)
        if not callable(fn):
            raise TypeError(f"check({task!r}, fn): fn must be your function, got {type(fn).__name__}")
        check_time_limit("time_limit", time_limit)
        return CheckResult(task, NOT_DONE, "not checked here: moe-teach check checks it in a process of its own")
    result = run_checker(task, fn, time_limit)
    _RESULTS.pop(task, None)
    _RESULTS[task] = result
    if show:
        _show(result)
        result._shown_in_cell = _execution_count()
    return result
