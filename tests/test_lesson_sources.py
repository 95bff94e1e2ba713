"""Every lesson ends with "Sources and further reading", holding at least one entry."""

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("00_"))
HEADING = "## Sources and further reading"


def test_there_are_lessons():
    assert len(LESSONS) >= 8


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_ends_with_sources_section_with_entries(path):
    cells = nbformat.read(path, as_version=4).cells
    last = cells[-1]
    assert last.cell_type == "markdown" and last.source.lstrip().startswith(HEADING), \
        f"{path.name}: the last cell should be a markdown cell starting with {HEADING!r}"
    entries = [line for line in last.source.split("\n") if re.match(r"\s*[-*] \S", line)]
    assert entries, f"{path.name}: the sources section lists no entry ('- ...')"
    assert sum(HEADING in c.source for c in cells) == 1, f"{path.name}: one sources section only"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_every_shipped_bug_remark_points_to_a_source(path):
    """A sentence saying a bug 'shipped' names a reference (an issue or pull request) in the same cell."""
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown" and "shipped" in cell.source:
            assert re.search(r"(issue|pull request) #\d+|sources", cell.source), (path.name, cell.source[:120])


# exercises/07 is built with lesson 07's rebuild; until it lands, lesson 07's link to it may be missing
PENDING: set[str] = set()


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(reason="exercise 07 not built yet",
                                                                          strict=False))
                                  if p.stem in PENDING else p for p in LESSONS], ids=lambda p: p.stem)
def test_relative_links_point_to_files_that_exist(path):
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "markdown":
            continue
        for target in re.findall(r"\]\(([^)#\s]+\.ipynb)\)", cell.source):
            if "://" not in target:
                assert (path.parent / target).resolve().exists(), f"{path.name} links to missing {target}"
