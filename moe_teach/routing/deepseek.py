"""DeepSeek-V3 routing: sigmoid scores, group-limited choice, a selection-only balancing bias.

What :class:`DeepSeekV3Router` changes against :class:`~moe_teach.routing.TopKRouter`:

1. scores are ``sigmoid(logits)`` (float32), each expert judged on its own, not a softmax;
2. experts form ``n_group`` groups; each group is scored by the sum of its two best scores,
   and only the best ``topk_group`` groups may be chosen (:func:`group_limited_mask`);
3. a per-expert ``selection_bias`` (a buffer, not a parameter) is added to the scores for
   the **choice only**: the weights come from the unbiased scores;
4. the ``k`` weights are renormalised (``renormalize``) and multiplied by ``scaling_factor``.

The bias is moved outside the optimizer after each training step by
:func:`selection_bias_delta` (``rate * sign(mean_load - load)``, mean-centred as torchtitan
does): over-loaded experts get a lower bias, under-loaded ones a higher one. Balance comes
from that nudge instead of an auxiliary loss; DeepSeek-V3 keeps only a small sequence-wise
balance loss (:func:`moe_teach.losses.sequence_balance_loss`).

Hugging Face transformers: ``DeepseekV3TopkRouter`` in ``modeling_deepseek_v3.py``
(``e_score_correction_bias`` is the bias, ``routed_scaling_factor`` the scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..validation import check_float_tensor, check_positive_float, check_positive_int
from .decision import Router, RouterOutput


def group_limited_mask(scores: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """``[T, E]`` bool: True for experts inside each token's best ``topk_group`` of ``n_group`` groups.

    Experts ``0..E/n_group - 1`` form group 0, and so on. A group's score is the sum of its
    two highest ``scores`` (its only score when a group holds one expert).
    """
    check_float_tensor("scores", scores, min_dims=2)
    num_tokens, num_experts = scores.shape
    check_positive_int("n_group", n_group)
    check_positive_int("topk_group", topk_group)
    if num_experts % n_group or not 1 <= topk_group <= n_group:
        raise ValueError(f"n_group must divide num_experts={num_experts} and topk_group lie in 1..n_group; "
                         f"got n_group={n_group}, topk_group={topk_group}")
    grouped = scores.view(num_tokens, n_group, num_experts // n_group)            # [T, G, E/G]
    group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)  # [T, G]
    best_groups = group_scores.topk(topk_group, dim=-1).indices                   # [T, topk_group]
    group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best_groups, True)
    return group_mask.repeat_interleave(num_experts // n_group, dim=1)            # [T, E]


def selection_bias_delta(load: torch.Tensor, rate: float = 1e-3) -> torch.Tensor:
    """``[E]`` change of the selection bias for an expert load ``[E]`` (tokens per expert).

    ``rate * sign(mean_load - load)``, then mean-centred so the biases do not drift together:
    an expert above the mean load gets ``-rate``, one below gets ``+rate``.
    """
    if not isinstance(load, torch.Tensor) or load.dim() != 1:
        raise TypeError(f"load must be a 1-D tensor of tokens per expert [E], got {load!r:.60}")
    check_positive_float("rate", rate)
    load = load.float()
    delta = rate * torch.sign(load.mean() - load)
    return delta - delta.mean()


class DeepSeekV3Router(Router):
    """DeepSeek-V3's router (see the module docstring for the four rules it changes).

    Args:
        input_dim, num_experts, top_k: as :class:`~moe_teach.routing.Router`.
        n_group: number of expert groups (must divide ``num_experts``); 1 = no group limit.
        topk_group: groups a token may choose from, ``1 <= topk_group <= n_group``.
        renormalize: renormalise the ``k`` weights to sum to 1 before scaling (HF ``norm_topk_prob``).
        scaling_factor: multiplies the weights (HF ``routed_scaling_factor``).
    """

    # "sequence" is DeepSeek-V3's own loss; "switch" (on the normalised scores) and "z" are declared
    # too, so lesson 07's training loop, which reads both, runs unchanged with this router.
    aux_losses = ("switch", "z", "sequence")

    def __init__(self, input_dim: int, num_experts: int, top_k: int = 2, n_group: int = 1,
                 topk_group: int = 1, renormalize: bool = True, scaling_factor: float = 1.0):
        super().__init__(input_dim, num_experts, top_k)
        check_positive_int("n_group", n_group)
        check_positive_int("topk_group", topk_group)
        if num_experts % n_group:
            raise ValueError(f"n_group must divide num_experts={num_experts}, got n_group={n_group}")
        if topk_group > n_group:
            raise ValueError(f"topk_group must be between 1 and n_group={n_group}, got {topk_group}")
        if top_k > topk_group * (num_experts // n_group):
            raise ValueError(f"top_k={top_k} is more than the {topk_group * (num_experts // n_group)} experts "
                             f"in topk_group={topk_group} groups of {num_experts // n_group}")
        if not isinstance(renormalize, bool):
            raise TypeError(f"renormalize must be True or False, got {renormalize!r}")
        self.n_group, self.topk_group, self.renormalize = n_group, topk_group, renormalize
        self.scaling_factor = check_positive_float("scaling_factor", scaling_factor)
        self.register_buffer("selection_bias", torch.zeros(num_experts))   # saved, never trained

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Route ``x`` ``[T, D]``."""
        check_float_tensor("x", x, last_dim=self.input_dim)
        logits = F.linear(x.float(), self.proj.weight.float())                 # [T, E]
        scores = logits.sigmoid()
        biased = scores + self.selection_bias                                   # for the choice only
        allowed = group_limited_mask(biased, self.n_group, self.topk_group)
        indices = biased.masked_fill(~allowed, float("-inf")).topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, indices)                                     # unbiased
        if self.renormalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        probs = scores / scores.sum(dim=-1, keepdim=True)                       # for the balance losses
        return RouterOutput(logits, probs, indices, weights * self.scaling_factor, clean_logits=logits,
                            selection_scores=biased)

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor, rate: float = 1e-3) -> None:
        """Nudge :attr:`selection_bias` towards the under-loaded experts (call after a training step)."""
        if load.shape != self.selection_bias.shape:
            raise ValueError(f"load must have shape [{self.num_experts}], got {tuple(load.shape)}")
        self.selection_bias += selection_bias_delta(load, rate).to(self.selection_bias)

    def extra_repr(self) -> str:
        return (f"n_group={self.n_group}, topk_group={self.topk_group}, renormalize={self.renormalize}, "
                f"scaling_factor={self.scaling_factor}")
