"""exercises/ is generated from solutions/; solutions pass; exercises run as shipped; bad input.

The grader (`moe-teach check`) has its own tests in test_grading.py.
"""

import argparse
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from moe_teach.course import checks, cli, exercises
from moe_teach.course.checks import DONE, NOT_DONE, TASKS

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS, EXERCISES = ROOT / "solutions", ROOT / "exercises"
LESSONS = sorted({task.lesson for task in TASKS.values()})


# ----------------------------------------------------------------------------- the stub transformation

SOURCE = '''def f(x):
    """Doc stays."""
    ### BEGIN SOLUTION
    y = x + 1
    return y
    ### END SOLUTION


value = 3  # outside the markers'''


def test_stub_keeps_indentation_and_everything_outside_the_markers():
    stubbed, blocks = exercises.stub_source(SOURCE)
    assert blocks == 1
    assert stubbed.split("\n") == ['def f(x):', '    """Doc stays."""', "    # YOUR CODE HERE",
                                   "    raise NotImplementedError", "", "",
                                   "value = 3  # outside the markers"]


def test_stub_handles_several_blocks_and_deeper_indentation():
    source = ("class A:\n    def g(self):\n        ### BEGIN SOLUTION\n        pass\n"
              "        ### END SOLUTION\n### BEGIN SOLUTION\nz = 1\n### END SOLUTION")
    stubbed, blocks = exercises.stub_source(source)
    assert blocks == 2
    assert "        raise NotImplementedError" in stubbed.split("\n")
    assert stubbed.split("\n")[-1] == "raise NotImplementedError" and "pass" not in stubbed


@pytest.mark.parametrize(("source", "problem"), [
    ("x = 1\n### END SOLUTION", "without a matching"),
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside the solution block"),
])
def test_unmatched_markers_name_the_notebook_and_cell(source, problem):
    solution = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t", id="title"),
                                               nbformat.v4.new_code_cell(source, id="broken-cell")])
    with pytest.raises(exercises.ExerciseBuildError, match=problem) as error:
        exercises.exercise_notebook(solution, "solutions/99_x.ipynb")
    assert "solutions/99_x.ipynb" in str(error.value) and "cell 1" in str(error.value)
    assert "broken-cell" in str(error.value)


def test_exercise_notebook_strips_outputs_and_keeps_ids_and_markdown():
    code = nbformat.v4.new_code_cell(SOURCE, id="task-code", execution_count=3,
                                     outputs=[nbformat.v4.new_output("stream", text="hi")])
    text = nbformat.v4.new_markdown_cell("### BEGIN SOLUTION in prose is left alone", id="spec")
    notebook, blocks = exercises.exercise_notebook(nbformat.v4.new_notebook(cells=[text, code]))
    assert blocks == 1
    assert [c.id for c in notebook.cells] == ["spec", "task-code"]
    assert notebook.cells[0].source == text.source
    assert notebook.cells[1].outputs == [] and notebook.cells[1].execution_count is None


def test_build_is_deterministic_and_check_flag_detects_drift(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    exercises.build(SOLUTIONS, first)
    exercises.build(SOLUTIONS, second)
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes()
    args = argparse.Namespace(exercises_action="build", solutions=SOLUTIONS, exercises=first, check=True)
    assert exercises.run(args) == 0
    victim = first / "03_topk_sparsity.ipynb"
    victim.write_text(victim.read_text().replace("raise NotImplementedError", "return None", 1))
    assert exercises.run(args) == 1
    assert "03_topk_sparsity.ipynb" in capsys.readouterr().out


def test_exercises_folder_is_up_to_date():
    """Fails when exercises/ is not what `moe-teach exercises build` would write: run it."""
    assert exercises.stale_exercises(SOLUTIONS, EXERCISES) == []


def test_every_solution_block_became_a_stub():
    for path in sorted(EXERCISES.glob("*.ipynb")):
        text = path.read_text()
        assert exercises.BEGIN not in text and exercises.END not in text
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert all(c.get("outputs", []) == [] for c in notebook.cells)


# ----------------------------------------------------------------------------- running the notebooks


def run_in_process(path: Path) -> dict[str, str]:
    """Execute a notebook's code cells in this process (fast); return task -> status."""
    checks.reset_results()
    namespace = {}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, str(path), "exec"), namespace)  # noqa: S102 - our own notebooks
    statuses = {r.task: r.status for r in checks.results()}
    checks.reset_results()
    return statuses


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_notebook_passes_all_its_checks(lesson, capsys):
    statuses = run_in_process(SOLUTIONS / f"{lesson}.ipynb")
    expected_tasks = {name for name, task in TASKS.items() if task.lesson == lesson}
    assert statuses == dict.fromkeys(expected_tasks, DONE)


