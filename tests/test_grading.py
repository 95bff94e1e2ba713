"""`moe-teach check`: the scorecard comes from a fresh check process and cannot be forged by the notebook.

Each attack a learner's notebook could make on the scorecard has a test here; each of them fails
with the grader that read verdicts from the notebook's own kernel.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import nbformat
import pytest

from moe_teach.course import check_process, cli, exercises, grading, scorecard
from moe_teach.course.checks import DONE, FAILED, NOT_DONE, TASKS

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS, EXERCISES = ROOT / "solutions", ROOT / "exercises"
LESSONS = sorted({task.lesson for task in TASKS.values()})
LINUX = sys.platform.startswith("linux") and Path("/proc/self/stat").exists()
EXPERT_TASKS = ["relu_expert", "swiglu_expert", "count_expert_parameters"]


def code_cell_ids(notebook, task: str) -> tuple[str, str]:
    return task.replace("_", "-") + "-code", task.replace("_", "-") + "-check"


def replace_cell(notebook, cell_id: str, source: str) -> None:
    (cell,) = [c for c in notebook.cells if c.get("id") == cell_id]
    cell.source = source


def insert_after(notebook, cell_id: str, source: str) -> None:
    index = [c.get("id") for c in notebook.cells].index(cell_id)
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source))


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:          # a zombie is gone too
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if is_gone(pid):
            return True
        time.sleep(0.05)
    return is_gone(pid)


# ----------------------------------------------------------------------------- the task list


@pytest.mark.parametrize("lesson", LESSONS)
def test_tasks_come_from_the_solution_notebook(lesson):
    specs = grading.solution_tasks(SOLUTIONS / f"{lesson}.ipynb")
    assert {s.task for s in specs} == {name for name, task in TASKS.items() if task.lesson == lesson}
    solution = nbformat.read(SOLUTIONS / f"{lesson}.ipynb", as_version=4)
    program = check_process.task_definitions(solution, [s.function for s in specs])
    defined = set()
    for _, source, numbers in program:
        tree = __import__("ast").parse(source)
        defined |= {getattr(tree.body[n], "name", None) for n in numbers}
    assert {s.function for s in specs} <= defined


def test_solution_is_found_by_file_name_then_by_lesson_number(tmp_path):
    assert grading.solution_for(EXERCISES / "03_topk_sparsity.ipynb") == grading.DEFAULT_SOLUTIONS / \
        "03_topk_sparsity.ipynb"
    assert grading.solution_for(tmp_path / "03_topk_sparsity-Copy1.ipynb", SOLUTIONS).name == "03_topk_sparsity.ipynb"
    with pytest.raises(grading.GradingError, match="no solution notebook .* matches my_work.ipynb.*01_experts"):
        grading.solution_for(tmp_path / "my_work.ipynb", SOLUTIONS)
    with pytest.raises(grading.GradingError, match="--solutions"):
        grading.solution_for(EXERCISES / "01_experts.ipynb", tmp_path / "nowhere")


def test_a_solution_notebook_without_checks_or_with_an_unknown_task_is_refused(tmp_path):
    path = tmp_path / "01_experts.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), path)
    with pytest.raises(grading.GradingError, match="no check"):
        grading.solution_tasks(path)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("check('nope', f)")]), path)
    with pytest.raises(grading.GradingError, match="unknown task 'nope'"):
        grading.solution_tasks(path)


# ----------------------------------------------------------------------------- what reaches the check process

LEARNER_CELLS = [
    "import torch\nimport math as m\nfrom moe_teach.course.checks import check\n"
    "import moe_teach.course.checks.core as core",
    "SCALE = 2\nunused = print('side effect')\n\ndef helper(x):\n    return x * SCALE",
    "def relu_expert(x):\n    return helper(torch.relu(x))",
    "check('relu_expert', relu_expert)\ncore._RESULTS['relu_expert'] = 'done'\n"
    "core.run_checker = None\nprint('MOE_TEACH_RESULTS []')\n%time y = 1",
    "# check('swiglu_expert', swiglu_expert)",
    "def broken(:\n    pass",
    "for i in range(3):\n    SCALE = i",
    "def helper(x):\n    return x * SCALE + 1",
]


def test_only_the_definitions_the_task_functions_use_reach_the_check_process():
    import ast

    import torch

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in LEARNER_CELLS])
    program = check_process.task_definitions(notebook, ["relu_expert"])
    chosen = [ast.unparse(ast.parse(source).body[n]).split("\n")[0] for _, source, numbers in program
              for n in numbers]
    assert chosen == ["import torch", "SCALE = 2", "def helper(x):", "def relu_expert(x):", "def helper(x):"]
    namespace = {}
    for index, source, numbers in program:
        exec(compile(ast.Module([ast.parse(source).body[n] for n in numbers], []), "<t>", "exec"), namespace)
    assert torch.equal(namespace["relu_expert"](torch.tensor([-1.0, 3.0])), torch.tensor([1.0, 7.0]))


# ----------------------------------------------------------------------------- the check process


def solution_notebook(lesson: str = "01_experts"):
    return nbformat.read(SOLUTIONS / f"{lesson}.ipynb", as_version=4)


def expert_specs():
    return grading.solution_tasks(SOLUTIONS / "01_experts.ipynb")


FORGE_FROM_INSIDE = '''def swiglu_expert(x, gate_weight, up_weight, down_weight):
    import json, os
    fake = {"task": "swiglu_expert", "status": "done", "message": "done, all checks pass", "hint": "", "key": ""}
    print("MOE_TEACH_RESULTS " + json.dumps([fake]))
    import moe_teach.course.checks.core as core
    core._RESULTS["swiglu_expert"] = core.CheckResult(**fake)
    for fd in range(64):                      # a fake verdict on every channel the process has
        try:
            os.write(fd, (json.dumps(fake) + "\\n").encode())
        except OSError:
            pass
    raise NotImplementedError'''


def test_a_task_function_cannot_report_its_own_verdict(tmp_path):
    notebook = solution_notebook()
    replace_cell(notebook, "swiglu-expert-code", FORGE_FROM_INSIDE)
    with check_process._ProcessSweeper() as sweeper:
        scores = check_process._check_tasks(notebook, expert_specs(), tmp_path, 20, sweeper)
    assert [s.task for s in scores] == EXPERT_TASKS
    assert [s.status for s in scores] == [DONE, FAILED, DONE]
    assert scores[1].key == "check_process" and "garbled" in scores[1].message


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="needs signal masks")
def test_a_function_that_ends_or_stalls_its_check_process_fails_and_the_rest_are_still_checked(
        tmp_path, monkeypatch):
    monkeypatch.setattr(check_process, "_REPORT_GRACE", 1.0)
    notebook = solution_notebook()
    replace_cell(notebook, "relu-expert-code", "import os\n\ndef relu_expert(*args):\n    os._exit(0)")
    replace_cell(notebook, "swiglu-expert-code",           # the in-process time limit cannot fire
                 "import signal\n\ndef swiglu_expert(*args):\n"
                 "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\n    while True:\n        pass")
    start = time.monotonic()
    with check_process._ProcessSweeper() as sweeper:
        scores = check_process._check_tasks(notebook, expert_specs(), tmp_path, 1, sweeper)
    assert [s.status for s in scores] == [FAILED, FAILED, DONE]
    assert "ended the check process" in scores[0].message
    assert "did not finish in time" in scores[1].message
    assert time.monotonic() - start < 60


def test_a_function_that_loops_forever_fails_with_the_time_limit(tmp_path):
    notebook = solution_notebook()
    replace_cell(notebook, "relu-expert-code", "def relu_expert(*args):\n    while True:\n        pass")
    with check_process._ProcessSweeper() as sweeper:
        scores = check_process._check_tasks(notebook, expert_specs()[:1], tmp_path, 1, sweeper)
    assert (scores[0].status, scores[0].key) == (FAILED, "time_limit")
    assert "1 s" in scores[0].message


def test_a_missing_or_misnamed_task_function_is_not_run_and_others_are_checked(tmp_path):
    notebook = solution_notebook()
    replace_cell(notebook, "relu-expert-code", "def my_relu(*args):\n    return 0")
    replace_cell(notebook, "swiglu-expert-code", "swiglu_expert = 3")
    with check_process._ProcessSweeper() as sweeper:
        scores = check_process._check_tasks(notebook, expert_specs(), tmp_path, 20, sweeper)
    assert [s.status for s in scores] == [scorecard.NOT_RUN, FAILED, DONE]
    assert "defines no relu_expert" in scores[0].message and scores[1].key == "not_a_function"


DAEMON = ('import subprocess, sys\n'
          'subprocess.Popen([sys.executable, "-c", "import os, subprocess, sys; os.setsid(); '
          'p = subprocess.Popen([\'sleep\', \'300\'], env={\'PATH\': os.environ[\'PATH\']}); '
          'open(sys.argv[1], \'w\').write(str(p.pid))", PID_FILE]).wait()\n')


def daemon_code(pid_file) -> str:
    """Code that starts a grandchild which leaves the session and drops the environment, and writes its pid."""
    return DAEMON.replace("PID_FILE", repr(str(pid_file)))


@pytest.mark.skipif(not LINUX, reason="process sweeping by /proc is Linux-only")
def test_processes_a_task_function_starts_are_ended(tmp_path):
    pid_file = tmp_path / "daemon.pid"
    notebook = solution_notebook()
    body = daemon_code(pid_file).replace("\n", "\n    ")
    replace_cell(notebook, "relu-expert-code", f"def relu_expert(*args):\n    {body}\n    raise NotImplementedError")
    with check_process._ProcessSweeper() as sweeper:
        scores = check_process._check_tasks(notebook, expert_specs()[:1], tmp_path, 20, sweeper)
    assert scores[0].status == NOT_DONE
    assert wait_gone(int(pid_file.read_text()))


@pytest.mark.skipif(not LINUX, reason="reaches the check process through /proc")
def test_a_check_process_written_to_before_its_job_is_replaced(tmp_path):
    """What the notebook's code could do to the check process started while it runs."""
    notebook = solution_notebook()
    replace_cell(notebook, "relu-expert-code", "def relu_expert(*args):\n    raise NotImplementedError")
    with check_process._ProcessSweeper() as sweeper:
        early = check_process._CheckProcess(tmp_path, sweeper)
        fake = {"secret": "a guess", "task": "relu_expert", "status": DONE, "message": "", "hint": "", "key": ""}
        for fd in ("0", "1"):
            with open(f"/proc/{early.process.pid}/fd/{fd}", "w") as channel:
                channel.write(json.dumps({"secret": "a guess", "ready": True}) + "\n" + json.dumps(fake) + "\n")
        time.sleep(0.5)
        scores = check_process._check_tasks(notebook, expert_specs(), tmp_path, 20, sweeper, first=early)
    assert [s.status for s in scores] == [NOT_DONE, DONE, DONE]


