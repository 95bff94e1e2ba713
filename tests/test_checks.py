"""The exercise checks: right answers pass, common mistakes get their own hint, stubs are 'not done yet'."""

import re
from pathlib import Path

import mistakes
import nbformat
import pytest
import torch
from mistakes import MISTAKES

import moe_teach
from moe_teach.course import checks, exercises
from moe_teach.course.checks import DONE, FAILED, NOT_DONE, TASKS, check, run_checker
from moe_teach.experts import expert_parameter_count

SOLUTIONS = Path(__file__).resolve().parent.parent / "solutions"


@pytest.mark.parametrize(("task", "key", "wrong"), [(t, k, f) for t, items in MISTAKES.items() for k,
                                                    f in items],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_each_mistake_gets_its_own_diagnosis(task, key, wrong):
    result = run_checker(task, wrong)
    assert result.status == FAILED
    assert result.key == key, result.message
    assert result.message and result.hint


def test_every_task_has_at_least_two_mistakes():
    assert set(MISTAKES) == set(TASKS)
    for task, items in MISTAKES.items():
        assert len(items) >= 2, task


def _stub(*args):
    raise NotImplementedError


def test_stub_is_not_done_yet_for_every_task():
    for task in TASKS:
        result = run_checker(task, _stub)
        assert result.status == NOT_DONE
        assert "Traceback" not in result.message


def test_other_exceptions_are_failures_with_type_and_message():
    def broken(*args):
        raise KeyError("expert_weights")

    result = run_checker("router_z_loss", broken)
    assert (result.status, result.key) == (FAILED, "raised")
    assert "KeyError" in result.message and "expert_weights" in result.message
    assert "Traceback" not in result.message


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="valid tasks: .*top_k_routing"):
        check("top_k", lambda logits, k: None)


def test_package_implementations_pass_their_checks():
    """The checks accept the package's own functions wherever the signature matches."""
    assert run_checker("count_expert_parameters", moe_teach.experts.expert_parameter_count).passed
    assert run_checker("capacity_per_expert", moe_teach.expert_capacity).passed
    assert run_checker("keep_mask", moe_teach.apply_capacity).passed
    assert run_checker("switch_aux_loss", moe_teach.switch_load_balancing_loss).passed
    assert run_checker("router_z_loss", moe_teach.router_z_loss).passed
    assert run_checker("top_k_routing", lambda logits, k: moe_teach.topk_softmax(logits, k)[1:]).passed
    for dispatcher in moe_teach.DISPATCHERS.values():
        assert run_checker("dispatch_with_capacity", dispatcher).passed, dispatcher.__name__
    assert run_checker("sorted_dispatch", moe_teach.dispatch_grouped).passed
    assert run_checker("sorted_dispatch", moe_teach.dispatch_dense_mask).key == "computes_unchosen"
    assert run_checker("block_forward", moe_teach.TransformerBlock.forward).status == DONE


def test_ties_accept_either_choice():
    """Breaking ties towards the last expert instead of the first is accepted too."""
    def top_k_last_on_ties(logits, k):
        probs = torch.softmax(logits, dim=-1)
        weights, flipped = probs.flip(-1).topk(k, dim=-1)
        return weights / weights.sum(-1, keepdim=True), logits.shape[-1] - 1 - flipped

    assert run_checker("top_k_routing", top_k_last_on_ties).passed


def test_check_shows_records_and_returns(capsys):
    checks.reset_results()
    result = check("router_z_loss", moe_teach.router_z_loss)
    printed = capsys.readouterr().out
    assert "✅" in printed and "router_z_loss" in printed
    assert result.passed and checks.results() == [result]
    failed = check("router_z_loss", MISTAKES["router_z_loss"][0][1])
    assert "❌" in capsys.readouterr().out and "Hint:" in failed.text()
    assert checks.results() == [failed]          # a re-check replaces the earlier verdict
    assert "Hint:" in failed.html() and "❌" in failed.html()
    checks.reset_results()


def test_check_leaves_the_learners_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_checker("sparse_moe_forward", MISTAKES["sparse_moe_forward"][0][1])
    assert torch.equal(torch.rand(3), expected)


# ----------------------------------------------------------------------------- specific diagnoses


