"""Routing: which experts see each token, and with what weight.

Mixtral-style routing (the default, :class:`TopKRouter`):

1. router logits ``x @ W_router`` computed in float32 (bf16 can flip near-ties),
2. softmax over **all** experts,
3. keep the ``top_k`` largest probabilities,
4. renormalise the kept ``k`` weights to sum to 1 (switchable). At ``top_k=1`` the default
   is *not* to renormalise: a single renormalised weight is always exactly 1, so the router
   would get no gradient from the task loss (Switch multiplies by the raw probability).

Noisy top-k gating (Shazeer et al. 2017, :class:`NoisyTopKRouter`) adds Gaussian noise whose
scale the router learns, during training only. Router jitter (Switch) multiplies the router
input by uniform noise in ``[1 - eps, 1 + eps]``, during training only.

Capacity (Switch/GShard): each expert processes at most
``ceil(capacity_factor * tokens * top_k / num_experts)`` assignments. Every token's first
choice is served before any second choice (GShard), in token order within a choice;
assignments over capacity are dropped and contribute nothing (the residual carries the token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .validation import (
    check_float_tensor,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
    check_top_k,
)


@dataclass
class RouterOutput:
    """What a router decides for ``T`` tokens and ``E`` experts.

    Attributes:
        logits: ``[T, E]`` float32 scores used for selection (noise included when training).
        probs: ``[T, E]`` float32 softmax of ``logits`` over all experts.
        expert_indices: ``[T, k]`` int64 chosen experts, best first, all distinct per token.
        expert_weights: ``[T, k]`` float32 weight of each chosen expert's output.
        clean_logits: ``[T, E]`` logits without noise (equal to ``logits`` for the plain router).
        noise_std: ``[T, E]`` noise scale of the noisy router, else ``None``.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    expert_indices: torch.Tensor
    expert_weights: torch.Tensor
    clean_logits: torch.Tensor
    noise_std: torch.Tensor | None = None


@dataclass
class RoutingRecord:
    """Everything one MoE forward pass decided, for plots, explorers, checks and losses.

    Attributes:
        logits, probs, expert_indices, expert_weights: as in :class:`RouterOutput`.
        kept: ``[T, k]`` bool, False where the (token, slot) assignment was dropped by capacity.
        capacity: assignments each expert may take, or ``None`` (dropless).
        aux_losses: name -> scalar tensor (``"switch"``, ``"z"``, ``"importance"``, ``"load"``).
        token_mask: ``[T]`` bool, True for real tokens, or ``None`` (all real). Padding is still
            computed (and takes capacity) but is left out of the auxiliary losses and of
            :attr:`load_per_expert`.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    expert_indices: torch.Tensor
    expert_weights: torch.Tensor
    kept: torch.Tensor
    capacity: int | None
    aux_losses: dict = field(default_factory=dict)
    token_mask: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.expert_indices.shape[0]

    @property
    def num_experts(self) -> int:
        return self.probs.shape[-1]

    @property
    def top_k(self) -> int:
        return self.expert_indices.shape[-1]

    @property
    def combine_weights(self) -> torch.Tensor:
        """``[T, k]`` weights actually applied: ``expert_weights`` with dropped slots zeroed."""
        return self.expert_weights * self.kept

    @property
    def tokens_per_expert(self) -> torch.Tensor:
        """``[E]`` assignments each expert processed (after capacity dropping; padding included)."""
        return torch.bincount(self.expert_indices[self.kept], minlength=self.num_experts)

    @property
    def routed_per_expert(self) -> torch.Tensor:
        """``[E]`` assignments each expert was chosen for, before capacity dropping."""
        return torch.bincount(self.expert_indices.reshape(-1), minlength=self.num_experts)

    @property
    def load_per_expert(self) -> torch.Tensor:
        """``[E]`` kept assignments of real (non-padding) tokens per expert."""
        kept = self.kept if self.token_mask is None else self.kept & self.token_mask.unsqueeze(1)
        return torch.bincount(self.expert_indices[kept], minlength=self.num_experts)

    @property
    def num_dropped(self) -> int:
        """Number of dropped (token, expert) assignments."""
        return int((~self.kept).sum())

    @property
    def dropped_tokens(self) -> torch.Tensor:
        """``[T]`` bool, True for tokens dropped by *all* their experts (MoE output is zero)."""
        return ~self.kept.any(dim=-1)

    @property
    def drop_rate(self) -> float:
        """Fraction of assignments dropped."""
        return self.num_dropped / max(1, self.kept.numel())

    def dense_weights(self) -> torch.Tensor:
        """``[T, E]`` combine weights scattered to all experts (zero for unchosen/dropped)."""
        return scatter_to_experts(self.expert_indices, self.combine_weights, self.num_experts)


def scatter_to_experts(expert_indices: torch.Tensor, values: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Spread ``[T, k]`` per-slot ``values`` to a ``[T, E]`` tensor (zero elsewhere)."""
    dense = values.new_zeros(values.shape[0], num_experts)
    return dense.scatter_add(1, expert_indices, values)


