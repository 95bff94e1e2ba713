"""Auxiliary losses that keep an MoE router healthy.

Convention used everywhere in the course (Switch for k = 1, Megatron-LM for k > 1):

    switch_loss = E * sum_i f_i * P_i

``f_i`` = fraction of the ``T * k`` routing assignments that chose expert ``i`` (counts divided
by ``T * k``), ``P_i`` = mean over tokens of the full softmax probability of expert ``i``.
Perfectly uniform routing gives **1**; every token on one expert gives **E**.
Other conventions (footnote): Hugging Face's Mixtral ``load_balancing_loss_func`` counts
every (token, slot) pair without dividing by k and has minimum k; GShard's mean of products
has minimum 1/E^2.

* sequence-wise balance loss (DeepSeek-V3): the same ``E * sum_i f_i * P_i`` computed within each
  sequence and averaged over sequences; its ``P`` is the router's ``probs`` (for DeepSeek-V3 the
  sigmoid scores divided by their sum). Minimum 1, like ours.
* router z-loss (ST-MoE): mean over tokens of ``logsumexp(logits)^2``; keeps logits small.
* importance and load losses (Shazeer 2017): squared coefficient of variation of the total
  gate weight per expert and of the (smooth) number of tokens per expert.

Every loss takes an optional ``token_mask`` ``[T]`` (True = real token) so padding is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .routing import RouterOutput, RoutingRecord, smooth_load
from .validation import (
    check_float_tensor,
    check_index_tensor,
    check_instance,
    check_mask,
    check_positive_float,
    check_positive_int,
)


def _masked(tensor: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Keep only rows of ``tensor`` ``[T, ...]`` whose ``token_mask`` entry is True."""
    if token_mask is None:
        return tensor
    return tensor[check_mask("token_mask", token_mask, tensor.shape[:1])]


