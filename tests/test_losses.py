"""Auxiliary losses: the Switch convention pinned, z-loss formula, CV-squared guards, padding."""

import pytest
import torch

from moe_teach import (
    MoELayer,
    NoisyTopKRouter,
    RouterOutput,
    collect_aux_losses,
    cv_squared,
    importance_loss,
    router_z_loss,
    smooth_load,
)
from moe_teach import switch_load_balancing_loss as switch_loss
from moe_teach.transformer import BlockConfig, TransformerBlock


def test_switch_loss_is_one_under_perfectly_uniform_routing():
    experts = 4
    probs = torch.full((8, experts), 1 / experts)
    indices = torch.tensor([[0, 1], [2, 3]] * 4)
    assert torch.isclose(switch_loss(probs, indices), torch.tensor(1.0))


def test_switch_loss_is_num_experts_under_total_collapse():
    experts = 5
    probs = torch.zeros(6, experts)
    probs[:, 2] = 1.0
    indices = torch.full((6, 1), 2)
    assert torch.isclose(switch_loss(probs, indices), torch.tensor(float(experts)))


def test_switch_loss_with_non_uniform_probabilities_matches_the_convention():
    """E * sum_i f_i * P_i with f_i = count_i / (T*k) and P_i = mean full-softmax probability."""
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])
    indices = torch.tensor([[0, 1], [0, 1], [2, 0], [1, 0]])
    counts = torch.tensor([4.0, 3.0, 1.0])                 # expert 0 chosen 4 times, 1 three, 2 once
    fraction = counts / (4 * 2)
    mean_prob = torch.tensor([1.6, 1.2, 1.2]) / 4
    assert torch.isclose(switch_loss(probs, indices), 3 * (fraction * mean_prob).sum())
    # a P_i taken from the renormalised top-k weights instead gives a different number
    topk_weights = probs.gather(1, indices) / probs.gather(1, indices).sum(-1, keepdim=True)
    dense_topk = torch.zeros_like(probs).scatter_add(1, indices, topk_weights)
    assert not torch.isclose(switch_loss(probs, indices), 3 * (fraction * dense_topk.mean(0)).sum())


def test_switch_loss_grows_with_imbalance():
    experts, tokens = 4, 40
    losses = []
    for share in [0.25, 0.5, 0.75, 1.0]:                    # share of tokens on expert 0
        on_zero = int(share * tokens)
        indices = torch.tensor([0] * on_zero + [1 + i % 3 for i in range(tokens - on_zero)]).view(-1, 1)
        probs = torch.nn.functional.one_hot(indices[:, 0], experts).float() * 0.7 + 0.3 / experts
        losses.append(switch_loss(probs, indices).item())
    assert losses == sorted(losses) and losses[-1] > losses[0]


def test_switch_loss_ignores_padding_tokens():
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.9, 0.1]])   # last two rows: padding
    indices = torch.tensor([[0], [1], [0], [0]])
    mask = torch.tensor([True, True, False, False])
    assert torch.isclose(switch_loss(probs, indices, mask), torch.tensor(1.0))
    assert switch_loss(probs, indices) > 1.0


def test_z_loss_matches_its_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]])
    expected = torch.stack([torch.log(torch.exp(row).sum()) ** 2 for row in logits]).mean()
    assert torch.isclose(router_z_loss(logits), expected)


def test_cv_squared_gradient_is_finite_at_perfect_balance_and_at_zero():
    for values in [torch.full((4,), 2.5), torch.zeros(4)]:
        values = values.clone().requires_grad_(True)
        loss = cv_squared(values)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(values.grad).all()


def test_importance_loss_zero_when_balanced_positive_when_not():
    balanced = torch.eye(4).repeat(3, 1)
    assert importance_loss(balanced).item() == 0.0
    assert importance_loss(torch.eye(4)[[0, 0, 0, 1]]).item() > 0


