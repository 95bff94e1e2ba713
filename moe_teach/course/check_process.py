"""The fresh process that checks a learner's task functions, and ending every process of a grading run.

:func:`task_definitions` picks from the notebook file the top-level lines the task functions
need; :class:`_CheckProcess` runs the real checkers on them in a new Python process with a time
limit per check and a keyed report channel; :class:`_ProcessSweeper` ends whatever the run started.
See :mod:`moe_teach.course.grading` for the whole procedure.
"""

from __future__ import annotations

import ast
import contextlib
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
from pathlib import Path

import nbformat

from .checks import FAILED
from .checks.core import GRADING_RUN_ENV
from .scorecard import NOT_RUN, STATUSES, TaskScore, TaskSpec

_STARTUP_ALLOWANCE = 120.0          # seconds for the check process to import torch and the checkers
_REPORT_GRACE = 10.0                # seconds past a check's own time limit before its process is killed


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
                       "from moe_teach.course.check_process import _check_process; _check_process(first_line)")
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
