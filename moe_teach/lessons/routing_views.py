"""Views over many tokens for the routing dashboard (lesson 09): the routing of a whole split,
domain-by-expert shares, expert cards, cross-layer co-occurrence, uncertainty and consistency.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..lm.data import DOMAINS, SHARED_WORDS, Corpus
from ..lm.model import LanguageModel, eval_mode
from ..lm.tokenizer import UNK, WordTokenizer
from ..lm.training import (
    LMData,
    check_model_and_data,
    encode_documents,
)
from ..transformer import moe_layers
from ..validation import (
    check_float_tensor,
    check_index_tensor,
    check_instance,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    check_text,
)

# ----------------------------------------------------------------------------- the model
from .routing_analysis import (
    CACHE_ENV,
    LayerShapes,
    TextRouting,
    cache_folder,
    check_expert_list,
    check_words,
    default_checkpoint_path,
    default_model,
    domain_examples,
    ensure_default_checkpoint,
    load_model,
    route_text,
    validation_corpus,
)
from .timing import torch_threads


@dataclass
class RoutingTable(LayerShapes):
    """The routing of every real token of a set of documents.

    Attributes:
        token_ids: ``[N]`` token id of each routed token (``<bos>`` included: it is routed too).
        domains: ``[N]`` domain index (into ``DOMAINS``) of the document each token comes from.
        probs: ``[L, N, E]`` router probabilities.
        experts: ``[L, N, k]`` chosen experts, best first.
        vocab: the tokenizer's vocabulary (id -> word).
    """

    token_ids: torch.Tensor
    domains: torch.Tensor
    probs: torch.Tensor
    experts: torch.Tensor
    vocab: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_index_tensor("token_ids", self.token_ids, dims=1)
        check_index_tensor("domains", self.domains, num_rows=self.token_ids.shape[0], dims=1)
        check_float_tensor("probs", self.probs, min_dims=3)
        check_index_tensor("experts", self.experts, dims=3)
        check_words("vocab", self.vocab)

    def first_choice(self, layer: int) -> torch.Tensor:
        """``[N]`` first-choice expert of every token at ``layer``."""
        return self.experts[layer, :, 0]

    def words(self) -> list[str]:
        return [self.vocab[i] for i in self.token_ids.tolist()]


@torch.no_grad()
def collect_routing(model: LanguageModel, data: LMData, batch_size: int = 64) -> RoutingTable:
    """Run ``data`` through ``model`` (eval mode) and gather every MoE layer's record for real tokens."""
    check_model_and_data(model, data)
    check_positive_int("batch_size", batch_size)
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no MoE layers, so there is no routing to collect")
    ids, domains, probs, experts = [], [], [[] for _ in layers], [[] for _ in layers]
    with eval_mode(model):
        with torch_threads(1):  # see route_text
            for rows in torch.arange(len(data)).split(batch_size):
                inputs, _, mask = data.batch(rows)
                model(inputs, token_mask=mask)
                real = mask.reshape(-1)
                ids.append(inputs.reshape(-1)[real])
                domains.append(data.domains[rows].unsqueeze(1).expand_as(inputs).reshape(-1)[real])
                for i, layer in enumerate(layers):
                    probs[i].append(layer.last_record.probs[real].float())
                    experts[i].append(layer.last_record.expert_indices[real])
    return RoutingTable(torch.cat(ids), torch.cat(domains), torch.stack([torch.cat(p) for p in probs]),
                        torch.stack([torch.cat(e) for e in experts]))


def routing_table(model: LanguageModel, tokenizer: WordTokenizer, corpus: Corpus) -> RoutingTable:
    """:func:`collect_routing` over ``corpus.validation`` encoded with ``tokenizer``."""
    check_instance("model", model, LanguageModel)
    check_instance("corpus", corpus, Corpus)
    data = encode_documents(corpus.validation, tokenizer, model.config.max_seq_len)
    table = collect_routing(model, data)
    table.vocab = list(tokenizer.vocab)
    return table


def domain_expert_shares(table: RoutingTable) -> torch.Tensor:
    """``[L, D, E]`` share of each domain's assignments (all k slots) per expert; rows sum to 1."""
    check_instance("table", table, RoutingTable)
    counts = torch.zeros(table.num_layers, len(DOMAINS), table.num_experts)
    domain = table.domains.unsqueeze(1).expand(-1, table.top_k).reshape(-1)
    for layer in range(table.num_layers):
        counts[layer].index_put_((domain, table.experts[layer].reshape(-1)),
                                 torch.ones(domain.numel()), accumulate=True)
    return counts / counts.sum(dim=-1, keepdim=True).clamp_min(1)


def routing_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``[..., E] -> [...]`` entropy of the router distribution in nats (0: certain, ln E: uniform)."""
    check_float_tensor("probs", probs)
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def routing_margin(probs: torch.Tensor) -> torch.Tensor:
    """``[..., E] -> [...]`` probability of the best expert minus the second best (small: unsure)."""
    check_float_tensor("probs", probs)
    if probs.shape[-1] < 2:
        raise ValueError(f"probs must have at least 2 experts in its last dimension, got shape {tuple(probs.shape)}")
    top2 = probs.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def cooccurrence(first_a: torch.Tensor, first_b: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``[E, E]`` counts: entry ``[i, j]`` = tokens whose expert is ``i`` in ``first_a`` and ``j`` in ``first_b``."""
    check_index_tensor("first_a", first_a, dims=1)
    check_index_tensor("first_b", first_b, num_rows=first_a.shape[0], dims=1)
    check_positive_int("num_experts", num_experts)
    for name, tensor in (("first_a", first_a), ("first_b", first_b)):
        if tensor.numel() and not 0 <= int(tensor.min()) <= int(tensor.max()) < num_experts:
            raise ValueError(f"{name} must hold expert ids in 0..{num_experts - 1}")
    flat = first_a.long() * num_experts + first_b.long()
    return torch.bincount(flat, minlength=num_experts * num_experts).reshape(num_experts, num_experts)


