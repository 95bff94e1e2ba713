"""``moe-teach check NOTEBOOK``: run a learner's exercise notebook headless and print a scorecard.

Grading has two steps, so that no verdict the notebook itself prints or records counts:

1. The notebook runs top to bottom as the learner wrote it, with nbclient (kernel ``python3``,
   working directory = the notebook's folder, ``--timeout`` seconds per cell; cells that raise do
   not stop the run). This step only finds the cells that raise. In this run ``check(...)`` only
   validates its arguments (so no check runs twice) and returns "not done yet"; nothing the
   kernel prints or records is read.
2. The tasks come from the matching solution notebook (``solutions/NN_name.ipynb``, found by file
   name, else by the lesson number ``NN_``): each of its ``check("task", function)`` calls is one
   task, whatever the learner's notebook calls, deletes or comments out. Once the kernel and
   every process it started have been ended, a fresh Python process receives the definitions
   the task functions need, read from the notebook file's code cells: the top-level ``import``,
   ``def``, ``class`` and ``name = value`` lines that the task functions use (directly or through
   each other), in notebook order, so the last version of each counts. Nothing else of the
   notebook runs there: no ``check(...)`` call, no experiment, no print. That process runs each
   task's checker with ``--check-timeout`` seconds per check and sends each verdict on a channel
   of its own (a copy of its stdout, which prints no longer reach), every line keyed with a
   secret that it read from the grader before the notebook ran. A task function that is missing
   is "not run"; one that hangs beyond the limit, ends its process or garbles the report fails,
   and the remaining tasks are checked in a new process. (The check process is started while
   the notebook runs, to import torch meanwhile; if anything wrote to it or ended it before it
   got its job, a new one does the checks.)

Every process the grading run started is ended when it finishes, also ones the notebook or a
task function spawned and detached: on Linux the grader is their subreaper and ends every new
descendant, and also every process that still carries the run's tag in its environment;
elsewhere it ends the kernel's and the check processes' process groups.

What grading does not protect against: the learner's code runs with the grader's permissions,
so code written to attack the grader itself (a task function that patches the checker while
it is being checked, reads the secret from its own process's memory, or edits the installed
package or ``solutions/``) can still forge a verdict.

Exit status: 0 whatever the score; 1 if a cell raised an error, or with ``--strict`` if any
task is not done; 2 if the notebook could not be read or executed (missing file, not a
notebook, no matching solution notebook, unknown kernel, kernel died, a cell ran past the
time limit), or an option has a bad value.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat

from .check_process import _check_tasks, _CheckProcess, _ProcessSweeper, _python_source
from .checks import TASKS
from .checks.time_limit import CHECK_TIME_LIMIT, MAX_TIME_LIMIT, check_time_limit
from .exercises import NotebookReadError, read_notebook
from .scorecard import GradingError, Scorecard, TaskSpec

DEFAULT_SOLUTIONS = Path(__file__).resolve().parents[2] / "solutions"


# ----------------------------------------------------------------------------- the task list


def _path(name: str, value) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise TypeError(f"{name} must be a file path (a str or pathlib.Path), got {value!r} of type "
                        f"{type(value).__name__}")
    return Path(value)


def solution_for(notebook_path, solutions_dir=None) -> Path:
    """The solution notebook matching ``notebook_path``: same file name, else the same ``NN_`` prefix."""
    notebook_path = _path("notebook_path", notebook_path)
    solutions_dir = _path("solutions_dir", DEFAULT_SOLUTIONS if solutions_dir is None else solutions_dir)
    if not solutions_dir.is_dir():
        raise GradingError(f"solution notebooks not found: {solutions_dir} is not a folder (pass --solutions DIR)")
    name = Path(notebook_path).name
    if (solutions_dir / name).is_file():
        return solutions_dir / name
    available = sorted(p.name for p in solutions_dir.glob("*.ipynb"))
    prefix = name.split("_", 1)[0] + "_"
    same_lesson = [n for n in available if prefix[:-1].isdigit() and n.startswith(prefix)]
    if len(same_lesson) == 1:
        return solutions_dir / same_lesson[0]
    raise GradingError(f"no solution notebook in {solutions_dir} matches {name}: name the notebook after "
                       f"its lesson, one of {', '.join(available)}")


def solution_tasks(solution_path) -> list[TaskSpec]:
    """The tasks of a solution notebook: its ``check("task", function)`` calls, in notebook order."""
    solution_path = _path("solution_path", solution_path)
    try:
        solution = read_notebook(solution_path)
    except NotebookReadError as error:
        raise GradingError(str(error)) from None
    specs: list[TaskSpec] = []
    for index, cell in enumerate(solution.cells):
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(_python_source(cell.source))
        except SyntaxError as error:
            raise GradingError(f"{solution_path}: cell {index} is not valid Python: {error.msg}") from None
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check"):
                continue
            args = node.args
            if (len(args) < 2 or not isinstance(args[0], ast.Constant) or not isinstance(args[0].value, str)
                    or not isinstance(args[1], ast.Name)):
                raise GradingError(f"{solution_path}: cell {index}: write the check as "
                                   "check(\"task name\", function_name)")
            spec = TaskSpec(args[0].value, args[1].id)
            if spec.task not in TASKS:
                raise GradingError(f"{solution_path}: cell {index} checks unknown task {spec.task!r}")
            if spec.task not in {s.task for s in specs}:
                specs.append(spec)
    if not specs:
        raise GradingError(f"{solution_path} has no check(\"task\", function) calls: nothing to grade")
    return specs


# ----------------------------------------------------------------------------- running the notebook


def _check_kernel(kernel_name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        manager.get_kernel_spec(kernel_name)
    except NoSuchKernel:
        installed = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise GradingError(f"no Jupyter kernel named {kernel_name!r} (--kernel); installed kernels: "
                           f"{installed}") from None


def _cell_errors(cells) -> list[str]:
    errors = []
    for index, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append(f"cell {index} raised {output.get('ename')}: {str(output.get('evalue'))[:200]}")
    return errors


def _run_notebook(notebook: nbformat.NotebookNode, path: Path, timeout: float, kernel_name: str,
                 sweeper: _ProcessSweeper) -> list[str]:
    """Execute ``notebook`` (in place) in a kernel; return the errors its cells raised."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    client = NotebookClient(notebook, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                            shutdown_kernel="immediate",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    try:
        # kernel start-up warnings would garble the scorecard
        client.execute(stderr=subprocess.DEVNULL, env=sweeper.environment(MPLBACKEND="Agg"))
    except CellTimeoutError:
        raise GradingError(f"{path}: a cell ran longer than {timeout:g} s (raise it with --timeout)") from None
    except DeadKernelError as error:
        raise GradingError(f"{path}: the kernel died: {error}") from None
    except Exception as error:  # noqa: BLE001 - any failure to start or talk to the kernel
        raise GradingError(f"{path}: could not run the notebook in kernel {kernel_name!r}: "
                           f"{type(error).__name__}: {str(error)[:300]}") from None
    return _cell_errors(notebook.cells)


