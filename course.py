#!/usr/bin/env python3
"""Run the moe-teach course: two commands, nothing to install by hand.

    python3 course.py lab     open the course in JupyterLab (at notebooks/)
    python3 course.py test    lint, unit tests, every notebook, then the real-browser tests (what CI runs)
    python3 course.py strip   remove outputs from the notebooks before committing
    python3 course.py setup   only create or update the environment

The first ``lab`` or ``test`` creates a virtual environment in ``.venv/`` (a few minutes: it installs the
pinned CPU build of torch, then this package with its test tools); later runs reuse it and reinstall only
when pyproject.toml changed. Needs Python 3.10 or newer and nothing else: this file uses only the
standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYPROJECT = ROOT / "pyproject.toml"
STAMP = VENV / "moe-teach-install.sha256"  # hash of pyproject.toml at the last successful install
NOTEBOOK_DIRS = ("notebooks", "solutions", "exercises")
LINT_TARGETS = ("moe_teach", "tests", "notebooks", "solutions", "exercises", "tools", "course.py")
MIN_PYTHON = (3, 10)


def say(message: str) -> None:
    print(f"[course] {message}", flush=True)


def header(title: str) -> None:
    line = "=" * 78
    print(f"\n{line}\n[course] {title}\n{line}", flush=True)


def venv_python() -> Path:
    """The Python inside .venv: ``bin/python`` on Linux and macOS, ``Scripts\\python.exe`` on Windows."""
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def run(cmd: list, env: dict[str, str] | None = None, patient: bool = False) -> int:
    """Run a command from the repository root, echoing it first; return its exit status.

    Ctrl+C reaches the child too; we wait for it to stop cleanly (notebook kernels included) rather than
    kill it. ``patient``: keep waiting through Ctrl+C (JupyterLab asks before it shuts down).
    """
    shown = " ".join(
        str(Path(c).relative_to(ROOT)) if Path(c).is_absolute() and ROOT in Path(c).parents else str(c)
        for c in cmd
    )
    say(f"$ {shown}")
    process = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            if not patient:
                process.wait()
                raise


def pyproject_hash() -> str:
    return hashlib.sha256(PYPROJECT.read_bytes()).hexdigest()


def torch_requirement() -> str:
    """The torch pin from pyproject.toml (the one place versions are set), e.g. ``torch==2.13.0``."""
    match = re.search(r"""["'](torch\s*==\s*[^"';\s]+)["']""", PYPROJECT.read_text(encoding="utf-8"))
    if not match:
        sys.exit("[course] pyproject.toml does not pin torch with '=='; refusing to guess a version.")
    return match.group(1).replace(" ", "")


def venv_works() -> bool:
    python = venv_python()
    if not python.exists():
        return False
    try:
        return subprocess.call([str(python), "-c", "import sys"], cwd=ROOT) == 0
    except OSError:
        return False


def ensure_venv() -> Path:
    """Create .venv on first use, (re)install when pyproject.toml changed; return its Python."""
    if sys.version_info < MIN_PYTHON:
        needed, this = ".".join(map(str, MIN_PYTHON)), sys.version.split()[0]
        sys.exit(f"[course] Python {needed} or newer is needed; this is {this}.")
    python = venv_python()
    if VENV.exists() and not venv_works():
        say(f"{VENV} exists but its Python does not run; creating it again.")
        shutil.rmtree(VENV)
    if not VENV.exists():
        header(f"First run: creating the course environment in {VENV.name}/ (takes a few minutes, once)")
        if run([sys.executable, "-m", "venv", VENV]) != 0 or not python.exists():
            sys.exit(
                "[course] could not create the virtual environment. On Debian or Ubuntu install the venv "
                "module first (sudo apt install python3-venv), then run this command again."
            )
    wanted = pyproject_hash()
    if STAMP.exists() and STAMP.read_text(encoding="utf-8").strip() == wanted:
        return python
    if STAMP.exists():
        header("pyproject.toml changed since the last install: updating the course environment")
    else:
        header("Installing the course packages into .venv/")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    torch = torch_requirement()
    say(f"Step 1 of 2: {torch} (first, so that the pinned build is the one that gets installed)")
    if run([*pip, torch]) != 0:
        sys.exit(f"[course] installing {torch} failed; see the pip output above.")
    say("Step 2 of 2: the course package with its test tools (pip install -e .[test])")
    if run([*pip, "-e", ".[test]"]) != 0:
        sys.exit("[course] installing the course package failed; see the pip output above.")
    STAMP.write_text(wanted + "\n", encoding="utf-8")
    say("The course environment is ready.")
    return python


def course_env() -> dict[str, str]:
    """Environment for everything run inside .venv: headless plots, stable hashing, the venv's kernel."""
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    bindir = venv_python().parent
    env["PATH"] = str(bindir) + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(VENV)
    # The kernel named "python3" in the notebooks must be this environment's, not one a user installed
    # elsewhere: look in .venv/share/jupyter before the user's own Jupyter folders.
    env["JUPYTER_PREFER_ENV_PATH"] = "1"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # quiet a debugger warning the kernel prints at start
    return env