def mutual_information(counts: torch.Tensor) -> float:
    """Mutual information in bits of the joint distribution given by a ``[E, E]`` count matrix."""
    check_counts("counts", counts, dims=2)
    joint = counts.double() / counts.sum().clamp_min(1)
    outer = joint.sum(dim=1, keepdim=True) * joint.sum(dim=0, keepdim=True)
    ratio = torch.where(joint > 0, joint / outer.clamp_min(1e-300), torch.ones_like(joint))
    return float((joint * torch.log2(ratio)).sum())


def entropy_bits(counts: torch.Tensor) -> float:
    """Entropy in bits of the distribution of ``[E]`` counts."""
    check_counts("counts", counts, dims=1)
    p = counts.double() / counts.sum().clamp_min(1)
    return float(-torch.special.xlogy(p, p).sum() / math.log(2))


def top_tokens(words: list[str], experts: list[int], expert: int, n: int = 8) -> list[tuple[str, int]]:
    """The ``n`` words most often routed to ``expert`` (``experts[i]`` is word ``i``'s expert).

    Sorted by count (largest first), ties by the word.
    """
    check_words("words", words)
    check_expert_list("experts", experts, len(words))
    check_non_negative_int("expert", expert)
    check_positive_int("n", n)
    counts = Counter(w for w, e in zip(words, experts) if e == expert)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


@dataclass
class ExpertCard:
    """One expert at one layer: its share of all first choices, its top words and its domain mix."""

    layer: int
    expert: int
    traffic: float
    top_words: list[tuple[str, int]]
    domain_shares: dict[str, float]

    def __post_init__(self):
        check_non_negative_int("layer", self.layer)
        check_non_negative_int("expert", self.expert)
        check_non_negative_float("traffic", self.traffic, maximum=1.0)
        if not isinstance(self.top_words, list):
            raise TypeError(f"top_words must be a list of (word, count) pairs, got {type(self.top_words).__name__}")
        if not isinstance(self.domain_shares, dict):
            raise TypeError(f"domain_shares must be a dict {{domain: share}}, got {type(self.domain_shares).__name__}")


def expert_card(table: RoutingTable, layer: int, expert: int, n: int = 8) -> ExpertCard:
    """The :class:`ExpertCard` of ``expert`` at ``layer`` (first choices of real tokens, ``<bos>`` left out)."""
    check_instance("table", table, RoutingTable)
    check_non_negative_int("layer", layer, maximum=table.num_layers - 1)
    check_non_negative_int("expert", expert, maximum=table.num_experts - 1)
    check_positive_int("n", n)
    first = table.first_choice(layer)
    words = table.words()
    is_word = torch.tensor([w != "<bos>" for w in words])
    mine = (first == expert) & is_word
    domain_counts = torch.bincount(table.domains[mine], minlength=len(DOMAINS)).double()
    shares = domain_counts / domain_counts.sum().clamp_min(1)
    return ExpertCard(
        layer=layer, expert=expert, traffic=float(mine.sum()) / max(1, int(is_word.sum())),
        top_words=top_tokens([w for w, keep in zip(words, is_word.tolist()) if keep],
                             first[is_word].tolist(), expert, n),
        domain_shares=dict(zip(DOMAINS, shares.tolist())),
    )


def is_function_word(word: str) -> bool:
    """Words every prose domain uses (``the``, ``of``, ``.`` ...); the others are content words."""
    check_text("word", word)
    return word in SHARED_WORDS


def word_consistency(words: list[str], experts: list[int], min_count: int = 5) -> dict[str, float]:
    """For each word seen at least ``min_count`` times: the share of its occurrences on its most common expert.

    1.0: the word always goes to the same expert, whatever its context.
    """
    check_words("words", words)
    check_expert_list("experts", experts, len(words))
    check_positive_int("min_count", min_count)
    per_word: dict[str, Counter] = {}
    for w, e in zip(words, experts):
        per_word.setdefault(w, Counter())[e] += 1
    return {w: max(c.values()) / sum(c.values()) for w, c in per_word.items() if sum(c.values()) >= min_count}


def check_counts(name: str, counts, dims: int) -> torch.Tensor:
    """``counts`` must be a ``dims``-D tensor of counts (>= 0)."""
    if not isinstance(counts, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of counts, got {type(counts).__name__}")
    if counts.dim() != dims or (counts.numel() and bool((counts < 0).any())):
        raise ValueError(f"{name} must be a {dims}-D tensor of counts >= 0, got shape {tuple(counts.shape)}")
    return counts


def check_capacity_factor(value) -> float | None:
    """``None`` (dropless) or a positive number."""
    return None if value is None else check_positive_float("capacity_factor", value)


def check_layer(layer, num_layers: int):
    """``"all"`` or a layer index ``0..num_layers-1``."""
    if layer == "all":
        return layer
    check_positive_int("num_layers", num_layers)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers:
        raise ValueError(f"layer must be 'all' or an MoE layer index 0..{num_layers - 1}, got {layer!r}")
    return layer


__all__ = ["CACHE_ENV", "ExpertCard", "RoutingTable", "TextRouting", "UNK", "cache_folder", "collect_routing",
           "cooccurrence", "default_checkpoint_path", "default_model", "domain_examples",
           "domain_expert_shares", "ensure_default_checkpoint", "entropy_bits", "expert_card",
           "is_function_word", "load_model", "mutual_information", "route_text", "routing_entropy",
           "routing_margin", "routing_table", "top_tokens", "validation_corpus", "word_consistency"]
