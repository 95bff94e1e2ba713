"""Hugging Face transformers MoE blocks <-> the course's :class:`~moe_teach.MoELayer`.

:func:`from_hf` takes a transformers 5.x sparse MoE block and returns the course's layer with
the same weights and routing settings; :func:`to_hf` builds the transformers block of a
course layer. transformers is imported only inside these functions, so the package works
without it.

Conventions matched (each block is its ``modeling_<name>.py`` file):

============================  ===========  ===================  ===========================================
 block                        scores       renormalise top-k    extra
============================  ===========  ===================  ===========================================
 ``MixtralSparseMoeBlock``    softmax      always               ``router_jitter_noise`` must be 0 (it
                                                                jitters the experts' input too)
 ``Qwen2MoeSparseMoeBlock``   softmax      ``norm_topk_prob``   shared expert ``* sigmoid(shared_expert_gate(x))``
 ``Qwen3MoeSparseMoeBlock``   softmax      ``norm_topk_prob``
 ``OlmoeSparseMoeBlock``      softmax      ``norm_topk_prob``
 ``DeepseekV3MoE``            sigmoid      ``norm_topk_prob``   groups (``n_group``, ``topk_group``), the
                                                                ``e_score_correction_bias`` for the choice
                                                                only, times ``routed_scaling_factor``
                                                                (routed part only); shared experts of width
                                                                ``moe_intermediate_size * n_shared_experts``
                                                                added unscaled and ungated
============================  ===========  ===================  ===========================================

Experts are stored as ``gate_up_proj [E, 2H, D]`` (gate rows first, then up rows) and
``down_proj [E, D, H]``; the course's SwiGLU :class:`~moe_teach.Expert` has ``gate``, ``up`` and
``down`` linear layers without bias, so each is a slice. ``hidden_act`` must be ``"silu"``.
"""

from __future__ import annotations

import torch

from .moe_layer import MoELayer
from .validation import check_choice, check_module, check_positive_int, check_seed, check_top_k

HF_KINDS = {
    "MixtralSparseMoeBlock": "mixtral",
    "Qwen2MoeSparseMoeBlock": "qwen2_moe",
    "Qwen3MoeSparseMoeBlock": "qwen3_moe",
    "OlmoeSparseMoeBlock": "olmoe",
    "DeepseekV3MoE": "deepseek_v3",
}
"""transformers block class name -> the kind name :func:`to_hf` takes."""


def _require_transformers():
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("moe_teach.hf needs Hugging Face transformers (pip install transformers, "
                          "pinned in pyproject.toml)") from error
    return transformers


def _unsupported(kind: str, setting: str, value, supported: str) -> ValueError:
    return ValueError(f"from_hf/to_hf: {kind} with {setting}={value!r} is not supported ({supported})")


