"""exercises/ is generated from solutions/; solutions pass; exercises run as shipped; the grader."""

import argparse
import json
from pathlib import Path

import nbformat
import pytest

from moe_teach.course import checks, exercises, grading
from moe_teach.course.checks import DONE, FAILED, NOT_DONE, TASKS

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


# ----------------------------------------------------------------------------- the grader


def test_task_names_found_in_notebook_order():
    notebook = nbformat.read(EXERCISES / "03_topk_sparsity.ipynb", as_version=4)
    assert grading.task_names(notebook) == ["top_k_routing", "switch_routing", "sparse_moe_forward"]


@pytest.mark.slow
def test_grader_scorecard_on_a_half_done_notebook(tmp_path):
    """One real headless run (nbclient): a done, a failed and a not-done task, and a cell that raises."""
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


def test_grader_exit_status(monkeypatch, capsys):
    def fake(tasks, errors=()):
        return lambda path, timeout, kernel_name: grading.Scorecard(str(path), tasks, list(errors))

    args = argparse.Namespace(notebook=Path("x.ipynb"), timeout=5, kernel="python3", strict=False, json=False)
    half = [grading.TaskScore("a", DONE), grading.TaskScore("b", NOT_DONE)]
    monkeypatch.setattr(grading, "grade_notebook", fake(half))
    assert grading.run(args) == 0
    args.strict = True
    assert grading.run(args) == 1
    monkeypatch.setattr(grading, "grade_notebook", fake(half, ["cell 3 raised NameError: x"]))
    args.strict = False
    assert grading.run(args) == 1
    args.json = True
    monkeypatch.setattr(grading, "grade_notebook", fake([grading.TaskScore("a", DONE)]))
    capsys.readouterr()
    assert grading.run(args) == 0
    assert json.loads(capsys.readouterr().out)["tasks"][0]["status"] == DONE
    args.notebook = Path("does/not/exist.ipynb")
    monkeypatch.undo()
    assert grading.run(args) == 2


def test_command_line_options_parse():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    exercises.configure_parser(commands.add_parser("exercises"))
    grading.configure_parser(commands.add_parser("check"))
    args = parser.parse_args(["exercises", "build", "--solutions", "s", "--exercises", "e", "--check"])
    assert (args.exercises_action, args.solutions, args.exercises, args.check) == ("build", Path("s"),
                                                                                   Path("e"), True)
    args = parser.parse_args(["check", "exercises/01_experts.ipynb", "--strict", "--timeout", "30"])
    assert (args.notebook, args.strict, args.timeout, args.json) == (Path("exercises/01_experts.ipynb"),
                                                                     True, 30, False)
