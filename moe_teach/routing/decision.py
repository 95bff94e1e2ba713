"""The routing contract: what every router returns, and what every MoE forward pass records.

A router maps tokens ``[T, D]`` to a :class:`RouterOutput` (the *decision*). Everything else
reads that one type: capacity, the dispatch paths, the :class:`RoutingRecord`, the auxiliary
losses, the explorers and the parameter counting. It expresses:

* token choice (Mixtral, Switch): ``expert_indices [T, k]``, every slot used;
* a variable number of experts per token (expert choice: a token may be picked by 0..E
  experts): ``k`` slots per token with ``valid [T, k]`` False for the slots not used;
* a selection score that differs from the combine weight (DeepSeek-V3 adds a balancing bias
  for the choice only): ``selection_scores [T, E]``;
* noise (noisy top-k): ``clean_logits`` and ``noise_std`` beside the noisy ``logits``.

Tensor letters: ``T`` tokens, ``E`` experts, ``k`` slots per token.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from ..validation import (
    check_choice,
    check_float_tensor,
    check_index_tensor,
    check_parameter_budget,
    check_positive_int,
    check_top_k,
)

TOKEN_CHOICE_LOSSES = ("switch", "z", "importance", "load")


@dataclass
class RouterOutput:
    """What a router decides for ``T`` tokens and ``E`` experts (the routing contract).

    Attributes:
        logits: ``[T, E]`` float32 router logits (noise included when training).
        probs: ``[T, E]`` float32 router probabilities over all experts (what the balancing
            losses call ``P``).
        expert_indices: ``[T, k]`` int64 chosen experts, best first, distinct within a token.
        expert_weights: ``[T, k]`` float32 weight of each chosen expert's output.
        clean_logits: ``[T, E]`` logits without noise (equal to ``logits`` without noise).
        noise_std: ``[T, E]`` noise scale of the noisy router, else ``None``.
        valid: ``[T, k]`` bool, False for slots that hold no assignment (a router that gives
            tokens a variable number of experts), or ``None``: every slot is used.
        selection_scores: ``[T, E]`` scores the choice was made on when they differ from
            ``probs`` (a selection-only bias), else ``None``.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    expert_indices: torch.Tensor
    expert_weights: torch.Tensor
    clean_logits: torch.Tensor
    noise_std: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    selection_scores: torch.Tensor | None = None

    def __post_init__(self):
        _check_decision_tensors(self, ("logits", "probs", "expert_indices", "expert_weights", "clean_logits"))

    def used_slots(self) -> torch.Tensor:
        """``[T, k]`` bool: True for every slot that holds an assignment."""
        if self.valid is None:
            return torch.ones_like(self.expert_indices, dtype=torch.bool)
        return self.valid