@pytest.mark.skipif(not LINUX, reason="process sweeping by /proc is Linux-only")
@pytest.mark.parametrize("subreaper", [True, False])
def test_the_sweeper_ends_detached_processes(tmp_path, monkeypatch, subreaper):
    """With the subreaper: even a process that left the session and dropped its environment;
    without: one that still carries the run's tag."""
    import subprocess

    if not subreaper:
        monkeypatch.setattr(check_process, "_set_child_subreaper", lambda on: False)
    pid_file = tmp_path / "daemon.pid"
    code = daemon_code(pid_file)
    if not subreaper:
        code = code.replace("env={'PATH': os.environ['PATH']}", "env=os.environ")
    with check_process._ProcessSweeper() as sweeper:
        subprocess.run([sys.executable, "-c", code], env=sweeper.environment(), check=True)
        pid = int(pid_file.read_text())
        assert not is_gone(pid)
    assert wait_gone(pid)


# ----------------------------------------------------------------------------- whole runs (nbclient)


def forger_notebook(folder: Path) -> Path:
    """The exercise notebook of lesson 01, unsolved, with every attack on the scorecard in it."""
    notebook = nbformat.read(EXERCISES / "01_experts.ipynb", as_version=4)
    # 1. write the registry and the checker the old grader read: all done
    insert_after(notebook, "setup", (
        "import moe_teach.course.checks.core as core\n"
        f"for name in {EXPERT_TASKS!r}:\n"
        "    core._RESULTS[name] = core.CheckResult(name, 'done', 'done, all checks pass')\n"
        "core.run_checker = lambda task, fn, time_limit=60: core.CheckResult(task, 'done', 'done')"))
    # 2. print a fake results line, also at the start of every later cell
    insert_after(notebook, "setup", (
        "import json\n"
        "fake = 'MOE_TEACH_RESULTS ' + json.dumps([{'task': n, 'status': 'done', 'message': 'done', "
        f"'hint': '', 'key': ''}} for n in {EXPERT_TASKS!r}])\n"
        "print(fake)\n"
        "get_ipython().events.register('pre_run_cell', lambda *args: print(fake))"))
    # 3. the task list: count_expert_parameters' check call deleted, a foreign one commented out
    replace_cell(notebook, "count-expert-parameters-check", "# check('top_k_routing', top_k_routing)")
    # 4. processes that would outlive grading: a child, and a detached grandchild without the tag
    insert_after(notebook, "setup", (
        "import subprocess\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "open('child.pid', 'w').write(str(child.pid))\n" + daemon_code("daemon.pid")))
    # 5. a task function that loops forever
    replace_cell(notebook, "relu-expert-code", "def relu_expert(*args):\n    while True:\n        pass")
    # 6. write to the check process waiting for its job, through /proc
    insert_after(notebook, "setup", (
        "import os\n"
        "tag = ('MOE_TEACH_GRADING_RUN=' + os.environ.get('MOE_TEACH_GRADING_RUN', '?')).encode()\n"
        "line = b'{\"ready\": true}\\n'\n"
        "def tagged(pid):\n"
        "    try:\n"
        "        return tag in open(f'/proc/{pid}/environ', 'rb').read().split(b'\\0')\n"
        "    except OSError:\n"
        "        return False\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid() and tagged(p)]:\n"
        "    for fd in os.listdir(f'/proc/{pid}/fd'):\n"
        "        try:\n"
        "            with open(f'/proc/{pid}/fd/{fd}', 'wb') as channel:\n"
        "                channel.write(line)\n"
        "        except OSError:\n"
        "            pass"))
    path = folder / "01_experts.ipynb"
    nbformat.write(notebook, path)
    return path


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("forger")
    card = grading.grade_notebook(forger_notebook(folder), timeout=120, check_timeout=3)
    return card, folder


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="the attacks use /proc")
def test_writing_the_registry_does_not_forge_a_verdict(forged):
    card, _ = forged
    assert card.statuses()["relu_expert"] != DONE and card.num_done == 0


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="the attacks use /proc")
def test_a_printed_results_line_does_not_forge_a_verdict(forged):
    card, _ = forged
    assert card.statuses()["swiglu_expert"] == NOT_DONE
    assert not card.all_done and "0 of 3 tasks done" in card.text()


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="the attacks use /proc")
def test_deleted_and_commented_out_check_calls_do_not_change_the_task_list(forged):
    card, _ = forged
    assert [t.task for t in card.tasks] == EXPERT_TASKS
    assert card.statuses()["count_expert_parameters"] == NOT_DONE     # checked without a check() call


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="the attacks use /proc")
def test_processes_the_notebook_starts_do_not_outlive_grading(forged):
    _, folder = forged
    for name in ("child.pid", "daemon.pid"):
        assert wait_gone(int((folder / name).read_text())), name


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="the attacks use /proc")
def test_a_task_that_loops_forever_fails_on_its_time_limit_and_grading_goes_on(forged):
    card, _ = forged
    relu = card.tasks[0]
    assert (relu.status, relu.key) == (FAILED, "time_limit")
    assert card.cell_errors == []