def notebooks() -> list[Path]:
    found = []
    for folder in NOTEBOOK_DIRS:
        if (ROOT / folder).is_dir():
            found.extend(
                p for p in sorted((ROOT / folder).rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts
            )
    return found


def cmd_setup(args: argparse.Namespace) -> int:
    ensure_venv()
    say(f"Python of the course environment: {venv_python()}")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    python = ensure_venv()
    welcome = ROOT / "notebooks" / "00_welcome.ipynb"
    start = "/lab/tree/notebooks/00_welcome.ipynb" if welcome.exists() else "/lab/tree/notebooks"
    header("Starting JupyterLab (stop it with Ctrl+C)")
    cmd = [
        python,
        "-m",
        "jupyter",
        "lab",
        f"--ServerApp.root_dir={ROOT}",
        f"--LabApp.default_url={start}",
        *args.jupyter_args,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in cmd:
        say("Running as root (a container?): passing --allow-root to JupyterLab.")
        cmd.append("--allow-root")
    return run(cmd, env=course_env(), patient=True)


def cmd_test(args: argparse.Namespace) -> int:
    python = ensure_venv()
    env = course_env()
    env["MPLBACKEND"] = "Agg"
    env["PYTHONHASHSEED"] = "0"
    stages: list[tuple[str, list]] = []
    if "lint" in args.stages:
        targets = [t for t in LINT_TARGETS if (ROOT / t).exists()]
        stages.append(("lint: ruff check", [python, "-m", "ruff", "check", *targets]))
    if "unit" in args.stages:
        stages.append(("unit tests: pytest tests", [python, "-m", "pytest", "tests", *args.pytest_args]))
    if "notebooks" in args.stages:
        paths = [p.relative_to(ROOT).as_posix() for p in notebooks()]
        if paths:
            stages.append(
                (
                    f"notebooks: execute {len(paths)} notebook(s) with nbval",
                    [
                        python,
                        "-m",
                        "pytest",
                        "--nbval-lax",
                        "--nbval-cell-timeout=180",
                        "-p",
                        "no:cacheprovider",
                        *args.pytest_args,
                        *paths,
                    ],
                )
            )
        else:
            say("No notebooks found; skipping the notebook stage.")
    if "browser" in args.stages:
        if ensure_chromium():
            # -s: show the timings the tests print; screenshots go to test-artifacts/browser/
            stages.append(("browser: the dashboard in Chromium (JupyterLab and Voila)",
                           [python, "-m", "pytest", "tests/browser", "-s", "-p", "no:cacheprovider", "--durations=5",
                            *args.pytest_args]))
        else:
            missing = "import sys; sys.exit('chromium is not installed: apt-get install -y chromium')"
            stages.append(("browser: chromium is missing", [python, "-c", missing]))

    results = []
    for number, (title, cmd) in enumerate(stages, start=1):
        header(f"Stage {number} of {len(stages)}, {title}")
        started = time.monotonic()
        code = run(cmd, env=env)
        results.append((title, code, time.monotonic() - started))

    header("Summary")
    for title, code, seconds in results:
        print(f"  {'PASS' if code == 0 else f'FAIL (exit {code})':<14} {title}  [{seconds:.0f} s]")
    failed = [title for title, code, _ in results if code != 0]
    print(
        f"\n[course] {'All stages passed.' if not failed else f'{len(failed)} stage(s) failed.'}", flush=True
    )
    return 1 if failed else 0


def ensure_chromium() -> bool:
    """Chromium for the browser tests: Debian's package (Playwright's own browser download is not used).

    Installed with apt when missing and this runs as root (CI on a fresh Debian machine); otherwise
    says how to install it. Returns whether ``chromium`` is on the PATH.
    """
    if shutil.which("chromium"):
        return True
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        say("chromium is not installed; install it (Debian/Ubuntu: sudo apt-get install -y chromium) "
            "or skip this stage with --only lint --only unit --only notebooks.")
        return False
    header("Installing chromium for the browser tests (apt-get, once)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if run([apt, "update"], env=env) != 0 or run([apt, "install", "-y", "chromium"], env=env) != 0:
        say("apt-get could not install chromium; see its output above.")
    return shutil.which("chromium") is not None


def cmd_strip(args: argparse.Namespace) -> int:
    cmd = [sys.executable, ROOT / "tools" / "strip_outputs.py", *args.paths]
    return run(cmd + (["--check"] if args.check else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 course.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    lab = sub.add_parser(
        "lab", help="open the course in JupyterLab", description="Other arguments go to `jupyter lab`."
    )
    lab.set_defaults(func=cmd_lab)

    test = sub.add_parser("test", help="run lint, unit tests and every notebook (what CI runs)")
    test.add_argument(
        "--only",
        dest="stages",
        action="append",
        choices=("lint", "unit", "notebooks", "browser"),
        help="run only this stage (repeatable); default: all four",
    )
    test.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after `--` (e.g. -- -x -q)")
    test.set_defaults(func=cmd_test)

    strip = sub.add_parser("strip", help="remove outputs from notebooks (standard library only)")
    strip.add_argument(
        "paths", nargs="*", help="notebooks or folders (default: notebooks/, exercises/, solutions/)"
    )
    strip.add_argument("--check", action="store_true", help="change nothing; fail if a notebook has outputs")
    strip.set_defaults(func=cmd_strip)

    setup = sub.add_parser("setup", help="create or update .venv/ only")
    setup.set_defaults(func=cmd_setup)

    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "lab":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.jupyter_args = extra  # e.g. python3 course.py lab --no-browser --port 8890
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "test" and not args.stages:
        args.stages = ["lint", "unit", "notebooks", "browser"]
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\n[course] interrupted.", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