def _block_settings(block) -> dict:
    """What :func:`from_hf` needs of ``block``: sizes and routing settings, checked."""
    name = type(block).__name__
    if name not in HF_KINDS:
        raise TypeError(f"from_hf supports {', '.join(HF_KINDS)}; got a {name}")
    kind = HF_KINDS[name]
    experts, gate = block.experts, block.gate
    act = getattr(experts, "act_fn", None)
    if type(act).__name__ not in ("SiLU", "SiLUActivation"):  # ACT2FN["silu"], ACT2FN["swish"]
        raise _unsupported(name, "hidden_act", type(act).__name__, "only 'silu' (SwiGLU experts)")
    num_experts, width, dim = experts.gate_up_proj.shape
    settings = dict(kind=kind, num_experts=num_experts, hidden_dim=width // 2, dim=dim, top_k=gate.top_k)
    if kind == "mixtral":
        if block.jitter_noise:
            raise _unsupported(name, "router_jitter_noise", block.jitter_noise,
                               "only 0: Mixtral jitters the experts' input as well as the router's")
        settings.update(router="softmax", router_options={"renormalize": True})
    elif kind == "deepseek_v3":
        settings.update(router="deepseek_v3", router_options={
            "n_group": gate.num_group, "topk_group": gate.topk_group, "renormalize": bool(gate.norm_topk_prob),
            "scaling_factor": float(gate.routed_scaling_factor)})
        settings.update(shared_hidden_dim=block.shared_experts.intermediate_size, shared_gate=False)
    else:
        settings.update(router="softmax", router_options={"renormalize": bool(gate.norm_topk_prob)})
        if kind == "qwen2_moe":
            settings.update(shared_hidden_dim=block.shared_expert.intermediate_size, shared_gate=True)
    return settings


@torch.no_grad()
def _copy_swiglu(expert, gate_weight, up_weight, down_weight) -> None:
    expert.gate.weight.copy_(gate_weight)
    expert.up.weight.copy_(up_weight)
    expert.down.weight.copy_(down_weight)


def from_hf(block) -> MoELayer:
    """The course's :class:`~moe_teach.MoELayer` equal to a transformers sparse MoE block.

    Supported: ``MixtralSparseMoeBlock``, ``Qwen2MoeSparseMoeBlock``, ``Qwen3MoeSparseMoeBlock``,
    ``OlmoeSparseMoeBlock``, ``DeepseekV3MoE`` (transformers 5.x). Weights are copied (the
    layer has the block's dtype); routing settings are taken from the block. The course layer
    takes ``[..., D]`` and returns the same shape as the block.
    """
    _require_transformers()
    if not isinstance(block, torch.nn.Module):
        raise TypeError(f"block must be a transformers MoE block ({', '.join(HF_KINDS)}), got {type(block).__name__}")
    s = _block_settings(block)
    shared = "shared_hidden_dim" in s
    layer = MoELayer(s["dim"], s["dim"], s["num_experts"], s["top_k"], s["hidden_dim"], "swiglu",
                     router=s["router"], router_options=s["router_options"], bias=False,
                     num_shared_experts=1 if shared else 0, shared_hidden_dim=s.get("shared_hidden_dim"),
                     shared_gate=s.get("shared_gate", False))
    layer.to(block.experts.gate_up_proj.dtype)
    hidden = s["hidden_dim"]
    with torch.no_grad():
        layer.router.proj.weight.copy_(block.gate.weight)
        for e, expert in enumerate(layer.experts):
            gate_up = block.experts.gate_up_proj[e]
            _copy_swiglu(expert, gate_up[:hidden], gate_up[hidden:], block.experts.down_proj[e])
        if s["kind"] == "deepseek_v3":
            layer.router.selection_bias.copy_(block.gate.e_score_correction_bias)
            mlp = block.shared_experts
            _copy_swiglu(layer.shared.expert, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
        elif s["kind"] == "qwen2_moe":
            mlp = block.shared_expert
            _copy_swiglu(layer.shared.expert, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
            layer.shared.gate.weight.copy_(block.shared_expert_gate.weight)
    return layer


def hf_config(layer: MoELayer, kind: str):
    """The small transformers config of ``kind`` whose MoE block matches ``layer``'s sizes and routing."""
    transformers = _require_transformers()
    if kind not in HF_KINDS.values():
        raise ValueError(f"kind must be one of {', '.join(map(repr, HF_KINDS.values()))}, got {kind!r}")
    check_module("layer", layer, MoELayer)
    _check_convertible(layer, kind)
    router = layer.router
    common = dict(hidden_size=layer.input_dim, num_experts_per_tok=layer.top_k, hidden_act="silu",
                  experts_implementation="eager",
                  num_attention_heads=1, num_key_value_heads=1, num_hidden_layers=1, vocab_size=64,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if kind == "mixtral":
        return transformers.MixtralConfig(num_local_experts=layer.num_experts, intermediate_size=layer.hidden_dim,
                                          router_jitter_noise=0.0, **common)
    if kind == "deepseek_v3":
        return transformers.DeepseekV3Config(
            n_routed_experts=layer.num_experts, moe_intermediate_size=layer.hidden_dim,
            n_shared_experts=layer.shared.expert.hidden_dim // layer.hidden_dim, n_group=router.n_group,
            topk_group=router.topk_group, norm_topk_prob=router.renormalize,
            routed_scaling_factor=router.scaling_factor, first_k_dense_replace=0, **common)
    configs = {"qwen2_moe": transformers.Qwen2MoeConfig, "qwen3_moe": transformers.Qwen3MoeConfig,
               "olmoe": transformers.OlmoeConfig}
    extra = {"shared_expert_intermediate_size": layer.shared.expert.hidden_dim} if kind == "qwen2_moe" else {}
    return configs[kind](num_experts=layer.num_experts, moe_intermediate_size=layer.hidden_dim,
                         intermediate_size=layer.hidden_dim, norm_topk_prob=router.renormalize, **extra, **common)


def _check_convertible(layer: MoELayer, kind: str) -> None:
    if not isinstance(layer, MoELayer):
        raise TypeError(f"layer must be an MoELayer, got {type(layer).__name__}")
    problems = []
    if layer.activation != "swiglu":
        problems.append(f"activation={layer.activation!r} (transformers blocks use 'swiglu')")
    if layer.experts[0].up.bias is not None:
        problems.append("bias=True (transformers experts have no bias)")
    if layer.input_dim != layer.output_dim:
        problems.append(f"output_dim={layer.output_dim} != input_dim={layer.input_dim}")
    if layer.capacity_factor is not None:
        problems.append(f"capacity_factor={layer.capacity_factor} (transformers blocks are dropless)")
    want_router = "DeepSeekV3Router" if kind == "deepseek_v3" else "TopKRouter"
    if type(layer.router).__name__ != want_router:
        problems.append(f"router {type(layer.router).__name__} ({kind} needs {want_router})")
    elif kind != "deepseek_v3" and getattr(layer.router, "jitter", 0):
        problems.append(f"jitter={layer.router.jitter} (not in {kind})")
    elif kind == "mixtral" and not layer.router.renormalize:
        problems.append("renormalize=False (Mixtral always renormalises)")
    shared = layer.shared
    if kind == "qwen2_moe" and (shared is None or shared.gate is None):
        problems.append("no gated shared expert (qwen2_moe has one: num_shared_experts=1, shared_gate=True)")
    elif kind == "deepseek_v3" and (shared is None or shared.gate is not None
                                    or shared.expert.hidden_dim % layer.hidden_dim):
        problems.append("deepseek_v3 needs ungated shared experts whose total width is a multiple of hidden_dim")
    elif kind in ("mixtral", "qwen3_moe", "olmoe") and shared is not None:
        problems.append(f"shared experts ({kind} has none)")
    if problems:
        raise ValueError(f"to_hf: this layer cannot become a {kind} block: {'; '.join(problems)}")


def to_hf(layer: MoELayer, kind: str):
    """The transformers block of ``kind`` (e.g. ``"mixtral"``, see :data:`HF_KINDS`) equal to ``layer``."""
    transformers = _require_transformers()
    config = hf_config(layer, kind)
    modules = {
        "mixtral": transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock,
        "qwen2_moe": transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeSparseMoeBlock,
        "qwen3_moe": transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock,
        "olmoe": transformers.models.olmoe.modeling_olmoe.OlmoeSparseMoeBlock,
        "deepseek_v3": transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3MoE,
    }
    block = modules[kind](config).to(layer.experts[0].up.weight.dtype)
    with torch.no_grad():
        block.gate.weight.copy_(layer.router.proj.weight)
        for e, expert in enumerate(layer.experts):
            block.experts.gate_up_proj[e].copy_(torch.cat([expert.gate.weight, expert.up.weight]))
            block.experts.down_proj[e].copy_(expert.down.weight)
        if kind in ("qwen2_moe", "deepseek_v3"):
            mlp = block.shared_expert if kind == "qwen2_moe" else block.shared_experts
            for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
                getattr(mlp, theirs).weight.copy_(getattr(layer.shared.expert, ours).weight)
        if kind == "qwen2_moe":
            block.shared_expert_gate.weight.copy_(layer.shared.gate.weight)
        if kind == "deepseek_v3":
            block.gate.e_score_correction_bias.copy_(layer.router.selection_bias)
    return block


def random_hf_block(kind: str, dim: int = 16, num_experts: int = 8, top_k: int = 2, hidden_dim: int = 12,
                    seed: int = 0, dtype: torch.dtype = torch.float32, **settings):
    """A small transformers block of ``kind`` with random weights (nothing downloaded).

    ``settings`` are further config fields (``norm_topk_prob``, ``n_group``, ``topk_group``,
    ``routed_scaling_factor``, ``n_shared_experts``, ``shared_expert_intermediate_size``, ...).
    The DeepSeek-V3 correction bias is random too, so the selection-only rule is exercised.
    """
    transformers = _require_transformers()
    check_choice("kind", kind, tuple(HF_KINDS.values()))
    for name, value in (("dim", dim), ("num_experts", num_experts), ("hidden_dim", hidden_dim)):
        check_positive_int(name, value, maximum=4096)
    check_top_k(top_k, num_experts)
    check_seed("seed", seed)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype (torch.float32, torch.float64), got {dtype!r}")
    common = dict(hidden_size=dim, num_experts_per_tok=top_k, hidden_act="silu", num_attention_heads=1,
                  num_key_value_heads=1, num_hidden_layers=1, vocab_size=64,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    common.update(experts_implementation="eager", hidden_act=settings.pop("hidden_act", "silu"))
    torch.manual_seed(seed)
    if kind == "mixtral":
        config = transformers.MixtralConfig(num_local_experts=num_experts, intermediate_size=hidden_dim,
                                            **common, **settings)
        block = transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock(config)
    elif kind == "deepseek_v3":
        settings = {"n_group": 1, "topk_group": 1, "first_k_dense_replace": 0, **settings}
        config = transformers.DeepseekV3Config(n_routed_experts=num_experts, moe_intermediate_size=hidden_dim,
                                               **common, **settings)
        block = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3MoE(config)
    else:
        cls = {"qwen2_moe": transformers.Qwen2MoeConfig, "qwen3_moe": transformers.Qwen3MoeConfig,
               "olmoe": transformers.OlmoeConfig}[kind]
        if kind == "qwen2_moe":
            settings = {"shared_expert_intermediate_size": 2 * hidden_dim, **settings}
        config = cls(num_experts=num_experts, moe_intermediate_size=hidden_dim, intermediate_size=hidden_dim,
                     **common, **settings)
        module = {"qwen2_moe": transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeSparseMoeBlock,
                  "qwen3_moe": transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock,
                  "olmoe": transformers.models.olmoe.modeling_olmoe.OlmoeSparseMoeBlock}[kind]
        block = module(config)
    with torch.no_grad():
        for name, tensor in block.named_parameters():
            tensor.normal_(0, 0.5 if "gate" in name and "proj" not in name else 0.3)
        if kind == "deepseek_v3":
            block.gate.e_score_correction_bias.normal_(0, 0.1)
    return block.to(dtype)