@pytest.mark.parametrize(("wrong", "missing", "present"), [
    (mistakes.relu_expert_no_up_bias, "up_bias", "down_bias"),
    (mistakes.relu_expert_no_down_bias, "down_bias", "up_bias"),
])
def test_missing_bias_names_the_missing_one(wrong, missing, present):
    result = run_checker("relu_expert", wrong)
    assert result.key == "missing_bias"
    assert f"without {missing}" in result.message and "biases" not in result.message
    assert missing in result.hint and present not in result.hint


def test_both_biases_missing_says_both():
    result = run_checker("relu_expert", mistakes.relu_expert_no_bias)
    assert result.key == "missing_bias"
    assert "two biases" in result.message
    assert "up_bias" in result.hint and "down_bias" in result.hint


@pytest.mark.parametrize(("wrong", "key", "hint_words"), [
    (mistakes.count_without_bias, "forgot_bias", "bias"),
    (mistakes.count_ignores_bias_flag, "ignored_bias_flag", "bias=False"),
    (mistakes.count_swiglu_as_two_matrices, "swiglu_gate", "gate"),
    (mistakes.count_gate_for_every_activation, "gate_without_swiglu", "Only SwiGLU"),
    (mistakes.count_input_dim_as_output, "ignored_output_dim", "output_dim"),
    (mistakes.count_down_projection_only, "one_layer_only", "every layer"),
])
def test_parameter_count_miscounts_get_their_own_hint(wrong, key, hint_words):
    result = run_checker("count_expert_parameters", wrong)
    assert result.key == key, result.message
    assert hint_words in result.hint


def _count_off_by(delta_of):
    """A count off by ``delta_of(input_dim, hidden_dim, output_dim)``; ``calls`` gets (delta, right count)."""
    calls = []

    def count(input_dim, hidden_dim, output_dim, activation, bias):
        right = expert_parameter_count(input_dim, hidden_dim, output_dim, activation, bias)
        calls.append((delta_of(input_dim, hidden_dim, output_dim), right))
        return right + calls[-1][0]

    return count, calls


@pytest.mark.parametrize(("delta_of", "hint_words"), [
    (lambda d, h, o: -o, "output_dim bias vector"),
    (lambda d, h, o: h, "hidden_dim bias vector"),
    (lambda d, h, o: -d * h, "input_dim x hidden_dim weight matrix"),
    (lambda d, h, o: 3, "sum(p.numel()"),
])
def test_other_miscounts_say_how_far_off_without_the_answer(delta_of, hint_words):
    count, calls = _count_off_by(delta_of)
    result = run_checker("count_expert_parameters", count)
    assert result.key == "wrong_count" and len(calls) == 1
    delta, right = calls[0]
    assert f"{abs(delta)} too {'many' if delta > 0 else 'few'}" in result.message
    assert f"Off by {abs(delta)}" in result.hint and hint_words in result.hint
    assert str(right) not in result.message + result.hint      # the right count is not given away


# ----------------------------------------------------------------------------- hints never give the answer


