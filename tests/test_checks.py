"""The exercise checks: right answers pass, common mistakes get their own hint, stubs are 'not done yet'."""

import json

import pytest
import torch
from mistakes import MISTAKES

import moe_teach
from moe_teach import checks
from moe_teach.checks import DONE, FAILED, NOT_DONE, TASKS, check, evaluate


@pytest.mark.parametrize(("task", "key", "wrong"), [(t, k, f) for t, items in MISTAKES.items() for k,
                                                    f in items],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_each_mistake_gets_its_own_diagnosis(task, key, wrong):
    result = evaluate(task, wrong)
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
        result = evaluate(task, _stub)
        assert result.status == NOT_DONE
        assert "Traceback" not in result.message


def test_other_exceptions_are_failures_with_type_and_message():
    def broken(*args):
        raise KeyError("expert_weights")

    result = evaluate("router_z_loss", broken)
    assert (result.status, result.key) == (FAILED, "raised")
    assert "KeyError" in result.message and "expert_weights" in result.message
    assert "Traceback" not in result.message


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="valid tasks: .*top_k_routing"):
        check("top_k", lambda logits, k: None)


def test_package_implementations_pass_their_checks():
    """The checks accept the package's own functions wherever the signature matches."""
    assert evaluate("count_expert_parameters", moe_teach.experts.expert_parameter_count).passed
    assert evaluate("capacity_per_expert", moe_teach.expert_capacity).passed
    assert evaluate("keep_mask", moe_teach.apply_capacity).passed
    assert evaluate("switch_aux_loss", moe_teach.switch_load_balancing_loss).passed
    assert evaluate("router_z_loss", moe_teach.router_z_loss).passed
    assert evaluate("top_k_routing", lambda logits, k: moe_teach.topk_softmax(logits, k)[1:]).passed
    for dispatcher in moe_teach.DISPATCHERS.values():
        assert evaluate("dispatch_with_capacity", dispatcher).passed, dispatcher.__name__
    assert evaluate("block_forward", moe_teach.TransformerBlock.forward).status == DONE


def test_ties_accept_either_choice():
    """Breaking ties towards the last expert instead of the first is accepted too."""
    def top_k_last_on_ties(logits, k):
        probs = torch.softmax(logits, dim=-1)
        weights, flipped = probs.flip(-1).topk(k, dim=-1)
        return weights / weights.sum(-1, keepdim=True), logits.shape[-1] - 1 - flipped

    assert evaluate("top_k_routing", top_k_last_on_ties).passed


def test_check_shows_records_and_returns(capsys):
    checks.reset_results()
    result = check("router_z_loss", moe_teach.router_z_loss)
    printed = capsys.readouterr().out
    assert "✅" in printed and "router_z_loss" in printed
    assert result.passed and checks.results() == [result]
    line = checks.results_json_line()
    assert line.startswith(checks.RESULTS_MARKER)
    recorded = json.loads(line[len(checks.RESULTS_MARKER):])
    assert recorded == [result.as_dict()]
    failed = check("router_z_loss", MISTAKES["router_z_loss"][0][1])
    assert "❌" in capsys.readouterr().out and "Hint:" in failed.text()
    assert checks.results() == [failed]          # a re-check replaces the earlier verdict
    assert "Hint:" in failed.html() and "❌" in failed.html()
    checks.reset_results()


def test_check_leaves_the_learners_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    evaluate("sparse_moe_forward", MISTAKES["sparse_moe_forward"][0][1])
    assert torch.equal(torch.rand(3), expected)