def grade_notebook(path, timeout: float = 120, kernel_name: str = "python3", solutions_dir=None,
                   check_timeout: float = CHECK_TIME_LIMIT) -> Scorecard:
    """Run the notebook at ``path``, check its task functions in a fresh process, return the :class:`Scorecard`.

    ``timeout``: seconds per cell; ``check_timeout``: seconds per check; ``solutions_dir``: the folder
    of solution notebooks that give the task list (default: the course's ``solutions/``).
    """
    timeout = check_time_limit("timeout", timeout)
    check_timeout = check_time_limit("check_timeout", check_timeout)
    if not isinstance(kernel_name, str) or not kernel_name:
        raise TypeError(f"kernel_name must be the name of a Jupyter kernel (a str), got {kernel_name!r}")
    path = _path("path", path)
    try:
        notebook = read_notebook(path)
    except NotebookReadError as error:
        raise GradingError(str(error)) from None
    specs = solution_tasks(solution_for(path, solutions_dir))
    _check_kernel(kernel_name)
    folder = path.parent.resolve()
    with _ProcessSweeper() as sweeper:
        checker = _CheckProcess(folder, sweeper)   # imports while the notebook runs; gets its job after
        try:
            errors = _run_notebook(copy.deepcopy(notebook), path, timeout, kernel_name, sweeper)
            sweeper.sweep(keep={checker.process.pid})   # nothing the notebook started may run during the checks
        except BaseException:
            checker.end()
            raise
        tasks = _check_tasks(notebook, specs, folder, check_timeout, sweeper, first=checker)
    return Scorecard(str(path), tasks, errors)


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= MAX_TIME_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds from 1 to {MAX_TIME_LIMIT:g}, "
                                         f"got {text!r}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", metavar="NOTEBOOK", type=Path, help="exercise notebook to run and score")
    parser.add_argument("--timeout", type=_seconds, default=120, help="seconds allowed per cell (default 120)")
    parser.add_argument("--check-timeout", type=_seconds, default=int(CHECK_TIME_LIMIT),
                        help=f"seconds allowed per check (default {CHECK_TIME_LIMIT:g})")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    parser.add_argument("--solutions", type=Path, default=None,
                        help="folder of solution notebooks that give the task list (default: the course's "
                             "solutions/)")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless every task is done")
    parser.add_argument("--json", action="store_true", help="print the scorecard as JSON")
    parser.epilog = ("Exit status: 0 whatever the score; 1 if a cell raised an error (or, with --strict, "
                     "a task is not done); 2 if the notebook could not be read or executed.")


def run(args: argparse.Namespace) -> int:
    try:
        card = grade_notebook(args.notebook, timeout=args.timeout, kernel_name=args.kernel,
                              solutions_dir=getattr(args, "solutions", None),
                              check_timeout=getattr(args, "check_timeout", CHECK_TIME_LIMIT))
    except GradingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(card.as_dict(), indent=1) if args.json else card.text())
    if card.cell_errors or (args.strict and not card.all_done):
        return 1
    return 0
