"""Lesson 10's designs: shared and fine-grained experts, DeepSeek-V3 routing and its bias,
expert choice, Soft MoE, and the future-token test."""

from __future__ import annotations

import math

import pytest
import torch

import moe_teach as mt
from moe_teach.lessons.modern import future_token_change
from moe_teach.routing import choice_capacity, expert_choice, group_limited_mask, selection_bias_delta
from moe_teach.transformer import TransformerBlock


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- shared experts
def test_default_layer_is_unchanged_and_has_no_shared_path():
    torch.manual_seed(0)
    plain = mt.MoELayer(8, num_experts=4, top_k=2)
    torch.manual_seed(0)
    explicit = mt.MoELayer(8, num_experts=4, top_k=2, num_shared_experts=0)
    assert plain.shared is None and isinstance(plain.experts, torch.nn.ModuleList) and len(plain.experts) == 4
    assert set(plain.state_dict()) == set(explicit.state_dict())
    torch.testing.assert_close(plain(_x(5, 8)), explicit(_x(5, 8)))


@pytest.mark.parametrize("gated", [False, True])
def test_shared_expert_output_is_added_to_the_routed_output(gated):
    layer = mt.MoELayer(8, num_experts=4, top_k=2, num_shared_experts=2, shared_hidden_dim=6, shared_gate=gated)
    x = _x(7, 8)
    routed = mt.dispatch_grouped(x, layer.experts, *_decision(layer, x))
    shared = layer.shared.expert(x)
    expected = routed + (torch.sigmoid(layer.shared.gate(x)) * shared if gated else shared)
    torch.testing.assert_close(layer(x), expected)
    assert layer.shared.expert.hidden_dim == 12 and len(layer.experts) == 4


def _decision(layer, x):
    routed = layer.router(x)
    return routed.expert_indices, routed.expert_weights


def test_counting_treats_shared_experts_as_active():
    block = mt.BlockConfig(dim=16, num_heads=2, hidden_dim=32, moe=mt.MoEConfig(4, 2, num_shared_experts=1))
    model = TransformerBlock(block)
    expert = mt.count_parameters(model.feed_forward.experts[0])
    shared = mt.count_parameters(model.feed_forward.shared)
    assert mt.active_parameters(model) == mt.count_parameters(model) - 2 * expert
    assert shared == expert  # same width by default, and it is not subtracted above
    without = mt.BlockConfig(dim=16, num_heads=2, hidden_dim=32, moe=mt.MoEConfig(4, 2))
    assert mt.block_flops_per_token(block, 8) - mt.block_flops_per_token(without, 8) == mt.ffn_flops_per_token(
        16, 32, activation="gelu")


def test_fine_grained_twin_keeps_active_and_total_expert_parameters():
    base = mt.BlockConfig(dim=16, num_heads=2, hidden_dim=32, activation="swiglu", moe=mt.MoEConfig(4, 2))
    for split, shared in [(2, 0), (2, 1), (4, 2)]:
        twin = mt.fine_grained_twin(base, split, shared)
        assert twin.hidden_dim == 32 // split and twin.moe.num_experts == 4 * split - shared
        assert twin.moe.top_k == 2 * split - shared and twin.moe.num_shared_experts == shared
        ours, theirs = TransformerBlock(base).feed_forward, TransformerBlock(twin).feed_forward
        shared = 0 if theirs.shared is None else _weights(theirs.shared)
        assert sum(map(_weights, theirs.experts)) + shared == sum(map(_weights, ours.experts))          # total
        assert theirs.top_k * _weights(theirs.experts[0]) + shared == ours.top_k * _weights(ours.experts[0])
    with pytest.raises(ValueError, match=r"split must divide hidden_dim=32, got split=3"):
        mt.fine_grained_twin(base, 3)
    with pytest.raises(ValueError, match=r"shared_experts must be below split \* top_k = 4"):
        mt.fine_grained_twin(base, 2, 4)


def _weights(module):
    """Matrix entries of ``module`` (biases left out: splitting an expert adds output biases)."""
    return sum(p.numel() for name, p in module.named_parameters() if name.endswith("weight"))


