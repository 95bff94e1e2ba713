"""The Mixture-of-Experts layer: a router, a list of experts and a dispatch method.

``MoELayer(input_dim, output_dim, num_experts=4, top_k=2)`` called on ``[..., input_dim]``
returns ``[..., output_dim]``. Pass ``return_record=True`` to also get the
:class:`~moe_teach.routing.RoutingRecord` of the pass; the latest one is kept in
``layer.last_record`` either way.
"""

from __future__ import annotations

import torch
from torch import nn

from .dispatch import DISPATCHERS
from .experts import ACTIVATIONS, check_expert_input, make_experts
from .losses import importance_loss, load_loss, router_z_loss, switch_load_balancing_loss
from .routing import ROUTERS, RoutingRecord, apply_capacity, expert_capacity, smooth_load
from .validation import check_choice, check_positive_float, check_positive_int


class MoELayer(nn.Module):
    """A sparse Mixture-of-Experts feed-forward layer.

    Args:
        input_dim: token width ``D``.
        output_dim: output width ``O`` (defaults to ``input_dim``).
        num_experts: ``E``.
        top_k: experts per token, ``1 <= top_k <= E``.
        hidden_dim: each expert's hidden width (default ``4 * input_dim``).
        activation: expert activation, ``"relu"``, ``"gelu"`` or ``"swiglu"``.
        router: ``"softmax"`` (Mixtral) or ``"noisy"`` (Shazeer 2017 noisy top-k).
        renormalize: renormalise the top-k weights (default: True for k > 1, False for k = 1).
        jitter: Switch's multiplicative router-input noise while training (0 = off).
        capacity_factor: ``None`` for dropless, else a number > 0 (capacity per expert is
            ``ceil(capacity_factor * tokens * top_k / E)``).
        dispatch: ``"grouped"`` (sorted, default), ``"loop"`` or ``"mask"`` (compute all).
        bias: whether expert linear layers have biases.
    """

    def __init__(self, input_dim: int, output_dim: int | None = None, num_experts: int = 4, top_k: int = 2,
                 hidden_dim: int | None = None, activation: str = "relu", router: str = "softmax",
                 renormalize: bool | None = None, jitter: float = 0.0, capacity_factor: float | None = None,
                 dispatch: str = "grouped", bias: bool = True):
        super().__init__()
        check_positive_int("input_dim", input_dim)
        output_dim = input_dim if output_dim is None else check_positive_int("output_dim", output_dim)
        check_positive_int("num_experts", num_experts)
        hidden_dim = 4 * input_dim if hidden_dim is None else check_positive_int("hidden_dim", hidden_dim)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("router", router, tuple(ROUTERS))
        check_choice("dispatch", dispatch, tuple(DISPATCHERS))
        if capacity_factor is not None:
            check_positive_float("capacity_factor", capacity_factor)
        self.input_dim, self.output_dim, self.hidden_dim = input_dim, output_dim, hidden_dim
        self.num_experts, self.activation = num_experts, activation
        self.capacity_factor, self.dispatch = capacity_factor, dispatch
        self.router = ROUTERS[router](input_dim, num_experts, top_k, renormalize=renormalize, jitter=jitter)
        self.experts = make_experts(num_experts, input_dim, hidden_dim, output_dim, activation, bias)
        self.last_record: RoutingRecord | None = None

    @property
    def top_k(self) -> int:
        return self.router.top_k

    def capacity(self, num_tokens: int) -> int | None:
        """Assignments each expert may take for a batch of ``num_tokens`` (None = dropless)."""
        if self.capacity_factor is None:
            return None
        return expert_capacity(num_tokens, self.num_experts, self.top_k, self.capacity_factor)

    def forward(self, x: torch.Tensor, return_record: bool = False, token_mask: torch.Tensor | None = None):
        """``x`` ``[..., input_dim]`` -> ``[..., output_dim]`` (and the record if asked).

        ``token_mask`` (shape ``x.shape[:-1]``, True = real token) keeps padding out of the
        auxiliary losses; padded tokens are still computed.
        """
        check_expert_input(x, self.input_dim)
        if token_mask is not None and token_mask.shape != x.shape[:-1]:
            raise ValueError(f"token_mask must have shape {tuple(x.shape[:-1])}, got {tuple(token_mask.shape)}")
        tokens = x.reshape(-1, self.input_dim)                                      # [T, D]
        routed = self.router(tokens)
        capacity = self.capacity(tokens.shape[0])
        kept = apply_capacity(routed.expert_indices, self.num_experts, capacity)   # [T, k]
        output = DISPATCHERS[self.dispatch](tokens, self.experts, routed.expert_indices,
                                            routed.expert_weights, None if capacity is None else kept)
        flat_mask = None if token_mask is None else token_mask.reshape(-1).bool()
        record = self.make_record(routed, kept, capacity, flat_mask)
        self.last_record = record
        output = output.reshape(*x.shape[:-1], self.output_dim)
        return (output, record) if return_record else output

    def make_record(self, routed, kept: torch.Tensor, capacity: int | None,
                    token_mask: torch.Tensor | None = None) -> RoutingRecord:
        """The :class:`RoutingRecord` of a routing decision, auxiliary losses included.

        ``kept`` ``[T, k]`` is the capacity mask; ``token_mask`` ``[T]`` (True = real token)
        keeps padding out of the auxiliary losses.
        """
        record = RoutingRecord(
            logits=routed.logits, probs=routed.probs, expert_indices=routed.expert_indices,
            expert_weights=routed.expert_weights, kept=kept,
            capacity=capacity, token_mask=token_mask,
        )
        record.aux_losses = {
            "switch": switch_load_balancing_loss(record.probs, record.expert_indices, token_mask),
            "z": router_z_loss(routed.clean_logits, token_mask),
            "importance": importance_loss(record.dense_weights(), token_mask),
            "load": load_loss(smooth_load(routed, self.top_k, token_mask)),
        }
        return record

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, output_dim={self.output_dim}, num_experts={self.num_experts}, "
                f"top_k={self.top_k}, capacity_factor={self.capacity_factor}, dispatch={self.dispatch!r}")
