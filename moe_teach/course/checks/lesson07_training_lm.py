"""Checks for exercise notebook 07_training_lm (training an MoE language model)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ...experts import Expert
from ...lm.checkpoints import load_checkpoint, read_checkpoint
from ...lm.model import LanguageModel, LMConfig
from ...lm.tokenizer import WordTokenizer
from ...moe_layer import MoEConfig, MoELayer
from ...transformer import BlockConfig, collect_aux_losses
from .core import (
    Mistake,
    _call,
    _close,
    _diagnose,
    _expect_scalar,
    _expect_tensor,
    _how_far,
    _seeded,
    register,
)

_WORDS = ["alpha", "beta", "gamma", "delta", "ticker", "sector", "zant", "qorx", "mining", "banking", "oslo",
          "riga"]


def _tiny_lm(seed: int, num_layers: int = 2) -> tuple[LanguageModel, WordTokenizer]:
    tokenizer = WordTokenizer.from_texts([" ".join(_WORDS)])
    block = BlockConfig(dim=16, num_heads=2, hidden_dim=16, moe=MoEConfig(num_experts=4, top_k=2))
    with _seeded(seed):
        model = LanguageModel(LMConfig(vocab_size=len(tokenizer), max_seq_len=10, num_layers=num_layers, block=block))
    return model, tokenizer


def _padded_batch(seed: int, pad_id: int, vocab_size: int, lengths=(9, 6, 4)):
    """``inputs``, ``targets``, ``token_mask`` ``[B, S]`` with trailing padding of different lengths."""
    with _seeded(seed):
        ids = torch.randint(4, vocab_size, (len(lengths), max(lengths) + 1))
    for row, length in enumerate(lengths):
        ids[row, length + 1 :] = pad_id
    inputs, targets = ids[:, :-1], ids[:, 1:]
    return inputs, targets, inputs != pad_id


def _unchanged(before: list[torch.Tensor], after: list[torch.Tensor], what: str) -> None:
    if any(not torch.equal(a, b) for a, b in zip(before, after)):
        raise Mistake("mutated_input", f"your function changed {what} it was given (in place)",
                      "Leave the inputs as they are: build new tensors (masked_fill, a copy, indexing) "
                      "instead of writing into the caller's tensors.")


def _check_training_loss(fn):
    messages = {
        "padding_counted": ("the task loss also scores the padding targets",
                            "Padding is not text: pass ignore_index=pad_id to cross_entropy (or average only "
                            "over targets that are not pad_id)."),
        "aux_missing": ("the auxiliary losses are not in your total",
                        "After the forward pass, collect_aux_losses(model) gives the summed 'switch' and 'z' "
                        "losses of all MoE layers; add switch_coef and z_coef times them."),
        "mask_not_passed": ("the routers' losses include the padding tokens",
                            "Call the model with token_mask=token_mask so padding stays out of the balancing "
                            "statistics."),
        "coefs_swapped": ("the two coefficients are swapped",
                          "switch_coef scales the 'switch' loss, z_coef the 'z' loss."),
        "mean_over_batch": ("the task loss is a mean of per-sequence means",
                            "Average over all real target tokens of the batch at once, so a long document "
                            "counts more than a short one."),
    }
    switch_coef, z_coef = 0.5, 0.25  # large, so a missing or swapped term shows
    for seed in range(2):
        model, tokenizer = _tiny_lm(130 + seed)
        inputs, targets, mask = _padded_batch(140 + seed, tokenizer.pad_id, len(tokenizer))
        with torch.no_grad():
            logits = model(inputs, token_mask=mask)
            aux = collect_aux_losses(model)
            flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
            task = F.cross_entropy(flat_logits, flat_targets, ignore_index=tokenizer.pad_id)
            expected = task + switch_coef * aux["switch"] + z_coef * aux["z"]
            with_padding = F.cross_entropy(flat_logits, flat_targets)
            per_row = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=tokenizer.pad_id,
                                      reduction="none").sum(dim=1) / (targets != tokenizer.pad_id).sum(dim=1)
            model(inputs)
            unmasked = collect_aux_losses(model)
        candidates = {
            "padding_counted": with_padding + switch_coef * aux["switch"] + z_coef * aux["z"],
            "aux_missing": task,
            "mask_not_passed": task + switch_coef * unmasked["switch"] + z_coef * unmasked["z"],
            "coefs_swapped": task + z_coef * aux["switch"] + switch_coef * aux["z"],
            "mean_over_batch": per_row.mean() + switch_coef * aux["switch"] + z_coef * aux["z"],
        }
        before = [inputs.clone(), targets.clone(), mask.clone()]
        loss = _expect_scalar(_call(fn, model, inputs, targets, mask, tokenizer.pad_id, switch_coef, z_coef))
        _unchanged(before, [inputs, targets, mask], "a tensor")
        if not _close(loss, expected):
            _diagnose(loss, candidates, messages, (
                "wrong_values", f"your loss is {loss.item():.4g}, {_how_far(loss, expected)}",
                "The loss is the mean cross-entropy over real targets plus switch_coef x switch plus "
                "z_coef x z, from one forward pass with the token mask."))
        if not loss.requires_grad:
            raise Mistake("detached", "your loss is detached from the model: backward would train nothing",
                          "Keep every piece a tensor; don't call .item(), float() or .detach() on them.")


def _check_perplexity(fn):
    messages = {
        "mean_of_batch_means": ("you averaged the per-batch mean losses",
                                "Batches hold different numbers of tokens: add up all the loss sums and all "
                                "the token counts first, then divide once."),
        "mean_of_perplexities": ("you averaged per-batch perplexities",
                                 "Perplexity is exp of the mean loss over all tokens; exp of per-batch means "
                                 "averaged is a different (larger) number."),
        "no_exp": ("you returned the mean loss, not the perplexity",
                   "Perplexity is the exponential of the mean loss (the losses are in nats)."),
        "base_two": ("you used base 2", "The losses are natural-log cross-entropies (nats): use exp, not 2**."),
        "divided_by_batches": ("you divided the total loss by the number of batches",
                               "Divide by the total number of tokens."),
    }
    for loss_sums, counts in ([12.0, 3.0, 7.5], [10, 2, 9]), ([4.2], [3]), ([30.0, 1.0], [25, 1]):
        sums_t, counts_t = torch.tensor(loss_sums, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)
        expected = math.exp(sum(loss_sums) / sum(counts))
        candidates = {
            "mean_of_batch_means": math.exp(float((sums_t / counts_t).mean())),
            "mean_of_perplexities": float(torch.exp(sums_t / counts_t).mean()),
            "no_exp": sum(loss_sums) / sum(counts),
            "base_two": 2 ** (sum(loss_sums) / sum(counts)),
            "divided_by_batches": math.exp(sum(loss_sums) / len(counts)),
        }
        value = _call(fn, list(loss_sums), list(counts))
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise Mistake("not_a_number", f"your function should return one number, got a {type(value).__name__}",
                          "Return a Python float (or a one-element tensor).")
        if not math.isclose(value, expected, rel_tol=1e-6):
            _diagnose(torch.tensor(value), {k: torch.tensor(v) for k, v in candidates.items()
                                            if len(counts) > 1 or k != "mean_of_batch_means"}, messages, (
                "wrong_values", f"your perplexity is {value:.4g}, expected a different number",
                "exp(total loss / total tokens), with both totals over all batches."))


def _check_answer_loss(fn):
    messages = {
        "all_tokens": ("you averaged over every token, not only the answers",
                       "Select the positions where answer_mask is True before averaging."),
        "sum_not_mean": ("you summed the answer losses instead of averaging them",
                         "Divide by the number of answer positions."),
        "divided_by_all": ("you divided the answer losses by the number of all tokens",
                           "Divide by the number of answer positions (answer_mask.sum())."),
        "complement": ("you scored the positions that are not answers", "Use answer_mask, not ~answer_mask."),
    }
    for seed, (batch, seq, vocab) in enumerate([(3, 7, 11), (1, 5, 6), (4, 3, 9)]):
        with _seeded(150 + seed):
            logits = torch.randn(batch, seq, vocab) * 2
            targets = torch.randint(0, vocab, (batch, seq))
            answers = torch.rand(batch, seq) < 0.4
            answers[0, 0], answers[-1, -1] = True, False
        losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        expected = losses[answers].mean()
        candidates = {"all_tokens": losses.mean(), "sum_not_mean": losses[answers].sum(),
                      "divided_by_all": losses[answers].sum() / losses.numel(), "complement": losses[~answers].mean()}
        before = [logits.clone(), targets.clone(), answers.clone()]
        loss = _expect_scalar(_call(fn, logits, targets, answers))
        _unchanged(before, [logits, targets, answers], "a tensor")
        if not _close(loss, expected):
            _diagnose(loss, candidates, messages, (
                "wrong_values", f"your loss is {loss.item():.4g}, {_how_far(loss, expected)}",
                "Per-position cross-entropy (reduction='none'), then the mean over answer positions."))


def _check_upcycle(fn):
    for seed, (num_experts, activation) in enumerate([(4, "gelu"), (3, "relu")]):
        with _seeded(160 + seed):
            dense = Expert(8, 12, activation=activation)
            with torch.no_grad():
                for p in dense.parameters():
                    p.normal_(0, 0.5)
            x = torch.randn(20, 8)
        reference = {k: v.clone() for k, v in dense.state_dict().items()}
        layer = _call(fn, dense, num_experts)
        if not isinstance(layer, MoELayer):
            raise Mistake("not_a_layer", f"your function should return a moe_teach.MoELayer, got "
                          f"{type(layer).__name__}", "Build moe_teach.MoELayer(dense.input_dim, ...) and fill it.")
        if len(layer.experts) != num_experts or layer.top_k != 1:
            raise Mistake("wrong_size", f"your layer has {len(layer.experts)} experts and top_k={layer.top_k}; "
                          f"expected {num_experts} experts and top_k=1",
                          "Pass num_experts=num_experts and top_k=1 to MoELayer.")
        if len({id(e) for e in layer.experts}) < num_experts:
            raise Mistake("shared_module", "several experts are the same module object",
                          "Each expert must be its own copy (copy.deepcopy(dense), or load_state_dict into "
                          "each new expert): one shared module would stay identical forever.")
        dense_ptrs = {p.data_ptr() for p in dense.parameters()}
        if any(p.data_ptr() in dense_ptrs for e in layer.experts for p in e.parameters()):
            raise Mistake("aliased_parameters", "an expert shares its weight tensors with the dense layer",
                          "Copy the values (load_state_dict or copy.deepcopy), don't assign the dense layer's "
                          "Parameters: training one would change the other.")
        same = [all(torch.equal(v, reference[k]) for k, v in e.state_dict().items()) for e in layer.experts]
        if not any(same):
            raise Mistake("not_copied", "no expert holds the dense layer's weights",
                          "Copy the dense feed-forward's weights into every expert (state_dict and load_state_dict, "
                          "or copy.deepcopy).")
        if not all(same):
            raise Mistake("some_not_copied", f"only {sum(same)} of {num_experts} experts hold the dense weights",
                          "Copy the dense weights into every expert.")
        if any(not torch.equal(v, reference[k]) for k, v in dense.state_dict().items()):
            raise Mistake("mutated_input", "your function changed the dense layer", "Leave `dense` as it was.")
        with torch.no_grad():
            out, record = layer(x, return_record=True)
            expected = record.expert_weights[:, :1] * dense(x)
        if not _close(out, expected):
            raise Mistake("wrong_values", "with every expert a copy, the output should be p x dense(x) per token",
                          "Build the layer with the dense layer's hidden_dim and activation.")


def _check_domain_shares(fn):
    messages = {
        "padding_counted": ("padding tokens are counted", "Keep only tokens where token_mask is True."),
        "first_choice_only": ("only each token's first expert is counted",
                              "Count every one of a token's k choices (all columns of expert_indices)."),
        "per_expert": ("each expert's column sums to 1, not each domain's row",
                       "Divide each domain's counts by that domain's total (a row sum)."),
        "counts": ("you returned counts, not shares", "Divide each row by its sum, so each domain's row sums to 1."),
        "whole_table": ("the whole table sums to 1, not each row", "Normalise per domain (per row)."),
    }
    for seed, (tokens, k, domains, experts) in enumerate([(40, 2, 3, 4), (30, 1, 4, 5)]):
        with _seeded(170 + seed):
            indices = torch.stack([torch.randperm(experts)[:k] for _ in range(tokens)])   # [T, k]
            token_domains = torch.arange(tokens) % domains
            mask = torch.rand(tokens) < 0.75
        counts = torch.zeros(domains, experts)
        first = torch.zeros(domains, experts)
        padded = torch.zeros(domains, experts)
        for t in range(tokens):
            for j in range(k):
                padded[token_domains[t], indices[t, j]] += 1
                if mask[t]:
                    counts[token_domains[t], indices[t, j]] += 1
            if mask[t]:
                first[token_domains[t], indices[t, 0]] += 1
        expected = counts / counts.sum(dim=1, keepdim=True)
        candidates = {"padding_counted": padded / padded.sum(dim=1, keepdim=True),
                      "first_choice_only": first / first.sum(dim=1, keepdim=True),
                      "per_expert": counts / counts.sum(dim=0, keepdim=True), "counts": counts,
                      "whole_table": counts / counts.sum()}
        if k == 1:
            del candidates["first_choice_only"]
        before = [indices.clone(), token_domains.clone(), mask.clone()]
        out = _expect_tensor(_call(fn, indices, token_domains, mask, domains, experts), (domains, experts),
                             "One row per domain, one column per expert: [num_domains, num_experts].")
        _unchanged(before, [indices, token_domains, mask], "a tensor")
        if not _close(out, expected):
            _diagnose(out, candidates, messages, (
                "wrong_values", "your shares differ from the reference",
                "Count (domain, expert) pairs of real tokens over all k choices, then divide each row by its sum."))


def _check_save_lm(fn):
    for seed in range(2):
        model, tokenizer = _tiny_lm(180 + seed, num_layers=1 + seed)
        ids = torch.randint(0, len(tokenizer), (2, 6), generator=torch.Generator().manual_seed(seed))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "lm.pt"
            _call(fn, path, model, tokenizer)
            if not path.is_file():
                raise Mistake("no_file", "your function wrote no file at `path`", "Call torch.save(..., path).")
            try:
                data = read_checkpoint(path)
                loaded, loaded_tokenizer = load_checkpoint(path)
            except ValueError as error:
                raise _checkpoint_mistake(str(error), path) from None
        model.eval()
        with torch.no_grad():
            same = torch.equal(loaded(ids), model(ids))
        if loaded_tokenizer != tokenizer:
            raise Mistake("wrong_tokenizer", "the loaded tokenizer differs from the one given",
                          "Store tokenizer.to_dict() under 'tokenizer'.")
        if data["max_seq_len"] != model.config.max_seq_len or not same:
            raise Mistake("wrong_weights", "the loaded model does not predict what the saved one did",
                          "Store model.state_dict() of the model you were given under 'state_dict'.")


def _checkpoint_mistake(error: str, path) -> Mistake:
    error = error.replace(str(path), "the file")
    if "Python objects" in error:
        return Mistake("not_plain_data", "the file holds Python objects that safe loading refuses: " + error,
                       "Store plain data only: model.config.to_dict(), tokenizer.to_dict(), "
                       "model.state_dict(), never the model, config or tokenizer objects themselves.")
    if "lacks the entries" in error:
        return Mistake("missing_entries", error.replace("checkpoint the file", "your checkpoint"),
                       "Save one dict with the keys format, config, max_seq_len, tokenizer and state_dict.")
    if "expected a dict with format" in error:
        return Mistake("no_format", "the file is not a dict with the checkpoint 'format' entry",
                       "Save a dict whose 'format' is CHECKPOINT_FORMAT, next to config, max_seq_len, "
                       "tokenizer and state_dict.")
    return Mistake("unreadable", "load_checkpoint cannot read your file: " + error,
                   "Save one dict with the keys format, config, max_seq_len, tokenizer and state_dict.")


register("07_training_lm", {
    "training_loss": _check_training_loss,
    "perplexity_from_sums": _check_perplexity,
    "answer_loss": _check_answer_loss,
    "upcycle_ffn": _check_upcycle,
    "domain_shares": _check_domain_shares,
    "save_lm": _check_save_lm,
})
