"""Lesson 10's experiments: balancing runs on the language model, the future-token test, Soft MoE on the toy task.

* :func:`train_with_balancing`: lesson 07's training step with any router, optionally the
  DeepSeek-V3 bias update after each optimizer step; records the task loss and the load.
* :func:`max_load_ratio`: how unbalanced a run was (busiest expert's load / mean load).
* :func:`future_token_change`: change a later token, measure how far earlier outputs move.
* :class:`GroupedToyModel`: a layer applied to the toy task's points in groups of ``m``
  (Soft MoE mixes the points of a group, so it needs groups).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..bias_balancing import update_selection_biases
from ..lm.model import LanguageModel, lm_loss
from ..lm.training import (
    LMData,
    TrainConfig,
    batch_schedule,
    check_model_and_data,
    learning_rate,
    make_optimizer,
)
from ..transformer import collect_aux_losses, moe_layers
from ..validation import (
    check_bool,
    check_float_tensor,
    check_instance,
    check_module,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    check_text,
)


@dataclass
class BalanceHistory:
    """Per step: task loss, the auxiliary losses' values and the expert load ``[L, E]`` (fractions)."""

    loss: list[float] = field(default_factory=list)
    aux: list[dict] = field(default_factory=list)
    expert_load: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self):
        for name in ("loss", "aux", "expert_load"):
            if not isinstance(getattr(self, name), list):
                raise TypeError(f"{name} must be a list, got {type(getattr(self, name)).__name__}")


def train_with_balancing(model: LanguageModel, data: LMData, config: TrainConfig | None = None,
                         bias_rate: float | None = None, progress: bool = True,
                         desc: str = "training") -> BalanceHistory:
    """Train ``model`` in place like :func:`moe_teach.lm.training.train_model`, with any router.

    The loss adds ``config.switch_coef * switch + config.z_coef * z`` for the losses the routers
    declare (a router without them adds nothing). With ``bias_rate``, every DeepSeek-V3 router's
    selection bias is updated after each optimizer step (:func:`~moe_teach.update_selection_biases`).
    """
    check_model_and_data(model, data)
    config = TrainConfig() if config is None else check_instance("config", config, TrainConfig)
    check_bool("progress", progress)
    check_text("desc", desc)
    if bias_rate is not None:
        check_positive_float("bias_rate", bias_rate)
    optimizer = make_optimizer(model, config)
    history = BalanceHistory()
    model.train()
    for step, rows in enumerate(tqdm(batch_schedule(len(data), config.steps, config.batch_size, config.seed),
                                     desc=desc, disable=not progress, leave=True)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        inputs, targets, mask = data.batch(rows)
        task = lm_loss(model(inputs, token_mask=mask), targets, data.pad_id)
        aux = collect_aux_losses(model)
        loss = task + config.switch_coef * aux.get("switch", 0.0) + config.z_coef * aux.get("z", 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if bias_rate is not None:
            update_selection_biases(model, bias_rate)
        history.loss.append(task.item())
        history.aux.append({name: value.item() for name, value in aux.items()})
        counts = torch.stack([layer.last_record.load_per_expert.float() for layer in moe_layers(model)])
        history.expert_load.append(counts / counts.sum(dim=1, keepdim=True))
    if progress:
        print(f"{desc}: {config.steps} steps, final training loss {history.loss[-1]:.3f}")
    return history


def max_load_ratio(history: BalanceHistory, last: int = 20) -> float:
    """Busiest expert's load over the mean load, averaged over layers and the ``last`` steps (1 = perfect)."""
    check_instance("history", history, BalanceHistory)
    check_positive_int("last", last)
    if not history.expert_load:
        raise ValueError("history has no expert_load: the model it trained has no MoE layers")
    load = torch.stack(history.expert_load[-last:])                   # [steps, L, E] fractions
    return float((load.max(dim=-1).values * load.shape[-1]).mean())


@torch.no_grad()
def future_token_change(layer: nn.Module, x: torch.Tensor, position: int | None = None,
                        scale: float = 10.0) -> float:
    """Largest change of ``layer``'s output at positions before ``position`` when that token changes.

    ``x`` ``[B, S, D]``; the token at ``position`` (default: the last) of every sequence is
    replaced by ``scale`` times a fixed random direction. A causal layer gives exactly 0.
    """
    check_module("layer", layer)
    check_float_tensor("x", x, min_dims=3)
    position = x.shape[1] - 1 if position is None else check_non_negative_int("position", position)
    scale = check_positive_float("scale", scale)
    if not 0 < position < x.shape[1]:
        raise ValueError(f"position must be between 1 and {x.shape[1] - 1}, got {position}")
    generator = torch.Generator().manual_seed(0)
    changed = x.clone()
    changed[:, position] = scale * torch.randn(x.shape[-1], generator=generator, dtype=x.dtype)
    before, after = layer(x), layer(changed)
    return float((after[:, :position] - before[:, :position]).abs().max())


class GroupedToyModel(nn.Module):
    """Applies ``layer`` to ``[N, 2]`` toy points as ``[N / m, m, 2]`` groups, returning ``[N, 1]``.

    The points are grouped in the order given; a Soft MoE layer mixes the ``m`` points of a group.
    """

    def __init__(self, layer: nn.Module, group_size: int):
        super().__init__()
        check_module("layer", layer)
        self.layer, self.group_size = layer, check_positive_int("group_size", group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % self.group_size:
            raise ValueError(f"the number of points ({x.shape[0]}) must be a multiple of group_size={self.group_size}")
        y = self.layer(x.view(-1, self.group_size, x.shape[-1]))
        return y.reshape(x.shape[0], -1)


def domain_purity(counts: torch.Tensor) -> float:
    """How specialised experts are: share of each expert's traffic from its main domain, traffic-weighted.

    ``counts`` ``[L, domains, E]`` (from :func:`moe_teach.lm.evaluation.domain_expert_counts`);
    averaged over layers. 1 = every expert serves one domain; about 1/domains = no specialisation.
    """
    check_float_tensor("counts", counts, min_dims=3)
    per_expert = counts.sum(dim=1)                                      # [L, E]
    main_domain = counts.max(dim=1).values                              # [L, E]
    return float((main_domain.sum(dim=-1) / per_expert.sum(dim=-1).clamp_min(1)).mean())