def test_aux_losses_are_connected_to_the_router_so_adding_them_changes_its_gradient():
    torch.manual_seed(0)
    model = torch.nn.Sequential(TransformerBlock(BlockConfig()), TransformerBlock(BlockConfig()))
    model(torch.randn(2, 8, 64))
    aux = collect_aux_losses(model)
    assert set(aux) == {"switch", "z", "importance", "load"}
    layers = [block.feed_forward for block in model]
    expected = sum(layer.last_record.aux_losses["switch"] for layer in layers)
    assert torch.isclose(aux["switch"], expected)
    (aux["switch"] + aux["z"]).backward()
    for layer in layers:
        assert layer.router.proj.weight.grad.abs().sum() > 0


def test_layer_record_uses_full_softmax_for_the_balancing_loss():
    torch.manual_seed(0)
    layer = MoELayer(6, 6, num_experts=4, top_k=2)
    _, record = layer(torch.randn(9, 6), return_record=True)
    assert torch.isclose(record.aux_losses["switch"], switch_loss(record.probs, record.expert_indices))
    assert torch.isclose(record.aux_losses["z"], router_z_loss(record.logits))


@pytest.mark.parametrize("router", ["softmax", "noisy"])
def test_padding_changes_no_auxiliary_loss_and_no_load_count(router):
    torch.manual_seed(0)
    layer = MoELayer(6, 6, num_experts=4, top_k=2, router=router).eval()
    real = torch.randn(1, 5, 6)
    padded = torch.cat([real, 10 * torch.randn(1, 3, 6)], dim=1)        # 3 padding tokens
    mask = torch.tensor([[True] * 5 + [False] * 3])
    _, alone = layer(real, return_record=True)
    _, masked = layer(padded, return_record=True, token_mask=mask)
    for name, value in alone.aux_losses.items():
        assert torch.allclose(masked.aux_losses[name], value), name
    assert torch.equal(masked.load_per_expert, alone.tokens_per_expert)
    assert int(masked.tokens_per_expert.sum()) == 8 * 2               # padding is still computed


def test_noisy_smooth_load_skips_masked_tokens():
    torch.manual_seed(1)
    router = NoisyTopKRouter(6, 5, 2)
    out = router(torch.randn(10, 6))
    mask = torch.arange(10) < 6
    first_six = RouterOutput(out.logits[:6], out.probs[:6], out.expert_indices[:6], out.expert_weights[:6],
                             out.clean_logits[:6], out.noise_std[:6])
    assert torch.allclose(smooth_load(out, 2, mask), smooth_load(first_six, 2))
    assert not torch.allclose(smooth_load(out, 2, mask), smooth_load(out, 2))


def _eager_losses(layer, record, routed):
    """What the layer computed before losses became lazy: every declared loss, right away."""
    from moe_teach.losses import AUX_LOSSES

    return {name: AUX_LOSSES[name](record, routed) for name in layer.router.aux_losses}


@pytest.mark.parametrize("router", ["softmax", "noisy"])
def test_lazily_computed_losses_equal_the_eager_ones_in_value_and_gradient(router):
    torch.manual_seed(0)
    layer = MoELayer(6, 6, num_experts=4, top_k=2, router=router).train()
    x = torch.randn(12, 6)
    mask = torch.arange(12) < 9
    torch.manual_seed(1)
    _, record = layer(x, return_record=True, token_mask=mask)
    lazy = record.aux_losses
    assert lazy.computed() == ()                                     # nothing computed by the forward pass
    torch.manual_seed(1)  # the same noise: the same routing decision
    routed = layer.router(x)
    eager = _eager_losses(layer, layer.make_record(routed, record.kept, None, mask), routed)
    assert list(lazy) == list(eager) == list(layer.router.aux_losses)
    for name in eager:
        assert torch.allclose(lazy[name], eager[name]), name
        assert lazy[name].requires_grad == eager[name].requires_grad, name  # the softmax router's load is counts
        if eager[name].requires_grad:
            lazy_grad, = torch.autograd.grad(lazy[name], layer.router.proj.weight, retain_graph=True)
            eager_grad, = torch.autograd.grad(eager[name], layer.router.proj.weight, retain_graph=True)
            assert torch.allclose(lazy_grad, eager_grad), name


