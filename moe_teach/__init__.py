"""moe-teach: the helper package of the Mixture-of-Experts course.

Lessons build each piece inline first, check it against the version here, then use this one.
"""

from .counting import (
    active_parameters,
    attention_flops_per_token,
    block_flops_per_token,
    count_parameters,
    ffn_flops_per_token,
    moe_flops_per_token,
)
from .dispatch import DISPATCHERS, dispatch_dense_mask, dispatch_grouped, dispatch_loop
from .experts import ACTIVATIONS, Expert, expert_parameter_count, make_experts
from .losses import cv_squared, importance_loss, load_loss, router_z_loss, switch_load_balancing_loss
from .moe_layer import MoELayer
from .routing import (
    NoisyTopKRouter,
    RouterOutput,
    RoutingRecord,
    TopKRouter,
    apply_capacity,
    expert_capacity,
    position_in_expert,
    scatter_to_experts,
    smooth_load,
    topk_softmax,
)
from .transformer import (
    BlockConfig,
    CausalSelfAttention,
    TransformerBlock,
    collect_aux_losses,
    dense_twin,
    moe_layers,
)

__version__ = "0.1.0"

__all__ = [
    "DISPATCHERS",
    "dispatch_dense_mask",
    "dispatch_grouped",
    "dispatch_loop",
    "ACTIVATIONS",
    "Expert",
    "expert_parameter_count",
    "make_experts",
    "MoELayer",
    "cv_squared",
    "importance_loss",
    "load_loss",
    "router_z_loss",
    "switch_load_balancing_loss",
    "active_parameters",
    "attention_flops_per_token",
    "block_flops_per_token",
    "count_parameters",
    "ffn_flops_per_token",
    "moe_flops_per_token",
    "NoisyTopKRouter",
    "RouterOutput",
    "RoutingRecord",
    "TopKRouter",
    "apply_capacity",
    "expert_capacity",
    "position_in_expert",
    "scatter_to_experts",
    "smooth_load",
    "topk_softmax",
    "BlockConfig",
    "CausalSelfAttention",
    "TransformerBlock",
    "collect_aux_losses",
    "dense_twin",
    "moe_layers",
]
