"""``moe-teach check NOTEBOOK``: run a learner's exercise notebook headless and print a scorecard.

The notebook is executed with nbclient (kernel ``python3``, working directory = the notebook's
folder, a time limit per cell); cells that raise do not stop the run. Every ``check(...)``
call records its verdict in :mod:`moe_teach.course.checks`' registry; the grader appends one cell that
prints that registry as a JSON line and reads it back. Tasks are the ``check("name", ...)``
calls found in the notebook; one that never ran (its cell was not reached or raised first)
shows as "not run".

Exit status: 0 whatever the score; 1 if a cell raised an error, or with ``--strict`` if any
task is not done; 2 if the notebook could not be read or executed (missing file, kernel died,
a cell ran past the time limit).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from .checks import DONE, FAILED, NOT_DONE, RESULTS_MARKER

NOT_RUN = "not run"
_CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([^"']+)["']""")
_REPORT_CELL = ("from moe_teach.course.checks import results_json_line as _moe_teach_results_json_line\n"
                "print(_moe_teach_results_json_line())")
_SYMBOLS = {DONE: "✅", FAILED: "❌", NOT_DONE: "⏳", NOT_RUN: "·"}


class GradingError(RuntimeError):
    """The notebook could not be read or executed."""


@dataclass
class TaskScore:
    task: str
    status: str
    message: str = ""
    hint: str = ""
    key: str = ""


@dataclass
class Scorecard:
    notebook: str
    tasks: list[TaskScore]
    cell_errors: list[str] = field(default_factory=list)

    @property
    def num_done(self) -> int:
        return sum(t.status == DONE for t in self.tasks)

    @property
    def all_done(self) -> bool:
        return bool(self.tasks) and self.num_done == len(self.tasks)

    def statuses(self) -> dict[str, str]:
        return {t.task: t.status for t in self.tasks}

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [f"Scorecard for {self.notebook}"]
        width = max((len(t.task) for t in self.tasks), default=0)
        for t in self.tasks:
            detail = f": {t.message}" if t.status == FAILED else ""
            lines.append(f"  {_SYMBOLS.get(t.status, '?')} {t.task:<{width}}  {t.status}{detail}")
            if t.status == FAILED and t.hint:
                lines.append(f"      hint: {t.hint}")
        for error in self.cell_errors:
            lines.append(f"  ! {error}")
        lines.append(f"{self.num_done} of {len(self.tasks)} tasks done.")
        return "\n".join(lines)


def task_names(notebook: nbformat.NotebookNode) -> list[str]:
    """Task names of the ``check("name", ...)`` calls in the notebook's code cells, in order."""
    names = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            names += [n for n in _CHECK_CALL.findall(cell.source) if n not in names]
    return names


def _recorded_results(cell) -> list[dict]:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            for line in output.get("text", "").splitlines():
                if line.startswith(RESULTS_MARKER):
                    return json.loads(line[len(RESULTS_MARKER):])
    return []


def _cell_errors(cells) -> list[str]:
    errors = []
    for index, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append(f"cell {index} raised {output.get('ename')}: {str(output.get('evalue'))[:200]}")
    return errors


def grade_notebook(path, timeout: int = 120, kernel_name: str = "python3") -> Scorecard:
    """Execute the notebook at ``path`` headless and return its :class:`Scorecard`."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    path = Path(path)
    try:
        notebook = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as error:
        raise GradingError(f"cannot read {path}: {error}") from None
    names = task_names(notebook)
    num_cells = len(notebook.cells)
    notebook.cells.append(nbformat.v4.new_code_cell(_REPORT_CELL))
    client = NotebookClient(notebook, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    try:
        client.execute(stderr=subprocess.DEVNULL)   # kernel start-up warnings would garble the scorecard
    except CellTimeoutError:
        raise GradingError(f"{path}: a cell ran longer than {timeout} s (raise it with --timeout)") from None
    except DeadKernelError as error:
        raise GradingError(f"{path}: the kernel died: {error}") from None
    recorded = {r["task"]: r for r in _recorded_results(notebook.cells[-1])}
    tasks = [TaskScore(**recorded[n]) if n in recorded else TaskScore(n, NOT_RUN) for n in names]
    tasks += [TaskScore(**r) for n, r in recorded.items() if n not in names]
    return Scorecard(str(path), tasks, _cell_errors(notebook.cells[:num_cells]))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", metavar="NOTEBOOK", type=Path, help="exercise notebook to run and score")
    parser.add_argument("--timeout", type=int, default=120, help="seconds allowed per cell (default 120)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless every task is done")
    parser.add_argument("--json", action="store_true", help="print the scorecard as JSON")
    parser.epilog = ("Exit status: 0 whatever the score; 1 if a cell raised an error (or, with --strict, "
                     "a task is not done); 2 if the notebook could not be read or executed.")


def run(args: argparse.Namespace) -> int:
    try:
        card = grade_notebook(args.notebook, timeout=args.timeout, kernel_name=args.kernel)
    except GradingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(card.as_dict(), indent=1) if args.json else card.text())
    if card.cell_errors or (args.strict and not card.all_done):
        return 1
    return 0