def _solution_fragments() -> set[str]:
    """Every computing line of the solution blocks (and its right-hand side), normalised."""
    fragments = set()
    for path in sorted(SOLUTIONS.glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            inside = False
            for line in cell.source.split("\n"):
                if line.strip() in (exercises.BEGIN, exercises.END):
                    inside = line.strip() == exercises.BEGIN
                    continue
                code = line.split("#")[0].strip()
                if inside and code:
                    fragments.add(_normalise(code))
                    fragments.add(_normalise(code.split(" = ", 1)[-1].removeprefix("return ")))
    return {f for f in fragments if len(f) >= 12 and any(op in f for op in "(@+*/")}   # computations


def _normalise(text: str) -> str:
    for prefix in ("torch.nn.functional.", "torch.", "F.", "block."):
        text = text.replace(prefix, "")
    return re.sub(r"\s+", "", text)


def _formula_problems(text: str, solution_fragments: set[str]) -> list[str]:
    """Why ``text`` reads like the solution's code or complete formula (empty when it does not)."""
    problems = []
    if text.count("@") > 1:
        problems.append("more than one matrix product")
    if re.search(r"\bdef \w+\(|\blambda\b[^:]*:|\breturn\s+[\w.]+\s*[-+*/@(\[,]", text):
        problems.append("code (def, lambda or return followed by an expression)")
    if re.search(r"[\w\]] = ", text):
        problems.append("an assignment")
    if len(re.findall(r" [-+*/] ", text)) > 1:
        problems.append("an arithmetic expression with several operators")
    problems += [f"solution code {f!r}" for f in solution_fragments if f in _normalise(text)]
    return problems


def test_solution_fragments_are_found():
    fragments = _solution_fragments()
    assert _normalise("relu(x @ up_weight.T + up_bias)") in fragments
    assert _normalise("x = x + block.attention(block.norm1(x))") in fragments


@pytest.mark.parametrize("text", [
    "Compute relu(x @ up_weight.T + up_bias) @ down_weight.T + down_bias.",
    "x = x + attention(norm1(x)); return x + feed_forward(norm2(x)).",
    "capacity = ceil(capacity_factor * tokens * top_k / num_experts).",
    "Sum over MoE layers of balance_coef * aux_losses['switch'] + z_coef * aux_losses['z'].",
    "End with `return weights, indices`.",
])
def test_formula_rule_catches_complete_solutions(text):
    assert _formula_problems(text, _solution_fragments())


def test_no_hint_or_message_gives_the_solution_away():
    fragments = _solution_fragments()
    for task, items in MISTAKES.items():
        for _, wrong in items:
            result = run_checker(task, wrong)
            for text in (result.hint, result.message):
                assert not _formula_problems(text, fragments), (task, wrong.__name__, text)


# ----------------------------------------------------------------------------- 05 load balancing


def test_switch_check_inputs_separate_the_mistakes_from_rounding():
    """On the first (skewed, k > 1) case every named mistake is off by clearly more than rounding."""
    probs, indices = checks.lesson05_load_balancing._switch_cases()[0]
    expected = moe_teach.switch_load_balancing_loss(probs, indices)
    assert indices.shape[1] > 1 and probs.max(-1).values.mean() > 2 / probs.shape[1]   # not near uniform
    counts = torch.bincount(indices.reshape(-1), minlength=probs.shape[1])
    assert counts.max() >= 2 * counts.float().mean()                                  # skewed routing
    for key, value in checks.lesson05_load_balancing._switch_candidates(probs, indices, expected).items():
        assert abs(float(value / expected) - 1) > 0.05, key


@pytest.mark.parametrize(("wrong", "key", "hint_words"), [
    (mistakes.switch_loss_p_from_renormalised_topk, "p_from_topk_weights",
     "P_i must come from the full softmax over all experts, not the top-k weights"),
    (mistakes.switch_loss_first_choice_only, "first_choice_only", "every one of the k assignments"),
    (mistakes.z_loss_squared_mean, "squared_mean", "then average"),
    (mistakes.z_loss_unstable, "overflow", "torch.logsumexp"),
])
def test_learner_reported_mistakes_get_their_own_hint(wrong, key, hint_words):
    result = run_checker("switch_aux_loss" if wrong.__name__.startswith("switch") else "router_z_loss", wrong)
    assert result.key == key, result.message
    assert hint_words in result.hint


def test_stabilised_logsumexp_by_hand_passes():
    assert run_checker("router_z_loss", mistakes.z_loss_stable_by_hand).passed


@pytest.mark.parametrize(("wrong", "says", "does_not_say"), [
    (mistakes.switch_loss_p_median, ["P_i do not sum to 1"], ["f_i do not sum to 1", "overall factor"]),
    (mistakes.switch_loss_squared_counts, ["f_i do not sum to 1"], ["P_i do not sum to 1", "overall factor"]),
    (mistakes.switch_loss_scaled, ["overall factor", "1.7 instead of 1"], ["do not sum to 1"]),
    (mistakes.switch_loss_pairs_reversed, ["each sum to 1", "paired"], ["do not sum to 1"]),
])
def test_switch_fallback_hint_follows_what_the_learners_loss_does(wrong, says, does_not_say):
    result = run_checker("switch_aux_loss", wrong)
    assert result.key == "wrong_values"
    assert all(words in result.hint for words in says), result.hint
    assert not any(words in result.hint for words in does_not_say), result.hint


def test_z_loss_fallback_hint_skips_the_by_hand_case_when_it_already_passes():
    assert "all-zero logits" in run_checker("router_z_loss", mistakes.z_loss_scaled).hint
    assert "right when every logit is zero" in run_checker("router_z_loss", mistakes.z_loss_halved_logits).hint


@pytest.mark.parametrize(("task", "wrong", "first_case_loss"), [
    ("switch_aux_loss", mistakes.switch_loss_scaled,
     lambda: moe_teach.switch_load_balancing_loss(*checks.lesson05_load_balancing._switch_cases()[0])),
    ("router_z_loss", mistakes.z_loss_scaled,
     lambda: moe_teach.router_z_loss(checks.lesson05_load_balancing._z_loss_cases()[0])),
    ("total_aux_loss", mistakes.aux_scaled, None),
])
def test_fallback_messages_keep_the_learners_value_but_not_the_target(task, wrong, first_case_loss):
    result = run_checker(task, wrong)
    assert result.key == "wrong_values"
    assert "70% too large" in result.message and "expected" not in result.message
    if first_case_loss is not None:
        target = first_case_loss().item()
        assert f"{1.7 * target:.4g}" in result.message                 # the learner's own value
        assert f"{target:.4g}" not in result.message + result.hint      # not the target


# ----------------------------------------------------------------------------- learner-tried mistakes


def test_top_k_without_renormalising_k1_says_k1():
    result = run_checker("top_k_routing", mistakes.topk_renormalised_only_when_k_above_one)
    assert result.key == "not_renormalised"
    assert "k is 1" in result.message and "k is 1" in result.hint


def test_block_check_tells_the_two_norms_apart():
    """Fresh norms are identical; the check must still fail a block that uses norm1 twice."""
    assert run_checker("block_forward", mistakes.block_norm1_twice).key == "wrong_norm"
    assert run_checker("block_forward", moe_teach.TransformerBlock.forward).status == DONE


def test_capacity_as_a_tensor_gets_a_tensor_hint():
    result = run_checker("capacity_per_expert", mistakes.capacity_tensor)
    assert result.key == "not_int" and "Tensor" in result.message and "float such as" not in result.hint


# ----------------------------------------------------------------------------- inputs left unchanged


def _mutate_then_return_none(*args):
    """Changes the first tensor it is given (or a module's first weight) in place, then returns nothing."""
    for value in args:
        modules = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, torch.Tensor):
            with torch.no_grad():
                value.copy_(~value if value.dtype == torch.bool else value + 1)
            return None
        if modules and all(isinstance(m, torch.nn.Module) for m in modules):
            with torch.no_grad():
                next(modules[0].parameters()).add_(1.0)
            return None
    return None


