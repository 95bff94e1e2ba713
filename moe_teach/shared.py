"""Shared experts: feed-forward networks every token uses, added to the routed output.

DeepSeekMoE isolates a few *shared* experts that every token passes through, so the routed
experts need not each relearn common knowledge:

    y = routed_moe(x) + shared(x)                       # DeepSeekMoE, DeepSeek-V3
    y = routed_moe(x) + sigmoid(gate(x)) * shared(x)    # Qwen2-MoE: a learned scalar gate per token

``N`` shared experts of hidden width ``H`` are stored as **one** feed-forward of width ``N * H``
(a sum of ``N`` two-layer networks is one network with their hidden units side by side), as
Hugging Face's ``DeepseekV3MoE`` does (``moe_intermediate_size * n_shared_experts``).
"""

from __future__ import annotations

import torch
from torch import nn

from .experts import Expert
from .validation import check_bool, check_float_tensor, check_positive_int


def shared_combine(routed: torch.Tensor, shared: torch.Tensor, gate_logits: torch.Tensor | None = None) -> torch.Tensor:
    """``routed [T, O] + shared [T, O]``, the shared part scaled by ``sigmoid(gate_logits [T, 1])`` if given."""
    check_float_tensor("routed", routed, min_dims=2)
    check_float_tensor("shared", shared, min_dims=2)
    if shared.shape != routed.shape:
        raise ValueError(f"shared must have the shape of routed {tuple(routed.shape)}, got {tuple(shared.shape)}")
    if gate_logits is not None:
        check_float_tensor("gate_logits", gate_logits, last_dim=1, min_dims=2)
    if gate_logits is None:
        return routed + shared
    return routed + torch.sigmoid(gate_logits) * shared


class SharedExperts(nn.Module):
    """The always-on part of an MoE layer: ``[T, D] -> [T, O]``, added by :meth:`add_to`.

    Args:
        input_dim, output_dim, activation, bias: as :class:`~moe_teach.experts.Expert`.
        num_experts: shared experts ``N`` (stored fused, width ``N * hidden_dim``).
        hidden_dim: hidden width ``H`` of one shared expert.
        gated: Qwen2-MoE's ``sigmoid(x @ w_gate)`` scale (a ``Linear(D, 1)`` without bias).
    """

    def __init__(self, input_dim: int, num_experts: int, hidden_dim: int, output_dim: int | None = None,
                 activation: str = "relu", bias: bool = True, gated: bool = False):
        super().__init__()
        check_positive_int("num_experts", num_experts)
        check_positive_int("hidden_dim", hidden_dim)
        check_bool("gated", gated)
        self.num_experts = num_experts
        self.expert = Expert(input_dim, num_experts * hidden_dim, output_dim, activation, bias)
        self.gate = nn.Linear(input_dim, 1, bias=False) if gated else None

    def add_to(self, routed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``routed`` ``[T, O]`` plus the (gated) shared output of ``tokens`` ``[T, D]``."""
        gate_logits = None if self.gate is None else self.gate(tokens)
        return shared_combine(routed, self.expert(tokens), gate_logits)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The (gated) shared output alone, ``[T, D] -> [T, O]``."""
        check_float_tensor("tokens", tokens, min_dims=2)
        out = self.expert(tokens)
        return out if self.gate is None else torch.sigmoid(self.gate(tokens)) * out
