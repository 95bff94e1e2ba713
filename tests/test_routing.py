"""Routing: top-k weights, renormalisation, noise, capacity."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from moe_teach import MoELayer, NoisyTopKRouter, TopKRouter, apply_capacity, expert_capacity, topk_softmax
from moe_teach.routing import position_in_expert, smooth_load


def well_separated_logits(tokens, experts, seed):
    """Logits whose sorted values differ by at least 0.1 (no near-ties that flip top-k)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.arange(experts, dtype=torch.float32) * 0.3
    return torch.stack([base[torch.randperm(experts, generator=generator)] for _ in range(tokens)]) \
        + 0.1 * torch.rand(tokens, experts, generator=generator)


@given(tokens=st.integers(1, 20), experts=st.integers(1, 9), seed=st.integers(0, 1000), data=st.data())
def test_renormalised_weights_sum_to_one_and_experts_distinct(tokens, experts, seed, data):
    k = data.draw(st.integers(1, experts))
    logits = torch.randn(tokens, experts, generator=torch.Generator().manual_seed(seed)) * 3
    probs, weights, indices = topk_softmax(logits, k, renormalize=True)
    assert torch.allclose(weights.sum(-1), torch.ones(tokens), atol=1e-6)
    assert all(len(set(row.tolist())) == k for row in indices)
    assert torch.allclose(probs.sum(-1), torch.ones(tokens), atol=1e-6)


@given(tokens=st.integers(1, 20), experts=st.integers(2, 9), seed=st.integers(0, 1000), data=st.data())
def test_without_renormalisation_weights_are_the_softmax_probabilities(tokens, experts, seed, data):
    k = data.draw(st.integers(1, experts))
    logits = torch.randn(tokens, experts, generator=torch.Generator().manual_seed(seed))
    probs, weights, indices = topk_softmax(logits, k, renormalize=False)
    assert torch.equal(weights, probs.gather(1, indices))
    assert torch.allclose(probs, torch.softmax(logits, -1))


@given(tokens=st.integers(1, 20), experts=st.integers(2, 9), seed=st.integers(0, 1000), data=st.data())
def test_renormalised_topk_of_softmax_equals_softmax_of_topk_logits(tokens, experts, seed, data):
    k = data.draw(st.integers(1, experts))
    logits = well_separated_logits(tokens, experts, seed)
    _, weights, indices = topk_softmax(logits, k, renormalize=True)
    top_logits, top_indices = logits.topk(k, dim=-1)
    assert torch.equal(indices, top_indices)
    assert torch.allclose(weights, torch.softmax(top_logits, -1), atol=1e-6)


def test_topk_picks_largest_scores_when_all_are_negative():
    logits = torch.tensor([[-5.0, -1.0, -3.0, -0.5]])
    _, _, indices = topk_softmax(logits, 2)
    assert indices.tolist() == [[3, 1]]


def test_router_maths_runs_in_float32_for_bfloat16_input():
    router = TopKRouter(8, 4, 2).to(torch.bfloat16)
    out = router(torch.randn(5, 8, dtype=torch.bfloat16))
    assert out.logits.dtype == torch.float32 and out.expert_weights.dtype == torch.float32


def test_top1_default_keeps_raw_probability_so_the_router_learns():
    torch.manual_seed(0)
    layer = MoELayer(6, 3, num_experts=4, top_k=1)
    assert layer.router.renormalize is False
    layer(torch.randn(10, 6)).pow(2).sum().backward()
    assert layer.router.proj.weight.grad.abs().sum() > 0


def router_grad_norm(renormalize):
    torch.manual_seed(0)
    layer = MoELayer(6, 3, num_experts=4, top_k=1, renormalize=renormalize)
    x = torch.randn(10, 6)
    output, record = layer(x, return_record=True)
    output.pow(2).sum().backward()
    return layer.router.proj.weight.grad.norm().item(), record


def test_top1_renormalised_gives_the_router_no_task_gradient():
    """The shipped bug: every weight becomes exactly 1, so the router gets (numerically) no gradient."""
    broken, record = router_grad_norm(renormalize=True)
    assert torch.equal(record.expert_weights, torch.ones(10, 1))
    healthy, _ = router_grad_norm(renormalize=None)
    assert broken < 1e-5 * healthy


@pytest.mark.parametrize("router_cls,kwargs", [(NoisyTopKRouter, {}), (TopKRouter, {"jitter": 0.2})])
def test_eval_mode_makes_routing_deterministic(router_cls, kwargs):
    torch.manual_seed(0)
    router = router_cls(8, 6, 2, **kwargs)
    x = torch.randn(30, 8)
    router.train()
    first, second = router(x), router(x)
    assert not torch.equal(first.logits, second.logits), "noise should be on while training"
    router.eval()
    first, second = router(x), router(x)
    assert torch.equal(first.logits, second.logits) and torch.equal(first.expert_indices, second.expert_indices)
    assert torch.equal(first.logits, router.clean_logits(x))


def test_noisy_router_with_zero_noise_gives_no_nan():
    torch.manual_seed(0)
    router = NoisyTopKRouter(8, 6, 2, min_noise_std=0.0)
    torch.nn.init.constant_(router.noise_proj.weight, -1e4)   # softplus -> exactly zero std
    x = torch.randn(12, 8).abs()
    out = router(x)
    load = smooth_load(out, 2)
    load.sum().backward()
    assert torch.isfinite(load).all() and torch.isfinite(out.expert_weights).all()
    assert torch.isfinite(router.proj.weight.grad).all()


def test_noisy_router_smooth_load_sums_to_about_tokens_times_k():
    torch.manual_seed(0)
    router = NoisyTopKRouter(8, 6, 2)
    out = router(torch.randn(400, 8))
    load = smooth_load(out, 2)
    assert load.shape == (6,)
    assert abs(load.sum().item() - 800) / 800 < 0.15


@pytest.mark.parametrize("k", [1, 2, 3])
def test_capacity_formula(k):
    for tokens, experts, factor in [(10, 4, 1.0), (7, 3, 1.25), (64, 8, 0.5), (1, 4, 2.0)]:
        expected = math.ceil(factor * tokens * k / experts)
        assert expert_capacity(tokens, experts, k, factor) == expected


def naive_positions(indices, num_experts):
    """Slot-major queue positions computed with a plain Python counter."""
    tokens, k = indices.shape
    seen = [0] * num_experts
    positions = torch.zeros_like(indices)
    for slot in range(k):
        for token in range(tokens):
            expert = int(indices[token, slot])
            positions[token, slot] = seen[expert]
            seen[expert] += 1
    return positions


@pytest.mark.parametrize("k", [1, 2, 3])
def test_positions_and_capacity_counts_match_a_plain_loop(k):
    torch.manual_seed(k)
    logits = torch.randn(25, 5)
    _, _, indices = topk_softmax(logits, k)
    assert torch.equal(position_in_expert(indices, 5), naive_positions(indices, 5))
    for capacity in [1, 2, 5, 100]:
        kept = apply_capacity(indices, 5, capacity)
        per_expert = torch.bincount(indices[kept], minlength=5)
        assert per_expert.max() <= capacity
        routed = torch.bincount(indices.reshape(-1), minlength=5)
        assert torch.equal(per_expert, routed.clamp(max=capacity))


def test_first_choices_are_served_before_second_choices():
    indices = torch.tensor([[1, 0], [1, 0], [0, 1]])     # expert 0: two 2nd choices then a 1st choice
    kept = apply_capacity(indices, 2, capacity=1)
    assert kept.tolist() == [[True, False], [False, False], [True, False]]
