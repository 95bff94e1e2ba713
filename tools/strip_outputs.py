"""Strip outputs from the course notebooks, in place.

Notebooks are committed without outputs, execution counts or saved widget state, so that diffs show
only what an author wrote and every number a learner sees is computed on their own machine.

    python3 tools/strip_outputs.py                 # notebooks/, exercises/, solutions/
    python3 tools/strip_outputs.py path/to/a.ipynb  # given notebooks or folders
    python3 tools/strip_outputs.py --check          # change nothing; exit 1 if any notebook is not clean

Standard library only (``python3 course.py strip`` runs it without the course environment). The file is
rewritten the way nbformat writes notebooks (sorted keys, one-space indent), and only when it changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIRS = ("notebooks", "exercises", "solutions")
CELL_METADATA_TO_DROP = ("execution", "collapsed", "scrolled", "ExecuteTime")
NOTEBOOK_METADATA_TO_DROP = ("widgets",)


def find_notebooks(paths: list[Path]) -> list[Path]:
    """Every ``.ipynb`` under the given files or folders, skipping ``.ipynb_checkpoints``."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts)
        elif path.suffix == ".ipynb" and path.exists():
            found.append(path)
    return found


def strip_notebook(nb: dict) -> list[str]:
    """Remove outputs in place from a notebook loaded as JSON; return what was removed, one line each."""
    removed: list[str] = []
    for key in NOTEBOOK_METADATA_TO_DROP:
        if nb.get("metadata", {}).pop(key, None) is not None:
            removed.append(f"notebook metadata {key!r}")
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code":
            if cell.get("outputs"):
                removed.append(f"cell {index}: {len(cell['outputs'])} output(s)")
            if cell.get("execution_count") is not None:
                removed.append(f"cell {index}: execution count {cell['execution_count']}")
            cell["outputs"] = []
            cell["execution_count"] = None
        elif "outputs" in cell or "execution_count" in cell:  # invalid on markdown/raw cells
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            removed.append(f"cell {index}: outputs on a {cell.get('cell_type')} cell")
        metadata = cell.get("metadata", {})
        for key in CELL_METADATA_TO_DROP:
            if key in metadata:
                del metadata[key]
                removed.append(f"cell {index}: metadata {key!r}")
    return removed


def dumps(nb: dict) -> str:
    """Serialise like ``nbformat.write`` does."""
    return json.dumps(nb, indent=1, sort_keys=True, separators=(",", ": "), ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", nargs="*", type=Path, help="notebooks or folders (default: the course folders)"
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a notebook has outputs"
    )
    args = parser.parse_args(argv)

    paths = args.paths or [ROOT / d for d in NOTEBOOK_DIRS]
    notebooks = find_notebooks(paths)
    dirty = 0
    for path in notebooks:
        text = path.read_text(encoding="utf-8")
        nb = json.loads(text)
        removed = strip_notebook(nb)
        if not removed:
            continue
        dirty += 1
        if args.check:
            print(f"{path}: not clean ({'; '.join(removed)})")
        else:
            path.write_text(dumps(nb), encoding="utf-8", newline="\n")
            print(f"{path}: stripped {len(removed)} item(s)")
    verb = "have outputs" if args.check else "stripped"
    print(f"{len(notebooks)} notebook(s) looked at, {dirty} {verb}.")
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