def topk_softmax(logits: torch.Tensor, top_k: int, renormalize: bool = True):
    """Mixtral routing on ``logits`` ``[T, E]``.

    Returns ``(probs [T, E], weights [T, k], indices [T, k])``: softmax over all experts in
    float32, the ``top_k`` largest, renormalised to sum to 1 when ``renormalize``.
    Renormalised, this equals a softmax over the ``k`` kept logits.
    """
    check_float_tensor("logits", logits)
    check_top_k(top_k, logits.shape[-1])
    probs = torch.softmax(logits.float(), dim=-1)
    weights, indices = probs.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, weights, indices


def default_renormalize(top_k: int) -> bool:
    """Renormalise for k > 1; not at k = 1, where it would make every weight exactly 1."""
    return top_k > 1


class TopKRouter(nn.Module):
    """Softmax top-k router (Mixtral), router maths in float32.

    Args:
        input_dim: token width ``D``.
        num_experts: ``E``.
        top_k: experts per token, ``1 <= top_k <= E``.
        renormalize: renormalise the kept weights; default True for k > 1, False for k = 1.
        jitter: Switch's multiplicative input noise ``eps`` (training only); 0 disables it.
    """

    def __init__(self, input_dim: int, num_experts: int, top_k: int = 2,
                 renormalize: bool | None = None, jitter: float = 0.0):
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_positive_int("num_experts", num_experts)
        check_top_k(top_k, num_experts)
        if renormalize is not None and not isinstance(renormalize, bool):
            raise TypeError(f"renormalize must be True, False or None (automatic), got {renormalize!r}")
        jitter = check_non_negative_float("jitter", jitter)
        if jitter >= 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.input_dim, self.num_experts, self.top_k = input_dim, num_experts, top_k
        self.renormalize = default_renormalize(top_k) if renormalize is None else renormalize
        self.jitter = jitter
        self.proj = nn.Linear(input_dim, num_experts, bias=False)

    def clean_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, D] -> [T, E]`` float32 logits, jitter applied to the input when training."""
        if self.training and self.jitter > 0:
            x = x * torch.empty_like(x).uniform_(1 - self.jitter, 1 + self.jitter)
        return F.linear(x.float(), self.proj.weight.float())

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Route ``x`` ``[T, D]``."""
        check_float_tensor("x", x, last_dim=self.input_dim)
        logits = self.clean_logits(x)
        probs, weights, indices = topk_softmax(logits, self.top_k, self.renormalize)
        return RouterOutput(logits, probs, indices, weights, clean_logits=logits)


