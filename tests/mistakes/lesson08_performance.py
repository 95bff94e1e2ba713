"""Planted mistakes for exercise notebook 08_performance: (diagnosis key, wrong function) per task."""

from moe_teach.counting import attention_flops_per_token


def _ffn(dim, width):
    return 2 * (dim * width + width * dim)


def _flops(dim, hidden, num_experts, top_k, router=True, experts_run=None, factor=2, dense_router=False):
    experts_run = top_k if experts_run is None else experts_run
    routing = factor * dim * num_experts
    moe = experts_run * _ffn(dim, hidden) * factor // 2 + (routing if router else 0)
    extra = routing if dense_router else 0
    return {"moe": moe, "dense-active": _ffn(dim, top_k * hidden) * factor // 2 + extra,
            "dense-total": _ffn(dim, num_experts * hidden) * factor // 2 + extra}


def flops_without_router(dim, hidden, num_experts, top_k):
    return _flops(dim, hidden, num_experts, top_k, router=False)


def flops_all_experts(dim, hidden, num_experts, top_k):
    return _flops(dim, hidden, num_experts, top_k, experts_run=num_experts)


def flops_multiply_adds(dim, hidden, num_experts, top_k):
    """Counts multiply-adds, not FLOPs."""
    return _flops(dim, hidden, num_experts, top_k, factor=1)


def flops_twins_swapped(dim, hidden, num_experts, top_k):
    counts = _flops(dim, hidden, num_experts, top_k)
    return {"moe": counts["moe"], "dense-active": counts["dense-total"], "dense-total": counts["dense-active"]}


def flops_router_everywhere(dim, hidden, num_experts, top_k):
    return _flops(dim, hidden, num_experts, top_k, dense_router=True)


def flops_as_floats(dim, hidden, num_experts, top_k):
    return {name: float(value) for name, value in _flops(dim, hidden, num_experts, top_k).items()}


def flops_list(dim, hidden, num_experts, top_k):
    return list(_flops(dim, hidden, num_experts, top_k).values())


def _params(dim, hidden, num_experts, top_k, router_active=True, router=True, biases=True):
    expert = 2 * dim * hidden + ((hidden + dim) if biases else 0)
    routing = dim * num_experts if router else 0
    return num_experts * expert + routing, top_k * expert + (routing if router_active else 0)


def params_router_not_active(dim, hidden, num_experts, top_k):
    return _params(dim, hidden, num_experts, top_k, router_active=False)


def params_without_router(dim, hidden, num_experts, top_k):
    return _params(dim, hidden, num_experts, top_k, router=False)


def params_without_biases(dim, hidden, num_experts, top_k):
    return _params(dim, hidden, num_experts, top_k, biases=False)


def params_swapped(dim, hidden, num_experts, top_k):
    total, active = _params(dim, hidden, num_experts, top_k)
    return active, total


def params_active_is_total(dim, hidden, num_experts, top_k):
    total, _ = _params(dim, hidden, num_experts, top_k)
    return total, total


def params_router_with_bias(dim, hidden, num_experts, top_k):
    """No named diagnosis: a router bias that the layer does not have."""
    total, active = _params(dim, hidden, num_experts, top_k)
    return total + num_experts, active + num_experts


def _saving(dim, hidden, num_experts, top_k, seq_len, against="total", router=True, ratio=False,
            attention_sides="both"):
    counts = _flops(dim, hidden, num_experts, top_k, router=router)
    dense = counts["dense-total" if against == "total" else "dense-active"]
    attention = attention_flops_per_token(dim, seq_len)
    moe_side = attention if attention_sides in ("both", "moe") else 0
    dense_side = attention if attention_sides == "both" else 0
    if ratio:
        return {"ffn": counts["moe"] / dense, "block": (counts["moe"] + moe_side) / (dense + dense_side)}
    return {"ffn": 1 - counts["moe"] / dense, "block": 1 - (counts["moe"] + moe_side) / (dense + dense_side)}


def saving_against_dense_active(dim, hidden, num_experts, top_k, seq_len):
    return _saving(dim, hidden, num_experts, top_k, seq_len, against="active")


def saving_without_router(dim, hidden, num_experts, top_k, seq_len):
    return _saving(dim, hidden, num_experts, top_k, seq_len, router=False)


def saving_as_ratio(dim, hidden, num_experts, top_k, seq_len):
    return _saving(dim, hidden, num_experts, top_k, seq_len, ratio=True)


def saving_attention_on_moe_side_only(dim, hidden, num_experts, top_k, seq_len):
    return _saving(dim, hidden, num_experts, top_k, seq_len, attention_sides="moe")


def saving_block_without_attention(dim, hidden, num_experts, top_k, seq_len):
    return _saving(dim, hidden, num_experts, top_k, seq_len, attention_sides="none")


def saving_attention_half_counted(dim, hidden, num_experts, top_k, seq_len):
    """No named diagnosis: attention counted at half its FLOPs on both sides."""
    counts = _flops(dim, hidden, num_experts, top_k)
    attention = attention_flops_per_token(dim, seq_len) / 2
    return {"ffn": 1 - counts["moe"] / counts["dense-total"],
            "block": 1 - (counts["moe"] + attention) / (counts["dense-total"] + attention)}


MISTAKES = {
    "layer_flops": [("router_missing", flops_without_router), ("all_experts", flops_all_experts),
                    ("not_doubled", flops_multiply_adds), ("twins_swapped", flops_twins_swapped),
                    ("router_in_dense", flops_router_everywhere), ("not_int", flops_as_floats),
                    ("return_format", flops_list)],
    "layer_parameters": [("router_not_active", params_router_not_active), ("router_missing", params_without_router),
                         ("biases_missing", params_without_biases), ("swapped", params_swapped),
                         ("active_all_experts", params_active_is_total), ("wrong_count", params_router_with_bias)],
    "claimed_saving": [("against_dense_active", saving_against_dense_active),
                       ("router_ignored", saving_without_router), ("ratio_not_saving", saving_as_ratio),
                       ("attention_one_side", saving_attention_on_moe_side_only),
                       ("block_as_ffn", saving_block_without_attention),
                       ("wrong_values", saving_attention_half_counted)],
}
