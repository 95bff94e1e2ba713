"""Planted mistakes for exercise notebook 07_training_lm: (diagnosis key, wrong function) per task."""

import copy
import math

import torch
import torch.nn.functional as F

import moe_teach
from moe_teach.lm.checkpoints import CHECKPOINT_FORMAT
from moe_teach.lm.model import LanguageModel


def _aux(model):
    return moe_teach.collect_aux_losses(model)


def loss_counts_padding(model, inputs, targets, token_mask, pad_id, switch_coef, z_coef):
    logits = model(inputs, token_mask=token_mask)
    aux = _aux(model)
    task = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return task + switch_coef * aux["switch"] + z_coef * aux["z"]


def loss_without_aux(model, inputs, targets, token_mask, pad_id, switch_coef, z_coef):
    logits = model(inputs, token_mask=token_mask)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id)


def loss_without_token_mask(model, inputs, targets, token_mask, pad_id, switch_coef, z_coef):
    logits = model(inputs)
    aux = _aux(model)
    task = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id)
    return task + switch_coef * aux["switch"] + z_coef * aux["z"]


def loss_coefs_swapped(model, inputs, targets, token_mask, pad_id, switch_coef, z_coef):
    logits = model(inputs, token_mask=token_mask)
    aux = _aux(model)
    task = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id)
    return task + z_coef * aux["switch"] + switch_coef * aux["z"]


def loss_mean_of_rows(model, inputs, targets, token_mask, pad_id, switch_coef, z_coef):
    logits = model(inputs, token_mask=token_mask)
    aux = _aux(model)
    per_row = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=pad_id, reduction="none")
    task = (per_row.sum(dim=1) / (targets != pad_id).sum(dim=1)).mean()
    return task + switch_coef * aux["switch"] + z_coef * aux["z"]


def loss_detached(model, inputs, targets, token_mask, pad_id, switch_coef, z_coef):
    logits = model(inputs, token_mask=token_mask)
    aux = _aux(model)
    task = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id)
    return torch.tensor((task + switch_coef * aux["switch"] + z_coef * aux["z"]).item())


def loss_zeroes_padding_in_place(model, inputs, targets, token_mask, pad_id, switch_coef, z_coef):
    """Right value, but writes into the caller's targets."""
    logits = model(inputs, token_mask=token_mask)
    aux = _aux(model)
    targets.masked_fill_(targets == pad_id, -100)  # cross_entropy's default ignore_index
    task = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return task + switch_coef * aux["switch"] + z_coef * aux["z"]


def ppl_mean_of_batch_means(loss_sums, token_counts):
    return math.exp(sum(s / c for s, c in zip(loss_sums, token_counts)) / len(loss_sums))


def ppl_mean_of_perplexities(loss_sums, token_counts):
    return sum(math.exp(s / c) for s, c in zip(loss_sums, token_counts)) / len(loss_sums)


def ppl_no_exp(loss_sums, token_counts):
    return sum(loss_sums) / sum(token_counts)


def ppl_base_two(loss_sums, token_counts):
    return 2 ** (sum(loss_sums) / sum(token_counts))


def ppl_per_batch(loss_sums, token_counts):
    return math.exp(sum(loss_sums) / len(token_counts))


def ppl_list(loss_sums, token_counts):
    return [math.exp(s / c) for s, c in zip(loss_sums, token_counts)]


def answer_all_tokens(logits, targets, answer_mask):
    return F.cross_entropy(logits.transpose(1, 2), targets)


def answer_sum(logits, targets, answer_mask):
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")[answer_mask].sum()


def answer_divided_by_all(logits, targets, answer_mask):
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (losses * answer_mask).sum() / losses.numel()


def answer_complement(logits, targets, answer_mask):
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")[~answer_mask].mean()


def answer_masks_logits_in_place(logits, targets, answer_mask):
    logits[~answer_mask] = 0.0
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return losses[answer_mask].mean()


def _empty_layer(dense, num_experts):
    return moe_teach.MoELayer(dense.input_dim, num_experts=num_experts, top_k=1, hidden_dim=dense.hidden_dim,
                              activation=dense.activation)


def upcycle_shared_module(dense, num_experts):
    layer = _empty_layer(dense, num_experts)
    copy_ = copy.deepcopy(dense)
    layer.experts = torch.nn.ModuleList([copy_] * num_experts)
    return layer


def upcycle_aliased(dense, num_experts):
    layer = _empty_layer(dense, num_experts)
    for expert in layer.experts:
        expert.up.weight, expert.up.bias = dense.up.weight, dense.up.bias
        expert.down.weight, expert.down.bias = dense.down.weight, dense.down.bias
    return layer


def upcycle_fresh_experts(dense, num_experts):
    return _empty_layer(dense, num_experts)


def upcycle_first_only(dense, num_experts):
    layer = _empty_layer(dense, num_experts)
    layer.experts[0].load_state_dict(dense.state_dict())
    return layer


