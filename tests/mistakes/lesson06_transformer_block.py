"""Planted mistakes for exercise notebook 06_transformer_block: (diagnosis key, wrong function) per task."""

import torch

import moe_teach


def block_post_norm(block, x):
    x = block.norm1(x + block.attention(x))
    return block.norm2(x + block.feed_forward(x))


def block_missing_residual(block, x):
    x = x + block.attention(block.norm1(x))
    return block.feed_forward(block.norm2(x))


def block_ffn_without_norm(block, x):
    x = x + block.attention(block.norm1(x))
    return x + block.feed_forward(x)


def block_norm1_twice(block, x):
    x = x + block.attention(block.norm1(x))
    return x + block.feed_forward(block.norm1(x))


def block_residual_from_normed(block, x):
    h = block.norm1(x)
    x = h + block.attention(h)
    h = block.norm2(x)
    return h + block.feed_forward(h)


def block_residual_added_twice(block, x):
    """The residual added twice: the feed-forward step adds x to a stream that already holds it."""
    h = x + block.attention(block.norm1(x))
    return x + h + block.feed_forward(block.norm2(h))


def block_attention_residual_twice(block, x):
    x = x + (x + block.attention(block.norm1(x)))
    return x + block.feed_forward(block.norm2(x))


def block_doubled_feed_forward(block, x):
    """No named diagnosis: gets the generic hint."""
    x = x + block.attention(block.norm1(x))
    return x + 2 * block.feed_forward(block.norm2(x))


def block_calls_itself(block, x):
    return block(x)


def aux_last_layer_only(model, balance_coef, z_coef):
    losses = moe_teach.moe_layers(model)[-1].last_record.aux_losses
    return balance_coef * losses["switch"] + z_coef * losses["z"]


def aux_balance_coef_unused(model, balance_coef, z_coef):
    return sum(layer.last_record.aux_losses["switch"] + z_coef * layer.last_record.aux_losses["z"]
               for layer in moe_teach.moe_layers(model))


def aux_averaged(model, balance_coef, z_coef):
    layers = moe_teach.moe_layers(model)
    losses = [layer.last_record.aux_losses for layer in layers]
    total = sum(balance_coef * aux["switch"] + z_coef * aux["z"] for aux in losses)
    return total / len(layers)


def aux_item(model, balance_coef, z_coef):
    return torch.tensor(sum(balance_coef * layer.last_record.aux_losses["switch"].item()
                            + z_coef * layer.last_record.aux_losses["z"].item()
                            for layer in moe_teach.moe_layers(model)))


def aux_every_block(model, balance_coef, z_coef):
    """Assumes every block has an MoE feed-forward (fails on dense blocks)."""
    return sum(balance_coef * block.feed_forward.last_record.aux_losses["switch"]
               + z_coef * block.feed_forward.last_record.aux_losses["z"] for block in model)


def aux_scaled(model, balance_coef, z_coef):
    """No named diagnosis: gets the generic hint."""
    return 1.7 * sum(balance_coef * layer.last_record.aux_losses["switch"]
                     + z_coef * layer.last_record.aux_losses["z"] for layer in moe_teach.moe_layers(model))


def aux_python_zero_without_moe(model, balance_coef, z_coef):
    """Right for models with MoE layers; for a model without any, sum() of nothing is the int 0."""
    return sum(balance_coef * layer.last_record.aux_losses["switch"] + z_coef * layer.last_record.aux_losses["z"]
               for layer in moe_teach.moe_layers(model))


def aux_scales_router_weights(model, balance_coef, z_coef):
    """Right total, but it 'regularises' the routers by shrinking their weights in place on the way."""
    total = torch.zeros(())
    for layer in moe_teach.moe_layers(model):
        with torch.no_grad():
            layer.router.proj.weight.mul_(0.5)
        aux = layer.last_record.aux_losses
        total = total + balance_coef * aux["switch"] + z_coef * aux["z"]
    return total


MISTAKES = {
    "block_forward": [("post_norm", block_post_norm), ("missing_residual", block_missing_residual),
                      ("missing_norm", block_ffn_without_norm), ("called_block", block_calls_itself),
                      ("wrong_norm", block_norm1_twice), ("residual_from_norm", block_residual_from_normed),
                      ("wrong_values", block_doubled_feed_forward),
                      ("residual_twice", block_residual_added_twice),
                      ("residual_twice", block_attention_residual_twice)],
    "total_aux_loss": [("one_layer_only", aux_last_layer_only),
                       ("balance_coef_unused", aux_balance_coef_unused),
                       ("averaged", aux_averaged), ("detached", aux_item), ("raised", aux_every_block),
                       ("wrong_values", aux_scaled), ("no_moe_layers", aux_python_zero_without_moe),
                       ("mutated_input", aux_scales_router_weights)],
}