def test_a_lazy_loss_is_computed_once_and_only_when_read():
    torch.manual_seed(0)
    layer = MoELayer(6, 6, num_experts=4, top_k=2)
    _, record = layer(torch.randn(5, 6), return_record=True)
    first = record.aux_losses["switch"]
    assert record.aux_losses.computed() == ("switch",)
    assert record.aux_losses["switch"] is first
    assert dict(record.aux_losses).keys() == {"switch", "z", "importance", "load"}
    with pytest.raises(KeyError):
        record.aux_losses["not-a-loss"]


def test_collected_losses_are_summed_only_when_read():
    torch.manual_seed(0)
    model = torch.nn.Sequential(TransformerBlock(BlockConfig()), TransformerBlock(BlockConfig()))
    model(torch.randn(2, 8, 64))
    aux = collect_aux_losses(model)
    assert list(aux) == ["switch", "z", "importance", "load"] and len(aux) == 4
    aux["switch"]
    for block in model:  # the training loop reads two losses: the other two are never computed
        assert block.feed_forward.last_record.aux_losses.computed() == ("switch",)
    assert aux["switch"] is aux["switch"]
    with pytest.raises(KeyError):
        aux["sequence"]
    assert collect_aux_losses(torch.nn.Linear(2, 2)) == {}
    aux = collect_aux_losses(model)
    with torch.no_grad():  # read late, e.g. by a logging hook: the total keeps the forward pass's graph
        late = aux["z"]
    assert late.requires_grad


def _boolean_indexed_switch(probs, expert_indices, token_mask):
    """The loss as the course first wrote it: drop the padding rows, then the unmasked formula."""
    return switch_loss(probs[token_mask], expert_indices[token_mask])


def test_masked_losses_equal_the_loss_over_the_real_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(40, 5, dtype=torch.float64)
    probs = logits.softmax(-1)
    indices = probs.topk(2, dim=-1).indices
    for mask in (torch.rand(40) > 0.3, torch.ones(40, dtype=torch.bool), torch.arange(40) == 7):
        assert torch.allclose(switch_loss(probs, indices, mask), _boolean_indexed_switch(probs, indices, mask))
        assert torch.allclose(router_z_loss(logits, mask), router_z_loss(logits[mask]))
    mask = torch.rand(40) > 0.3
    weighted, = torch.autograd.grad(switch_loss(probs.requires_grad_(), indices, mask), probs)
    indexed, = torch.autograd.grad(_boolean_indexed_switch(probs, indices, mask), probs)
    assert torch.allclose(weighted, indexed) and weighted[~mask].abs().max() == 0


def test_a_lazy_loss_read_under_no_grad_keeps_the_forward_passes_gradient():
    torch.manual_seed(0)
    layer = MoELayer(6, 6, num_experts=4, top_k=2)
    _, record = layer(torch.randn(5, 6), return_record=True)
    with torch.no_grad():
        record.aux_losses["z"]                                      # e.g. logged first
    assert record.aux_losses["z"].requires_grad
    with torch.no_grad():
        _, evaluated = layer(torch.randn(5, 6), return_record=True)
    assert not evaluated.aux_losses["z"].requires_grad


def test_a_dropped_record_is_freed_at_once_lazy_losses_make_no_reference_cycle():
    import gc
    import weakref

    layer = MoELayer(6, 6, num_experts=4, top_k=2)
    _, record = layer(torch.randn(5, 6), return_record=True)
    probe = weakref.ref(record)
    gc.disable()  # only reference counting may free it
    try:
        layer.last_record = record = None
        assert probe() is None
    finally:
        gc.enable()


def test_a_lazy_mapping_computes_each_name_once_with_the_gradient_mode_it_was_made_in():
    from moe_teach.losses import LazyLosses

    leaf = torch.ones(2, requires_grad=True)
    calls = []

    class Doubled(LazyLosses):
        def compute(self, name):
            calls.append(name)
            return leaf.sum() * 2

    doubled = Doubled(("a", "b"))
    with torch.no_grad():
        assert doubled["a"].requires_grad
    assert doubled["a"] is doubled["a"] and calls == ["a"] and doubled.computed() == ("a",)
    assert list(doubled) == ["a", "b"] and len(doubled) == 2
    with pytest.raises(KeyError):
        doubled["c"]
    with pytest.raises(NotImplementedError):
        LazyLosses(("a",))["a"]
