"""Sparse upcycling (Komatsuzaki et al. 2022): start an MoE from a trained dense model.

Every expert starts as a copy of the dense feed-forward network and the router starts fresh;
attention, embeddings and norms are copied unchanged. Qwen1.5-MoE-A2.7B was built this way.

What the upcycled layer computes before any training, for a token ``x`` with dense output
``f(x)``: all experts are equal, so the output is ``(sum of the token's routing weights) * f(x)``.

* With renormalised weights (the default for ``top_k > 1``, or ``renormalize=True``), the
  weights sum to exactly 1: the upcycled layer equals the dense layer for every token.
* With top-1 and the raw probability as the weight (Switch; this course's default at k=1,
  because a renormalised single weight is always 1 and gives the router no gradient), the
  output is ``p_top1(x) * f(x)``: the factor is the router's top-1 probability, about
  ``1/num_experts`` for a fresh router. Training recovers the scale within a few steps.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from ..experts import Expert
from ..moe_layer import MoEConfig, MoELayer
from ..validation import check_instance, check_non_negative_float, check_positive_int, check_seed, check_top_k
from .model import LanguageModel, LMConfig


def upcycle_layer(dense: Expert, num_experts: int, top_k: int = 1, router_seed: int = 0,
                  router_std: float = 0.02, **moe_options) -> MoELayer:
    """An :class:`MoELayer` whose ``num_experts`` experts are copies of ``dense`` and whose router is new.

    The router's weight is drawn from ``normal(0, router_std)`` with its own seeded generator
    (the global random state is left alone). ``moe_options`` go to :class:`MoELayer`
    (``router``, ``renormalize``, ``capacity_factor``, ``dispatch`` ...).
    """
    if not isinstance(dense, Expert):
        raise TypeError(f"dense must be an Expert (a dense feed-forward), got {type(dense).__name__}")
    check_positive_int("num_experts", num_experts)
    check_top_k(top_k, num_experts)
    check_seed("router_seed", router_seed)
    router_std = check_non_negative_float("router_std", router_std)
    if "bias" in moe_options:
        raise ValueError("bias cannot be chosen: the experts copy the dense layer, biases included")
    layer = MoELayer(dense.input_dim, dense.output_dim, num_experts, top_k, dense.hidden_dim, dense.activation,
                     bias=dense.up.bias is not None, **moe_options)
    for expert in layer.experts:
        expert.load_state_dict(dense.state_dict())
    generator = torch.Generator().manual_seed(router_seed)
    with torch.no_grad():
        layer.router.proj.weight.copy_(torch.randn(layer.router.proj.weight.shape, generator=generator) * router_std)
    return layer.to(dense.up.weight.dtype)


def upcycle(dense: Expert | LanguageModel, num_experts: int, top_k: int = 1, router_seed: int = 0,
            **moe_options) -> MoELayer | LanguageModel:
    """Upcycle a dense feed-forward (:class:`Expert`) or a whole dense :class:`LanguageModel`.

    For a model: a new :class:`LanguageModel` whose config is the dense one with
    ``block.moe = MoEConfig(num_experts, top_k, ...)``; every non-feed-forward weight is
    copied, and each block's feed-forward becomes :func:`upcycle_layer` of it (layer ``i``'s
    router seeded with ``router_seed + i``). ``dense`` itself is not changed.
    """
    if isinstance(dense, Expert):
        return upcycle_layer(dense, num_experts, top_k, router_seed, **moe_options)
    if not isinstance(dense, LanguageModel):
        raise TypeError(f"dense must be an Expert or a LanguageModel, got {type(dense).__name__}")
    if dense.config.block.is_moe:
        raise ValueError("dense is already an MoE model (config.block.moe is set); upcycle a dense model")
    check_positive_int("num_experts", num_experts)
    check_top_k(top_k, num_experts)
    check_seed("router_seed", router_seed)
    config = _upcycled_config(dense.config, num_experts, top_k, moe_options)
    model = copy.deepcopy(dense)
    model.config = config
    for i, block in enumerate(model.blocks):
        block.config = config.block
        block.feed_forward = upcycle_layer(block.feed_forward, num_experts, top_k, router_seed + i, **moe_options)
    return model


def _upcycled_config(config: LMConfig, num_experts: int, top_k: int, moe_options: dict) -> LMConfig:
    """The dense config with an :class:`MoEConfig` in its block (options mapped onto its fields)."""
    options = dict(moe_options)
    router_options = dict(options.pop("router_options", None) or {})
    for shortcut in ("renormalize", "jitter"):
        if shortcut in options:
            router_options[shortcut] = options.pop(shortcut)
    options.pop("bias", None)
    moe = MoEConfig(num_experts=num_experts, top_k=top_k, router_options=router_options, **options)
    return replace(config, block=replace(config.block, moe=moe))


def copies_of(layer: MoELayer, dense: nn.Module) -> bool:
    """True when every expert of ``layer`` holds exactly ``dense``'s weights."""
    check_instance("layer", layer, MoELayer)
    check_instance("dense", dense, nn.Module)
    reference = dense.state_dict()
    return all(
        set(e.state_dict()) == set(reference) and all(torch.equal(v, reference[k]) for k, v in e.state_dict().items())
        for e in layer.experts
    )
