"""A pre-norm transformer block with causal self-attention and an MoE (or dense) feed-forward.

    x = x + attention(norm1(x))
    x = x + feed_forward(norm2(x))      # MoELayer, or one Expert for the dense twin

Each MoE layer keeps its latest routing record; :func:`collect_aux_losses` sums their
auxiliary losses across layers so one training step can add them to the task loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .experts import ACTIVATIONS, Expert
from .losses import LazyLosses
from .moe_layer import MoEConfig, MoELayer
from .routing import RoutingRecord
from .validation import (
    check_choice,
    check_float_tensor,
    check_instance,
    check_keys,
    check_module,
    check_positive_int,
)

SHARED_EXPERT_DEFAULTS = {"num_shared_experts": 0, "shared_hidden_dim": None, "shared_gate": False}


@dataclass
class BlockConfig:
    """Sizes of one transformer block; ``moe`` holds the MoE feed-forward's config.

    ``hidden_dim`` is each expert's hidden width (the dense FFN's width when ``moe`` is ``None``).
    ``moe=None`` gives a dense block with one feed-forward network.
    """

    dim: int = 64
    num_heads: int = 4
    hidden_dim: int = 128
    activation: str = "gelu"
    moe: MoEConfig | None = field(default_factory=MoEConfig)

    def __post_init__(self):
        check_positive_int("dim", self.dim)
        check_positive_int("num_heads", self.num_heads)
        if self.dim % self.num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={self.dim}, num_heads={self.num_heads}")
        check_positive_int("hidden_dim", self.hidden_dim)
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.moe is not None and not isinstance(self.moe, MoEConfig):
            raise TypeError(f"moe must be an MoEConfig (or None for a dense block), got {type(self.moe).__name__}")

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BlockConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys give a ValueError naming them."""
        check_keys("block config", data, cls)
        moe = data["moe"]
        if moe is not None:
            if isinstance(moe, dict):  # configs saved before shared experts existed lack these keys
                moe = {**SHARED_EXPERT_DEFAULTS, **moe}
            check_keys("moe config", moe, MoEConfig)
            moe = MoEConfig(**moe)
        return cls(**{**data, "moe": moe})


def dense_twin(config: BlockConfig, match: str = "active") -> BlockConfig:
    """The dense block to compare an MoE block with.

    ``match="active"``: feed-forward hidden width ``top_k * hidden_dim`` (same active
    parameters per token as the MoE block). ``match="total"``: ``num_experts * hidden_dim``
    (same total parameters, up to the small router).
    """
    check_instance("config", config, BlockConfig)
    check_choice("match", match, ("active", "total"))
    if config.moe is None:
        raise ValueError("dense_twin needs an MoE block config (config.moe is None: already dense)")
    width = config.moe.top_k if match == "active" else config.moe.num_experts
    return replace(config, moe=None, hidden_dim=width * config.hidden_dim)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``t`` sees positions ``<= t``. ``[B, S, dim] -> [B, S, dim]``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input(x, self.dim)
        batch, seq, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=-1)
        q, k, v = (t.view(batch, seq, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # [B, H, S, dim/H]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, seq, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block ``[B, S, dim] -> [B, S, dim]`` with an MoE or a dense feed-forward."""

    def __init__(self, config: BlockConfig):
        super().__init__()
        self.config = check_instance("config", config, BlockConfig)
        self.norm1 = nn.LayerNorm(config.dim)
        self.attention = CausalSelfAttention(config.dim, config.num_heads)
        self.norm2 = nn.LayerNorm(config.dim)
        if config.is_moe:
            self.feed_forward = MoELayer.from_config(config.dim, config.hidden_dim, config.activation, config.moe)
        else:
            self.feed_forward = Expert(config.dim, config.hidden_dim, config.dim, config.activation)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_sequence_input(x, self.config.dim)
        x = x + self.attention(self.norm1(x))
        hidden = self.norm2(x)
        if self.config.is_moe:
            return x + self.feed_forward(hidden, token_mask=token_mask)
        return x + self.feed_forward(hidden)


def check_sequence_input(x, dim: int) -> torch.Tensor:
    """``x`` must be a float ``[batch, seq, dim]`` tensor holding at least one token."""
    check_float_tensor("x", x, last_dim=dim, min_dims=3)
    if x.dim() != 3 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must have shape [batch, seq, {dim}] with batch and seq at least 1, "
                         f"got {tuple(x.shape)}")
    return x


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every :class:`MoELayer` inside ``model``, in module order."""
    check_module("model", model)
    return [m for m in model.modules() if isinstance(m, MoELayer)]


def collect_aux_losses(model: nn.Module) -> SummedAuxLosses:
    """Sum each auxiliary loss over all MoE layers' latest forward pass (empty if none).

    Each layer's loss is computed on its own routing and then added: layers are not pooled
    into one big batch of logits. The result reads like a dict (``aux["switch"]``); each total
    is summed when first read, so a training loop that adds two of the four losses a router
    declares computes only those two.
    """
    return SummedAuxLosses([layer.last_record for layer in moe_layers(model) if layer.last_record is not None])


class SummedAuxLosses(LazyLosses):
    """Name -> the sum of that auxiliary loss over the given routing records, computed when first read."""

    def __init__(self, records: list):
        if not isinstance(records, list) or not all(isinstance(record, RoutingRecord) for record in records):
            raise TypeError(f"records must be a list of RoutingRecord, got {type(records).__name__}")
        super().__init__(tuple(dict.fromkeys(name for record in records for name in record.aux_losses)))
        self._records = records

    def compute(self, name: str) -> torch.Tensor:
        values = [record.aux_losses[name] for record in self._records if name in record.aux_losses]
        return sum(values[1:], values[0])

    def __repr__(self) -> str:
        return f"SummedAuxLosses({list(self._names)!r} over {len(self._records)} layer(s))"
