"""Planted mistakes for exercise notebook 09_routing_dashboard: (diagnosis key, wrong function) per task."""

import math
from collections import Counter

import torch


def entropy_in_bits(probs):
    return -torch.special.xlogy(probs, probs).sum(dim=-1) / math.log(2)


def entropy_without_minus(probs):
    return torch.special.xlogy(probs, probs).sum(dim=-1)


def entropy_nan_at_zero(probs):
    return -(probs * torch.log(probs)).sum(dim=-1)


def entropy_mean(probs):
    return -torch.special.xlogy(probs, probs).mean(dim=-1)


def entropy_over_tokens(probs):
    return -torch.special.xlogy(probs, probs).sum(dim=0)


def entropy_squared(probs):
    """No named diagnosis: gets the generic hint."""
    return -(probs ** 2 * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)


def top_ignoring_expert(words, experts, expert, n):
    counts = Counter(words)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def top_ascending(words, experts, expert, n):
    counts = Counter(w for w, e in zip(words, experts) if e == expert)
    return sorted(counts.items(), key=lambda item: (item[1], item[0]))[:n]


def top_not_cut(words, experts, expert, n):
    counts = Counter(w for w, e in zip(words, experts) if e == expert)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def top_ties_reversed(words, experts, expert, n):
    counts = Counter(w for w, e in zip(words, experts) if e == expert)
    return sorted(counts.items(), key=lambda item: (item[1], item[0]), reverse=True)[:n]


def top_shares(words, experts, expert, n):
    counts = Counter(w for w, e in zip(words, experts) if e == expert)
    total = sum(counts.values())
    return [(w, c / total) for w, c in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]]


def top_as_dict(words, experts, expert, n):
    return dict(Counter(w for w, e in zip(words, experts) if e == expert).most_common(n))


def cooccurrence_transposed(first_a, first_b, num_experts):
    return torch.bincount(first_b * num_experts + first_a, minlength=num_experts ** 2).reshape(num_experts, -1)


def cooccurrence_frequencies(first_a, first_b, num_experts):
    counts = torch.bincount(first_a * num_experts + first_b, minlength=num_experts ** 2).reshape(num_experts, -1)
    return counts / counts.sum()


def cooccurrence_conditional(first_a, first_b, num_experts):
    counts = torch.bincount(first_a * num_experts + first_b, minlength=num_experts ** 2).reshape(num_experts, -1)
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)


def cooccurrence_from_totals(first_a, first_b, num_experts):
    rows = torch.bincount(first_a, minlength=num_experts).double()
    cols = torch.bincount(first_b, minlength=num_experts).double()
    return torch.outer(rows, cols) / first_a.numel()


def cooccurrence_flat_index_wrong(first_a, first_b, num_experts):
    """No named diagnosis: ``a * (E - 1) + b`` collides cells."""
    flat = first_a * (num_experts - 1) + first_b
    return torch.bincount(flat, minlength=num_experts ** 2)[: num_experts ** 2].reshape(num_experts, -1)


MISTAKES = {
    "routing_entropy": [("bits", entropy_in_bits), ("sign", entropy_without_minus),
                        ("nan_at_zero", entropy_nan_at_zero), ("mean_not_sum", entropy_mean),
                        ("wrong_dim", entropy_over_tokens), ("wrong_values", entropy_squared)],
    "top_tokens": [("ignores_expert", top_ignoring_expert), ("ascending", top_ascending),
                   ("not_cut", top_not_cut), ("tie_order", top_ties_reversed), ("shares", top_shares),
                   ("return_format", top_as_dict)],
    "cooccurrence": [("transposed", cooccurrence_transposed), ("normalised", cooccurrence_frequencies),
                     ("row_normalised", cooccurrence_conditional), ("independent", cooccurrence_from_totals),
                     ("wrong_values", cooccurrence_flat_index_wrong)],
}
