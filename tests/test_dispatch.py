"""The three dispatch paths agree; gradients stay with the chosen experts; capacity drops are exact zeros."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from moe_teach import DISPATCHERS, MoELayer, apply_capacity, make_experts, topk_softmax

PATHS = list(DISPATCHERS)


def routed_problem(tokens, width, out_dim, experts, k, activation, seed):
    torch.manual_seed(seed)
    x = torch.randn(tokens, width, dtype=torch.float64)
    logits = torch.randn(tokens, experts, dtype=torch.float64)
    _, weights, indices = topk_softmax(logits, k)
    modules = make_experts(experts, width, 7, out_dim, activation).double()
    return x, modules, indices, weights.double()


def run_path(path, x, modules, indices, weights, kept):
    x = x.clone().requires_grad_(True)
    weights = weights.clone().requires_grad_(True)
    modules.zero_grad(set_to_none=True)
    out = DISPATCHERS[path](x, modules, indices, weights, kept)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in modules.parameters()]
    return out.detach(), x.grad, weights.grad, grads


@given(tokens=st.integers(1, 24), experts=st.integers(1, 6), seed=st.integers(0, 10_000),
       activation=st.sampled_from(["relu", "gelu", "swiglu"]), capacity=st.one_of(st.none(), st.integers(1, 6)),
       data=st.data())
def test_paths_agree_in_outputs_and_gradients(tokens, experts, seed, activation, capacity, data):
    k = data.draw(st.integers(1, experts))
    x, modules, indices, weights = routed_problem(tokens, 5, 3, experts, k, activation, seed)
    kept = None if capacity is None else apply_capacity(indices, experts, capacity)
    reference = run_path("mask", x, modules, indices, weights, kept)
    for path in ["loop", "grouped"]:
        result = run_path(path, x, modules, indices, weights, kept)
        for expected, got in zip(reference[:3], result[:3]):
            assert torch.allclose(expected, got, atol=1e-10)
        for expected, got in zip(reference[3], result[3]):
            assert torch.allclose(expected, got, atol=1e-10)


@pytest.mark.parametrize("path", PATHS)
def test_one_token_backward_reaches_only_its_chosen_experts(path):
    torch.manual_seed(3)
    layer = MoELayer(8, 4, num_experts=6, top_k=2, dispatch=path)
    x = torch.randn(1, 8)
    out, record = layer(x, return_record=True)
    out.sum().backward()
    chosen = set(record.expert_indices[0].tolist())
    for expert_id, expert in enumerate(layer.experts):
        has_gradient = any(p.grad is not None and p.grad.abs().sum() > 0 for p in expert.parameters())
        assert has_gradient == (expert_id in chosen), f"expert {expert_id}"
    assert layer.router.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("path", PATHS)
def test_dropped_assignments_contribute_exactly_zero(path):
    x, modules, indices, weights = routed_problem(30, 5, 3, 4, 2, "relu", seed=1)
    kept = apply_capacity(indices, 4, capacity=4)
    assert (~kept).any() and (~kept.any(-1)).any(), "test needs partly and fully dropped tokens"
    out = DISPATCHERS[path](x, modules, indices, weights, kept)
    manual = torch.zeros_like(out)
    for token, slot in kept.nonzero().tolist():
        manual[token] += weights[token, slot] * modules[int(indices[token, slot])](x[token])
    assert torch.allclose(out, manual, atol=1e-10)
    fully_dropped = ~kept.any(-1)
    assert torch.equal(out[fully_dropped], torch.zeros_like(out[fully_dropped]))


@pytest.mark.parametrize("path", PATHS)
def test_every_assignment_dropped_gives_zero_output(path):
    x, modules, indices, weights = routed_problem(4, 5, 3, 4, 2, "relu", seed=2)
    kept = torch.zeros_like(indices, dtype=torch.bool)
    out = DISPATCHERS[path](x, modules, indices, weights, kept)
    assert out.shape == (4, 3) and torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("path", PATHS)
def test_huge_capacity_factor_gives_exactly_the_dropless_result(path):
    torch.manual_seed(5)
    dropless = MoELayer(8, 8, num_experts=4, top_k=2, dispatch=path)
    capped = MoELayer(8, 8, num_experts=4, top_k=2, dispatch=path, capacity_factor=100.0)
    capped.load_state_dict(dropless.state_dict())
    x = torch.randn(40, 8)
    out, record = capped(x, return_record=True)
    assert record.num_dropped == 0
    assert torch.equal(out, dropless(x))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_layer_never_exceeds_capacity_and_counts_drops(k):
    torch.manual_seed(k)
    layer = MoELayer(8, 8, num_experts=4, top_k=k, capacity_factor=0.5)
    x = torch.randn(50, 8)
    out, record = layer(x, return_record=True)
    assert record.capacity == layer.capacity(50)
    assert int(record.tokens_per_expert.max()) <= record.capacity
    assert record.num_dropped == int((~record.kept).sum()) > 0
    assert int(record.tokens_per_expert.sum()) == 50 * k - record.num_dropped
    assert torch.equal(out[record.dropped_tokens], torch.zeros_like(out[record.dropped_tokens]))


@pytest.mark.parametrize("path", PATHS)
def test_all_dropped_output_still_supports_backward(path):
    x, modules, indices, weights = routed_problem(4, 5, 3, 4, 2, "relu", seed=2)
    weights = weights.clone().requires_grad_(True)
    kept = torch.zeros_like(indices, dtype=torch.bool)
    out = DISPATCHERS[path](x, modules, indices, weights, kept)
    out.sum().backward()
    assert torch.equal(weights.grad, torch.zeros_like(weights))


def test_inverse_permutation_undoes_the_sort():
    from moe_teach.dispatch import inverse_permutation

    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    values = torch.arange(10.0) * 3
    assert torch.equal(values[order][inverse_permutation(order)], values)