def switch_load_balancing_loss(probs: torch.Tensor, expert_indices: torch.Tensor,
                               token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``E * sum_i f_i * P_i`` (minimum 1 at uniform routing, E at total collapse).

    Args:
        probs: ``[T, E]`` full softmax router probabilities (not the top-k weights).
        expert_indices: ``[T, k]`` chosen experts.
        token_mask: optional ``[T]`` bool, False for padding tokens.
    """
    check_float_tensor("probs", probs, min_dims=2)
    check_index_tensor("expert_indices", expert_indices)
    if expert_indices.shape[0] != probs.shape[0]:
        raise ValueError(
            f"expert_indices must have {probs.shape[0]} rows like probs, got shape {tuple(expert_indices.shape)}"
        )
    num_tokens, num_experts = probs.shape
    top_k = expert_indices.shape[-1]
    if token_mask is None:
        counts = torch.bincount(expert_indices.reshape(-1), minlength=num_experts).to(probs.dtype)
        assignments = max(1, num_tokens * top_k)
        mean_prob = probs.mean(dim=0)                                                # P_i
    else:  # padding weighs 0: weighted sums instead of boolean indexing, which copies
        real = check_mask("token_mask", token_mask, (num_tokens,)).to(probs.dtype)   # [T], 1 = real
        counts = torch.bincount(expert_indices.reshape(-1), weights=real.repeat_interleave(top_k),
                                minlength=num_experts)
        real_tokens = real.sum()
        assignments = (real_tokens * top_k).clamp_min(1)
        mean_prob = (real @ probs) / real_tokens                                     # P_i
    fraction_routed = counts / assignments                                           # f_i, divided by T * k
    return num_experts * (fraction_routed * mean_prob).sum()


def sequence_balance_loss(probs: torch.Tensor, expert_indices: torch.Tensor, sequence_length: int | None,
                          token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise balance loss: the mean over sequences of each one's Switch loss.

    Args:
        probs: ``[T, E]`` normalised scores, ``T = sequences * sequence_length``.
        expert_indices: ``[T, k]`` chosen experts.
        sequence_length: tokens per sequence ``S`` (``None``: all ``T`` tokens form one sequence).
        token_mask: optional ``[T]`` bool, False for padding tokens (left out of their sequence).
    """
    check_float_tensor("probs", probs, min_dims=2)
    check_index_tensor("expert_indices", expert_indices, num_rows=probs.shape[0])
    num_tokens, num_experts = probs.shape
    top_k = expert_indices.shape[-1]
    sequence_length = num_tokens if sequence_length is None else check_positive_int("sequence_length", sequence_length)
    if token_mask is not None:
        check_mask("token_mask", token_mask, (num_tokens,))
    if sequence_length < 1 or num_tokens % sequence_length:
        raise ValueError(f"sequence_length must divide the {num_tokens} tokens, got {sequence_length}")
    real = probs.new_ones(num_tokens) if token_mask is None else token_mask.to(probs.dtype)
    real = real.view(-1, sequence_length, 1)                                        # [B, S, 1]
    chosen = torch.zeros_like(probs).scatter(1, expert_indices, 1.0)                # [T, E] 0/1
    chosen = chosen.view(-1, sequence_length, num_experts) * real                  # [B, S, E]
    tokens = real.sum(dim=1).clamp_min(1)                                           # [B, 1]
    fraction_routed = chosen.sum(dim=1) / (tokens * top_k)                          # f_i per sequence
    mean_prob = (probs.view(-1, sequence_length, num_experts) * real).sum(dim=1) / tokens  # P_i
    per_sequence = num_experts * (fraction_routed * mean_prob).sum(dim=-1)          # [B]
    has_tokens = real.sum(dim=(1, 2)) > 0
    return per_sequence[has_tokens].mean() if bool(has_tokens.any()) else per_sequence.sum() * 0


def router_z_loss(logits: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of ``logsumexp(logits, -1) ** 2``; ``logits`` ``[T, E]``."""
    check_float_tensor("logits", logits, min_dims=2)
    squared = torch.logsumexp(logits.float(), dim=-1).square()                    # [T]
    if token_mask is None:
        return squared.mean()
    real = check_mask("token_mask", token_mask, squared.shape).to(squared.dtype)
    return (squared * real).sum() / real.sum()


def cv_squared(values: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation ``var / mean^2`` of a 1-D tensor.

    Uses the variance directly (no square root) and ``eps`` in the denominator, so the
    gradient stays finite at perfect balance and when every value is zero.
    """
    check_float_tensor("values", values)
    check_positive_float("eps", eps)
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


def _sequence_from(record, routed) -> torch.Tensor:
    return sequence_balance_loss(record.probs, record.expert_indices, record.sequence_length, record.token_mask)


AUX_LOSSES = {"switch": _switch_from, "z": _z_from, "importance": _importance_from, "load": _load_from,
              "sequence": _sequence_from}
"""Loss name -> ``fn(record: RoutingRecord, routed: RouterOutput) -> scalar tensor``."""


class LazyLosses(Mapping):
    """Name -> loss, each computed by :meth:`compute` on first access, then kept.

    Each loss is computed with the gradient mode in force when the mapping was made (just after
    the forward pass), so reading it inside ``torch.no_grad()`` first does not strip the
    gradient from a forward pass that had one. Subclasses define :meth:`compute`.
    """

    def __init__(self, names):
        if not isinstance(names, (tuple, list)) or not all(isinstance(name, str) for name in names):
            raise TypeError(f"names must be a tuple or list of loss names, got {names!r:.60}")
        self._names = tuple(names)
        self._grad_enabled = torch.is_grad_enabled()
        self._values: dict[str, torch.Tensor] = {}

    def compute(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._values:
            if name not in self._names:
                raise KeyError(name)
            with torch.set_grad_enabled(self._grad_enabled):
                self._values[name] = self.compute(name)
        return self._values[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def computed(self) -> tuple[str, ...]:
        """Names of the losses computed so far."""
        return tuple(self._values)


class LazyAuxLosses(LazyLosses):
    """Name -> auxiliary loss of one forward pass, each computed on first access, then kept.

    An MoE layer makes one per forward pass instead of computing every loss its router
    declares: evaluation, plots and explorers that never read a loss do not pay for it, and a
    training loop that reads two of four pays for two. Reading it behaves like the plain dict
    of eager losses (same keys, same values, same gradients; see :class:`LazyLosses` for the
    gradient mode).

    Args:
        names: the loss names (keys of :data:`AUX_LOSSES`), in order.
        record: the forward pass's :class:`~moe_teach.routing.RoutingRecord`.
        routed: the router's :class:`~moe_teach.routing.RouterOutput`.
    """

    def __init__(self, names, record, routed):
        if not isinstance(names, (tuple, list)) or not all(name in AUX_LOSSES for name in names):
            raise ValueError(f"names must be a sequence of auxiliary-loss names ({', '.join(AUX_LOSSES)}), "
                             f"got {names!r}")
        check_instance("record", record, RoutingRecord)
        check_instance("routed", routed, RouterOutput)
        super().__init__(names)
        self._record, self._routed = record, routed

    def compute(self, name: str) -> torch.Tensor:
        return AUX_LOSSES[name](self._record, self._routed)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name!r}: {self._values[name] if name in self._values else '<not computed>'}"
                          for name in self._names)
        return f"LazyAuxLosses({{{shown}}})"
