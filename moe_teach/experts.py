"""Experts: the feed-forward networks a Mixture-of-Experts layer chooses between.

An expert is an ordinary two-layer feed-forward network, exactly the one a dense
transformer block uses. Three activations are offered:

* ``"relu"`` and ``"gelu"``: ``down(act(up(x)))`` (the original transformer, GPT-2).
* ``"swiglu"``: ``down(silu(gate(x)) * up(x))`` (LLaMA, Mixtral's ``w1``/``w3``/``w2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .validation import (
    check_bool,
    check_choice,
    check_dtype_matches,
    check_float_tensor,
    check_parameter_budget,
    check_positive_int,
)

ACTIVATIONS = ("relu", "gelu", "swiglu")


class Expert(nn.Module):
    """A two-layer feed-forward network ``[..., input_dim] -> [..., output_dim]``.

    Args:
        input_dim: width of the input.
        hidden_dim: width of the hidden layer.
        output_dim: width of the output (defaults to ``input_dim``).
        activation: ``"relu"``, ``"gelu"`` or ``"swiglu"``.
        bias: whether the linear layers have a bias (production LLM experts have none).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int | None = None,
        activation: str = "relu",
        bias: bool = True,
    ):
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_positive_int("hidden_dim", hidden_dim)
        output_dim = input_dim if output_dim is None else check_positive_int("output_dim", output_dim)
        check_choice("activation", activation, ACTIVATIONS)
        check_bool("bias", bias)
        check_parameter_budget(f"an Expert with input_dim={input_dim}, hidden_dim={hidden_dim}, "
                               f"output_dim={output_dim}", expert_parameter_count(input_dim, hidden_dim, output_dim,
                                                                                 activation, bias))
        self.input_dim, self.hidden_dim, self.output_dim = input_dim, hidden_dim, output_dim
        self.activation = activation
        self.up = nn.Linear(input_dim, hidden_dim, bias=bias)
        self.gate = nn.Linear(input_dim, hidden_dim, bias=bias) if activation == "swiglu" else None
        self.down = nn.Linear(hidden_dim, output_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[..., input_dim]`` -> ``[..., output_dim]``."""
        check_expert_input(x, self.input_dim)
        check_dtype_matches("x", x, self)
        return self.down(self.hidden(x))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The activated hidden layer, ``[..., hidden_dim]``."""
        if self.activation == "swiglu":
            return F.silu(self.gate(x)) * self.up(x)
        if self.activation == "gelu":
            return F.gelu(self.up(x))
        return F.relu(self.up(x))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


def expert_parameter_count(input_dim: int, hidden_dim: int, output_dim: int | None = None,
                           activation: str = "relu", bias: bool = True) -> int:
    """Number of parameters of one :class:`Expert`, computed by formula (no module built)."""
    check_positive_int("input_dim", input_dim)
    check_positive_int("hidden_dim", hidden_dim)
    output_dim = input_dim if output_dim is None else check_positive_int("output_dim", output_dim)
    check_choice("activation", activation, ACTIVATIONS)
    check_bool("bias", bias)
    in_layers = 2 if activation == "swiglu" else 1
    count = in_layers * input_dim * hidden_dim + hidden_dim * output_dim
    if bias:
        count += in_layers * hidden_dim + output_dim
    return count


def make_experts(num_experts: int, input_dim: int, hidden_dim: int, output_dim: int | None = None,
                 activation: str = "relu", bias: bool = True) -> nn.ModuleList:
    """``num_experts`` independent :class:`Expert` modules in an ``nn.ModuleList``."""
    check_positive_int("num_experts", num_experts)
    per_expert = expert_parameter_count(input_dim, hidden_dim, output_dim, activation, bias)
    check_parameter_budget(f"num_experts={num_experts} experts of {per_expert:,} parameters",
                           num_experts * per_expert)
    return nn.ModuleList(Expert(input_dim, hidden_dim, output_dim, activation, bias) for _ in range(num_experts))


def check_expert_input(x: torch.Tensor, input_dim: int) -> torch.Tensor:
    """Validate an expert/MoE input ``[..., input_dim]`` (float, matching last dim)."""
    check_positive_int("input_dim", input_dim)
    return check_float_tensor("x", x, last_dim=input_dim)
