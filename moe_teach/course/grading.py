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
import contextlib
import copy
import ctypes
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from .checks import DONE, FAILED, NOT_DONE, TASKS
from .checks.core import CHECK_TIME_LIMIT, GRADING_RUN_ENV, MAX_TIME_LIMIT, check_time_limit
from .exercises import NotebookReadError, read_notebook

NOT_RUN = "not run"
STATUSES = (DONE, FAILED, NOT_DONE, NOT_RUN)
DEFAULT_SOLUTIONS = Path(__file__).resolve().parents[2] / "solutions"
_STARTUP_ALLOWANCE = 120.0          # seconds for the check process to import torch and the checkers
_REPORT_GRACE = 10.0                # seconds past a check's own time limit before its process is killed
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
            detail = f": {t.message}" if t.status in (FAILED, NOT_RUN) and t.message else ""
            lines.append(f"  {_SYMBOLS.get(t.status, '?')} {t.task:<{width}}  {t.status}{detail}")
            if t.status == FAILED and t.hint:
                lines.append(f"      hint: {t.hint}")
        for error in self.cell_errors:
            lines.append(f"  ! {error}")
        lines.append(f"{self.num_done} of {len(self.tasks)} tasks done.")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the task list


@dataclass(frozen=True)
class TaskSpec:
    """One task of a lesson: the task's name and the name of the function the learner writes for it."""

    task: str
    function: str


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


# ----------------------------------------------------------------------------- what the task functions need


def _python_source(cell_source: str) -> str:
    """A code cell's text as Python, with IPython syntax (``%time``, ``!ls``) turned into calls as a kernel does."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return cell_source
    try:
        return TransformerManager().transform_cell(cell_source)
    except Exception:  # noqa: BLE001 - a cell IPython cannot transform is parsed as it stands
        return cell_source


def _target_names(target) -> set[str] | None:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    if isinstance(target, (ast.Tuple, ast.List)):
        parts = [_target_names(element) for element in target.elts]
        return None if any(p is None for p in parts) else set().union(*parts)
    return None   # an attribute or an item: not a definition


def _bound_names(statement) -> set[str] | None:
    """The names a top-level statement defines, or None if it is not a definition (a call, a loop, ...)."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {statement.name}
    if isinstance(statement, ast.Import):
        return {alias.asname or alias.name.split(".")[0] for alias in statement.names}
    if isinstance(statement, ast.ImportFrom):
        return {alias.asname or alias.name for alias in statement.names}   # "*" for a star import
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)) and statement.value is not None:
        targets = [statement.target]
    else:
        return None
    names: set[str] = set()
    for target in targets:
        found = _target_names(target)
        if found is None:
            return None
        names |= found
    return names


def task_definitions(notebook: nbformat.NotebookNode, functions) -> list[tuple[int, str, list[int]]]:
    """The top-level statements of the notebook's code cells that define ``functions`` or what they use.

    Returns ``(cell index, cell source as Python, indices of the chosen statements)`` in notebook
    order. A statement is chosen if it is an import, ``def``, ``class`` or ``name = value`` line that
    binds a needed name; the names a chosen statement reads are needed too.
    """
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise TypeError(f"notebook must be a notebook read by nbformat, got {type(notebook).__name__}")
    functions = [functions] if isinstance(functions, str) else list(functions)
    if not all(isinstance(f, str) and f.isidentifier() for f in functions):
        raise TypeError(f"functions must be function names (identifiers), got {functions!r}")
    definitions = []   # (cell index, source, statement index, statement, bound names)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        source = _python_source(cell.source)
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue   # the kernel run reports it
        for number, statement in enumerate(tree.body):
            bound = _bound_names(statement)
            if bound:
                definitions.append((index, source, number, statement, bound))
    needed = set(functions) | {"*"}
    chosen: set[int] = set()
    while True:
        grew = False
        for position, (_, _, _, statement, bound) in enumerate(definitions):
            if position not in chosen and bound & needed:
                chosen.add(position)
                needed |= {n.id for n in ast.walk(statement) if isinstance(n, ast.Name)}
                grew = True
        if not grew:
            break
    program: dict[int, tuple[str, list[int]]] = {}
    for position in sorted(chosen):
        index, source, number, _, _ = definitions[position]
        program.setdefault(index, (source, []))[1].append(number)
    return [(index, source, numbers) for index, (source, numbers) in program.items()]


