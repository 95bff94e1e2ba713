"""Lesson 08's "closing the gap" helpers: the old ways compute what the new ones do."""

import torch

from moe_teach import MoELayer
from moe_teach.dispatch import combine, run_experts, sort_by_expert
from moe_teach.experts import Expert
from moe_teach.lessons import closing_the_gap as gap
from moe_teach.routing import apply_capacity


def _sorted(kept=None):
    torch.manual_seed(0)
    layer = MoELayer(8, num_experts=4, top_k=2, hidden_dim=16)
    x = torch.randn(20, 8)
    routed = layer.router(x)
    sorted_in = sort_by_expert(x, routed.expert_indices, 4, kept)
    weights = routed.expert_weights if kept is None else routed.expert_weights * kept
    return run_experts(layer.experts, sorted_in), sorted_in, weights, routed


def test_the_old_combine_equals_the_new_one():
    sorted_out, sorted_in, weights, _ = _sorted()
    assert torch.allclose(gap.combine_zero_fill(sorted_out, sorted_in, weights),
                          combine(sorted_out, sorted_in, weights), atol=1e-6)


def test_the_old_combine_equals_the_new_one_with_dropped_assignments():
    _, _, _, routed = _sorted()
    kept = apply_capacity(routed.expert_indices, 4, capacity=6)
    assert not kept.all()
    sorted_out, sorted_in, weights, _ = _sorted(kept)
    assert torch.allclose(gap.combine_zero_fill(sorted_out, sorted_in, weights),
                          combine(sorted_out, sorted_in, weights), atol=1e-6)


def test_the_fused_swiglu_equals_the_expert():
    torch.manual_seed(0)
    expert = Expert(8, 16, 8, "swiglu", bias=False)
    x = torch.randn(5, 8)
    assert torch.allclose(gap.swiglu_fused(expert, x), expert(x), atol=1e-6)


def test_gap_measurements_time_every_case_both_ways():
    result = gap.gap_measurements(tokens=32, dim=8, hidden=8, num_experts=4, top_k=2, repeats=1)
    assert set(result) == set(gap.GAP_CASES) | {"moe_vs_dense"}
    for name in gap.GAP_CASES:
        assert result[name]["before"] > 0 and result[name]["after"] > 0 and result[name]["noise"] >= 0
    assert result["moe_vs_dense"]["moe"] == result["aux_train"]["after"]


def test_op_counts_count_kernel_calls():
    a, b = torch.randn(3), torch.randn(3)
    assert gap.count_aten_ops(lambda: a + b) == 1
    counts = gap.aten_op_counts(tokens=32, dim=8, hidden=8, num_experts=4, top_k=2)
    assert counts["moe"] > counts["dense-active"] > 0


def test_the_boolean_indexed_losses_equal_the_weighted_ones():
    torch.manual_seed(0)
    logits = torch.randn(30, 4)
    probs = logits.softmax(-1)
    indices = probs.topk(2, dim=-1).indices
    mask = torch.rand(30) > 0.3
    from moe_teach.losses import router_z_loss, switch_load_balancing_loss
    weighted = switch_load_balancing_loss(probs, indices, mask) + router_z_loss(logits, mask)
    assert torch.allclose(gap.switch_z_boolean_indexed(probs, logits, indices, mask), weighted)
    unmasked = switch_load_balancing_loss(probs, indices) + router_z_loss(logits)
    assert not torch.allclose(unmasked, weighted)  # the padding rows really are left out


def test_the_batched_experts_compute_what_the_loop_over_experts_computes():
    torch.manual_seed(0)
    layer = MoELayer(8, num_experts=4, top_k=2, hidden_dim=16, activation="gelu")
    slices = torch.randn(4 * 5, 8)
    sorted_in = gap.SortedAssignments(torch.arange(20), [5] * 4, slices, 2)
    batched = gap.batched_experts(gap.stack_expert_weights(layer.experts), slices.view(4, 5, 8))
    assert torch.allclose(batched.reshape(20, 8), run_experts(layer.experts, sorted_in), atol=1e-6)


def test_the_floor_times_every_way():
    result = gap.expert_loop_floor(tokens=16, dim=8, hidden=8, num_experts=4, top_k=2, repeats=1)
    assert set(result) == {"dense_active", "expert_loop", "batched", "moe_layer"}
    assert all(seconds > 0 for seconds in result.values())


def test_relative_iqr_measures_the_middle_half_of_the_timings():
    assert gap.relative_iqr([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert gap.relative_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == (4.0 - 2.0) / 3.0
    assert gap.relative_iqr([1.0, 1.0, 1.0, 1.0, 100.0]) == 0.0   # one outlier does not count
    assert gap.relative_iqr([2.0]) == 0.0
