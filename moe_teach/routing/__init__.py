"""Routing: which experts see each token, and with what weight.

* :mod:`.decision`: the routing contract (:class:`RouterOutput`, the :class:`Router` base
  class, :class:`RoutingRecord`) that dispatch, capacity, losses, explorers and counting read.
* :mod:`.topk`: token-choice routers (softmax top-k, noisy top-k) and Shazeer's smooth load.
* :mod:`.deepseek`: DeepSeek-V3 routing (sigmoid, group-limited, selection-only bias).
* :mod:`.expert_choice`: expert-choice routing (each expert takes its top-C tokens).
* :mod:`.capacity`: expert capacity and which assignments it drops.

Adding a router: one module with a :class:`Router` subclass, plus one line in :data:`ROUTERS`.
"""

from .capacity import apply_capacity, expert_capacity, position_in_expert
from .decision import Router, RouterOutput, RoutingRecord, build_router, scatter_to_experts
from .deepseek import DeepSeekV3Router, group_limited_mask, selection_bias_delta
from .expert_choice import ExpertChoiceRouter, choice_capacity, expert_choice
from .topk import NoisyTopKRouter, TopKRouter, default_renormalize, smooth_load, topk_softmax

ROUTERS: dict[str, type[Router]] = {
    "softmax": TopKRouter,
    "noisy": NoisyTopKRouter,
    "deepseek_v3": DeepSeekV3Router,
    "expert_choice": ExpertChoiceRouter,
}
"""Router name -> class; ``MoELayer(router=name)`` and ``MoEConfig.router`` pick from it."""

__all__ = [
    "ROUTERS", "DeepSeekV3Router", "ExpertChoiceRouter", "NoisyTopKRouter", "Router", "RouterOutput",
    "RoutingRecord", "TopKRouter", "apply_capacity", "build_router", "choice_capacity", "default_renormalize",
    "expert_capacity", "expert_choice", "group_limited_mask", "position_in_expert", "scatter_to_experts",
    "selection_bias_delta", "smooth_load", "topk_softmax",
]
