"""Experts, the MoE layer, the transformer block and the counting helpers."""

import pytest
import torch

import moe_teach as mt


@pytest.mark.parametrize("activation", mt.ACTIVATIONS)
def test_expert_matches_its_formula_and_parameter_count(activation):
    torch.manual_seed(0)
    expert = mt.Expert(5, 7, 3, activation)
    x = torch.randn(4, 2, 5)
    up = x @ expert.up.weight.T + expert.up.bias
    if activation == "swiglu":
        gate = x @ expert.gate.weight.T + expert.gate.bias
        hidden = torch.nn.functional.silu(gate) * up
    else:
        hidden = torch.relu(up) if activation == "relu" else torch.nn.functional.gelu(up)
    expected = hidden @ expert.down.weight.T + expert.down.bias
    assert torch.allclose(expert(x), expected, atol=1e-6)
    assert mt.count_parameters(expert) == mt.expert_parameter_count(5, 7, 3, activation)


def test_classic_entry_point_keeps_working():
    layer = mt.MoELayer(10, 6, num_experts=4, top_k=2)
    assert layer(torch.randn(32, 10)).shape == (32, 6)


@pytest.mark.parametrize("shape", [(7, 8), (2, 5, 8), (2, 3, 4, 8), (1, 8)])
def test_layer_accepts_any_leading_shape(shape):
    layer = mt.MoELayer(8, 3)
    out, record = layer(torch.randn(*shape), return_record=True)
    tokens = torch.Size(shape[:-1]).numel()
    assert out.shape == (*shape[:-1], 3)
    assert record.expert_indices.shape == (tokens, 2) and record.probs.shape == (tokens, 4)
    assert layer.last_record is record


def test_layer_output_equals_weighted_sum_of_chosen_experts():
    torch.manual_seed(1)
    layer = mt.MoELayer(6, 4, num_experts=5, top_k=3, activation="swiglu")
    x = torch.randn(9, 6)
    out, record = layer(x, return_record=True)
    for t in range(9):
        expected = sum(w * layer.experts[int(e)](x[t])
                       for e, w in zip(record.expert_indices[t], record.expert_weights[t]))
        assert torch.allclose(out[t], expected, atol=1e-6)


def test_record_counts_are_consistent():
    torch.manual_seed(2)
    layer = mt.MoELayer(6, 6, num_experts=4, top_k=2)
    _, record = layer(torch.randn(20, 6), return_record=True)
    assert int(record.tokens_per_expert.sum()) == 40
    assert torch.equal(record.tokens_per_expert, record.routed_per_expert)
    assert record.num_dropped == 0 and record.drop_rate == 0.0 and record.capacity is None
    assert torch.allclose(record.dense_weights().sum(-1), torch.ones(20))


def test_noisy_router_layer_trains_and_evaluates():
    torch.manual_seed(3)
    layer = mt.MoELayer(6, 6, num_experts=4, top_k=2, router="noisy")
    out = layer(torch.randn(10, 6))
    (out.sum() + layer.last_record.aux_losses["load"]).backward()
    assert layer.router.noise_proj.weight.grad is not None
    layer.eval()
    x = torch.randn(10, 6)
    assert torch.equal(layer(x), layer(x))


def test_transformer_block_is_causal_and_shapes_hold():
    torch.manual_seed(4)
    block = mt.TransformerBlock(mt.BlockConfig(dim=16, num_heads=2, hidden_dim=32))
    x = torch.randn(2, 6, 16)
    y = block(x)
    x_changed = x.clone()
    x_changed[:, -1] += 1.0                        # change only the last position
    y_changed = block(x_changed)
    assert y.shape == (2, 6, 16)
    assert torch.allclose(y[:, :-1], y_changed[:, :-1], atol=1e-6)
    assert not torch.allclose(y[:, -1], y_changed[:, -1])


def test_dense_twins_match_active_and_total_parameters():
    config = mt.BlockConfig(dim=32, num_heads=4, hidden_dim=64, moe=mt.MoEConfig(num_experts=8, top_k=2))
    moe = mt.TransformerBlock(config)
    active_twin = mt.TransformerBlock(mt.dense_twin(config, "active"))
    total_twin = mt.TransformerBlock(mt.dense_twin(config, "total"))
    router = config.dim * config.moe.num_experts
    expert_output_biases = (config.moe.top_k - 1) * config.dim   # k experts each carry an output bias
    assert mt.active_parameters(moe) == mt.count_parameters(active_twin) + router + expert_output_biases
    extra_biases = (config.moe.num_experts - 1) * config.dim
    assert mt.count_parameters(moe) == mt.count_parameters(total_twin) + router + extra_biases


def test_flop_counts_follow_the_matmul_shapes():
    assert mt.ffn_flops_per_token(8, 32) == 2 * (8 * 32 + 32 * 8)
    assert mt.ffn_flops_per_token(8, 32, activation="swiglu") == 2 * (2 * 8 * 32 + 32 * 8)
    dense = mt.ffn_flops_per_token(16, 64)
    assert mt.moe_flops_per_token(16, 64, num_experts=8, top_k=2) == 2 * 16 * 8 + 2 * dense
    config = mt.BlockConfig(dim=16, num_heads=2, hidden_dim=64, moe=mt.MoEConfig(num_experts=8, top_k=2))
    assert mt.block_flops_per_token(config, 10) == (mt.attention_flops_per_token(16, 10)
                                                    + mt.moe_flops_per_token(16, 64, 8, 2, activation="gelu"))
