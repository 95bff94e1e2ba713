"""Bad input: every public constructor and function names the argument and the allowed values."""

import math

import pytest
import torch

import moe_teach as mt


def experts_list(n=4, width=6):
    return mt.make_experts(n, width, 8, width)


CONSTRUCTORS_WITH_TOP_K = {
    "MoELayer": lambda k: mt.MoELayer(6, 6, num_experts=4, top_k=k),
    "TopKRouter": lambda k: mt.TopKRouter(6, 4, top_k=k),
    "NoisyTopKRouter": lambda k: mt.NoisyTopKRouter(6, 4, top_k=k),
    "topk_softmax": lambda k: mt.topk_softmax(torch.randn(3, 4), k),
    "expert_capacity": lambda k: mt.expert_capacity(10, 4, k, 1.0),
    "moe_flops_per_token": lambda k: mt.moe_flops_per_token(6, 8, 4, k),
    "MoEConfig": lambda k: mt.MoEConfig(num_experts=4, top_k=k),
}


@pytest.mark.parametrize("name", CONSTRUCTORS_WITH_TOP_K)
@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_below_one_is_rejected(name, top_k):
    with pytest.raises(ValueError, match=r"top_k must be between 1 and num_experts=4"):
        CONSTRUCTORS_WITH_TOP_K[name](top_k)


@pytest.mark.parametrize("name", CONSTRUCTORS_WITH_TOP_K)
def test_top_k_above_num_experts_is_rejected(name):
    with pytest.raises(ValueError, match=r"top_k must be between 1 and num_experts=4, got 5"):
        CONSTRUCTORS_WITH_TOP_K[name](5)


@pytest.mark.parametrize("name", CONSTRUCTORS_WITH_TOP_K)
def test_top_k_that_is_not_an_int_is_a_type_error(name):
    with pytest.raises(TypeError, match=r"top_k must be an int"):
        CONSTRUCTORS_WITH_TOP_K[name](1.5)


SIZED = [
    ("input_dim", lambda v: mt.Expert(v, 8)),
    ("hidden_dim", lambda v: mt.Expert(6, v)),
    ("output_dim", lambda v: mt.Expert(6, 8, v)),
    ("input_dim", lambda v: mt.MoELayer(v, 6)),
    ("output_dim", lambda v: mt.MoELayer(6, v)),
    ("hidden_dim", lambda v: mt.MoELayer(6, 6, hidden_dim=v)),
    ("num_experts", lambda v: mt.MoELayer(6, 6, num_experts=v, top_k=1)),
    ("input_dim", lambda v: mt.TopKRouter(v, 4, 1)),
    ("num_experts", lambda v: mt.TopKRouter(6, v, 1)),
    ("num_experts", lambda v: mt.make_experts(v, 6, 8)),
    ("num_tokens", lambda v: mt.expert_capacity(v, 4, 1, 1.0)),
    ("dim", lambda v: mt.BlockConfig(dim=v)),
    ("num_heads", lambda v: mt.BlockConfig(num_heads=v)),
    ("hidden_dim", lambda v: mt.ffn_flops_per_token(6, v)),
    ("seq_len", lambda v: mt.attention_flops_per_token(8, v)),
]


@pytest.mark.parametrize("argument,build", SIZED, ids=[f"{a}-{i}" for i, (a, _) in enumerate(SIZED)])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_sizes_are_rejected(argument, build, value):
    with pytest.raises(ValueError, match=rf"{argument} must be a positive int \(1, 2, 3, ...\), got {value}"):
        build(value)


@pytest.mark.parametrize("argument,build", SIZED, ids=[f"{a}-{i}" for i, (a, _) in enumerate(SIZED)])
def test_sizes_that_are_not_ints_are_type_errors(argument, build):
    with pytest.raises(TypeError, match=rf"{argument} must be a positive int"):
        build(2.0)


@pytest.mark.parametrize("build", [
    lambda cf: mt.MoELayer(6, 6, capacity_factor=cf),
    lambda cf: mt.expert_capacity(10, 4, 2, cf),
    lambda cf: mt.MoEConfig(capacity_factor=cf),
])
@pytest.mark.parametrize("factor", [0, -0.5])
def test_capacity_factor_not_positive_is_rejected(build, factor):
    with pytest.raises(ValueError, match=r"capacity_factor must be a number > 0"):
        build(factor)


@pytest.mark.parametrize("call", [
    lambda x: mt.MoELayer(6, 6)(x),
    lambda x: mt.Expert(6, 8)(x),
    lambda x: mt.TopKRouter(6, 4)(x),
    lambda x: mt.NoisyTopKRouter(6, 4)(x),
])
def test_input_with_wrong_last_dimension_is_rejected(call):
    with pytest.raises(ValueError, match=r"x must have last dimension 6 \(shape \[\.\.\., 6\]\), got shape \(3, 5\)"):
        call(torch.randn(3, 5))


