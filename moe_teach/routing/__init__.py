"""Routing: which experts see each token, and with what weight.

* :mod:`.decision`: the routing contract (:class:`RouterOutput`, the :class:`Router` base
  class, :class:`RoutingRecord`) that dispatch, capacity, losses, explorers and counting read.
* :mod:`.topk`: token-choice routers (softmax top-k, noisy top-k) and Shazeer's smooth load.
* :mod:`.capacity`: expert capacity and which assignments it drops.

Adding a router: one module with a :class:`Router` subclass, plus one line in :data:`ROUTERS`.
"""

from .capacity import apply_capacity, expert_capacity, position_in_expert
from .decision import Router, RouterOutput, RoutingRecord, build_router, scatter_to_experts
from .topk import NoisyTopKRouter, TopKRouter, default_renormalize, smooth_load, topk_softmax

ROUTERS: dict[str, type[Router]] = {
    "softmax": TopKRouter,
    "noisy": NoisyTopKRouter,
}
"""Router name -> class; ``MoELayer(router=name)`` and ``MoEConfig.router`` pick from it."""

__all__ = [
    "ROUTERS", "NoisyTopKRouter", "Router", "RouterOutput", "RoutingRecord", "TopKRouter",
    "apply_capacity", "build_router", "default_renormalize", "expert_capacity", "position_in_expert",
    "scatter_to_experts", "smooth_load", "topk_softmax",
]