def test_every_task_with_tensor_inputs_refuses_a_changed_input():
    """An in-place change of any input (tensor or module weight) is caught before the output is judged."""
    without_tensors = []
    for task in TASKS:
        result = run_checker(task, _mutate_then_return_none)
        if result.key == "mutated_input":
            assert "in place" in result.message and "clone" in result.hint
        else:
            without_tensors.append(task)
    assert sorted(without_tensors) == ["capacity_per_expert", "claimed_saving", "count_expert_parameters",
                                       "exchange_on_two_processes",         # runs in two worker processes
                                       "layer_flops", "layer_parameters",   # numbers only
                                       "perplexity_from_sums",              # lists of numbers
                                       "top_tokens"]                        # lists of words and ids


def test_changed_input_is_named_with_the_learners_parameter_name():
    result = run_checker("dispatch_with_capacity", mistakes.dispatch_zeroes_weights_in_place)
    assert result.key == "mutated_input" and "`expert_weights`" in result.message


def test_switch_loss_with_f_from_probabilities_is_told_to_count_chosen_experts():
    result = run_checker("switch_aux_loss", mistakes.switch_loss_f_from_probabilities)
    assert result.key == "f_from_probabilities"
    assert "f_i must count the chosen experts" in result.hint and "do not sum to 1" not in result.hint


def test_block_adding_the_residual_twice_is_diagnosed():
    for wrong in (mistakes.block_residual_added_twice, mistakes.block_attention_residual_twice):
        result = run_checker("block_forward", wrong)
        assert result.key == "residual_twice", result.message
        assert "twice" in result.message


