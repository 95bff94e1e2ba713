"""A throw-away router and a throw-away dispatch path, added only through the documented
extension points (a ``Router`` subclass plus one ``ROUTERS`` entry; a function plus one
``DISPATCHERS`` entry), reach the layer, the record, the losses, the block config and the
benchmark table (CONTRIBUTING.md, "Add a router" and "Add a dispatch path")."""

import pytest
import torch

import moe_teach as mt
from moe_teach.course import bench
from moe_teach.routing import ROUTERS, Router, RouterOutput
from moe_teach.validation import check_float_tensor


class LowestLogitsRouter(Router):
    """Pick the k experts with the LOWEST logits (a deliberately odd rule), weights uniform 1/k."""

    aux_losses = ("switch", "z")

    def __init__(self, input_dim, num_experts, top_k=2, temperature: float = 1.0):
        super().__init__(input_dim, num_experts, top_k)
        self.temperature = temperature

    def forward(self, x):
        check_float_tensor("x", x, last_dim=self.input_dim)
        logits = self.proj(x.float()) / self.temperature
        probs = torch.softmax(logits, dim=-1)
        indices = (-logits).topk(self.top_k, dim=-1).indices
        weights = torch.full(indices.shape, 1.0 / self.top_k)
        return RouterOutput(logits, probs, indices, weights, clean_logits=logits)


def dispatch_reversed_loop(x, experts, expert_indices, expert_weights, kept=None):
    """The loop path, visiting experts last to first (same result, another order)."""
    mt.dispatch.check_dispatch_args(x, experts, expert_indices, expert_weights, kept)
    weights = expert_weights if kept is None else expert_weights * kept
    out = x.new_zeros(x.shape[0], experts[0].output_dim)
    for expert_id in reversed(range(len(experts))):
        token_ids, slot_ids = torch.where(expert_indices == expert_id)
        if token_ids.numel():
            out = out.index_add(0, token_ids, experts[expert_id](x[token_ids]) * weights[token_ids, slot_ids, None])
    return out


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(ROUTERS, "lowest", LowestLogitsRouter)
    monkeypatch.setitem(mt.DISPATCHERS, "reversed", dispatch_reversed_loop)


def test_layer_record_and_losses_accept_the_new_router_and_path(registered):
    torch.manual_seed(0)
    layer = mt.MoELayer(8, 8, num_experts=4, top_k=2, router="lowest", dispatch="reversed",
                        router_options={"temperature": 2.0})
    x = torch.randn(10, 8)
    y, record = layer(x, return_record=True)
    assert layer.router.temperature == 2.0
    logits = layer.router.proj(x) / 2.0
    assert torch.equal(record.expert_indices, (-logits).topk(2, dim=-1).indices)
    assert set(record.aux_losses) == {"switch", "z"}           # only what the router declares
    assert torch.allclose(record.aux_losses["switch"],
                          mt.switch_load_balancing_loss(record.probs, record.expert_indices))
    reference = mt.dispatch_dense_mask(x, layer.experts, record.expert_indices, record.expert_weights)
    assert torch.allclose(y, reference, atol=1e-6)
    y.sum().backward()
    assert layer.experts[int(record.expert_indices[0, 0])].up.weight.grad is not None


def test_block_config_and_bench_pick_up_the_registries(registered):
    config = mt.BlockConfig(dim=8, num_heads=2, hidden_dim=8,
                            moe=mt.MoEConfig(router="lowest", dispatch="reversed"))
    block = mt.TransformerBlock(config)
    assert isinstance(block.feed_forward.router, LowestLogitsRouter)
    assert block(torch.randn(2, 3, 8)).shape == (2, 3, 8)
    times = bench.run_benchmark(tokens=32, width=8, hidden=8, num_experts=4, top_k=2, repeats=1, rounds=1)
    assert "moe_reversed" in times
    assert "moe_reversed" in bench.format_report(times, top_k=2, num_experts=4)


def test_unknown_router_option_names_the_option_and_the_allowed_ones():
    with pytest.raises(TypeError, match=r"router_options: 'temp' not accepted by router 'softmax'; "
                                        r"its options are: renormalize, jitter"):
        mt.MoELayer(8, num_experts=4, router_options={"temp": 1.0})
    with pytest.raises(ValueError, match="jitter given twice"):
        mt.MoELayer(8, num_experts=4, jitter=0.1, router_options={"jitter": 0.2})


def test_router_options_reach_the_noisy_router():
    layer = mt.MoELayer(8, num_experts=4, router="noisy", router_options={"min_noise_std": 0.25})
    assert layer.router.min_noise_std == 0.25
    config = mt.MoEConfig(router="noisy", router_options={"min_noise_std": 0.5})
    assert mt.MoELayer.from_config(8, 16, "relu", config).router.min_noise_std == 0.5


def test_variable_experts_per_token_through_valid_slots():
    """A router may leave slots unused (valid False): they are never computed nor take capacity."""

    class HalfTheTokensRouter(mt.TopKRouter):
        def forward(self, x):
            out = super().forward(x)
            out.valid = torch.ones_like(out.expert_indices, dtype=torch.bool)
            out.valid[::2, 1] = False                         # even tokens use one expert only
            return out

    torch.manual_seed(1)
    layer = mt.MoELayer(6, num_experts=4, top_k=2, capacity_factor=100.0)
    layer.router.__class__ = HalfTheTokensRouter
    x = torch.randn(8, 6)
    y, record = layer(x, return_record=True)
    assert torch.equal(record.kept, record.valid)
    assert record.num_dropped == 0 and int(record.tokens_per_expert.sum()) == 12
    reference = mt.dispatch_dense_mask(x, layer.experts, record.expert_indices, record.expert_weights, record.valid)
    assert torch.allclose(y, reference, atol=1e-6)
    keep = mt.apply_capacity(record.expert_indices, 4, capacity=1, valid=record.valid)
    assert not keep[::2, 1].any()                              # unused slots are never kept
    assert int(torch.bincount(record.expert_indices[keep], minlength=4).max()) <= 1
