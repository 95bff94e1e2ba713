"""Committed notebooks hold no outputs, execution counts or saved widget state.

Fix a failure with ``python3 course.py strip`` (or ``python3 tools/strip_outputs.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIRS = ("notebooks", "exercises", "solutions")

NOTEBOOKS = sorted(
    p
    for d in NOTEBOOK_DIRS
    if (ROOT / d).is_dir()
    for p in (ROOT / d).rglob("*.ipynb")
    if ".ipynb_checkpoints" not in p.parts
)


def leftovers(nb: dict) -> list[str]:
    """What a clean notebook must not hold, one line per offending cell."""
    found = []
    if "widgets" in nb.get("metadata", {}):
        found.append("notebook metadata holds saved widget state ('widgets')")
    for index, cell in enumerate(nb.get("cells", [])):
        first_line = "".join(cell.get("source", "")).strip().split("\n")[0][:60]
        where = f"cell {index} ({cell.get('cell_type')}, starts {first_line!r})"
        if cell.get("outputs"):
            found.append(f"{where}: {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"{where}: execution count {cell['execution_count']}")
    return found


def test_there_are_notebooks_to_check():
    assert NOTEBOOKS, f"no notebooks found under {', '.join(NOTEBOOK_DIRS)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.relative_to(ROOT).as_posix() for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    found = leftovers(nb)
    assert not found, (
        f"{path.relative_to(ROOT).as_posix()} is not clean; run `python3 course.py strip`:\n  "
        + "\n  ".join(found)
    )


def test_leftovers_names_the_offending_cell():
    nb = {
        "metadata": {},
        "cells": [
            {"cell_type": "markdown", "source": "# Title", "metadata": {}},
            {
                "cell_type": "code",
                "source": ["x = 1\n", "x"],
                "execution_count": 3,
                "metadata": {},
                "outputs": [{"output_type": "execute_result", "data": {"text/plain": "1"}}],
            },
        ],
    }
    found = leftovers(nb)
    assert len(found) == 2 and all(line.startswith("cell 1 (code, starts 'x = 1')") for line in found)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.relative_to(ROOT).as_posix() for p in NOTEBOOKS])
def test_every_cell_has_a_unique_id(path):
    """nbformat 4.5 cells carry an ``id``; without one Jupyter warns (and will refuse the file)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    ids = [cell.get("id") for cell in nb["cells"]]
    missing = [index for index, cell_id in enumerate(ids) if not cell_id]
    assert not missing, f"{path.relative_to(ROOT).as_posix()}: cells {missing} have no id"
    assert len(set(ids)) == len(ids), f"{path.relative_to(ROOT).as_posix()}: repeated cell ids"