def test_keep_mask_must_be_bool_and_total_aux_loss_a_tensor():
    assert run_checker("keep_mask", mistakes.keep_as_int64).key == "int_mask"
    assert run_checker("keep_mask", lambda i, e, c: moe_teach.apply_capacity(i, e, c).float()).key == "not_bool"
    result = run_checker("total_aux_loss", mistakes.aux_python_zero_without_moe)
    assert result.key == "no_moe_layers" and "int" in result.message


def test_mask_and_compute_all_is_not_sparse():
    """Right values, right gradients, exact zeros for unchosen experts: rejected by counting expert rows."""
    result = run_checker("sparse_moe_forward", mistakes.sparse_mask_and_compute_all)
    assert result.key == "computes_unchosen"
    assert "ran on" in result.message and "chose" in result.message


# ----------------------------------------------------------------------------- the machinery: bad arguments, time limit


@pytest.mark.parametrize("task", [["relu_expert"], ("relu_expert",), None, 3, b"relu_expert"])
def test_a_task_that_is_not_a_name_is_a_type_error_naming_task(task):
    with pytest.raises(TypeError, match=r"task must be a task name \(a str\).*valid tasks: relu_expert"):
        check(task, lambda *args: None)
    with pytest.raises(TypeError, match="task must be a task name"):
        run_checker(task, lambda *args: None)


@pytest.mark.parametrize("limit", [0, -1, float("nan"), float("inf"), 10**9, True, "5", None])
def test_time_limit_must_be_a_bounded_positive_number(limit):
    with pytest.raises((TypeError, ValueError), match="time_limit must be a number of seconds"):
        check("relu_expert", moe_teach.experts.expert_parameter_count, time_limit=limit)


def _loops_forever(*args):
    while True:
        pass


def _sleeps(*args):
    import time

    time.sleep(10_000)


def _swallows_everything_once(*args):
    try:
        _loops_forever()
    except BaseException:  # noqa: BLE001 - the learner's bare except
        pass
    _loops_forever()


@pytest.mark.parametrize("fn", [_loops_forever, _sleeps, _swallows_everything_once])
def test_a_function_that_never_returns_fails_on_the_time_limit(fn):
    import signal
    import time

    handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    result = run_checker("relu_expert", fn, time_limit=0.5)
    assert (result.status, result.key) == (FAILED, "time_limit")
    assert "0.5 s" in result.message and result.hint
    assert time.monotonic() - start < 5
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_time_limit_works_outside_the_main_thread():
    import threading

    results = []
    worker = threading.Thread(target=lambda: results.append(run_checker("relu_expert", _loops_forever, 0.5)))
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert results[0].key == "time_limit"


def test_a_check_within_its_time_limit_is_not_disturbed():
    import time

    assert run_checker("router_z_loss", moe_teach.router_z_loss, time_limit=30).passed
    time.sleep(0.3)                              # no stray alarm arrives later


def test_check_only_validates_its_arguments_while_moe_teach_check_runs_the_notebook(monkeypatch, capsys):
    from moe_teach.course.checks import core

    calls = []
    monkeypatch.setenv(core.GRADING_RUN_ENV, "a-run")
    checks.reset_results()
    result = check("relu_expert", lambda *args: calls.append(args))
    assert result.status == NOT_DONE and calls == [] and checks.results() == []
    with pytest.raises(ValueError, match="unknown task"):
        check("relu", lambda *args: None)
    with pytest.raises(TypeError, match="fn must be your function"):
        check("relu_expert", 3)


@pytest.mark.slow
def test_the_time_limit_stops_a_loop_inside_a_jupyter_kernel(tmp_path):
    from nbclient import NotebookClient

    cells = ["from moe_teach.course.checks import check",
             "def relu_expert(*args):\n    while True:\n        pass",
             "result = check('relu_expert', relu_expert, time_limit=1)\nprint('KEY', result.key)",
             "print('KERNEL STILL WORKS', 1 + 1)"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(notebook, timeout=60, kernel_name="python3").execute()
    texts = ["".join(o.get("text", "") for o in cell.outputs) for cell in notebook.cells]
    assert "KEY time_limit" in texts[2] and "KERNEL STILL WORKS 2" in texts[3]


def test_a_timer_someone_else_set_survives_a_check():
    import signal

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *args: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        run_checker("router_z_loss", moe_teach.router_z_loss, time_limit=10)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 20 < left <= 30 and fired == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
