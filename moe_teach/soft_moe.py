"""Soft MoE (Puigcerver et al. 2023): experts process weighted averages of tokens, not tokens.

Not a token router: there is no discrete choice, so nothing is dropped and every expert
gets a gradient. For a group of ``m`` tokens ``X [m, D]`` and ``n = E * s`` slots
(``s`` slots per expert), with one learned vector per slot ``phi [D, n]``:

    logits   = X @ phi                        # [m, n]
    dispatch = softmax(logits, over tokens)   # [m, n], each slot's column sums to 1
    combine  = softmax(logits, over slots)    # [m, n], each token's row sums to 1
    slots    = dispatch^T @ X                 # [n, D]  slot j = a weighted average of all tokens
    outputs  = expert_{j // s}(slots[j])      # [n, O]
    Y        = combine @ outputs              # [m, O]

Because every slot mixes **all** tokens of the group, a token's output depends on every
other token, later ones included: Soft MoE cannot run in a causal decoder.

Tensor letters: ``b`` groups, ``m`` tokens per group, ``n`` slots, ``d`` width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .experts import ACTIVATIONS, check_expert_input, make_experts
from .validation import check_bool, check_choice, check_float_tensor, check_positive_int


@dataclass
class SoftMoERecord:
    """One Soft MoE pass: ``dispatch`` and ``combine`` weights ``[b, m, n]`` (softmax over m, over n)."""

    logits: torch.Tensor
    dispatch: torch.Tensor
    combine: torch.Tensor

    def __post_init__(self):
        for name in ("logits", "dispatch", "combine"):
            check_float_tensor(name, getattr(self, name), min_dims=3)


def soft_moe_weights(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dispatch, combine)`` from ``logits`` ``[b, m, n]``: softmax over tokens (dim 1), over slots (dim 2)."""
    check_float_tensor("logits", logits, min_dims=3)
    return torch.softmax(logits, dim=1), torch.softmax(logits, dim=2)


class SoftMoELayer(nn.Module):
    """Soft MoE ``[b, m, D] -> [b, m, O]`` (a ``[m, D]`` input is one group).

    Args:
        input_dim, output_dim, hidden_dim, activation, bias: as :class:`~moe_teach.MoELayer`.
        num_experts: ``E``.
        slots_per_expert: ``s``; the experts process ``E * s`` slots per group, so the compute
            per group equals a top-k layer's on ``E * s / k`` tokens.
    """

    def __init__(self, input_dim: int, output_dim: int | None = None, num_experts: int = 4,
                 slots_per_expert: int = 1, hidden_dim: int | None = None, activation: str = "relu",
                 bias: bool = True):
        super().__init__()
        check_positive_int("input_dim", input_dim)
        output_dim = input_dim if output_dim is None else check_positive_int("output_dim", output_dim)
        check_positive_int("num_experts", num_experts)
        check_positive_int("slots_per_expert", slots_per_expert)
        hidden_dim = 4 * input_dim if hidden_dim is None else check_positive_int("hidden_dim", hidden_dim)
        check_choice("activation", activation, ACTIVATIONS)
        self.input_dim, self.output_dim, self.hidden_dim = input_dim, output_dim, hidden_dim
        self.num_experts, self.slots_per_expert = num_experts, slots_per_expert
        self.slot_embeddings = nn.Parameter(torch.randn(input_dim, num_experts * slots_per_expert) / input_dim ** 0.5)
        self.experts = make_experts(num_experts, input_dim, hidden_dim, output_dim, activation, bias)
        self.last_record: SoftMoERecord | None = None

    @property
    def num_slots(self) -> int:
        return self.num_experts * self.slots_per_expert

    def forward(self, x: torch.Tensor, return_record: bool = False):
        """``x`` ``[b, m, D]`` or ``[m, D]`` -> same leading shape with width ``O``."""
        check_expert_input(x, self.input_dim)
        check_bool("return_record", return_record)
        if x.dim() not in (2, 3):
            raise ValueError(f"x must have shape [tokens, {self.input_dim}] or [groups, tokens, "
                             f"{self.input_dim}], got {tuple(x.shape)}")
        groups = x if x.dim() == 3 else x.unsqueeze(0)                                  # [b, m, d]
        logits = groups @ self.slot_embeddings.to(groups.dtype)                         # [b, m, n]
        dispatch, combine = soft_moe_weights(logits)
        slots = torch.einsum("bmn,bmd->bnd", dispatch, groups)                          # [b, n, d]
        per_expert = slots.split(self.slots_per_expert, dim=1)                          # E x [b, s, d]
        outputs = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, per_expert)], dim=1)
        y = torch.einsum("bmn,bno->bmo", combine, outputs)                              # [b, m, o]
        record = SoftMoERecord(logits, dispatch, combine)
        self.last_record = record
        y = y if x.dim() == 3 else y.squeeze(0)
        return (y, record) if return_record else y

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, output_dim={self.output_dim}, num_experts={self.num_experts}, "
                f"slots_per_expert={self.slots_per_expert}")
