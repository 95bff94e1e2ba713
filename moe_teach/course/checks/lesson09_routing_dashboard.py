"""Checks for exercise notebook 09_routing_dashboard (reading routing: entropy, expert cards, co-occurrence)."""

from __future__ import annotations

import math
import random
from collections import Counter

import torch

from ...lessons.routing_views import cooccurrence, routing_entropy, top_tokens
from .core import (
    Mistake,
    _call,
    _close,
    _diagnose,
    _expect_tensor,
    _seeded,
    _values_differ,
    register,
)


def _entropy_cases():
    """``[T, E]`` probabilities with T != E, the last ones holding exact zeros."""
    cases = []
    for seed, (tokens, experts) in enumerate([(6, 4), (3, 8), (5, 2)]):
        with _seeded(900 + seed):
            cases.append(torch.softmax(2 * torch.randn(tokens, experts), dim=-1))
    cases.append(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1]]))
    return cases


def _check_routing_entropy(fn):
    messages = {
        "bits": ("your entropy is in bits (log base 2)", "Use the natural logarithm (torch.log): nats, as the "
                 "lesson's uniform value ln E."),
        "sign": ("your entropy is negative: the minus sign is missing",
                 "Entropy is minus the sum of p times log p; log p is never positive, so the result is >= 0."),
        "mean_not_sum": ("you averaged p log p over the experts instead of summing",
                         "Sum over the experts (dim=-1); do not divide by the number of experts."),
    }
    for probs in _entropy_cases():
        expected = routing_entropy(probs)
        out = _call(fn, probs.clone())
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (probs.shape[1],):
            raise Mistake("wrong_dim", f"your output has one value per expert ({probs.shape[1]}), not per token",
                          "Reduce over the experts, the last dimension (dim=-1): one entropy per token.")
        _expect_tensor(out, expected.shape, "One entropy per token: shape [tokens].")
        if torch.isnan(out).any():
            raise Mistake("nan_at_zero", "your entropy is NaN for a token that gives some expert probability 0",
                          "0 * log(0) is NaN in floating point, but its limit is 0: use torch.special.xlogy(p, p) "
                          "or clamp p before the log.")
        if not _close(out, expected):
            _diagnose(out, {"bits": expected / math.log(2), "sign": -expected,
                            "mean_not_sum": expected / probs.shape[1]}, messages, (
                "wrong_values", _values_differ(out, expected),
                "Per token: minus the sum over experts of p * log(p). A uniform row over E experts gives ln E."))


def _top_tokens_cases():
    rng = random.Random(909)
    vocabulary = ["the", "bank", "rose", "court", "def", "(", ")", ".", "tenant", "garden", "a", "fund"]
    cases = []
    for length, n in [(60, 4), (40, 6), (25, 3)]:
        words = [rng.choice(vocabulary) for _ in range(length)]
        experts = [rng.randrange(4) for _ in range(length)]
        cases.append((words, experts, rng.randrange(4), n))
    # a tie in the counts: "a" and "b" both twice on expert 1, "c" once; "z" most often overall, on expert 0
    cases.append((["b", "a", "z", "b", "z", "a", "c", "z", "z"], [1, 1, 0, 1, 0, 1, 1, 0, 0], 1, 2))
    return cases


def _as_pairs(out):
    if not isinstance(out, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in out):
        raise Mistake("return_format", f"your function should return a list of (word, count) pairs, "
                      f"got {type(out).__name__}", "Return e.g. [('the', 12), ('bank', 7)], largest count first.")
    return [(p[0], p[1]) for p in out]


def _check_top_tokens(fn):
    messages = {
        "ignores_expert": ("you counted every word, not only the words routed to the expert",
                           "Keep word i only where experts[i] == expert."),
        "ascending": ("your list starts with the rarest word", "Sort by count, largest first."),
        "not_cut": ("your list is longer than n", "Return only the first n pairs."),
        "tie_order": ("words with equal counts are not in alphabetical order",
                      "Sort by (-count, word): ties are broken by the word itself."),
        "shares": ("your counts are fractions, not counts", "Give how many times each word went to the expert."),
    }
    for words, experts, expert, n in _top_tokens_cases():
        expected = top_tokens(words, experts, expert, n)
        out = _as_pairs(_call(fn, list(words), list(experts), expert, n))
        if out == expected:
            continue
        every = top_tokens(words, experts, expert, len(words))
        total = sum(c for _, c in every)
        candidates = {
            "ignores_expert": top_tokens(words, [expert] * len(words), expert, n),
            "ascending": sorted(every, key=lambda p: (p[1], p[0]))[:n],
            "not_cut": every,
            "tie_order": [sorted(every, key=lambda p: (p[1], p[0]), reverse=True)[:n],   # ties reversed
                          sorted(Counter(w for w, e in zip(words, experts) if e == expert).items(),
                                 key=lambda p: -p[1])[:n]],                              # first seen first
            "shares": [(w, c / total) for w, c in expected],
        }
        for key, candidate in candidates.items():
            variants = candidate if key == "tie_order" else [candidate]
            if any(v != expected and _same_pairs(out, v) for v in variants):
                raise Mistake(key, *messages[key])
        raise Mistake("wrong_values", f"for expert {expert} and n={n} your list differs from the expected one",
                      "Count each word among the positions whose expert is `expert`, sort by count (largest "
                      "first, ties by the word) and keep n.")


def _same_pairs(a, b) -> bool:
    return len(a) == len(b) and all(wa == wb and math.isclose(float(ca), float(cb), rel_tol=1e-6)
                                    for (wa, ca), (wb, cb) in zip(a, b))


def _check_cooccurrence(fn):
    messages = {
        "transposed": ("rows and columns are swapped",
                       "Entry [i, j] counts tokens with expert i in first_a (rows) and j in first_b (columns)."),
        "normalised": ("your matrix sums to 1: these are frequencies, not counts",
                       "Return the number of tokens in each cell; do not divide by the number of tokens."),
        "row_normalised": ("each row sums to 1: that is P(b | a), not the counts",
                           "Return the counts; the lesson divides by the row sums only to plot P(b | a)."),
        "independent": ("your matrix is the product of the two layers' totals (what independence would give)",
                        "Count the pairs token by token: cell [first_a[t], first_b[t]] gets one per token t."),
    }
    for seed, (tokens, experts) in enumerate([(50, 4), (30, 3), (80, 6)]):
        with _seeded(930 + seed):
            first_a = torch.randint(0, experts, (tokens,))
            first_b = (first_a + torch.randint(0, 2, (tokens,))) % experts   # dependent, not symmetric
        expected = cooccurrence(first_a, first_b, experts).double()
        out = _call(fn, first_a.clone(), first_b.clone(), experts)
        _expect_tensor(out, (experts, experts), "One row per expert of first_a, one column per expert of first_b.")
        if not _close(out.double(), expected):
            rows, cols = expected.sum(dim=1, keepdim=True), expected.sum(dim=0, keepdim=True)
            _diagnose(out.double(), {
                "transposed": expected.T, "normalised": expected / tokens,
                "row_normalised": expected / rows.clamp_min(1), "independent": rows * cols / tokens,
            }, messages, ("wrong_values", f"the shape is right but the counts differ (they sum to "
                          f"{float(out.double().sum()):g}; there are {tokens} tokens)",
                          "Each token adds 1 to exactly one cell: [its expert in first_a, its expert in first_b]."))


register("09_routing_dashboard", {
    "routing_entropy": _check_routing_entropy,
    "top_tokens": _check_top_tokens,
    "cooccurrence": _check_cooccurrence,
})