@pytest.mark.slow
def test_grader_scorecard_on_a_half_done_notebook(tmp_path):
    """One real headless run: a done, a failed and a not-done task, and a cell that raises."""
    notebook = nbformat.read(SOLUTIONS / "05_load_balancing.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.get("id") == "router-z-loss-code":        # a mistake: no square
            cell.source = cell.source.replace(".square().mean()", ".mean()")
        if cell.get("id") == "switch-aux-loss-code":       # not started
            cell.source, _ = exercises.stub_source(cell.source)
    notebook.cells.insert(2, nbformat.v4.new_code_cell("1 / 0"))
    path = tmp_path / "05_load_balancing.ipynb"
    nbformat.write(notebook, path)
    card = grading.grade_notebook(path, timeout=120)
    assert card.statuses() == {"switch_aux_loss": NOT_DONE, "router_z_loss": FAILED, "bias_update": DONE}
    failed = card.tasks[1]
    assert failed.key == "missing_square" and failed.hint
    assert len(card.cell_errors) == 1 and "ZeroDivisionError" in card.cell_errors[0]
    assert "1 of 3 tasks done" in card.text() and "hint:" in card.text()


# ----------------------------------------------------------------------------- the command line


def run_cli(capsys, *argv):
    try:
        status = cli.main(["check", *map(str, argv)])
    except SystemExit as stop:          # argparse's own errors
        status = stop.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


@pytest.mark.parametrize("flag", ["--timeout", "--check-timeout"])
@pytest.mark.parametrize("value", ["0", "-5", "nan", "1e9", "ten"])
def test_time_limits_must_be_bounded_positive_seconds(capsys, flag, value):
    status, _, err = run_cli(capsys, EXERCISES / "01_experts.ipynb", flag, value)
    assert status == 2 and f"argument {flag}" in err and "1 to 3600" in err


@pytest.mark.parametrize("keyword", ["timeout", "check_timeout"])
def test_grade_notebook_rejects_unbounded_time_limits(keyword):
    for bad in (0, -1, float("inf"), float("nan"), 10**6):
        with pytest.raises(ValueError, match=keyword):
            grading.grade_notebook(EXERCISES / "01_experts.ipynb", **{keyword: bad})
    with pytest.raises(TypeError, match=keyword):
        grading.grade_notebook(EXERCISES / "01_experts.ipynb", **{keyword: "5"})


@pytest.mark.parametrize(("text", "says"), [
    ('{"a": 1}', "is not a Jupyter notebook"),
    ("[1, 2]", "is not a Jupyter notebook"),
    ('{"cells": 3, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', "is not a Jupyter notebook"),
    ("not json at all", "is not a Jupyter notebook"),
    (b"\xff\xfe\x00", "is not a Jupyter notebook"),
])
def test_a_file_that_is_not_a_notebook_is_named_in_one_line(tmp_path, capsys, text, says):
    path = tmp_path / "01_experts.ipynb"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    status, _, err = run_cli(capsys, path)
    assert status == 2 and str(path) in err and says in err


def test_a_missing_notebook_and_a_folder_are_named(tmp_path, capsys):
    status, _, err = run_cli(capsys, tmp_path / "01_experts.ipynb")
    assert status == 2 and "no such file" in err
    (tmp_path / "01_experts.ipynb").mkdir()
    status, _, err = run_cli(capsys, tmp_path / "01_experts.ipynb")
    assert status == 2 and "01_experts.ipynb" in err


def test_an_unknown_kernel_names_the_flag_and_the_installed_kernels(capsys):
    status, _, err = run_cli(capsys, EXERCISES / "01_experts.ipynb", "--kernel", "bogus")
    assert status == 2 and "'bogus' (--kernel)" in err and "python3" in err


def test_a_notebook_without_a_matching_solution_is_refused(tmp_path, capsys):
    path = tmp_path / "homework.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), path)
    status, _, err = run_cli(capsys, path)
    assert status == 2 and "homework.ipynb" in err and "01_experts.ipynb" in err


def test_grader_exit_status(monkeypatch, capsys):
    def fake(tasks, errors=()):
        return lambda path, **options: scorecard.Scorecard(str(path), tasks, list(errors))

    args = argparse.Namespace(notebook=Path("x.ipynb"), timeout=5, check_timeout=5, kernel="python3",
                              solutions=None, strict=False, json=False)
    half = [scorecard.TaskScore("a", DONE), scorecard.TaskScore("b", NOT_DONE)]
    monkeypatch.setattr(grading, "grade_notebook", fake(half))
    assert grading.run(args) == 0
    args.strict = True
    assert grading.run(args) == 1
    monkeypatch.setattr(grading, "grade_notebook", fake(half, ["cell 3 raised NameError: x"]))
    args.strict = False
    assert grading.run(args) == 1
    args.json = True
    monkeypatch.setattr(grading, "grade_notebook", fake([scorecard.TaskScore("a", DONE)]))
    capsys.readouterr()
    assert grading.run(args) == 0
    assert json.loads(capsys.readouterr().out)["tasks"][0]["status"] == DONE
    args.notebook = Path("does/not/exist.ipynb")
    monkeypatch.undo()
    assert grading.run(args) == 2


def test_command_line_options_parse():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    grading.configure_parser(commands.add_parser("check"))
    args = parser.parse_args(["check", "exercises/01_experts.ipynb", "--strict", "--timeout", "30",
                              "--check-timeout", "7", "--solutions", "s"])
    assert (args.notebook, args.strict, args.timeout, args.check_timeout, args.solutions, args.json) == (
        Path("exercises/01_experts.ipynb"), True, 30, 7, Path("s"), False)


def test_the_public_helpers_name_a_bad_argument():
    with pytest.raises(TypeError, match="notebook_path must be a file path"):
        grading.solution_for(3)
    with pytest.raises(TypeError, match="solutions_dir must be a file path"):
        grading.solution_for("01_experts.ipynb", solutions_dir=["solutions"])
    with pytest.raises(TypeError, match="solution_path must be a file path"):
        grading.solution_tasks(None)
    with pytest.raises(TypeError, match="path must be a file path"):
        grading.grade_notebook(None)
    with pytest.raises(TypeError, match="kernel_name must be"):
        grading.grade_notebook(EXERCISES / "01_experts.ipynb", kernel_name=3)
    with pytest.raises(TypeError, match="notebook must be a notebook"):
        check_process.task_definitions("cells", ["relu_expert"])
    with pytest.raises(TypeError, match="functions must be function names"):
        check_process.task_definitions(nbformat.v4.new_notebook(), [3])
    with pytest.raises(TypeError, match="path must be a file path"):
        exercises.read_notebook(3)
