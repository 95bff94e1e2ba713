"""Auxiliary-loss-free balancing (DeepSeek-V3): the training loop nudges each router's selection bias.

After ``optimizer.step()``::

    update_selection_biases(model, rate=1e-3)

For every MoE layer whose router has a ``selection_bias`` buffer (:class:`~moe_teach.routing.DeepSeekV3Router`),
the load of its latest forward pass (kept assignments of real tokens per expert) moves the bias by
``rate * sign(mean_load - load)``, mean-centred (torchtitan's rule; the public DeepSeek-V3 model
code has the bias but no update rule). The bias changes which experts are **chosen**; the
combine weights always come from the unbiased scores, and no gradient flows into the bias.
"""

from __future__ import annotations

from torch import nn

from .transformer import moe_layers
from .validation import check_positive_float


def update_selection_biases(model: nn.Module, rate: float = 1e-3) -> int:
    """Update the selection bias of every bias-balanced MoE layer in ``model``; returns how many.

    A layer that has not run a forward pass yet is skipped.
    """
    check_positive_float("rate", rate)
    updated = 0
    for layer in moe_layers(model):
        if hasattr(layer.router, "selection_bias") and layer.last_record is not None:
            layer.router.update_bias(layer.last_record.load_per_expert, rate)
            updated += 1
    return updated
