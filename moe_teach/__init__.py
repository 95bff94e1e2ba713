"""moe-teach: the helper package of the Mixture-of-Experts course.

Lessons build each piece inline first, check it against the version here, then use this one.
"""

from .bias_balancing import update_selection_biases
from .counting import (
    active_parameters,
    attention_flops_per_token,
    block_flops_per_token,
    count_parameters,
    ffn_flops_per_token,
    moe_flops_per_token,
)
from .dispatch import (
    DISPATCHERS,
    SortedAssignments,
    combine,
    dispatch_dense_mask,
    dispatch_grouped,
    dispatch_loop,
    run_experts,
    sort_by_expert,
)
from .experts import ACTIVATIONS, Expert, expert_parameter_count, make_experts
from .fine_grained import fine_grained_twin
from .hf import from_hf, to_hf
from .losses import (
    AUX_LOSSES,
    cv_squared,
    importance_loss,
    load_loss,
    router_z_loss,
    sequence_balance_loss,
    switch_load_balancing_loss,
)
from .moe_layer import MoEConfig, MoELayer
from .routing import (
    ROUTERS,
    DeepSeekV3Router,
    ExpertChoiceRouter,
    NoisyTopKRouter,
    Router,
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
from .shared import SharedExperts, shared_combine
from .soft_moe import SoftMoELayer
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
    "SortedAssignments",
    "combine",
    "run_experts",
    "sort_by_expert",
    "dispatch_dense_mask",
    "dispatch_grouped",
    "dispatch_loop",
    "ACTIVATIONS",
    "Expert",
    "expert_parameter_count",
    "make_experts",
    "MoEConfig",
    "MoELayer",
    "AUX_LOSSES",
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
    "ROUTERS",
    "NoisyTopKRouter",
    "Router",
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
    "DeepSeekV3Router",
    "ExpertChoiceRouter",
    "SharedExperts",
    "SoftMoELayer",
    "fine_grained_twin",
    "from_hf",
    "to_hf",
    "sequence_balance_loss",
    "shared_combine",
    "update_selection_biases",
]
