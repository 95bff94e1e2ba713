"""``moe-teach exercises build``: write ``exercises/`` from ``solutions/``.

``solutions/`` is the single source. In every code cell, the lines from ``### BEGIN SOLUTION``
to ``### END SOLUTION`` (the markers nbgrader uses) become a stub at the indentation of the
BEGIN marker::

    # YOUR CODE HERE
    raise NotImplementedError

Everything else (markdown, other code, cell ids, notebook metadata) is kept; outputs and
execution counts are stripped. The output is deterministic, so ``--check`` can tell whether
``exercises/`` is up to date (exit status 1 if not). Solution notebooks without any marker are
skipped (no exercise notebook is written for them).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError")


class ExerciseBuildError(ValueError):
    """A solution notebook whose markers cannot be turned into a stub, or a folder that cannot be written."""


class NotebookReadError(ExerciseBuildError):
    """A file that cannot be read as a Jupyter notebook (the message names the file)."""


def read_notebook(path) -> nbformat.NotebookNode:
    """Read and validate the notebook at ``path`` (nbformat 4); raise :class:`NotebookReadError` naming it."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (a str or pathlib.Path), got {type(path).__name__}")
    path = Path(path)
    try:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
    except FileNotFoundError:
        raise NotebookReadError(f"cannot read {path}: no such file") from None
    except UnicodeDecodeError:
        raise NotebookReadError(f"{path} is not a Jupyter notebook: not UTF-8 text") from None
    except OSError as error:
        raise NotebookReadError(f"cannot read {path}: {error.strerror or error}") from None
    except Exception as error:  # noqa: BLE001 - nbformat raises many kinds (JSON, schema, conversion)
        text = str(error).strip().split("\n")[0][:200]
        raise NotebookReadError(f"{path} is not a Jupyter notebook: {text}") from None
    if not all(isinstance(cell.get("source"), str) for cell in notebook.cells):
        raise NotebookReadError(f"{path} is not a Jupyter notebook: a cell has no source text")
    return notebook


def stub_source(source: str, where: str = "cell") -> tuple[str, int]:
    """Replace each marked solution block in ``source`` by a stub.

    Returns ``(new_source, number_of_blocks)``. ``where`` names the notebook and cell in errors.
    """
    lines, out, blocks = source.split("\n"), [], 0
    begin_line = None
    for number, line in enumerate(lines, start=1):
        marker = line.strip()
        if marker == BEGIN:
            if begin_line is not None:
                raise ExerciseBuildError(f"{where}: line {number}: '{BEGIN}' inside the solution block "
                                         f"opened at line {begin_line}; close it with '{END}' first")
            begin_line = number
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + stub_line for stub_line in STUB)
        elif marker == END:
            if begin_line is None:
                raise ExerciseBuildError(f"{where}: line {number}: '{END}' without a matching '{BEGIN}'")
            begin_line = None
            blocks += 1
        elif begin_line is None:
            out.append(line)
    if begin_line is not None:
        raise ExerciseBuildError(f"{where}: line {begin_line}: '{BEGIN}' is never closed by '{END}'")
    return "\n".join(out), blocks


def exercise_notebook(solution: nbformat.NotebookNode,
                      name: str = "notebook") -> tuple[nbformat.NotebookNode, int]:
    """The exercise version of a solution notebook and its number of solution blocks."""
    notebook = copy.deepcopy(solution)
    total = 0
    for index, cell in enumerate(notebook.cells):
        if "id" not in cell:
            raise ExerciseBuildError(f"{name}: cell {index} has no id; save the notebook as nbformat 4.5 "
                                     "(cell ids) first")
        if cell.cell_type == "code":
            where = f"{name}: cell {index} (id {cell.id!r})"
            cell.source, blocks = stub_source(cell.source, where)
            total += blocks
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    return notebook, total


def notebook_text(notebook: nbformat.NotebookNode) -> str:
    """The exact text written for a notebook (sorted keys, one-space indent, final newline)."""
    return nbformat.writes(notebook) + "\n"


def normalised(text: str) -> dict:
    """A notebook's JSON as a plain dict, so formatting differences do not count."""
    return json.loads(text)


def planned_exercises(solutions_dir: Path) -> dict[str, str]:
    """File name -> exercise notebook text, for every solution notebook that has solution blocks."""
    solutions_dir = Path(solutions_dir)
    if not solutions_dir.is_dir():
        raise ExerciseBuildError(f"solutions folder {str(solutions_dir)!r} not found; run from the "
                                 "repository root or pass --solutions DIR")
    planned = {}
    for path in sorted(solutions_dir.glob("*.ipynb")):
        solution = read_notebook(path)
        notebook, blocks = exercise_notebook(solution, str(path))
        if blocks:
            planned[path.name] = notebook_text(notebook)
    return planned


def build(solutions_dir: Path, exercises_dir: Path) -> list[Path]:
    """Write the exercise notebooks; returns the paths written.

    Every solution notebook is read and converted before anything is written, so a broken one
    leaves ``exercises_dir`` as it was.
    """
    exercises_dir = Path(exercises_dir)
    planned = planned_exercises(solutions_dir)
    if exercises_dir.exists() and not exercises_dir.is_dir():
        raise ExerciseBuildError(f"cannot write exercises to {exercises_dir} (--exercises): it is a file, "
                                 "not a folder")
    written = []
    try:
        exercises_dir.mkdir(parents=True, exist_ok=True)
        for name, text in planned.items():
            path = exercises_dir / name
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as error:
        where = error.filename or exercises_dir
        raise ExerciseBuildError(f"cannot write exercises to {exercises_dir} (--exercises): {where}: "
                                 f"{error.strerror or error}") from None
    return written


def stale_exercises(solutions_dir: Path, exercises_dir: Path) -> list[str]:
    """Descriptions of every exercise notebook that differs from what :func:`build` would write."""
    problems = []
    for name, text in planned_exercises(solutions_dir).items():
        path = Path(exercises_dir) / name
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        try:
            current = normalised(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:   # ValueError: not JSON, or not UTF-8
            problems.append(f"{path}: unreadable ({type(error).__name__}: {str(error)[:100]})")
            continue
        if current != normalised(text):
            problems.append(f"{path}: differs from what solutions/{name} gives")
    return problems


def configure_parser(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="exercises_action", metavar="ACTION")
    build_parser = actions.add_parser("build", help="write exercises/ from solutions/",
                                      description="Turn solution blocks into stubs, write exercises/.")
    build_parser.add_argument("--solutions", default="solutions", type=Path,
                              help="folder of solution notebooks")
    build_parser.add_argument("--exercises", default="exercises", type=Path, help="folder to write")
    build_parser.add_argument("--check", action="store_true",
                              help="write nothing; exit 1 if exercises/ is not what build would write")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "exercises_action", None) != "build":
        print("usage: moe-teach exercises build [--solutions DIR] [--exercises DIR] [--check]")
        return 2
    try:
        if args.check:
            problems = stale_exercises(args.solutions, args.exercises)
            for problem in problems:
                print(problem)
            if problems:
                print("exercises/ is out of date: run `moe-teach exercises build`")
                return 1
            print(f"{args.exercises} is up to date with {args.solutions}")
            return 0
        for path in build(args.solutions, args.exercises):
            print(f"wrote {path}")
    except ExerciseBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
