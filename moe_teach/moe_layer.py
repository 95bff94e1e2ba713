"""The Mixture-of-Experts layer: a router, a list of experts and a dispatch method.

``MoELayer(input_dim, output_dim, num_experts=4, top_k=2)`` called on ``[..., input_dim]``
returns ``[..., output_dim]``. Pass ``return_record=True`` to also get the
:class:`~moe_teach.routing.RoutingRecord` of the pass; the latest one is kept in
``layer.last_record`` either way.

One forward pass, in four steps:

    routed = router(tokens)                         # RouterOutput: who goes where, with what weight
    kept   = apply_capacity(...)                    # [T, k] which assignments fit (all if dropless)
    output = DISPATCHERS[dispatch](tokens, experts, routed.expert_indices, routed.expert_weights, kept)
    record = make_record(routed, kept, ...)         # plus the auxiliary losses the router declares,
                                                    # each computed when first read
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from .dispatch import DISPATCHERS
from .experts import ACTIVATIONS, check_expert_input, make_experts
from .losses import LazyAuxLosses
from .routing import ROUTERS, RouterOutput, RoutingRecord, apply_capacity, build_router, expert_capacity
from .routing.capacity import check_capacity_factor
from .shared import SharedExperts
from .validation import (
    check_bool,
    check_choice,
    check_dtype_matches,
    check_instance,
    check_mask,
    check_non_negative_int,
    check_positive_int,
    check_top_k,
)


@dataclass
class MoEConfig:
    """How an MoE feed-forward routes and dispatches (the block config holds one; see ``BlockConfig``).

    Attributes:
        num_experts: ``E``.
        top_k: experts per token (slots per token for routers with a variable count).
        router: a name in :data:`moe_teach.routing.ROUTERS`.
        router_options: keyword options of that router (e.g. ``{"jitter": 0.01}``).
        capacity_factor: ``None`` for dropless, else a number > 0.
        dispatch: a name in :data:`moe_teach.dispatch.DISPATCHERS`.
        num_shared_experts: experts every token uses (DeepSeekMoE); 0 = none.
        shared_hidden_dim: hidden width of one shared expert (``None``: the routed experts' width).
        shared_gate: scale the shared output by ``sigmoid(gate(x))`` (Qwen2-MoE).
    """

    num_experts: int = 4
    top_k: int = 2
    router: str = "softmax"
    router_options: dict = field(default_factory=dict)
    capacity_factor: float | None = None
    dispatch: str = "grouped"
    num_shared_experts: int = 0
    shared_hidden_dim: int | None = None
    shared_gate: bool = False

    def __post_init__(self):
        check_positive_int("num_experts", self.num_experts)
        check_top_k(self.top_k, self.num_experts)
        check_choice("router", self.router, tuple(ROUTERS))
        if not isinstance(self.router_options, dict):
            raise TypeError(f"router_options must be a dict, got {type(self.router_options).__name__}")
        check_choice("dispatch", self.dispatch, tuple(DISPATCHERS))
        if self.capacity_factor is not None:
            check_capacity_factor(self.capacity_factor)
        check_shared(self.num_shared_experts, self.shared_hidden_dim, self.shared_gate)

    def to_dict(self) -> dict:
        return asdict(self)


class MoELayer(nn.Module):
    """A sparse Mixture-of-Experts feed-forward layer.

    Args:
        input_dim: token width ``D``.
        output_dim: output width ``O`` (defaults to ``input_dim``).
        num_experts: ``E``.
        top_k: experts per token, ``1 <= top_k <= E``.
        hidden_dim: each expert's hidden width (default ``4 * input_dim``).
        activation: expert activation, ``"relu"``, ``"gelu"`` or ``"swiglu"``.
        router: a name in :data:`~moe_teach.routing.ROUTERS` (``"softmax"``: Mixtral,
            ``"noisy"``: Shazeer 2017 noisy top-k).
        renormalize: renormalise the top-k weights (default: True for k > 1, False for k = 1).
        jitter: Switch's multiplicative router-input noise while training (0 = off).
        capacity_factor: ``None`` for dropless, else a number > 0 (capacity per expert is
            ``ceil(capacity_factor * tokens * top_k / E)``).
        dispatch: a name in :data:`~moe_teach.dispatch.DISPATCHERS` (``"grouped"``: sorted,
            the default; ``"loop"``; ``"mask"``: compute all).
        bias: whether expert linear layers have biases.
        router_options: further options of the chosen router (e.g. ``{"min_noise_std": 0.1}``
            for ``"noisy"``); ``renormalize`` and ``jitter`` are shortcuts for two of them.
        num_shared_experts, shared_hidden_dim, shared_gate: always-on shared experts (see
            :mod:`moe_teach.shared`), in ``layer.shared``; ``layer.experts`` holds the routed ones.
    """

    def __init__(self, input_dim: int, output_dim: int | None = None, num_experts: int = 4, top_k: int = 2,
                 hidden_dim: int | None = None, activation: str = "relu", router: str = "softmax",
                 renormalize: bool | None = None, jitter: float = 0.0, capacity_factor: float | None = None,
                 dispatch: str = "grouped", bias: bool = True, router_options: dict | None = None,
                 num_shared_experts: int = 0, shared_hidden_dim: int | None = None, shared_gate: bool = False):
        super().__init__()
        check_positive_int("input_dim", input_dim)
        output_dim = input_dim if output_dim is None else check_positive_int("output_dim", output_dim)
        check_positive_int("num_experts", num_experts)
        hidden_dim = 4 * input_dim if hidden_dim is None else check_positive_int("hidden_dim", hidden_dim)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("router", router, tuple(ROUTERS))
        check_choice("dispatch", dispatch, tuple(DISPATCHERS))
        if capacity_factor is not None:
            check_capacity_factor(capacity_factor)
        check_bool("bias", bias)
        self.input_dim, self.output_dim, self.hidden_dim = input_dim, output_dim, hidden_dim
        self.num_experts, self.activation = num_experts, activation
        self.capacity_factor, self.dispatch = capacity_factor, dispatch
        options = _router_options(router_options, renormalize, jitter)
        self.router = build_router(ROUTERS, router, input_dim, num_experts, top_k, options)
        if capacity_factor is not None and not self.router.uses_capacity:
            raise ValueError(f"capacity_factor does not apply to router {router!r}, which enforces its own "
                             "capacity; pass it in router_options if the router has such an option")
        self.experts = make_experts(num_experts, input_dim, hidden_dim, output_dim, activation, bias)
        check_shared(num_shared_experts, shared_hidden_dim, shared_gate)
        self.shared = None if num_shared_experts == 0 else SharedExperts(
            input_dim, num_shared_experts, shared_hidden_dim or hidden_dim, output_dim, activation, bias, shared_gate)
        self.last_record: RoutingRecord | None = None

    @classmethod
    def from_config(cls, input_dim: int, hidden_dim: int, activation: str, config: MoEConfig,
                    output_dim: int | None = None, bias: bool = True) -> MoELayer:
        """The layer an :class:`MoEConfig` describes, for tokens of width ``input_dim``."""
        check_instance("config", config, MoEConfig)
        return cls(input_dim, output_dim, config.num_experts, config.top_k, hidden_dim, activation,
                   router=config.router, capacity_factor=config.capacity_factor, dispatch=config.dispatch,
                   bias=bias, router_options=dict(config.router_options),
                   num_shared_experts=config.num_shared_experts, shared_hidden_dim=config.shared_hidden_dim,
                   shared_gate=config.shared_gate)

    @property
    def top_k(self) -> int:
        return self.router.top_k

    def capacity(self, num_tokens: int) -> int | None:
        """Assignments each expert may take for a batch of ``num_tokens`` (None = dropless)."""
        check_non_negative_int("num_tokens", num_tokens)
        if self.capacity_factor is None or not self.router.uses_capacity or num_tokens == 0:
            return None
        return expert_capacity(num_tokens, self.num_experts, self.top_k, self.capacity_factor)

    def forward(self, x: torch.Tensor, return_record: bool = False, token_mask: torch.Tensor | None = None):
        """``x`` ``[..., input_dim]`` -> ``[..., output_dim]`` (and the record if asked).

        ``token_mask`` (shape ``x.shape[:-1]``, True = real token) keeps padding out of the
        auxiliary losses; padded tokens are still computed. Empty input (no tokens) gives an
        empty output, and auxiliary losses of 0 when there is no real token to balance.
        """
        check_expert_input(x, self.input_dim)
        check_dtype_matches("x", x, self.experts)
        check_bool("return_record", return_record)
        if token_mask is not None:
            check_mask("token_mask", token_mask, x.shape[:-1])
        tokens = x.reshape(-1, self.input_dim)                                      # [T, D]
        routed = self.router(tokens)
        capacity = self.capacity(tokens.shape[0])
        kept = apply_capacity(routed.expert_indices, self.num_experts, capacity, routed.valid)  # [T, k]
        every_slot_kept = capacity is None and routed.valid is None
        output = DISPATCHERS[self.dispatch](tokens, self.experts, routed.expert_indices,
                                            routed.expert_weights, None if every_slot_kept else kept)
        if self.shared is not None:
            output = self.shared.add_to(output, tokens)
        flat_mask = None if token_mask is None else token_mask.reshape(-1)
        record = self.make_record(routed, kept, capacity, flat_mask, x.shape[-2] if x.dim() > 2 else None)
        self.last_record = record
        output = output.reshape(*x.shape[:-1], self.output_dim)
        return (output, record) if return_record else output

    def make_record(self, routed: RouterOutput, kept: torch.Tensor, capacity: int | None,
                    token_mask: torch.Tensor | None = None, sequence_length: int | None = None) -> RoutingRecord:
        """The :class:`RoutingRecord` of a routing decision, with the auxiliary losses the router declares.

        The losses are a :class:`~moe_teach.losses.LazyAuxLosses`: each is computed the first
        time it is read (a training loop reads the ones it adds to the loss; evaluation reads none).

        ``kept`` ``[T, k]`` is the capacity mask; ``token_mask`` ``[T]`` (True = real token)
        keeps padding out of the auxiliary losses.
        """
        record = RoutingRecord(
            logits=routed.logits, probs=routed.probs, expert_indices=routed.expert_indices,
            expert_weights=routed.expert_weights, kept=kept, capacity=capacity, token_mask=token_mask,
            valid=routed.valid, selection_scores=routed.selection_scores, sequence_length=sequence_length,
        )
        real_tokens = record.num_tokens if token_mask is None else int(token_mask.sum())
        if real_tokens == 0:   # nothing to balance: 0, not the NaN of a mean over no tokens
            record.aux_losses = {name: routed.logits.sum() * 0 for name in self.router.aux_losses}
        else:
            # computed when read, from a copy of the record without its losses: no reference cycle
            # keeps the forward pass's tensors alive once the record is dropped
            record.aux_losses = LazyAuxLosses(self.router.aux_losses, replace(record), routed)
        return record

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, output_dim={self.output_dim}, num_experts={self.num_experts}, "
                f"top_k={self.top_k}, capacity_factor={self.capacity_factor}, dispatch={self.dispatch!r}")


def check_shared(num_shared_experts, shared_hidden_dim, shared_gate) -> None:
    """Validate the shared-expert settings (``num_shared_experts`` >= 0, width > 0, gate a bool)."""
    check_non_negative_int("num_shared_experts", num_shared_experts)
    if shared_hidden_dim is not None:
        check_positive_int("shared_hidden_dim", shared_hidden_dim)
    check_bool("shared_gate", shared_gate)


def _router_options(router_options: dict | None, renormalize: bool | None, jitter: float) -> dict:
    """``router_options`` plus the ``renormalize``/``jitter`` shortcuts when they are not their defaults."""
    if router_options is not None and not isinstance(router_options, dict):
        raise TypeError(f"router_options must be a dict of option -> value, got {type(router_options).__name__}")
    options = dict(router_options or {})
    shortcuts = {}
    if renormalize is not None:
        shortcuts["renormalize"] = renormalize
    if isinstance(jitter, bool) or jitter != 0:
        shortcuts["jitter"] = jitter
    for name, value in shortcuts.items():
        if name in options:
            raise ValueError(f"{name} given twice: as an argument and in router_options")
        options[name] = value
    return options
