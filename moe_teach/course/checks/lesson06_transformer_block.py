"""Checks for exercise notebook 06_transformer_block (transformer block)."""

from __future__ import annotations

import torch
from torch import nn

from ...moe_layer import MoEConfig
from ...transformer import BlockConfig, TransformerBlock, moe_layers
from .core import (
    Mistake,
    _call,
    _close,
    _diagnose,
    _expect_scalar,
    _expect_tensor,
    _how_far,
    _seeded,
    _values_differ,
    register,
)

_BLOCK_CONFIG = {"dim": 16, "num_heads": 2, "hidden_dim": 32, "moe": MoEConfig(num_experts=4, top_k=2)}


def _forbidden_forward(*args, **kwargs):
    raise Mistake("called_block", "your function called block(x) itself",
                  "Write the forward pass from the parts: block.norm1, block.attention, block.norm2, "
                  "block.feed_forward.")


def _check_block_forward(fn):
    messages = {
        "post_norm": ("you normalised after adding the residual (post-norm)",
                      "Pre-norm normalises only what a sub-layer reads; the residual sum itself is "
                      "never normalised."),
        "missing_residual": ("a residual connection is missing: the block's input is not added back",
                             "Each sub-layer's output is added back to the stream it read from (the "
                             "residual connection): once after attention, once after the feed-forward."),
        "missing_norm": ("a sub-layer sees the un-normalised input",
                         ("Normalise before each sub-layer: norm1 before attention, norm2 before the "
                         "feed-forward.")),
        "parallel_block": ("attention and feed-forward both read the block's input (a parallel block)",
                           "The feed-forward reads the output of the attention step."),
        "wrong_norm": ("the feed-forward reads the stream through norm1 instead of its own norm",
                       "Each sub-layer has its own norm: norm1 belongs to attention, norm2 to the "
                       "feed-forward."),
        "residual_twice": ("the residual stream is added twice: your output counts the input of a "
                           "sub-layer two times",
                           "Each sub-layer's output is added to the stream exactly once, and the stream "
                           "itself appears once in that sum: if you write x plus something, check that "
                           "the something does not already contain x."),
        "residual_from_norm": ("the residual adds a sub-layer's output to the normalised stream",
                               "Only what a sub-layer reads is normalised; its output is added back to "
                               "the stream as it was before the norm."),
    }
    for seed, (batch, seq) in enumerate([(2, 5), (1, 1), (3, 4)]):
        with _seeded(110 + seed):
            block = TransformerBlock(BlockConfig(**_BLOCK_CONFIG))
            x = torch.randn(batch, seq, _BLOCK_CONFIG["dim"])
            with torch.no_grad():        # fresh norms are all identical: give each its own parameters
                for param in [*block.norm1.parameters(), *block.norm2.parameters()]:
                    param.add_(0.5 * torch.randn_like(param))
        with torch.no_grad():
            expected = block(x)
            h = x + block.attention(block.norm1(x))
            unnormed_h = x + block.attention(x)
            post_h = block.norm1(x + block.attention(x))
            candidates = {
                "post_norm": block.norm2(post_h + block.feed_forward(post_h)),
                "missing_residual": [block.feed_forward(block.norm2(h)),
                                     block.attention(block.norm1(x)) + block.feed_forward(
                                         block.norm2(block.attention(block.norm1(x))))],
                "missing_norm": [h + block.feed_forward(h),
                                 unnormed_h + block.feed_forward(block.norm2(unnormed_h))],
                "parallel_block": x + block.attention(block.norm1(x)) + block.feed_forward(block.norm2(x)),
                "wrong_norm": h + block.feed_forward(block.norm1(h)),
            }
            attended = block.attention(block.norm1(x))
            doubled_h = 2 * x + attended
            candidates["residual_twice"] = [doubled_h + block.feed_forward(block.norm2(doubled_h)),
                                            2 * h + block.feed_forward(block.norm2(h)),
                                            x + h + block.feed_forward(block.norm2(h))]
            normed = block.norm1(x) + block.attention(block.norm1(x))
            candidates["residual_from_norm"] = block.norm2(normed) + block.feed_forward(block.norm2(normed))
        block.forward = _forbidden_forward
        out = _call(fn, block, x.clone())
        _expect_tensor(out, expected.shape, "The block keeps the shape of its input: [batch, seq, dim].")
        if not _close(out, expected):
            _diagnose(out, candidates, messages, (
                "wrong_values", _values_differ(out, expected, "the reference block"),
                "Check the order of the parts: each sub-layer reads its own norm of the current "
                "stream, and the feed-forward step starts from the output of the attention step."))


