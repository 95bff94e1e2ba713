"""Sparse upcycling: before any training the upcycled layer computes the dense layer's output."""

import pytest
import torch

from moe_teach.experts import Expert
from moe_teach.lm.model import LanguageModel, LMConfig
from moe_teach.lm.upcycle import copies_of, upcycle
from moe_teach.moe_layer import MoELayer
from moe_teach.transformer import BlockConfig


def trained_like_expert(seed=0):
    torch.manual_seed(seed)
    dense = Expert(16, 24, activation="gelu")
    with torch.no_grad():  # weights far from the default init, like a trained layer's
        for p in dense.parameters():
            p.normal_(0, 0.5)
    return dense


def test_top1_raw_weight_scales_the_dense_output_by_the_router_probability():
    dense = trained_like_expert()
    layer = upcycle(dense, num_experts=4, top_k=1)
    assert isinstance(layer, MoELayer) and copies_of(layer, dense)
    x = torch.randn(50, 16)
    out, record = layer(x, return_record=True)
    factor = record.expert_weights[:, 0]                       # the un-renormalised top-1 probability
    assert torch.allclose(factor, record.probs.max(dim=1).values)
    torch.testing.assert_close(out, factor[:, None] * dense(x))
    assert (factor < 1).all(), "top-1 without renormalisation: the factor is p < 1, not 1"


def test_renormalised_weights_give_exactly_the_dense_output():
    dense = trained_like_expert(1)
    x = torch.randn(50, 16)
    for top_k, renormalize in ((1, True), (2, None), (4, None)):
        layer = upcycle(dense, num_experts=4, top_k=top_k, renormalize=renormalize)
        torch.testing.assert_close(layer(x), dense(x))       # every token: weights sum to 1, experts equal


def test_upcycled_model_keeps_every_other_weight_and_the_dense_model_unchanged():
    config = LMConfig(vocab_size=30, max_seq_len=8, num_layers=2,
                      block=BlockConfig(dim=16, num_heads=2, hidden_dim=24, moe=None))
    torch.manual_seed(0)
    dense = LanguageModel(config)
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    moe = upcycle(dense, num_experts=3, top_k=2)
    assert moe.config.block.moe.num_experts == 3 and moe.config.block.hidden_dim == 24
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())
    state = moe.state_dict()
    for key, value in before.items():
        if ".feed_forward." not in key:
            assert torch.equal(state[key], value), key
    for block, dense_block in zip(moe.blocks, dense.blocks):
        assert copies_of(block.feed_forward, dense_block.feed_forward)
    ids = torch.randint(0, 30, (3, 8))
    dense.eval()
    moe.eval()
    torch.testing.assert_close(moe(ids), dense(ids))          # top-2 renormalised: the same model
    # its config builds the same architecture, so checkpoints of it load like any model's
    assert set(LanguageModel(moe.config).state_dict()) == set(state)


def test_upcycle_rejects_bad_input():
    with pytest.raises(TypeError, match="dense"):
        upcycle(torch.nn.Linear(4, 4), 4)
    with pytest.raises(ValueError, match="num_experts"):
        upcycle(trained_like_expert(), 0)
    with pytest.raises(ValueError, match="top_k"):
        upcycle(trained_like_expert(), 2, top_k=3)
    moe_model = LanguageModel(LMConfig(vocab_size=10, max_seq_len=4, num_layers=1,
                                       block=BlockConfig(dim=8, num_heads=2, hidden_dim=8)))
    with pytest.raises(ValueError, match="already an MoE"):
        upcycle(moe_model, 4)