class Router(nn.Module):
    """Base class of every router: a linear map ``[T, D] -> [T, E]`` plus a rule.

    Subclasses implement ``forward(x [T, D]) -> RouterOutput`` and may override:

    * :attr:`aux_losses`: names of the auxiliary losses (keys of
      :data:`moe_teach.losses.AUX_LOSSES`) that apply to this router; the layer computes only these.
    * :attr:`uses_capacity`: whether :class:`~moe_teach.MoELayer`'s ``capacity_factor``
      applies (token-choice routers); a router that enforces its own capacity sets False.
    * :meth:`experts_per_token`: experts one token uses on average (for active-parameter counts).

    Extra keyword arguments of a subclass's ``__init__`` are its *router options*, passed
    through from ``MoELayer(router_options={...})`` and ``MoEConfig.router_options``.
    """

    aux_losses: tuple[str, ...] = TOKEN_CHOICE_LOSSES
    uses_capacity: bool = True

    def __init__(self, input_dim: int, num_experts: int, top_k: int = 2):
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_positive_int("num_experts", num_experts)
        check_top_k(top_k, num_experts)
        check_parameter_budget(f"a router with input_dim={input_dim}, num_experts={num_experts}",
                               input_dim * num_experts)
        self.input_dim, self.num_experts, self.top_k = input_dim, num_experts, top_k
        self.proj = nn.Linear(input_dim, num_experts, bias=False)

    def experts_per_token(self) -> float:
        """Experts one token is sent to (``top_k`` for token choice)."""
        return float(self.top_k)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The router options this class accepts (its ``__init__`` keywords after ``top_k``)."""
        params = list(inspect.signature(cls.__init__).parameters)
        return tuple(p for p in params if p not in ("self", "input_dim", "num_experts", "top_k"))


def build_router(routers: dict, router: str, input_dim: int, num_experts: int, top_k: int,
                 options: dict | None = None) -> Router:
    """Instantiate ``routers[router]`` with its options; unknown options give a TypeError naming them."""
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise TypeError(f"router_options must be a dict of option -> value, got {type(options).__name__}")
    if not isinstance(routers, dict):
        raise TypeError(f"routers must be a dict of name -> Router class, got {type(routers).__name__}")
    check_choice("router", router, tuple(routers))
    cls = routers[router]
    allowed = cls.option_names()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"router_options: {', '.join(map(repr, unknown))} not accepted by router {router!r}; "
                        f"its options are: {', '.join(allowed) or 'none'}")
    return cls(input_dim, num_experts, top_k, **options)


@dataclass
class RoutingRecord:
    """Everything one MoE forward pass decided, for plots, explorers, checks and losses.

    Attributes:
        logits, probs, expert_indices, expert_weights, selection_scores: as in :class:`RouterOutput`.
        kept: ``[T, k]`` bool, True where the (token, slot) assignment was computed: the slot
            is used and capacity did not drop it.
        capacity: assignments each expert may take, or ``None`` (dropless).
        aux_losses: name -> scalar tensor (those the router declares, e.g. ``"switch"``, ``"z"``).
        token_mask: ``[T]`` bool, True for real tokens, or ``None`` (all real). Padding is still
            computed (and takes capacity) but is left out of the auxiliary losses and of
            :attr:`load_per_expert`.
        valid: ``[T, k]`` bool slots in use (see :class:`RouterOutput`), or ``None`` (all).
        sequence_length: tokens per sequence when the input was ``[..., S, D]`` (for
            per-sequence losses), or ``None``.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    expert_indices: torch.Tensor
    expert_weights: torch.Tensor
    kept: torch.Tensor
    capacity: int | None
    aux_losses: dict = field(default_factory=dict)
    token_mask: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    selection_scores: torch.Tensor | None = None
    sequence_length: int | None = None

    def __post_init__(self):
        _check_decision_tensors(self, ("logits", "probs", "expert_indices", "expert_weights", "kept"))

    @property
    def num_tokens(self) -> int:
        return self.expert_indices.shape[0]

    @property
    def num_experts(self) -> int:
        return self.probs.shape[-1]

    @property
    def top_k(self) -> int:
        """Slots per token (``k``)."""
        return self.expert_indices.shape[-1]

    @property
    def used(self) -> torch.Tensor:
        """``[T, k]`` bool: slots that hold an assignment, before capacity."""
        if self.valid is None:
            return torch.ones_like(self.kept)
        return self.valid

    @property
    def combine_weights(self) -> torch.Tensor:
        """``[T, k]`` weights actually applied: ``expert_weights`` with dropped or unused slots zeroed."""
        return self.expert_weights * self.kept

    @property
    def tokens_per_expert(self) -> torch.Tensor:
        """``[E]`` tokens each expert processed, after capacity (padding included).

        A token uses an expert at most once, so this is also the count of kept assignments.
        """
        return torch.bincount(self.expert_indices[self.kept], minlength=self.num_experts)

    @property
    def routed_per_expert(self) -> torch.Tensor:
        """``[E]`` tokens routed to each expert, before capacity dropping."""
        return torch.bincount(self.expert_indices[self.used], minlength=self.num_experts)

    @property
    def load_per_expert(self) -> torch.Tensor:
        """``[E]`` kept assignments of real (non-padding) tokens per expert."""
        kept = self.kept if self.token_mask is None else self.kept & self.token_mask.unsqueeze(1)
        return torch.bincount(self.expert_indices[kept], minlength=self.num_experts)

    @property
    def dropped(self) -> torch.Tensor:
        """``[T, k]`` bool: assignments the router made that capacity dropped."""
        return self.used & ~self.kept

    @property
    def num_dropped(self) -> int:
        """Number of dropped (token, expert) assignments."""
        return int(self.dropped.sum())

    @property
    def dropped_tokens(self) -> torch.Tensor:
        """``[T]`` bool, True for tokens that got no expert at all (MoE output is zero)."""
        return ~self.kept.any(dim=-1)

    @property
    def drop_rate(self) -> float:
        """Fraction of the router's assignments that capacity dropped."""
        return self.num_dropped / max(1, int(self.used.sum()))

    def dense_weights(self) -> torch.Tensor:
        """``[T, E]`` combine weights scattered to all experts (zero for unchosen/dropped)."""
        return scatter_to_experts(self.expert_indices, self.combine_weights, self.num_experts)

    def first_choice(self) -> torch.Tensor:
        """``[T]`` int64 each token's first-choice expert (slot 0)."""
        return self.expert_indices[:, 0]


def _check_decision_tensors(decision, names) -> None:
    """Cheap type checks of a decision's or record's tensors (they are built on every forward)."""
    for name in names:
        if not isinstance(getattr(decision, name), torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(getattr(decision, name)).__name__}")


def scatter_to_experts(expert_indices: torch.Tensor, values: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Spread ``[T, k]`` per-slot ``values`` to a ``[T, E]`` tensor (zero elsewhere)."""
    check_positive_int("num_experts", num_experts)
    check_index_tensor("expert_indices", expert_indices)
    check_float_tensor("values", values, min_dims=2)
    if values.shape != expert_indices.shape:
        raise ValueError(f"values must have the shape of expert_indices {tuple(expert_indices.shape)}, "
                         f"got {tuple(values.shape)}")
    if expert_indices.numel() and not 0 <= int(expert_indices.min()) <= int(expert_indices.max()) < num_experts:
        raise ValueError(f"expert_indices must lie in 0..{num_experts - 1} (num_experts={num_experts})")
    dense = values.new_zeros(values.shape[0], num_experts)
    return dense.scatter_add(1, expert_indices, values)
