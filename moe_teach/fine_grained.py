"""Fine-grained experts (DeepSeekMoE): split each expert into ``m`` smaller ones, route to ``m * k``.

An MoE block with ``E`` experts of hidden width ``H``, top-``k``, becomes one with ``m * E``
experts of width ``H / m``, top-``m * k``: the same total and active parameters (up to the
router), but many more ways to combine experts (``C(mE, mk)`` instead of ``C(E, k)``).
DeepSeekMoE then turns ``s`` of the fine-grained experts into always-on *shared* experts and
routes to ``m * k - s`` of the remaining ``m * E - s``, again keeping both counts equal.
"""

from __future__ import annotations

from dataclasses import replace

from .transformer import BlockConfig
from .validation import check_non_negative_int, check_positive_int


def fine_grained_twin(config: BlockConfig, split: int, shared_experts: int = 0) -> BlockConfig:
    """The block with each expert split into ``split`` parts and ``shared_experts`` of them always on.

    Experts: ``split * E - shared_experts`` routed, top-``split * k - shared_experts``, hidden width
    ``hidden_dim / split``; the shared experts have that width too. Total and active expert
    parameters stay those of ``config`` (the router grows with the number of experts).
    """
    if not isinstance(config, BlockConfig) or config.moe is None:
        raise ValueError("fine_grained_twin needs a BlockConfig with an MoE feed-forward (config.moe set)")
    check_positive_int("split", split)
    check_non_negative_int("shared_experts", shared_experts)
    if config.hidden_dim % split:
        raise ValueError(f"split must divide hidden_dim={config.hidden_dim}, got split={split}")
    moe = config.moe
    if moe.num_shared_experts:
        raise ValueError("fine_grained_twin expects a block without shared experts (num_shared_experts=0)")
    top_k = split * moe.top_k - shared_experts
    if top_k < 1:
        raise ValueError(f"shared_experts must be below split * top_k = {split * moe.top_k}, got {shared_experts}")
    width = config.hidden_dim // split
    fine = replace(moe, num_experts=split * moe.num_experts - shared_experts, top_k=top_k,
                   num_shared_experts=shared_experts, shared_hidden_dim=width if shared_experts else None)
    return replace(config, hidden_dim=width, moe=fine)