# ----------------------------------------------------------------------------- DeepSeek-V3
def test_group_limited_mask_keeps_the_groups_with_the_best_two_scores():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.5, 0.8, 0.0]])   # groups of 2: sums 1.0, 1.0, 0.8
    mask = group_limited_mask(scores, n_group=3, topk_group=2)
    assert mask.tolist() == [[True, True, True, True, False, False]]
    scores = torch.tensor([[0.9, 0.0, 0.0, 0.6, 0.6, 0.0]])   # groups of 3: top-2 sums 0.9 vs 1.2
    assert group_limited_mask(scores, 2, 1).tolist() == [[False, False, False, True, True, True]]


def test_deepseek_router_bias_changes_the_choice_but_not_the_weights():
    router = mt.DeepSeekV3Router(8, 6, top_k=2, scaling_factor=2.0)
    x = _x(20, 8)
    before = router(x)
    with torch.no_grad():
        router.selection_bias[3] = 5.0
    after = router(x)
    assert bool((after.expert_indices == 3).any(dim=-1).all())
    scores = torch.sigmoid(after.logits)
    chosen = scores.gather(1, after.expert_indices)
    torch.testing.assert_close(after.expert_weights, 2.0 * chosen / chosen.sum(-1, keepdim=True))
    torch.testing.assert_close(after.selection_scores, scores + router.selection_bias)
    assert not torch.equal(before.expert_indices, after.expert_indices)


def test_selection_bias_is_a_saved_buffer_not_a_parameter():
    layer = mt.MoELayer(8, num_experts=4, top_k=2, router="deepseek_v3")
    assert "router.selection_bias" in layer.state_dict()
    assert all("selection_bias" not in name for name, _ in layer.named_parameters())
    layer(_x(6, 8)).sum().backward()
    assert layer.router.selection_bias.grad is None


def test_bias_update_moves_a_skewed_load_towards_uniform_without_touching_weights():
    torch.manual_seed(0)
    layer = mt.MoELayer(8, num_experts=4, top_k=1, router="deepseek_v3", router_options={"renormalize": False})
    with torch.no_grad():
        layer.router.selection_bias.copy_(torch.tensor([0.6, 0.0, 0.0, 0.0]))   # expert 0 takes everything
    x = _x(256, 8)
    first = layer(x, return_record=True)[1]
    first_load = first.load_per_expert.float()
    weights_before = layer.router.proj.weight.clone()
    for _ in range(300):
        layer(x)
        assert mt.update_selection_biases(layer, rate=1e-2) == 1
    last = layer(x, return_record=True)[1]
    spread = lambda load: float(load.max() - load.min())  # noqa: E731
    assert spread(last.load_per_expert.float()) < 0.5 * spread(first_load)
    assert torch.equal(layer.router.proj.weight, weights_before)         # no parameter moved
    # weights still come from the unbiased scores of the (new) choice
    torch.testing.assert_close(last.expert_weights, torch.sigmoid(last.logits).gather(1, last.expert_indices))


def test_selection_bias_delta_is_signed_and_mean_centred():
    delta = selection_bias_delta(torch.tensor([10.0, 0.0, 5.0, 5.0]), rate=0.1)
    torch.testing.assert_close(delta, torch.tensor([-0.1, 0.1, 0.0, 0.0]))
    delta = selection_bias_delta(torch.tensor([9.0, 1.0, 1.0, 1.0]), rate=0.1)
    assert abs(float(delta.sum())) < 1e-7 and delta[0] < 0 < delta[1]
    with pytest.raises(ValueError, match="rate must be a number > 0"):
        selection_bias_delta(torch.ones(4), rate=0.0)


def test_sequence_balance_loss_minimum_and_collapse():
    uniform = torch.full((8, 4), 0.25)
    balanced = torch.arange(8).remainder(4).view(8, 1)
    assert float(mt.sequence_balance_loss(uniform, balanced, 4)) == pytest.approx(1.0)
    collapsed = torch.zeros(8, 4)
    collapsed[:, 0] = 1.0
    assert float(mt.sequence_balance_loss(collapsed, torch.zeros(8, 1, dtype=torch.long), 4)) == pytest.approx(4.0)
    # per sequence, not pooled: each sequence collapses onto a different expert
    probs = torch.zeros(8, 4)
    probs[:4, 0], probs[4:, 1] = 1.0, 1.0
    indices = torch.tensor([0] * 4 + [1] * 4).view(8, 1)
    assert float(mt.sequence_balance_loss(probs, indices, 4)) == pytest.approx(4.0)
    assert float(mt.switch_load_balancing_loss(probs, indices)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="sequence_length must divide the 8 tokens, got 3"):
        mt.sequence_balance_loss(probs, indices, 3)