class NoisyTopKRouter(TopKRouter):
    """Noisy top-k gating (Shazeer et al. 2017).

    ``H(x) = x W_g + N(0, 1) * softplus(x W_noise)`` while training (no noise in eval mode);
    keep the top ``k`` of ``H``, softmax over the kept ones (the same as renormalised top-k).
    ``probs`` is the softmax of ``H`` over all experts (used by the balancing losses).
    """

    def __init__(self, input_dim: int, num_experts: int, top_k: int = 2,
                 renormalize: bool | None = None, jitter: float = 0.0, min_noise_std: float = 1e-2):
        super().__init__(input_dim, num_experts, top_k, renormalize, jitter)
        self.noise_proj = nn.Linear(input_dim, num_experts, bias=False)
        nn.init.zeros_(self.noise_proj.weight)  # start with noise std softplus(0) = 0.69
        self.min_noise_std = check_non_negative_float("min_noise_std", min_noise_std)

    def noise_std(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, E]`` learned noise scale (plus a floor so the load estimate never divides by 0)."""
        return F.softplus(F.linear(x.float(), self.noise_proj.weight.float())) + self.min_noise_std

    def forward(self, x: torch.Tensor) -> RouterOutput:
        check_float_tensor("x", x, last_dim=self.input_dim)
        clean = self.clean_logits(x)
        if not self.training:
            probs, weights, indices = topk_softmax(clean, self.top_k, self.renormalize)
            return RouterOutput(clean, probs, indices, weights, clean_logits=clean)
        std = self.noise_std(x)
        noisy = clean + torch.randn_like(clean) * std
        probs, weights, indices = topk_softmax(noisy, self.top_k, self.renormalize)
        return RouterOutput(noisy, probs, indices, weights, clean_logits=clean, noise_std=std)


def smooth_load(router_out: RouterOutput, top_k: int, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Shazeer's differentiable load estimate ``[E]`` for the noisy router.

    For each token and expert: the probability, over a fresh draw of that expert's noise,
    that the expert would still be in the top k (the other experts' noisy scores held fixed).
    Without noise (plain router, eval mode) it falls back to the hard counts. Tokens whose
    ``token_mask`` entry is False (padding) are not counted.
    """
    num_experts = router_out.logits.shape[-1]
    keep = slice(None) if token_mask is None else token_mask.bool()
    if router_out.noise_std is None or top_k >= num_experts:
        return torch.bincount(router_out.expert_indices[keep].reshape(-1), minlength=num_experts).float()
    noisy, clean, std = router_out.logits[keep], router_out.clean_logits[keep], router_out.noise_std[keep]
    top_values = noisy.topk(top_k + 1, dim=-1).values          # [T, k+1]
    kth_in = top_values[:, top_k - 1:top_k]                    # threshold if i is currently out
    kth_out = top_values[:, top_k:top_k + 1]                   # threshold if i is currently in
    is_in = noisy >= kth_in
    threshold = torch.where(is_in, kth_out, kth_in)
    normal = torch.distributions.Normal(0.0, 1.0)
    return normal.cdf((clean - threshold) / std.clamp_min(1e-6)).sum(dim=0)  # std 0 must not give NaN


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Assignments one expert may process: ``ceil(capacity_factor * num_tokens * top_k / num_experts)``."""
    check_positive_int("num_tokens", num_tokens)
    check_positive_int("num_experts", num_experts)
    check_top_k(top_k, num_experts)
    check_positive_float("capacity_factor", capacity_factor)
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts)


def position_in_expert(expert_indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``[T, k]`` queue position of each assignment at its expert (0 = served first).

    Priority is slot-major: all first choices (in token order), then all second choices, ...
    A cumulative sum over a one-hot of the chosen expert counts how many assignments to the
    same expert came earlier.
    """
    num_tokens, top_k = expert_indices.shape
    slot_major = expert_indices.t().reshape(-1)                        # [k*T]
    one_hot = F.one_hot(slot_major, num_experts)                       # [k*T, E]
    earlier = (one_hot.cumsum(dim=0) - one_hot)                        # assignments before this one
    position = (earlier * one_hot).sum(dim=-1)                         # [k*T]
    return position.view(top_k, num_tokens).t()


def apply_capacity(expert_indices: torch.Tensor, num_experts: int, capacity: int | None) -> torch.Tensor:
    """``[T, k]`` bool mask of kept assignments under ``capacity`` (all True when ``None``)."""
    if capacity is None:
        return torch.ones_like(expert_indices, dtype=torch.bool)
    check_positive_int("capacity", capacity)
    return position_in_expert(expert_indices, num_experts) < capacity


ROUTERS = {"softmax": TopKRouter, "noisy": NoisyTopKRouter}
