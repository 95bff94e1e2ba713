"""Counting: parameters (total and active per token) and FLOPs per token.

FLOPs count a multiply-add as 2 and leave out biases, activations and norms (small next to
the matmuls). "Active" parameters are those a single token actually uses: the router plus
``top_k`` of the ``E`` experts in each MoE layer, its shared experts (every token uses them),
and everything outside MoE layers.
"""

from __future__ import annotations

from torch import nn

from .experts import ACTIVATIONS
from .validation import check_choice, check_instance, check_module, check_positive_int, check_top_k


def count_parameters(module: nn.Module) -> int:
    """Total number of parameters of ``module``."""
    check_module("module", module)
    return sum(p.numel() for p in module.parameters())


def active_parameters(model: nn.Module) -> int:
    """Parameters one token uses: total minus the unchosen routed experts of every MoE layer.

    Shared experts (``layer.shared``) are counted as active: every token passes through them.

    For a router whose tokens use a variable number of experts this is the average token's count.
    """
    from .transformer import moe_layers

    check_module("model", model)
    unused = 0
    for layer in moe_layers(model):
        per_expert = count_parameters(layer.experts[0])
        unused += (layer.num_experts - layer.router.experts_per_token()) * per_expert
    return round(count_parameters(model) - unused)


def ffn_flops_per_token(input_dim: int, hidden_dim: int, output_dim: int | None = None,
                        activation: str = "relu") -> int:
    """FLOPs of one two-layer feed-forward (expert) for one token."""
    check_positive_int("input_dim", input_dim)
    check_positive_int("hidden_dim", hidden_dim)
    output_dim = input_dim if output_dim is None else check_positive_int("output_dim", output_dim)
    check_choice("activation", activation, ACTIVATIONS)
    in_matmuls = 2 if activation == "swiglu" else 1
    return 2 * (in_matmuls * input_dim * hidden_dim + hidden_dim * output_dim)


def moe_flops_per_token(input_dim: int, hidden_dim: int, num_experts: int, top_k: int,
                        output_dim: int | None = None, activation: str = "relu") -> int:
    """FLOPs of a sparse MoE layer for one token: router + ``top_k`` experts."""
    check_positive_int("num_experts", num_experts)
    check_top_k(top_k, num_experts)
    router = 2 * input_dim * num_experts
    return router + top_k * ffn_flops_per_token(input_dim, hidden_dim, output_dim, activation)


def shared_flops_per_token(dim: int, hidden_dim: int, activation: str, moe) -> int:
    """FLOPs per token of an :class:`~moe_teach.MoEConfig`'s shared experts (and their gate); 0 if none."""
    from .moe_layer import MoEConfig

    check_positive_int("dim", dim)
    check_positive_int("hidden_dim", hidden_dim)
    check_choice("activation", activation, ACTIVATIONS)
    check_instance("moe", moe, MoEConfig)
    if not moe.num_shared_experts:
        return 0
    width = moe.num_shared_experts * (moe.shared_hidden_dim or hidden_dim)
    return ffn_flops_per_token(dim, width, activation=activation) + (2 * dim if moe.shared_gate else 0)


def attention_flops_per_token(dim: int, seq_len: int) -> int:
    """Causal self-attention FLOPs per token: q/k/v/out projections plus scores and mixing.

    Scores and mixing are counted over the full ``seq_len`` (a fused kernel's cost; causal
    masking could skip about half).
    """
    check_positive_int("dim", dim)
    check_positive_int("seq_len", seq_len)
    return 2 * 4 * dim * dim + 2 * 2 * seq_len * dim


def block_flops_per_token(config, seq_len: int) -> int:
    """FLOPs per token of one :class:`~moe_teach.transformer.TransformerBlock` built from ``config``."""
    from .transformer import BlockConfig

    check_instance("config", config, BlockConfig)
    check_positive_int("seq_len", seq_len)
    attention = attention_flops_per_token(config.dim, seq_len)
    if config.moe is not None:
        ffn = moe_flops_per_token(config.dim, config.hidden_dim, config.moe.num_experts, config.moe.top_k,
                                  activation=config.activation)
        ffn += shared_flops_per_token(config.dim, config.hidden_dim, config.activation, config.moe)
    else:
        ffn = ffn_flops_per_token(config.dim, config.hidden_dim, activation=config.activation)
    return attention + ffn