def test_deepseek_layer_records_sequence_loss_per_sequence():
    layer = mt.MoELayer(8, num_experts=4, top_k=2, router="deepseek_v3")
    _, record = layer(_x(3, 5, 8), return_record=True)
    assert record.sequence_length == 5 and set(record.aux_losses) == {"switch", "z", "sequence"}
    expected = torch.stack([mt.switch_load_balancing_loss(record.probs[i * 5:(i + 1) * 5],
                                                          record.expert_indices[i * 5:(i + 1) * 5])
                            for i in range(3)]).mean()
    torch.testing.assert_close(record.aux_losses["sequence"], expected)


@pytest.mark.parametrize("options,message", [
    ({"n_group": 3}, r"n_group must divide num_experts=8, got n_group=3"),
    ({"n_group": 2, "topk_group": 3}, r"topk_group must be between 1 and n_group=2, got 3"),
    ({"scaling_factor": -1.0}, r"scaling_factor must be a number > 0"),
    ({"renormalize": "yes"}, r"renormalize must be True or False"),
    ({"n_group": 4, "topk_group": 1, "top_k_": 1}, r"'top_k_' not accepted by router 'deepseek_v3'"),
])
def test_deepseek_bad_options_are_named(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        mt.MoELayer(8, num_experts=8, top_k=2, router="deepseek_v3", router_options=options)


def test_group_limit_smaller_than_top_k_is_rejected():
    with pytest.raises(ValueError, match=r"top_k=3 is more than the 2 experts in topk_group=1 groups of 2"):
        mt.DeepSeekV3Router(8, 8, top_k=3, n_group=4, topk_group=1)


# ----------------------------------------------------------------------------- expert choice
@pytest.mark.parametrize("tokens,experts,k,factor", [(32, 4, 2, 1.0), (30, 8, 1, 1.5), (10, 4, 3, 2.0)])
def test_expert_choice_takes_exactly_capacity_tokens_per_expert(tokens, experts, k, factor):
    layer = mt.MoELayer(8, num_experts=experts, top_k=k, router="expert_choice",
                        router_options={"capacity_factor": factor})
    _, record = layer(_x(tokens, 8), return_record=True)
    capacity = min(tokens, math.ceil(factor * tokens * k / experts))
    assert record.tokens_per_expert.tolist() == [capacity] * experts
    assert record.num_dropped == 0 and record.aux_losses == {}
    per_token = record.kept.sum(dim=-1)
    assert int(per_token.sum()) == capacity * experts
    assert choice_capacity(tokens, experts, k, factor) == capacity


def test_expert_choice_picks_each_experts_best_tokens_and_matches_the_dense_reference():
    layer = mt.MoELayer(8, num_experts=4, top_k=1, router="expert_choice", dispatch="grouped")
    x = _x(12, 8)
    y, record = layer(x, return_record=True)
    probs = record.probs
    token_ids, weights = expert_choice(probs, 3)
    dense = torch.zeros(12, 4).scatter(0, token_ids.t(), weights.t())           # [T, E]
    torch.testing.assert_close(record.dense_weights(), dense)
    expected = sum(dense[:, e:e + 1] * expert(x) for e, expert in enumerate(layer.experts))
    torch.testing.assert_close(y, expected)
    counts = (dense > 0).sum(dim=1)
    assert counts.sum() == 12


def test_expert_choice_bad_arguments_are_named():
    with pytest.raises(ValueError, match="capacity must be at most the number of tokens 4, got 5"):
        expert_choice(torch.rand(4, 2), 5)
    with pytest.raises(ValueError, match="capacity_factor must be a number > 0"):
        mt.MoELayer(8, router="expert_choice", router_options={"capacity_factor": 0})


# ----------------------------------------------------------------------------- Soft MoE
def test_soft_moe_weights_sum_to_one_over_tokens_and_over_slots():
    layer = mt.SoftMoELayer(8, num_experts=3, slots_per_expert=2, hidden_dim=16)
    y, record = layer(_x(4, 10, 8), return_record=True)
    assert y.shape == (4, 10, 8) and record.dispatch.shape == (4, 10, 6)
    torch.testing.assert_close(record.dispatch.sum(dim=1), torch.ones(4, 6))
    torch.testing.assert_close(record.combine.sum(dim=2), torch.ones(4, 10))
    assert layer(_x(10, 8)).shape == (10, 8)


def test_soft_moe_matches_an_explicit_loop():
    layer = mt.SoftMoELayer(4, 3, num_experts=2, slots_per_expert=2, hidden_dim=8)
    x = _x(5, 4)
    logits = x @ layer.slot_embeddings
    dispatch, combine = torch.softmax(logits, 0), torch.softmax(logits, 1)
    outputs = torch.stack([layer.experts[j // 2](dispatch[:, j] @ x) for j in range(4)])     # [n, O]
    torch.testing.assert_close(layer(x), combine @ outputs)


def test_soft_moe_bad_arguments_are_named():
    with pytest.raises(ValueError, match="slots_per_expert must be a positive int"):
        mt.SoftMoELayer(4, slots_per_expert=0)
    with pytest.raises(ValueError, match=r"x must have shape \[tokens, 4\] or \[groups, tokens, 4\]"):
        mt.SoftMoELayer(4)(torch.randn(2, 2, 3, 4))


# ----------------------------------------------------------------------------- looking ahead
def test_future_token_test_passes_for_causal_top_k_and_fails_for_the_others():
    torch.manual_seed(0)
    x = _x(2, 16, 8)
    top_k = mt.MoELayer(8, num_experts=4, top_k=2)
    deepseek = mt.MoELayer(8, num_experts=4, top_k=2, router="deepseek_v3", num_shared_experts=1)
    choice = mt.MoELayer(8, num_experts=4, top_k=1, router="expert_choice")
    soft = mt.SoftMoELayer(8, num_experts=4, slots_per_expert=2)
    assert future_token_change(top_k, x) == 0.0
    assert future_token_change(deepseek, x) == 0.0
    assert future_token_change(choice, x) > 1e-4
    assert future_token_change(soft, x) > 1e-4
    with pytest.raises(ValueError, match="position must be between 1 and 15, got 0"):
        future_token_change(top_k, x, position=0)


# ----------------------------------------------------------------------------- exercise 10
def test_package_implementations_pass_the_lesson_10_checks():
    from moe_teach.course.checks import run_checker
    from moe_teach.shared import shared_combine

    assert run_checker("centred_bias_update", lambda bias, load, rate: bias + selection_bias_delta(load, rate)).passed
    assert run_checker("expert_choice_select", expert_choice).passed
    assert run_checker("shared_expert_combine", shared_combine).passed
    assert run_checker("group_limited_mask", group_limited_mask).passed


def test_block_configs_saved_before_shared_experts_still_load():
    saved = mt.BlockConfig().to_dict()
    for key in ("num_shared_experts", "shared_hidden_dim", "shared_gate"):
        del saved["moe"][key]
    assert mt.BlockConfig.from_dict(saved) == mt.BlockConfig()
    with pytest.raises(ValueError, match=r"unknown \['typo'\]"):
        mt.BlockConfig.from_dict({**mt.BlockConfig().to_dict(), "moe": {**mt.MoEConfig().to_dict(), "typo": 1}})


def test_layer_capacity_factor_is_refused_for_expert_choice_instead_of_ignored():
    with pytest.raises(ValueError, match=r"capacity_factor does not apply to router 'expert_choice'"):
        mt.MoELayer(8, router="expert_choice", capacity_factor=1.0)


def test_group_mask_and_bias_delta_arguments_are_named():
    with pytest.raises(ValueError, match=r"n_group must divide num_experts=6 .* got n_group=4, topk_group=1"):
        group_limited_mask(torch.rand(2, 6), 4, 1)
    with pytest.raises(TypeError, match=r"load must be a 1-D tensor"):
        selection_bias_delta([1.0, 2.0], 0.1)
