"""Auxiliary losses that keep an MoE router healthy.

Convention used everywhere in the course (Switch for k = 1, Megatron-LM for k > 1):

    switch_loss = E * sum_i f_i * P_i

``f_i`` = fraction of the ``T * k`` routing assignments that chose expert ``i`` (counts divided
by ``T * k``), ``P_i`` = mean over tokens of the full softmax probability of expert ``i``.
Perfectly uniform routing gives **1**; every token on one expert gives **E**.
Other conventions (footnote): Hugging Face's Mixtral ``load_balancing_loss_func`` counts
every (token, slot) pair without dividing by k and has minimum k; GShard's mean of products
has minimum 1/E^2.

* router z-loss (ST-MoE): mean over tokens of ``logsumexp(logits)^2``; keeps logits small.
* importance and load losses (Shazeer 2017): squared coefficient of variation of the total
  gate weight per expert and of the (smooth) number of tokens per expert.

Every loss takes an optional ``token_mask`` ``[T]`` (True = real token) so padding is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .routing import smooth_load
from .validation import check_float_tensor


def _masked(tensor: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Keep only rows of ``tensor`` ``[T, ...]`` whose ``token_mask`` entry is True."""
    if token_mask is None:
        return tensor
    if token_mask.shape != tensor.shape[:1]:
        raise ValueError(f"token_mask must have shape [{tensor.shape[0]}], got {tuple(token_mask.shape)}")
    return tensor[token_mask.bool()]


def switch_load_balancing_loss(probs: torch.Tensor, expert_indices: torch.Tensor,
                               token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``E * sum_i f_i * P_i`` (minimum 1 at uniform routing, E at total collapse).

    Args:
        probs: ``[T, E]`` full softmax router probabilities (not the top-k weights).
        expert_indices: ``[T, k]`` chosen experts.
        token_mask: optional ``[T]`` bool, False for padding tokens.
    """
    check_float_tensor("probs", probs, min_dims=2)
    if expert_indices.shape[0] != probs.shape[0]:
        raise ValueError(
            f"expert_indices must have {probs.shape[0]} rows like probs, got shape {tuple(expert_indices.shape)}"
        )
    probs = _masked(probs, token_mask)
    expert_indices = _masked(expert_indices, token_mask)
    num_experts = probs.shape[-1]
    counts = torch.bincount(expert_indices.reshape(-1), minlength=num_experts).to(probs.dtype)
    fraction_routed = counts / max(1, expert_indices.numel())      # f_i, divided by T * k
    mean_prob = probs.mean(dim=0)                                  # P_i
    return num_experts * (fraction_routed * mean_prob).sum()


def router_z_loss(logits: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of ``logsumexp(logits, -1) ** 2``; ``logits`` ``[T, E]``."""
    check_float_tensor("logits", logits, min_dims=2)
    logits = _masked(logits.float(), token_mask)
    return torch.logsumexp(logits, dim=-1).square().mean()


def cv_squared(values: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation ``var / mean^2`` of a 1-D tensor.

    Uses the variance directly (no square root) and ``eps`` in the denominator, so the
    gradient stays finite at perfect balance and when every value is zero.
    """
    check_float_tensor("values", values)
    if values.numel() <= 1:
        return values.new_zeros(())
    return values.var(unbiased=False) / (values.mean().square() + eps)


def importance_loss(gate_weights: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``cv_squared`` of each expert's total gate weight; ``gate_weights`` ``[T, E]`` (zeros for unchosen)."""
    check_float_tensor("gate_weights", gate_weights, min_dims=2)
    return cv_squared(_masked(gate_weights, token_mask).sum(dim=0))


def load_loss(load: torch.Tensor) -> torch.Tensor:
    """``cv_squared`` of the per-expert load ``[E]`` (smooth for the noisy router, counts otherwise)."""
    return cv_squared(check_float_tensor("load", load))


# ----------------------------------------------------------------------------- the registry
# Each entry computes one auxiliary loss from a forward pass's record and the router's decision.
# A router lists the names that apply to it in ``Router.aux_losses``; MoELayer computes only those,
# and each only when it is read (:class:`LazyAuxLosses`).


def _switch_from(record, routed) -> torch.Tensor:
    return switch_load_balancing_loss(record.probs, record.expert_indices, record.token_mask)


def _z_from(record, routed) -> torch.Tensor:
    return router_z_loss(routed.clean_logits, record.token_mask)


def _importance_from(record, routed) -> torch.Tensor:
    return importance_loss(record.dense_weights(), record.token_mask)


def _load_from(record, routed) -> torch.Tensor:
    return load_loss(smooth_load(routed, record.top_k, record.token_mask))


AUX_LOSSES = {"switch": _switch_from, "z": _z_from, "importance": _importance_from, "load": _load_from}
"""Loss name -> ``fn(record: RoutingRecord, routed: RouterOutput) -> scalar tensor``."""


class LazyAuxLosses(Mapping):
    """Name -> auxiliary loss of one forward pass, each computed on first access, then kept.

    An MoE layer makes one per forward pass instead of computing every loss its router
    declares: evaluation, plots and explorers that never read a loss do not pay for it, and a
    training loop that reads two of four pays for two. Reading it behaves like the plain dict
    of eager losses (same keys, same values, same gradients): each loss is computed with the
    gradient mode of the forward pass, so reading it inside ``torch.no_grad()`` first does not
    strip the gradient from a forward pass that had one.

    Args:
        names: the loss names (keys of :data:`AUX_LOSSES`), in order.
        record: the forward pass's :class:`~moe_teach.routing.RoutingRecord`.
        routed: the router's :class:`~moe_teach.routing.RouterOutput`.
    """

    def __init__(self, names, record, routed):
        self._names = tuple(names)
        self._record, self._routed = record, routed
        self._grad_enabled = torch.is_grad_enabled()
        self._values: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._values:
            if name not in self._names:
                raise KeyError(name)
            with torch.set_grad_enabled(self._grad_enabled):
                self._values[name] = AUX_LOSSES[name](self._record, self._routed)
        return self._values[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def computed(self) -> tuple[str, ...]:
        """Names of the losses computed so far."""
        return tuple(self._values)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name!r}: {self._values[name] if name in self._values else '<not computed>'}"
                          for name in self._names)
        return f"LazyAuxLosses({{{shown}}})"
