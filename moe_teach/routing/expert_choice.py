"""Expert-choice routing (Zhou et al. 2022): each expert picks its tokens.

What :class:`ExpertChoiceRouter` changes against :class:`~moe_teach.routing.TopKRouter`: the
top-k runs over **tokens** for each expert instead of over experts for each token. Every
expert takes exactly ``C = min(T, ceil(capacity_factor * T * top_k / E))`` tokens (here
``top_k`` is the average number of experts per token, Zhou et al.'s capacity factor ``c``),
so the load is perfectly balanced by construction and nothing is dropped by a capacity
rule. The price: a token may be chosen by no expert or by several, and, because an expert
compares all the tokens of the batch, a token's output depends on the other tokens,
**later ones included**: a decoder cannot use it at generation time (flaxformer's
``ExpertsChooseMaskedRouter`` warns about this).

The decision is expressed in the routing contract with ``E`` slots per token: slot ``j``
of token ``t`` names an expert, ``valid[t, j]`` says whether that expert chose ``t``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..validation import check_float_tensor, check_positive_float, check_positive_int, check_top_k
from .capacity import check_capacity_factor
from .decision import Router, RouterOutput


def expert_choice(probs: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each expert's ``capacity`` best tokens: ``(token_ids [E, C], weights [E, C])``.

    ``probs`` ``[T, E]`` are the router's per-token softmax probabilities; expert ``e`` takes
    the ``C`` tokens with the highest ``probs[:, e]`` and weighs each by that probability.
    """
    check_float_tensor("probs", probs, min_dims=2)
    check_positive_int("capacity", capacity)
    if capacity > probs.shape[0]:
        raise ValueError(f"capacity must be at most the number of tokens {probs.shape[0]}, got {capacity}")
    weights, token_ids = probs.t().topk(capacity, dim=-1)                         # [E, C]
    return token_ids, weights


def choice_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Tokens each expert takes: ``min(T, ceil(capacity_factor * T * top_k / E))``."""
    check_positive_int("num_tokens", num_tokens)
    check_positive_int("num_experts", num_experts)
    check_top_k(top_k, num_experts)
    check_capacity_factor(capacity_factor)
    return min(num_tokens, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


class ExpertChoiceRouter(Router):
    """Expert-choice routing: every expert takes its top-``C`` tokens.

    Args:
        input_dim, num_experts: as :class:`~moe_teach.routing.Router`.
        top_k: experts per token **on average** (``C = ceil(capacity_factor * T * top_k / E)``).
        capacity_factor: scales ``C`` (default 1.0).
    """

    aux_losses = ()           # balanced by construction
    uses_capacity = False     # enforces its own capacity: exactly C tokens per expert

    def __init__(self, input_dim: int, num_experts: int, top_k: int = 2, capacity_factor: float = 1.0):
        super().__init__(input_dim, num_experts, top_k)
        self.capacity_factor = check_positive_float("capacity_factor", capacity_factor)

    def capacity(self, num_tokens: int) -> int:
        """``C`` for a batch of ``num_tokens`` tokens."""
        return choice_capacity(num_tokens, self.num_experts, self.top_k, self.capacity_factor)

    def experts_per_token(self) -> float:
        """Average experts per token (``top_k * capacity_factor``, before rounding ``C`` up)."""
        return min(float(self.num_experts), self.top_k * self.capacity_factor)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Route ``x`` ``[T, D]``: ``E`` slots per token, ``valid`` marks the experts that chose it."""
        check_float_tensor("x", x, last_dim=self.input_dim)
        logits = F.linear(x.float(), self.proj.weight.float())                     # [T, E] float32
        probs = torch.softmax(logits, dim=-1)                                      # [T, E]
        token_ids, _ = expert_choice(probs, self.capacity(x.shape[0]))
        chosen = torch.zeros_like(probs, dtype=torch.bool)                         # [T, E]
        chosen.scatter_(0, token_ids.t(), True)
        indices = probs.argsort(dim=-1, descending=True)                           # [T, E] best first
        valid = chosen.gather(1, indices)
        weights = probs.gather(1, indices) * valid
        return RouterOutput(logits, probs, indices, weights, clean_logits=logits, valid=valid)
