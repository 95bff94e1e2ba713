"""Evaluation of the language model: perplexity per domain, answer-token loss and accuracy,
which experts each domain's tokens use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..transformer import moe_layers
from ..validation import (
    check_float_tensor,
    check_index_tensor,
    check_mask,
    check_non_negative_int,
    check_positive_int,
)
from .data import DOMAINS
from .model import LanguageModel, eval_mode
from .training import LMData, check_model_and_data


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: LanguageModel, data: LMData, batch_size: int = 64) -> dict[str, float]:
    """Validation perplexity ``exp(mean next-token loss)`` per domain and over ``"all"`` (eval mode)."""
    check_model_and_data(model, data)
    check_positive_int("batch_size", batch_size)
    with eval_mode(model):
        nll, count = _domain_nll(model, data, batch_size)
    result = {name: math.exp(nll[i] / count[i]) for i, name in enumerate(DOMAINS) if count[i] > 0}
    result["all"] = math.exp(nll.sum() / count.sum())
    return result


def _domain_nll(model: LanguageModel, data: LMData, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss and real-token count per domain, both ``[domains]`` float64."""
    nll = torch.zeros(len(DOMAINS), dtype=torch.float64)
    count = torch.zeros(len(DOMAINS), dtype=torch.float64)
    for rows in torch.arange(len(data)).split(batch_size):
        inputs, targets, mask = data.batch(rows)
        logits = model(inputs, token_mask=mask)
        losses = F.cross_entropy(
            logits.transpose(1, 2).float(), targets, ignore_index=data.pad_id, reduction="none"
        )  # [B, S]
        real = (targets != data.pad_id).double()
        domains = data.domains[rows]
        nll.index_add_(0, domains, (losses.double() * real).sum(dim=1))
        count.index_add_(0, domains, real.sum(dim=1))
    return nll, count


def answer_token_loss(logits: torch.Tensor, targets: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer positions only; ``logits [B, S, V]``, the masks ``[B, S]``.

    The knowledge corpus's answer words are the attribute values: the part of a document a
    model can only get right by having stored the fact.
    """
    check_float_tensor("logits", logits, min_dims=3)
    check_index_tensor("targets", targets, num_rows=logits.shape[0], dims=2)
    check_mask("answer_mask", answer_mask, targets.shape)
    if tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"targets must have shape {tuple(logits.shape[:2])}, got {tuple(targets.shape)}")
    if not answer_mask.any():
        raise ValueError("answer_mask selects no token: there is no answer token to score")
    losses = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")  # [B, S]
    return losses[answer_mask].mean()


@torch.no_grad()
def evaluate_answers(model: LanguageModel, data: LMData, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Perplexity, answer-token loss and answer accuracy, per domain and ``"all"`` (eval mode).

    Returns ``{"perplexity": {...}, "answer_loss": {...}, "answer_accuracy": {...}}``, each keyed
    by domain name and ``"all"``. Sums are kept per domain and divided once at the end
    (the mean over all tokens, not a mean of batch means). Needs ``data.answer_mask``.
    """
    check_model_and_data(model, data)
    if data.answer_mask is None:
        raise ValueError("data has no answer_mask: encode it with answer_words (see prepare_knowledge)")
    check_positive_int("batch_size", batch_size)
    with eval_mode(model):
        sums = {key: torch.zeros(len(DOMAINS), dtype=torch.float64)
                for key in ("nll", "tokens", "answer_nll", "answers", "correct")}
        for rows in torch.arange(len(data)).split(batch_size):
            inputs, targets, mask = data.batch(rows)
            answers = data.answer_mask[rows][:, : inputs.shape[1]]
            logits = model(inputs, token_mask=mask).float()
            mask = targets != data.pad_id  # score real targets (the position after <eos> has none)
            losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").double()  # [B, S]
            correct = (logits.argmax(dim=-1) == targets).double()
            domains = data.domains[rows]
            for key, values, where in (("nll", losses, mask), ("tokens", torch.ones_like(losses), mask),
                                       ("answer_nll", losses, answers), ("answers", torch.ones_like(losses), answers),
                                       ("correct", correct, answers)):
                sums[key].index_add_(0, domains, (values * where).sum(dim=1))
    result = {"perplexity": {}, "answer_loss": {}, "answer_accuracy": {}}
    for name, index in [*((d, i) for i, d in enumerate(DOMAINS)), ("all", slice(None))]:
        total = {key: float(value[index].sum()) for key, value in sums.items()}
        if total["answers"] == 0:
            continue
        result["perplexity"][name] = math.exp(total["nll"] / total["tokens"])
        result["answer_loss"][name] = total["answer_nll"] / total["answers"]
        result["answer_accuracy"][name] = total["correct"] / total["answers"]
    return result


@torch.no_grad()
def answer_experts(model: LanguageModel, data: LMData, layer: int = 0, batch_size: int = 256) -> torch.Tensor:
    """``[A]`` the first-choice expert of every answer position (the token *before* each answer
    word, which predicts it) in MoE layer ``layer``, in eval mode; for measuring routing churn."""
    check_model_and_data(model, data)
    check_positive_int("batch_size", batch_size)
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no MoE layers, so there is no routing to read")
    check_non_negative_int("layer", layer, maximum=len(layers) - 1)
    if data.answer_mask is None:
        raise ValueError("data has no answer_mask: encode it with answer_words (see prepare_knowledge)")
    with eval_mode(model):
        chosen = []
        for rows in torch.arange(len(data)).split(batch_size):
            inputs, _, mask = data.batch(rows)
            model(inputs, token_mask=mask)
            answers = data.answer_mask[rows][:, : inputs.shape[1]].reshape(-1)
            chosen.append(layers[layer].last_record.expert_indices[answers, 0])
    return torch.cat(chosen)


@torch.no_grad()
def domain_expert_counts(model: LanguageModel, data: LMData, batch_size: int = 64) -> torch.Tensor:
    """``[L, domains, E]`` routing assignments of real (non-padding) tokens, per domain, in eval mode.

    Read from each MoE layer's routing record. Each (layer, domain) row sums to the domain's
    number of real tokens times ``top_k``.
    """
    check_model_and_data(model, data)
    check_positive_int("batch_size", batch_size)
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no MoE layers, so there is no routing to count")
    with eval_mode(model):
        return _count_domain_experts(model, layers, data, batch_size)


def _count_domain_experts(model: LanguageModel, layers: list, data: LMData, batch_size: int) -> torch.Tensor:
    counts = torch.zeros(len(layers), len(DOMAINS), layers[0].num_experts)
    for rows in torch.arange(len(data)).split(batch_size):
        inputs, _, mask = data.batch(rows)
        model(inputs, token_mask=mask)
        token_domain = data.domains[rows].unsqueeze(1).expand_as(inputs).reshape(-1)  # [T]
        real = mask.reshape(-1)
        for i, layer in enumerate(layers):
            record = layer.last_record
            chosen = record.expert_indices[real]  # [T_real, k]
            domain = token_domain[real].unsqueeze(1).expand_as(chosen)
            counts[i].index_put_(
                (domain.reshape(-1), chosen.reshape(-1)), torch.ones(chosen.numel()), accumulate=True
            )
    return counts


def domain_expert_shares(model: LanguageModel, data: LMData, batch_size: int = 64) -> torch.Tensor:
    """``[L, domains, E]`` share of each domain's routing assignments per expert (each row sums to 1)."""
    counts = domain_expert_counts(model, data, batch_size)
    return counts / counts.sum(dim=-1, keepdim=True).clamp_min(1)