def test_transformer_block_input_with_wrong_width_is_rejected():
    with pytest.raises(ValueError, match=r"x must have last dimension 64"):
        mt.TransformerBlock(mt.BlockConfig())(torch.randn(2, 4, 32))


@pytest.mark.parametrize("call", [
    lambda x: mt.MoELayer(6, 6)(x),
    lambda x: mt.Expert(6, 8)(x),
    lambda x: mt.TopKRouter(6, 4)(x),
    lambda x: mt.topk_softmax(x, 2),
    lambda x: mt.router_z_loss(x),
    lambda x: mt.dispatch_grouped(x, experts_list(), torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1)),
])
def test_integer_tensors_are_type_errors(call):
    with pytest.raises(TypeError, match=r"must be a floating-point tensor .* got dtype torch.int64"):
        call(torch.ones(3, 6, dtype=torch.long))


@pytest.mark.parametrize("argument,build,allowed", [
    ("activation", lambda v: mt.Expert(6, 8, activation=v), "'relu', 'gelu', 'swiglu'"),
    ("activation", lambda v: mt.MoELayer(6, activation=v), "'relu', 'gelu', 'swiglu'"),
    ("router", lambda v: mt.MoELayer(6, router=v), "'softmax', 'noisy', 'deepseek_v3', 'expert_choice'"),
    ("dispatch", lambda v: mt.MoELayer(6, dispatch=v), "'mask', 'loop', 'grouped'"),
    ("match", lambda v: mt.dense_twin(mt.BlockConfig(), match=v), "'active', 'total'"),
])
def test_unknown_choices_list_the_allowed_values(argument, build, allowed):
    with pytest.raises(ValueError, match=rf"{argument} must be one of {allowed}, got 'tanh'"):
        build("tanh")


@pytest.mark.parametrize("path", list(mt.DISPATCHERS))
def test_dispatch_rejects_expert_indices_out_of_range(path):
    with pytest.raises(ValueError, match=r"expert_indices must lie in 0\.\.3 \(num_experts=4\)"):
        mt.DISPATCHERS[path](torch.randn(3, 6), experts_list(), torch.full((3, 1), 4), torch.ones(3, 1))


def test_dispatch_rejects_weights_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"expert_weights must have the shape of expert_indices"):
        mt.dispatch_loop(torch.randn(3, 6), experts_list(), torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 1))


def test_jitter_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match=r"jitter must be in \[0, 1\)"):
        mt.TopKRouter(6, 4, jitter=1.5)
    with pytest.raises(ValueError, match=r"jitter must be a number >= 0"):
        mt.MoELayer(6, jitter=-0.1)


def test_token_mask_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"token_mask must have shape \(2, 3\)"):
        mt.MoELayer(6)(torch.randn(2, 3, 6), token_mask=torch.ones(6, dtype=torch.bool))


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match=r"dim must be divisible by num_heads"):
        mt.BlockConfig(dim=10, num_heads=4)


def test_input_of_another_dtype_than_the_layer_names_x_and_both_dtypes():
    layer = mt.MoELayer(6, num_experts=4)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=rf"x has dtype {dtype} but the layer's weights are torch.float32"):
            layer(torch.randn(3, 6, dtype=dtype))
    assert layer.double()(torch.randn(3, 6, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_empty_input_gives_empty_output_and_zero_losses(capacity_factor):
    layer = mt.MoELayer(6, num_experts=4, capacity_factor=capacity_factor)
    y, record = layer(torch.randn(0, 6), return_record=True)
    assert y.shape == (0, 6)
    assert all(float(v) == 0.0 for v in record.aux_losses.values())
    _, padded = layer(torch.randn(4, 6), return_record=True, token_mask=torch.zeros(4, dtype=torch.bool))
    assert all(float(v) == 0.0 for v in padded.aux_losses.values())


def test_a_block_given_no_tokens_says_so():
    block = mt.TransformerBlock(mt.BlockConfig(dim=8, num_heads=2, hidden_dim=8))
    with pytest.raises(ValueError, match=r"x must have shape \[batch, seq, 8\] with batch and seq at least 1"):
        block(torch.randn(2, 0, 8))


@pytest.mark.parametrize("value", [math.inf, math.nan, 1e308])
def test_capacity_factor_must_be_finite_and_bounded(value):
    with pytest.raises(ValueError, match="capacity_factor must be a number > 0"):
        mt.MoELayer(6, capacity_factor=value)
