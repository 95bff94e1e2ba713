"""pyproject.toml and environment.yml pin the same packages at the same versions.

pyproject.toml is the one place versions are set; environment.yml (the conda route) repeats them.
This test keeps the two from drifting apart. It needs only the standard library.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
ENVIRONMENT = ROOT / "environment.yml"

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*$")


def _normalise(name: str) -> str:
    """PEP 503 name normalisation: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse_requirement(text: str) -> tuple[str, str]:
    """``"torch==2.13.0"`` -> ``("torch", "==2.13.0")`` (the specifier is kept verbatim, spaces removed)."""
    text = text.split(";")[0]  # drop environment markers
    match = REQUIREMENT.match(text)
    assert match, f"cannot read the requirement {text!r}"
    return _normalise(match.group(1)), match.group(2).replace(" ", "")


def _load_toml(path: Path) -> dict:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # Python 3.10: a tiny reader for the arrays of strings we need
        return _mini_toml(path.read_text(encoding="utf-8"))
    with path.open("rb") as f:
        return tomllib.load(f)


def _mini_toml(text: str) -> dict:
    """Read ``[table]`` headers and ``key = [ "string", ... ]`` arrays; enough for this test on 3.10."""
    data: dict = {}
    table = data
    lines = iter(text.splitlines())
    for line in lines:
        stripped = line.split("#")[0].strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            table = data
            for part in stripped.strip("[]").split("."):
                table = table.setdefault(part.strip(), {})
        elif "=" in stripped and stripped.split("=", 1)[1].strip().startswith("["):
            key, value = (s.strip() for s in stripped.split("=", 1))
            while value.count("[") > value.count("]"):
                value += " " + next(lines).split("#")[0].strip()
            table[key] = ast.literal_eval(value)
    return data


def pyproject_pins() -> dict[str, str]:
    """All runtime and optional requirements of pyproject.toml, ``{name: specifier}``."""
    project = _load_toml(PYPROJECT)["project"]
    requirements = list(project.get("dependencies", []))
    for group in project.get("optional-dependencies", {}).values():
        requirements.extend(group)
    return dict(_parse_requirement(r) for r in requirements)


def environment_pins() -> dict[str, str]:
    """The ``pip:`` section of environment.yml, ``{name: specifier}``, without ``-e .`` and other options."""
    pins: dict[str, str] = {}
    in_pip = False
    pip_indent = -1
    for raw in ENVIRONMENT.read_text(encoding="utf-8").splitlines():
        line = raw.split("#")[0].rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if item in ("- pip:", "-  pip:"):
            in_pip, pip_indent = True, indent
            continue
        if in_pip and indent <= pip_indent:
            in_pip = False
        if in_pip and item.startswith("-"):
            entry = item[1:].strip().strip("'\"")
            if entry.startswith("-"):  # an option such as "-e ." or "--extra-index-url"
                continue
            name, spec = _parse_requirement(entry)
            pins[name] = spec
    return pins


def test_environment_yml_has_a_pip_section():
    assert environment_pins(), "environment.yml has no `- pip:` section listing packages"


def test_environment_yml_installs_the_course_package():
    text = ENVIRONMENT.read_text(encoding="utf-8")
    assert re.search(r"^\s*-\s*-e\s+\.\s*$", text, re.MULTILINE), "environment.yml must install `-e .`"


def test_every_pin_is_exact():
    loose = {name: spec for name, spec in pyproject_pins().items() if not re.fullmatch(r"==[\w.+!-]+", spec)}
    assert not loose, f"pyproject.toml requirements must be pinned with ==, these are not: {loose}"


def test_pyproject_and_environment_yml_agree():
    pyproject, environment = pyproject_pins(), environment_pins()
    only_pyproject = {n: s for n, s in pyproject.items() if n not in environment}
    only_environment = {n: s for n, s in environment.items() if n not in pyproject}
    different = {
        n: f"pyproject.toml {pyproject[n]} vs environment.yml {environment[n]}"
        for n in pyproject.keys() & environment.keys()
        if pyproject[n] != environment[n]
    }
    problems = []
    if only_pyproject:
        problems.append(f"only in pyproject.toml: {only_pyproject}")
    if only_environment:
        problems.append(f"only in environment.yml: {only_environment}")
    if different:
        problems.append(f"different versions: {different}")
    assert not problems, "pyproject.toml and environment.yml disagree:\n  " + "\n  ".join(problems)


def test_torch_is_pinned_to_the_cpu_tested_release():
    assert pyproject_pins().get("torch") == "==2.13.0", "pyproject.toml must pin torch==2.13.0"
    assert environment_pins().get("torch") == "==2.13.0", "environment.yml must pin torch==2.13.0"


def test_mini_toml_reader_matches_tomllib():
    """The 3.10 fallback reads this pyproject.toml the way tomllib does (checked where tomllib exists)."""
    import pytest

    tomllib = pytest.importorskip("tomllib")
    text = PYPROJECT.read_text(encoding="utf-8")
    full, mini = tomllib.loads(text)["project"], _mini_toml(text)["project"]
    assert mini["dependencies"] == full["dependencies"]
    assert mini["optional-dependencies"] == full["optional-dependencies"]


def test_notebook_kernel_runs_in_this_environment():
    """The ``python3`` kernel named in every notebook starts in the same environment as the tests.

    nbval and the exercise checker start that kernel; if a ``python3`` kernel of another Python installed
    elsewhere shadowed this environment's, notebooks would run without the course's pinned packages.
    """
    import sys

    import pytest

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    kernel_prefix = nb.cells[0].outputs[0]["text"].strip()
    assert Path(kernel_prefix).resolve() == Path(sys.prefix).resolve(), (
        f"the python3 kernel runs in {kernel_prefix}, the tests in {sys.prefix}; "
        "run `jupyter kernelspec list` and remove the python3 kernel that shadows this environment's"
    )