def _check_total_aux_loss(fn):
    messages = {
        "one_layer_only": ("your total includes only one MoE layer's losses",
                           "Add the losses of every MoE layer; moe_layers(model) lists them."),
        "averaged": ("your total is the mean over layers, not the sum",
                     "Each layer adds its own auxiliary losses to the training loss: sum them."),
        "balance_coef_unused": ("the balancing coefficient is not applied",
                                "Multiply the Switch loss by balance_coef."),
        "z_coef_unused": ("the z-loss coefficient is not applied", "Multiply the z-loss by z_coef."),
        "coefs_swapped": ("the two coefficients are swapped",
                          "balance_coef scales aux_losses['switch'], z_coef scales aux_losses['z']."),
    }
    balance_coef, z_coef = 0.01, 0.001
    dense = dict(_BLOCK_CONFIG, moe=None)
    for seed, configs in enumerate([[_BLOCK_CONFIG] * 3, [_BLOCK_CONFIG, dense, _BLOCK_CONFIG], [dense] * 2]):
        with _seeded(120 + seed):
            model = nn.Sequential(*[TransformerBlock(BlockConfig(**c)) for c in configs])
            model(torch.randn(2, 6, _BLOCK_CONFIG["dim"]))
        layers = [layer.last_record.aux_losses for layer in moe_layers(model)]
        switch = [float(a["switch"].detach()) for a in layers]
        z = [float(a["z"].detach()) for a in layers]
        expected = torch.tensor(balance_coef * sum(switch) + z_coef * sum(z))
        loss = _call(fn, model, balance_coef, z_coef)
        if not layers and not isinstance(loss, torch.Tensor):
            raise Mistake("no_moe_layers",
                          f"for a model without MoE layers your total is {loss!r} ({type(loss).__name__}), "
                          "not a tensor",
                          "The task asks for a scalar tensor in every case, so that the training loop can "
                          "add it, call .item() on it and log it the same way for every model: start the "
                          "sum from a zero tensor (torch.zeros(())) rather than from the number 0.")
        loss = _expect_scalar(loss)
        if not _close(loss, expected):
            candidates = {
                "one_layer_only": [torch.tensor(balance_coef * s + z_coef * zz) for s, zz in zip(switch, z)],
                "averaged": expected / len(layers),
                "balance_coef_unused": torch.tensor(sum(switch) + z_coef * sum(z)),
                "z_coef_unused": torch.tensor(balance_coef * sum(switch) + sum(z)),
                "coefs_swapped": torch.tensor(z_coef * sum(switch) + balance_coef * sum(z)),
            }
            _diagnose(loss, candidates, messages, (
                "wrong_values", f"your total is {loss.item():.4g}, {_how_far(loss, expected)}",
                "Check each piece: every MoE layer counts once, each coefficient goes with its own "
                "loss, and the layers' contributions are added up."))
        if layers and not loss.requires_grad:
            raise Mistake("detached",
                          "your total is detached from the model: backward would not reach the routers",
                          "Add the loss tensors themselves; don't call .item() or float() on them.")


register("06_transformer_block", {
    "block_forward": _check_block_forward,
    "total_aux_loss": _check_total_aux_loss,
})
