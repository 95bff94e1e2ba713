"""Checks for exercise notebook 08_performance (counting what an MoE layer costs)."""

from __future__ import annotations

import math

from ...counting import attention_flops_per_token
from ...lessons.performance import flop_saving, layer_counts
from .core import Mistake, _call, register

_CASES = [(64, 128, 8, 2), (32, 64, 4, 1), (16, 48, 6, 3), (128, 256, 16, 4)]   # (dim, hidden, E, k)
_NAMES = ("moe", "dense-active", "dense-total")


def _case_text(dim, hidden, num_experts, top_k) -> str:
    return f"dim={dim}, hidden={hidden}, num_experts={num_experts}, top_k={top_k}"


def _expect_dict(value, keys, what: str) -> dict:
    if not isinstance(value, dict) or set(value) != set(keys):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise Mistake("return_format", f"{what} should be a dict with the keys {list(keys)}, got {got}",
                      f"Return one dict, {{{', '.join(repr(k) + ': ...' for k in keys)}}}.")
    return value


def _check_layer_flops(fn):
    messages = {
        "router_missing": ("the MoE layer's FLOPs leave out the router",
                           "Every token also goes through the router: one [dim -> num_experts] matrix "
                           "product, counted like the experts' matrices."),
        "all_experts": ("the MoE layer is counted with all its experts: each token runs only top_k of them",
                        "Per token, only the top_k chosen experts compute."),
        "not_doubled": ("every count is half the expected one: a multiply-add is 2 FLOPs",
                        "Count each weight of a matrix product once per token as a multiply and an add."),
        "twins_swapped": ("dense-active and dense-total are swapped",
                          "dense-active has the MoE's parameters per token (top_k experts' width), "
                          "dense-total its parameters in all (all the experts' width)."),
        "router_in_dense": ("the dense twins include a router", "A dense feed-forward has no router."),
    }
    for dim, hidden, num_experts, k in _CASES:
        counts = layer_counts(dim, hidden, num_experts, k)
        expected = {name: counts[name]["flops_per_token"] for name in _NAMES}
        got = _expect_dict(_call(fn, dim, hidden, num_experts, k), _NAMES, "the FLOP counts")
        for name in _NAMES:
            if isinstance(got[name], bool) or not isinstance(got[name], int):
                raise Mistake("not_int", f"{name}: a FLOP count should be an int, got {got[name]!r}",
                              "Count with Python ints (no division, no torch): a count is a whole number.")
        if got == expected:
            continue
        router = 2 * dim * num_experts
        expert = expected["moe"] - router
        candidates = {
            "router_missing": dict(expected, moe=expected["moe"] - router),
            "all_experts": dict(expected, moe=router + num_experts * expert // k),
            "not_doubled": {name: value // 2 for name, value in expected.items()},
            "twins_swapped": dict(expected, **{"dense-active": expected["dense-total"],
                                               "dense-total": expected["dense-active"]}),
            "router_in_dense": dict(expected, **{"dense-active": expected["dense-active"] + router,
                                                 "dense-total": expected["dense-total"] + router}),
        }
        for key, value in candidates.items():
            if got == value:
                raise Mistake(key, f"{messages[key][0]} (for {_case_text(dim, hidden, num_experts, k)})",
                              messages[key][1])
        wrong = [name for name in _NAMES if got[name] != expected[name]]
        raise Mistake("wrong_count", f"for {_case_text(dim, hidden, num_experts, k)} your {wrong[0]} count "
                      f"is {got[wrong[0]]}, {'too many' if got[wrong[0]] > expected[wrong[0]] else 'too few'}",
                      "Write each layer as its matrix products: an expert is [dim -> width] then "
                      "[width -> dim]; count 2 FLOPs per weight and per token, biases and the GELU left out.")


def _check_layer_parameters(fn):
    messages = {
        "router_not_active": ("your active count leaves out the router, which every token uses",
                              "The router's weights take part for every token: they are active too."),
        "router_missing": ("both counts leave out the router",
                           "The router is a [num_experts, dim] weight matrix (no bias) that belongs to the layer."),
        "biases_missing": ("your counts leave out the experts' biases",
                           "Each expert has two biases besides its two matrices: width hidden and width dim."),
        "swapped": ("total and active are swapped", "Return (total, active): all experts first, then the "
                                                    "ones a token uses."),
        "active_all_experts": ("your active count includes every expert",
                               "A token uses only its top_k experts (and the router)."),
    }
    for dim, hidden, num_experts, k in _CASES:
        moe = layer_counts(dim, hidden, num_experts, k)["moe"]
        expected = (moe["params"], moe["active_params"])
        got = _call(fn, dim, hidden, num_experts, k)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Mistake("return_format", f"return the pair (total, active), got {type(got).__name__}",
                          "Return two ints as a tuple: (total, active).")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in got):
            raise Mistake("not_int", f"parameter counts should be ints, got {tuple(got)!r}",
                          "Count with Python ints: a count is a whole number.")
        got = tuple(got)
        if got == expected:
            continue
        router = dim * num_experts
        biases = hidden + dim
        candidates = {
            "router_not_active": (expected[0], expected[1] - router),
            "router_missing": (expected[0] - router, expected[1] - router),
            "biases_missing": (expected[0] - num_experts * biases, expected[1] - k * biases),
            "swapped": (expected[1], expected[0]),
            "active_all_experts": (expected[0], expected[0]),
        }
        for key, value in candidates.items():
            if got == value:
                raise Mistake(key, f"{messages[key][0]} (for {_case_text(dim, hidden, num_experts, k)})",
                              messages[key][1])
        raise Mistake("wrong_count", f"for {_case_text(dim, hidden, num_experts, k)} you gave {got}",
                      "List the layer's tensors: the router's weight, then per expert two weight matrices and "
                      "two biases; a token uses the router and top_k experts.")


def _check_claimed_saving(fn):
    messages = {
        "against_dense_active": ("your saving is measured against the dense layer with the same active "
                                 "parameters, which does the same expert FLOPs",
                                 "The claim compares with the dense layer with the same total parameters "
                                 "(width num_experts * hidden)."),
        "router_ignored": ("your FFN saving is exactly one minus k/E: the router's FLOPs are left out",
                           "The MoE layer also pays for its router, so it saves a little less than that."),
        "ratio_not_saving": ("you returned the cost ratio (MoE / dense) instead of the saving",
                             "A saving is the fraction of the dense FLOPs that the MoE does not spend."),
        "attention_one_side": ("in the block, attention was added to one side only",
                               "Attention is the same in the MoE block and the dense block: add it to both."),
        "block_as_ffn": ("your block saving equals the feed-forward saving: attention is missing",
                         "A block also runs attention (the same on both sides), which dilutes the saving; "
                         "moe_teach.counting.attention_flops_per_token gives its FLOPs."),
    }
    for dim, hidden, num_experts, k in _CASES:
        seq_len = 4 * dim
        expected = {"ffn": flop_saving(num_experts, k, dim, hidden)["dense-total"],
                    "block": flop_saving(num_experts, k, dim, hidden, seq_len=seq_len)["dense-total"]}
        got = _expect_dict(_call(fn, dim, hidden, num_experts, k, seq_len), ("ffn", "block"), "the savings")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in got.values()):
            raise Mistake("not_a_number", f"each saving should be a float, got {got!r}",
                          "Return plain Python floats, such as 0.75 for 75%.")
        if all(math.isclose(got[key], expected[key], rel_tol=1e-6, abs_tol=1e-9) for key in expected):
            continue
        counts = layer_counts(dim, hidden, num_experts, k)
        moe, total = counts["moe"]["flops_per_token"], counts["dense-total"]["flops_per_token"]
        attention = attention_flops_per_token(dim, seq_len)
        candidates = {
            "against_dense_active": {"ffn": flop_saving(num_experts, k, dim, hidden)["dense-active"]},
            "router_ignored": {"ffn": 1 - k / num_experts},
            "ratio_not_saving": {"ffn": moe / total},
            "attention_one_side": {"block": [1 - (moe + attention) / total, 1 - moe / (total + attention)]},
            "block_as_ffn": {"block": expected["ffn"]},
        }
        for key, wrong in candidates.items():
            for part, values in wrong.items():
                values = values if isinstance(values, list) else [values]
                if any(math.isclose(got[part], v, rel_tol=1e-6, abs_tol=1e-9) for v in values):
                    raise Mistake(key, f"{messages[key][0]} (for {_case_text(dim, hidden, num_experts, k)})",
                                  messages[key][1])
        part = "ffn" if not math.isclose(got["ffn"], expected["ffn"], rel_tol=1e-6) else "block"
        raise Mistake("wrong_values", f"your {part} saving is {got[part]:.4f} for "
                      f"{_case_text(dim, hidden, num_experts, k)}, seq_len={seq_len}",
                      "A saving is 1 minus the MoE's FLOPs over the dense-total FLOPs, with the same "
                      "attention added to both sides for the block.")


register("08_performance", {
    "layer_flops": _check_layer_flops,
    "layer_parameters": _check_layer_parameters,
    "claimed_saving": _check_claimed_saving,
})