@pytest.mark.parametrize("lesson", LESSONS)
def test_exercise_notebook_runs_and_every_task_is_not_done_yet(lesson, capsys):
    statuses = run_in_process(EXERCISES / f"{lesson}.ipynb")
    expected_tasks = {name for name, task in TASKS.items() if task.lesson == lesson}
    assert statuses == dict.fromkeys(expected_tasks, NOT_DONE)


# ----------------------------------------------------------------------------- bad input names the file or flag


def build_cli(capsys, solutions, exercises_dir, *extra):
    status = cli.main(["exercises", "build", "--solutions", str(solutions), "--exercises", str(exercises_dir),
                       *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def read_only_folders(tmp_path):
    """A folder nobody may write into: by its mode (not for root, who ignores modes) and /sys (Linux)."""
    folders = []
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        folders.append(locked / "exercises")
    if Path("/sys/kernel").is_dir():
        folders.append(Path("/sys/kernel/moe_teach_exercises"))
    return folders


def test_build_into_a_read_only_folder_says_so(tmp_path, capsys):
    folders = read_only_folders(tmp_path)
    if not folders:
        pytest.skip("no read-only folder here")
    for folder in folders:
        status, _, err = build_cli(capsys, SOLUTIONS, folder)
        assert status == 1 and f"cannot write exercises to {folder} (--exercises)" in err


def test_build_onto_a_file_says_so(tmp_path, capsys):
    target = tmp_path / "exercises"
    target.write_text("not a folder")
    status, _, err = build_cli(capsys, SOLUTIONS, target)
    assert status == 1 and "(--exercises)" in err and "is a file" in err
    assert target.read_text() == "not a folder"
    status, _, err = build_cli(capsys, SOLUTIONS, target / "inside")
    assert status == 1 and "(--exercises)" in err


@pytest.mark.parametrize("text", ["{ broken", '{"a": 1}', "[]"])
def test_a_broken_solution_notebook_is_named(tmp_path, capsys, text):
    solutions = tmp_path / "solutions"
    shutil.copytree(SOLUTIONS, solutions)
    (solutions / "02_gating.ipynb").write_text(text)
    out_dir = tmp_path / "exercises"
    for extra in ((), ("--check",)):
        status, _, err = build_cli(capsys, solutions, out_dir, *extra)
        assert status == 1 and str(solutions / "02_gating.ipynb") in err and "not a Jupyter notebook" in err
    assert not out_dir.exists()        # nothing written when one solution is broken


def test_an_unreadable_exercise_notebook_is_named_by_check(tmp_path, capsys):
    out_dir = tmp_path / "exercises"
    exercises.build(SOLUTIONS, out_dir)
    (out_dir / "04_dispatch_capacity.ipynb").write_text("{ broken")
    status, out, _ = build_cli(capsys, SOLUTIONS, out_dir, "--check")
    assert status == 1 and "04_dispatch_capacity.ipynb: unreadable" in out


def test_command_line_options_parse():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    exercises.configure_parser(commands.add_parser("exercises"))
    args = parser.parse_args(["exercises", "build", "--solutions", "s", "--exercises", "e", "--check"])
    assert (args.exercises_action, args.solutions, args.exercises, args.check) == ("build", Path("s"),
                                                                                   Path("e"), True)
