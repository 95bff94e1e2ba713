"""from_hf / to_hf: the course's layer equals each Hugging Face transformers MoE block.

Blocks are built from small configs with random weights (nothing is downloaded), in float64;
outputs, input gradients and weight gradients must agree. The softmax routers' maths runs in
float32 on both sides (HF casts the logits, the course computes them in float32), so the
tolerance is that of float32 router weights.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed: the HF equality "
                                   "tests need it (pip install -e .[test] installs the pinned version)")

from moe_teach import MoELayer  # noqa: E402
from moe_teach.hf import from_hf, random_hf_block, to_hf  # noqa: E402

TOLERANCE = dict(rtol=1e-5, atol=1e-5)

CASES = [
    ("mixtral", dict(num_experts=4, top_k=2), {}),
    ("mixtral", dict(num_experts=8, top_k=3, dim=12, hidden_dim=20), {}),
    ("qwen2_moe", dict(num_experts=6, top_k=2), {}),                                 # norm_topk_prob off
    ("qwen2_moe", dict(num_experts=8, top_k=4), dict(norm_topk_prob=True, shared_expert_intermediate_size=8)),
    ("qwen3_moe", dict(num_experts=8, top_k=2), dict(norm_topk_prob=True)),
    ("qwen3_moe", dict(num_experts=5, top_k=1), dict(norm_topk_prob=False)),
    ("olmoe", dict(num_experts=8, top_k=2), {}),
    ("olmoe", dict(num_experts=4, top_k=3), dict(norm_topk_prob=True)),
    ("deepseek_v3", dict(num_experts=8, top_k=2), dict(routed_scaling_factor=2.5)),
    ("deepseek_v3", dict(num_experts=8, top_k=3), dict(n_group=4, topk_group=2, n_shared_experts=2)),
    ("deepseek_v3", dict(num_experts=12, top_k=2), dict(n_group=3, topk_group=1, norm_topk_prob=False,
                                                         routed_scaling_factor=1.5)),
]


def _grads(module, x):
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
    params = [p for p in module.parameters()]
    grads = torch.autograd.grad(loss, [x, *params], allow_unused=True, materialize_grads=True)
    return y.detach(), grads[0], dict(zip([n for n, _ in module.named_parameters()], grads[1:]))


@pytest.mark.parametrize("kind,sizes,settings", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_from_hf_matches_outputs_and_gradients(kind, sizes, settings):
    block = random_hf_block(kind, seed=len(settings) + sizes["num_experts"], dtype=torch.float64, **sizes, **settings)
    layer = from_hf(block)
    assert isinstance(layer, MoELayer) and len(layer.experts) == sizes["num_experts"]
    x = torch.randn(3, 5, block.experts.gate_up_proj.shape[-1], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    y_hf, dx_hf, dw_hf = _grads(block, x)
    y_ours, dx_ours, dw_ours = _grads(layer, x)
    torch.testing.assert_close(y_ours, y_hf, **TOLERANCE)
    torch.testing.assert_close(dx_ours, dx_hf, **TOLERANCE)
    hidden = layer.hidden_dim
    for e, expert in enumerate(layer.experts):   # expert weight gradients, slice by slice
        gate_up = dw_hf["experts.gate_up_proj"][e]
        torch.testing.assert_close(dw_ours[f"experts.{e}.gate.weight"], gate_up[:hidden], **TOLERANCE)
        torch.testing.assert_close(dw_ours[f"experts.{e}.up.weight"], gate_up[hidden:], **TOLERANCE)
        torch.testing.assert_close(dw_ours[f"experts.{e}.down.weight"], dw_hf["experts.down_proj"][e], **TOLERANCE)
    torch.testing.assert_close(dw_ours["router.proj.weight"], dw_hf["gate.weight"], **TOLERANCE)
    if kind == "qwen2_moe":
        torch.testing.assert_close(dw_ours["shared.gate.weight"], dw_hf["shared_expert_gate.weight"], **TOLERANCE)
        torch.testing.assert_close(dw_ours["shared.expert.up.weight"], dw_hf["shared_expert.up_proj.weight"],
                                   **TOLERANCE)
    if kind == "deepseek_v3":
        torch.testing.assert_close(dw_ours["shared.expert.down.weight"], dw_hf["shared_experts.down_proj.weight"],
                                   **TOLERANCE)
        assert "router.selection_bias" in layer.state_dict()


@pytest.mark.parametrize("kind,sizes,settings", CASES[::2], ids=[c[0] for c in CASES[::2]])
def test_to_hf_round_trip(kind, sizes, settings):
    block = random_hf_block(kind, seed=3, dtype=torch.float64, **sizes, **settings)
    again = to_hf(from_hf(block), kind)
    assert type(again) is type(block)
    x = torch.randn(2, 4, block.experts.gate_up_proj.shape[-1], dtype=torch.float64)
    torch.testing.assert_close(again(x), block(x), rtol=0, atol=0)


def test_deepseek_bias_changes_the_choice_in_both():
    """A large correction bias on expert 0 makes both sides pick it for every token."""
    block = random_hf_block("deepseek_v3", num_experts=8, top_k=2, dtype=torch.float64)
    with torch.no_grad():
        block.gate.e_score_correction_bias.zero_()[0] = 10.0
    layer = from_hf(block)
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    _, record = layer(x, return_record=True)
    assert bool((record.expert_indices == 0).any(dim=-1).all())
    torch.testing.assert_close(layer(x), block(x), **TOLERANCE)


def test_unsupported_blocks_and_settings_are_named():
    with pytest.raises(TypeError, match=r"from_hf supports MixtralSparseMoeBlock.*got a Linear"):
        from_hf(torch.nn.Linear(2, 2))
    gelu = random_hf_block("olmoe", hidden_act="gelu")
    with pytest.raises(ValueError, match=r"OlmoeSparseMoeBlock with hidden_act=.*only 'silu'"):
        from_hf(gelu)
    jitter = random_hf_block("mixtral", router_jitter_noise=0.1)
    with pytest.raises(ValueError, match=r"router_jitter_noise=0.1"):
        from_hf(jitter)
    with pytest.raises(ValueError, match=r"cannot become a mixtral block: activation='relu'.*bias=True"):
        to_hf(MoELayer(8, num_experts=4, top_k=2), "mixtral")
    with pytest.raises(ValueError, match=r"kind must be one of 'mixtral'"):
        to_hf(MoELayer(8, activation="swiglu", bias=False), "switch")
    plain = MoELayer(8, activation="swiglu", bias=False)
    with pytest.raises(ValueError, match=r"no gated shared expert"):
        to_hf(plain, "qwen2_moe")


def test_hf_balancing_loss_is_k_times_ours_for_one_layer():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    from moe_teach import switch_load_balancing_loss

    for top_k in (1, 2, 3):
        logits = torch.randn(64, 6, generator=torch.Generator().manual_seed(top_k)) * 2
        probs = torch.softmax(logits, dim=-1)
        ours = switch_load_balancing_loss(probs, probs.topk(top_k, dim=-1).indices)
        theirs = load_balancing_loss_func((logits,), num_experts=6, top_k=top_k)
        torch.testing.assert_close(theirs, top_k * ours)