def upcycle_top2(dense, num_experts):
    layer = moe_teach.MoELayer(dense.input_dim, num_experts=num_experts, top_k=2, hidden_dim=dense.hidden_dim,
                               activation=dense.activation)
    for expert in layer.experts:
        expert.load_state_dict(dense.state_dict())
    return layer


def upcycle_default_activation(dense, num_experts):
    layer = moe_teach.MoELayer(dense.input_dim, num_experts=num_experts, top_k=1, hidden_dim=dense.hidden_dim)
    for expert in layer.experts:
        expert.load_state_dict(dense.state_dict())
    return layer


def _counts(expert_indices, token_domains, keep, num_domains, num_experts):
    counts = torch.zeros(num_domains, num_experts)
    domains = token_domains[keep].unsqueeze(1).expand_as(expert_indices[keep])
    counts.index_put_((domains.reshape(-1), expert_indices[keep].reshape(-1)),
                      torch.ones(domains.numel()), accumulate=True)
    return counts


def shares_with_padding(expert_indices, token_domains, token_mask, num_domains, num_experts):
    counts = _counts(expert_indices, token_domains, torch.ones_like(token_mask), num_domains, num_experts)
    return counts / counts.sum(dim=1, keepdim=True)


def shares_first_choice(expert_indices, token_domains, token_mask, num_domains, num_experts):
    counts = _counts(expert_indices[:, :1], token_domains, token_mask, num_domains, num_experts)
    return counts / counts.sum(dim=1, keepdim=True)


def shares_per_expert(expert_indices, token_domains, token_mask, num_domains, num_experts):
    counts = _counts(expert_indices, token_domains, token_mask, num_domains, num_experts)
    return counts / counts.sum(dim=0, keepdim=True)


def shares_counts(expert_indices, token_domains, token_mask, num_domains, num_experts):
    return _counts(expert_indices, token_domains, token_mask, num_domains, num_experts)


def shares_whole_table(expert_indices, token_domains, token_mask, num_domains, num_experts):
    counts = _counts(expert_indices, token_domains, token_mask, num_domains, num_experts)
    return counts / counts.sum()


def shares_transposed(expert_indices, token_domains, token_mask, num_domains, num_experts):
    counts = _counts(expert_indices, token_domains, token_mask, num_domains, num_experts)
    return (counts / counts.sum(dim=1, keepdim=True)).T


def _checkpoint(model, tokenizer):
    return {"format": CHECKPOINT_FORMAT, "config": model.config.to_dict(), "max_seq_len": model.config.max_seq_len,
            "tokenizer": tokenizer.to_dict(), "state_dict": model.state_dict()}


def save_state_dict_only(path, model, tokenizer):
    torch.save(model.state_dict(), path)


def save_config_object(path, model, tokenizer):
    torch.save({**_checkpoint(model, tokenizer), "config": model.config}, path)


def save_without_tokenizer(path, model, tokenizer):
    data = _checkpoint(model, tokenizer)
    del data["tokenizer"]
    torch.save(data, path)


def save_fresh_weights(path, model, tokenizer):
    fresh = LanguageModel(model.config)
    torch.save(_checkpoint(fresh, tokenizer), path)


def save_nothing(path, model, tokenizer):
    return _checkpoint(model, tokenizer)


MISTAKES = {
    "training_loss": [("padding_counted", loss_counts_padding), ("aux_missing", loss_without_aux),
                      ("mask_not_passed", loss_without_token_mask), ("coefs_swapped", loss_coefs_swapped),
                      ("mean_over_batch", loss_mean_of_rows), ("detached", loss_detached),
                      ("mutated_input", loss_zeroes_padding_in_place)],
    "perplexity_from_sums": [("mean_of_batch_means", ppl_mean_of_batch_means),
                             ("mean_of_perplexities", ppl_mean_of_perplexities), ("no_exp", ppl_no_exp),
                             ("base_two", ppl_base_two), ("divided_by_batches", ppl_per_batch),
                             ("not_a_number", ppl_list)],
    "answer_loss": [("all_tokens", answer_all_tokens), ("sum_not_mean", answer_sum),
                    ("divided_by_all", answer_divided_by_all), ("complement", answer_complement),
                    ("mutated_input", answer_masks_logits_in_place)],
    "upcycle_ffn": [("shared_module", upcycle_shared_module), ("aliased_parameters", upcycle_aliased),
                    ("not_copied", upcycle_fresh_experts), ("some_not_copied", upcycle_first_only),
                    ("wrong_size", upcycle_top2), ("wrong_values", upcycle_default_activation)],
    "domain_shares": [("padding_counted", shares_with_padding), ("first_choice_only", shares_first_choice),
                      ("per_expert", shares_per_expert), ("counts", shares_counts),
                      ("whole_table", shares_whole_table), ("wrong_shape", shares_transposed)],
    "save_lm": [("no_format", save_state_dict_only), ("not_plain_data", save_config_object),
                ("missing_entries", save_without_tokenizer), ("wrong_weights", save_fresh_weights),
                ("no_file", save_nothing)],
}
