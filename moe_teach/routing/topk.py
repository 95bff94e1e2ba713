"""Token-choice routers: softmax top-k (Mixtral) and noisy top-k (Shazeer et al. 2017).

Mixtral-style routing (the default, :class:`TopKRouter`):

1. router logits ``x @ W_router`` computed in float32 (bf16 can flip near-ties),
2. softmax over **all** experts,
3. keep the ``top_k`` largest probabilities,
4. renormalise the kept ``k`` weights to sum to 1 (switchable). At ``top_k=1`` the default
   is *not* to renormalise: a single renormalised weight is always exactly 1, so the router
   would get no gradient from the task loss (Switch multiplies by the raw probability).

Noisy top-k gating (:class:`NoisyTopKRouter`) adds Gaussian noise whose scale the router
learns, during training only. Router jitter (Switch) multiplies the router input by uniform
noise in ``[1 - eps, 1 + eps]``, during training only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import (
    check_bool,
    check_float_tensor,
    check_instance,
    check_mask,
    check_non_negative_float,
    check_positive_int,
    check_top_k,
)
from .decision import Router, RouterOutput


def topk_softmax(logits: torch.Tensor, top_k: int, renormalize: bool = True):
    """Mixtral routing on ``logits`` ``[T, E]``.

    Returns ``(probs [T, E], weights [T, k], indices [T, k])``: softmax over all experts in
    float32, the ``top_k`` largest, renormalised to sum to 1 when ``renormalize``.
    Renormalised, this equals a softmax over the ``k`` kept logits.
    """
    check_float_tensor("logits", logits)
    check_top_k(top_k, logits.shape[-1])
    check_bool("renormalize", renormalize)
    probs = torch.softmax(logits.float(), dim=-1)
    weights, indices = probs.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, weights, indices


def default_renormalize(top_k: int) -> bool:
    """Renormalise for k > 1; not at k = 1, where it would make every weight exactly 1."""
    check_positive_int("top_k", top_k)
    return top_k > 1


class TopKRouter(Router):
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
        super().__init__(input_dim, num_experts, top_k)
        if renormalize is not None and not isinstance(renormalize, bool):
            raise TypeError(f"renormalize must be True, False or None (automatic), got {renormalize!r}")
        jitter = check_non_negative_float("jitter", jitter)
        if jitter >= 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.renormalize = default_renormalize(top_k) if renormalize is None else renormalize
        self.jitter = jitter

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
    the weights are the top ``k`` of ``softmax(H)``, renormalised as :class:`TopKRouter` does
    (for k > 1 this is Shazeer's softmax over the kept ``H``; at k = 1 the default keeps the
    raw probability so the router still gets a gradient). ``probs`` is the softmax of ``H``
    over all experts (used by the balancing losses).

    Args: as :class:`TopKRouter`, plus ``min_noise_std``: a floor added to the learned noise
    scale so the smooth load estimate never divides by zero.
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
    check_instance("router_out", router_out, RouterOutput)
    num_experts = router_out.logits.shape[-1]
    check_top_k(top_k, num_experts)
    if token_mask is not None:
        check_mask("token_mask", token_mask, router_out.logits.shape[:1])
    keep = slice(None) if token_mask is None else token_mask
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


