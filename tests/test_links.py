"""Every relative link and every file named in notebook markdown (and in README/CONTRIBUTING)
points to a file that exists, so a learner never follows a link into nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for d in ("notebooks", "exercises", "solutions") for p in (ROOT / d).glob("*.ipynb"))
DOCUMENTS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# a file of this repository named in backticks (production code named in the sources, such as
# `models/mixtral/modeling_mixtral.py`, lives in other repositories and is not checked)
NAMED_FILE = re.compile(r"`((?:\.\./)?(?:notebooks|exercises|solutions|moe_teach|tests|tools|\.ci)/[\w./-]+"
                        r"|[\w-]+\.(?:ipynb|md))`")


def markdown_of(path: Path) -> str:
    if path.suffix == ".md":
        return path.read_text()
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def local_targets(text: str) -> list[str]:
    """Relative link targets (anchors and web links left out) and backticked file names.

    Code spans are not links (``experts[e](x)``); names with ``NN`` are templates (CONTRIBUTING.md).
    """
    prose = re.sub(r"`[^`]*`", "", text)
    links = [t.split("#")[0] for t in LINK.findall(prose) if not re.match(r"^(https?:|mailto:|#)", t)]
    return [t for t in links + NAMED_FILE.findall(text) if t and "NN" not in t]


def resolves(target: str, folder: Path) -> bool:
    """A name resolves beside the document, or from the repository root (``moe_teach/...``)."""
    return (folder / target).exists() or (ROOT / target).exists()


@pytest.mark.parametrize("path", NOTEBOOKS + DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_named_file_exists(path):
    missing = [t for t in local_targets(markdown_of(path)) if not resolves(t, path.parent)]
    assert not missing, f"{path.relative_to(ROOT)} names files that do not exist: {missing}"


def test_the_checker_sees_links_and_named_files():
    text = ("see [lesson 2](02_gating.ipynb#top), [web](https://x.org), `f[e](x)`, `moe_teach/routing/topk.py`, "
            "`models/mixtral/modeling_mixtral.py`, `README.md`")
    assert local_targets(text) == ["02_gating.ipynb", "moe_teach/routing/topk.py", "README.md"]