# ----------------------------------------------------------------------------- ending every process


def _set_child_subreaper(on: bool) -> bool:
    """Linux: make orphaned descendants of this process its children (so they can be found and ended)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0) == 0   # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) from /proc; empty where there is no /proc."""
    table = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry)] = (int(fields[1]), fields[0].decode(), fields[19].decode())
    return table


def _carries_tag(pid: int, tag: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return tag in environ.read().split(b"\0")
    except OSError:
        return False


class _ProcessSweeper:
    """Ends every process started while it is active, however the process detached itself.

    On Linux the grader becomes a child subreaper, so orphans are re-parented to it instead of to
    init, and every new descendant is killed; processes that carry :data:`GRADING_RUN_ENV` in their
    environment are killed too. Elsewhere it does nothing (the callers end process groups).
    """

    def __init__(self):
        self.token = secrets.token_hex(12)
        self.tag = f"{GRADING_RUN_ENV}={self.token}".encode()
        self._pid = os.getpid()
        self._before: set[tuple[int, str]] = set()
        self._subreaper = False

    def environment(self, **extra) -> dict[str, str]:
        """The environment for the run's processes: this one's plus the run's tag."""
        return {**os.environ, GRADING_RUN_ENV: self.token, **extra}

    def _descendants(self, table) -> set[int]:
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        found, todo = set(), [self._pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def __enter__(self) -> _ProcessSweeper:
        table = _process_table()
        self._before = {(pid, table[pid][2]) for pid in self._descendants(table)}
        self._subreaper = _set_child_subreaper(True)
        return self

    def sweep(self, keep=()) -> None:
        """Kill every process of the run that is still there but those in ``keep``; reap the ones
        re-parented here."""
        keep = set(keep) | {self._pid}
        for _ in range(200):
            table = _process_table()
            mine = {pid for pid in self._descendants(table) if (pid, table[pid][2]) not in self._before} - keep
            tagged = {pid for pid in table if pid not in keep and _carries_tag(pid, self.tag)}
            alive = {pid for pid in mine | tagged if table[pid][1] != "Z"}
            for pid in alive:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            zombies = {pid for pid in mine if table[pid][0] == self._pid and table[pid][1] == "Z"}
            for pid in zombies:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            if not alive and not zombies:
                return
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        try:
            self.sweep()
        finally:
            if self._subreaper:
                _set_child_subreaper(False)


# ----------------------------------------------------------------------------- the check process


def _check_process(first_line: bytes) -> None:
    """The check process's main (run as ``python -c``, see :data:`_CHECK_PROCESS_CODE`).

    Protocol: the first stdin line holds a secret (written by the grader when it starts this
    process, before any learner code exists, and read before anything else); the rest of stdin is
    the job, which must repeat the secret. Every line sent back on the report channel (a copy of
    stdout; the real stdout and stdin then lead nowhere) carries the secret too. The learner's
    definitions run only after the checkers are imported and the channel is set aside.
    """
    import builtins
    import hmac

    secret = json.loads(first_line)["secret"]
    report = os.fdopen(os.dup(1), "w", encoding="utf-8")
    nowhere = os.open(os.devnull, os.O_RDWR)
    os.dup2(nowhere, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process

    from moe_teach.course.checks import core  # registers every lesson's checkers

    run_checker, deadline_class, time_limit_error = core.run_checker, core._Deadline, core._TimeLimit
    job = json.loads(sys.stdin.buffer.read())
    os.dup2(nowhere, 0)
    sys.stdin = open(os.devnull)  # noqa: SIM115
    if not hmac.compare_digest(str(job.get("secret")), secret):
        sys.exit(3)   # not the grader's job: run nothing
    sys.path.append(os.getcwd())   # the learner's own modules next to the notebook, after everything else
    time_limit = job["time_limit"]

    def send(message: dict) -> None:
        report.write(json.dumps({**message, "secret": secret}, ensure_ascii=True) + "\n")
        report.flush()

    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for index, source, numbers in job["program"]:
        tree = ast.parse(source)
        code = compile(ast.Module(body=[tree.body[n] for n in numbers], type_ignores=[]),
                       f"<notebook cell {index}>", "exec")
        deadline = deadline_class(time_limit)
        try:
            try:
                deadline.start()
                exec(code, namespace)  # noqa: S102 - the learner's definitions, in this throw-away process
            finally:
                deadline.stop()
        except BaseException:  # noqa: BLE001 - like a cell that raises: the rest of the notebook still counts
            deadline.stop()
    send({"ready": True})
    for task, name in job["tasks"]:
        function = namespace.get(name)
        if function is None:
            result = {"task": task, "status": NOT_RUN, "message": f"the notebook defines no {name}(...) at the "
                      "top level of a code cell", "hint": "", "key": "missing"}
        elif not callable(function):
            result = {"task": task, "status": FAILED, "message": f"{name} is a {type(function).__name__}, "
                      "not a function", "hint": f"Define {name} with def, as the task cell does.",
                      "key": "not_a_function"}
        else:
            try:
                result = run_checker(task, function, time_limit).as_dict()
            except time_limit_error:
                result = core._timed_out(task, time_limit).as_dict()
            except BaseException as error:  # noqa: BLE001 - e.g. sys.exit() inside the learner's function
                result = {"task": task, "status": FAILED, "message": f"your function stopped the check: "
                          f"{type(error).__name__}: {str(error)[:200]}", "hint": "A task function should "
                          "return its result, not exit or interrupt the program.", "key": "stopped"}
            if result["key"] == "raised" and "NameError" in result["message"]:
                result["hint"] = ("The scorecard checks your function on its own, with only the import, def, "
                                  "class and name = value lines of your notebook that it uses: define what "
                                  "it needs in such a line at the top level of a code cell.")
        send(result)


# Read the secret at once; drop the current folder (the notebook's) from the import path first, so
# that no file the notebook wrote can stand in for a module the checker imports.
_CHECK_PROCESS_CODE = ("import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
                       "first_line = sys.stdin.buffer.readline(); "
                       "from moe_teach.course.grading import _check_process; _check_process(first_line)")
_PROBLEMS = {
    "timeout": "did not finish in time, so the check process was stopped",
    "ended": "ended the check process before its verdict (os._exit, a signal, or out of memory?)",
    "garbled": "garbled the check process's report",
}


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in iter(lambda: stream.readline(1_000_000), b""):
        lines.put(line)
    lines.put(None)


class _CheckProcess:
    """A fresh Python process that checks task functions: started early (it imports torch and the
    checkers while the notebook runs), given its job only once every process of the notebook run
    has been ended."""

    def __init__(self, cwd, sweeper: _ProcessSweeper):
        self._secret = secrets.token_hex(16)
        self._errors = tempfile.TemporaryFile()
        package_root = str(Path(__file__).resolve().parents[2])   # this moe_teach, installed or not
        python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen([sys.executable, "-c", _CHECK_PROCESS_CODE], cwd=str(cwd),
                                        env=sweeper.environment(MPLBACKEND="Agg", PYTHONPATH=python_path),
                                        stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._errors, start_new_session=True)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=_read_lines, args=(self.process.stdout, self._lines), daemon=True).start()
        self._write(json.dumps({"secret": self._secret}).encode() + b"\n")

    def _write(self, data: bytes, close: bool = False) -> None:
        with contextlib.suppress(OSError):   # it has died: the replies say so
            self.process.stdin.write(data)
            self.process.stdin.flush()
            if close:
                self.process.stdin.close()

    def _next(self, seconds: float, task: str | None = None):
        """The next report (a dict) and None, or None and what went wrong."""
        try:
            line = self._lines.get(timeout=seconds)
        except queue.Empty:
            return None, "timeout"
        if line is None:
            return None, "ended"
        try:
            message = json.loads(line)
        except ValueError:
            return None, "garbled"
        if not isinstance(message, dict) or message.pop("secret", None) != self._secret:
            return None, "garbled"
        if task is None:
            return (message, None) if message == {"ready": True} else (None, "garbled")
        if (message.get("task") != task or message.get("status") not in STATUSES
                or not all(isinstance(message.get(k), str) for k in ("message", "hint", "key"))):
            return None, "garbled"
        return message, None

    def check(self, program: list, specs: list[TaskSpec], time_limit: float):
        """Check ``specs``. Returns ``(scores, broken, definitions_broke)``: the scores reported, the
        failed score of the task it broke off at (None if it did not; the caller checks the rest in a
        new process), and whether it broke off before the first check."""
        scores: list[TaskScore] = []
        if not self._lines.empty() or self.process.poll() is not None:
            # it said something before it had a job, or died: something else wrote to it or killed it
            return scores, TaskScore(specs[0].task, FAILED, "the check process was tampered with before its "
                                     "job", "", "check_process"), True
        job = {"secret": self._secret, "program": program, "time_limit": time_limit,
               "tasks": [[s.task, s.function] for s in specs]}
        self._write(json.dumps(job).encode(), close=True)
        _, problem = self._next(_STARTUP_ALLOWANCE + time_limit * len(program))
        if problem is not None:
            why = _PROBLEMS[problem].replace("before its verdict", "before any check")
            return scores, TaskScore(specs[0].task, FAILED, f"the notebook's definitions {why}",
                                     self._crash_hint(), "check_process"), True
        for spec in specs:
            message, problem = self._next(time_limit + _REPORT_GRACE, spec.task)
            if problem is not None:
                return scores, TaskScore(spec.task, FAILED, f"your function {_PROBLEMS[problem]}",
                                         self._crash_hint(), "check_process"), False
            scores.append(TaskScore(**{k: message[k] for k in ("task", "status", "message", "hint", "key")}))
        return scores, None, False

    def _crash_hint(self) -> str:
        self._errors.seek(0)
        tail = self._errors.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
        said = f" The check process said: {tail[-1][:200]}" if tail else ""
        return "Run the task's check() cell in the notebook to see what happens." + said

    def end(self) -> None:
        """Kill the process and whatever it started (its own session)."""
        if hasattr(os, "killpg"):
            with contextlib.suppress(OSError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.wait()
        self._errors.close()


def _check_tasks(notebook: nbformat.NotebookNode, specs: list[TaskSpec], cwd, time_limit: float,
                sweeper: _ProcessSweeper, first: _CheckProcess | None = None) -> list[TaskScore]:
    """Check the notebook's task functions in fresh processes; one score per spec, in order.

    ``first``: a check process started before the notebook ran. If it breaks off before its first
    check (the notebook's code may have found it and written to it or killed it), the checks start
    again in a process started now, when no process of the notebook is left.
    """
    program = task_definitions(notebook, [s.function for s in specs])
    scores: list[TaskScore] = []
    remaining = list(specs)
    while remaining:
        process = first or _CheckProcess(cwd, sweeper)
        try:
            reported, broken, definitions_broke = process.check(program, remaining, time_limit)
        finally:
            process.end()
            sweeper.sweep()
        if definitions_broke and process is first:
            first = None
            continue
        first = None
        scores += reported
        if broken is None:
            break
        if definitions_broke:
            scores += [TaskScore(s.task, FAILED, broken.message, broken.hint, broken.key) for s in remaining]
            break
        scores.append(broken)
        remaining = remaining[len(reported) + 1:]
    return scores


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
