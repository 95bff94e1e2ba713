"""Planted mistakes for exercise notebook 05_load_balancing: (diagnosis key, wrong function) per task."""

import torch

import moe_teach


def _fraction_and_mean(probs, expert_indices):
    counts = torch.bincount(expert_indices.reshape(-1), minlength=probs.shape[-1]).float()
    return counts, probs.mean(0)


def switch_loss_f_not_divided_by_k(probs, expert_indices):
    counts, mean_prob = _fraction_and_mean(probs, expert_indices)
    return probs.shape[-1] * (counts / probs.shape[0] * mean_prob).sum()


def switch_loss_p_from_topk(probs, expert_indices):
    counts, _ = _fraction_and_mean(probs, expert_indices)
    chosen = torch.zeros_like(probs).scatter(1, expert_indices, 1.0)
    return probs.shape[-1] * (counts / expert_indices.numel() * (probs * chosen).mean(0)).sum()


def switch_loss_missing_num_experts(probs, expert_indices):
    counts, mean_prob = _fraction_and_mean(probs, expert_indices)
    return (counts / expert_indices.numel() * mean_prob).sum()


def switch_loss_gshard_mean(probs, expert_indices):
    counts, mean_prob = _fraction_and_mean(probs, expert_indices)
    return (counts / expert_indices.numel() * mean_prob).mean()


def switch_loss_detached(probs, expert_indices):
    counts, mean_prob = _fraction_and_mean(probs, expert_indices)
    return probs.shape[-1] * (counts / expert_indices.numel() * mean_prob.detach()).sum()


def switch_loss_p_from_renormalised_topk(probs, expert_indices):
    counts, _ = _fraction_and_mean(probs, expert_indices)
    top_weights = probs.gather(1, expert_indices)
    top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
    mean_weight = torch.zeros_like(probs).scatter(1, expert_indices, top_weights).mean(0)
    return probs.shape[-1] * (counts / expert_indices.numel() * mean_weight).sum()


def switch_loss_first_choice_only(probs, expert_indices):
    first_counts = torch.bincount(expert_indices[:, 0], minlength=probs.shape[-1]).float()
    return probs.shape[-1] * (first_counts / probs.shape[0] * probs.mean(0)).sum()


def switch_loss_f_from_argmax(probs, expert_indices):
    """Counts each token's most probable expert only: the same mistake as the first choice only."""
    counts = torch.bincount(probs.argmax(dim=-1), minlength=probs.shape[-1]).float()
    return probs.shape[-1] * (counts / probs.shape[0] * probs.mean(0)).sum()


def switch_loss_p_summed(probs, expert_indices):
    """P_i summed over tokens instead of averaged: an overall factor, gets the generic hint."""
    counts, _ = _fraction_and_mean(probs, expert_indices)
    return probs.shape[-1] * (counts / expert_indices.numel() * probs.sum(0)).sum()


def switch_loss_p_median(probs, expert_indices):
    """P_i as a median: its P_i do not sum to 1, its f_i do; gets the generic hint about P_i."""
    counts, _ = _fraction_and_mean(probs, expert_indices)
    return probs.shape[-1] * (counts / expert_indices.numel() * probs.median(dim=0).values).sum()


def switch_loss_squared_counts(probs, expert_indices):
    """Contrived: f_i right for balanced routing only, so only the f_i fail to sum to 1."""
    counts, mean_prob = _fraction_and_mean(probs, expert_indices)
    fraction = counts.square() / expert_indices.numel() ** 2 * probs.shape[-1]
    return probs.shape[-1] * (fraction * mean_prob).sum()


def switch_loss_pairs_reversed(probs, expert_indices):
    """f_i and P_i each sum to 1 but belong to different experts: gets the 'how they are paired' hint."""
    counts, mean_prob = _fraction_and_mean(probs, expert_indices)
    return probs.shape[-1] * (counts / expert_indices.numel() * mean_prob.flip(0)).sum()


def switch_loss_scaled(probs, expert_indices):
    """No named diagnosis: gets the generic hint."""
    return 1.7 * moe_teach.switch_load_balancing_loss(probs, expert_indices)


def switch_loss_f_from_probabilities(probs, expert_indices):
    """f_i taken from the probabilities as well: E * sum(P_i^2) (a learner's version)."""
    mean_probs = probs.mean(dim=0)
    return probs.shape[-1] * (mean_probs * mean_probs).sum()


def z_loss_missing_square(logits):
    return torch.logsumexp(logits, dim=-1).mean()


def z_loss_squared_mean(logits):
    return torch.logsumexp(logits, dim=-1).mean() ** 2


def z_loss_unstable(logits):
    return torch.log(torch.exp(logits).sum(dim=-1)).square().mean()


def z_loss_stable_by_hand(logits):
    """Right: the max-subtraction trick written out (passes the check)."""
    largest = logits.max(dim=-1, keepdim=True).values
    lse = (largest + torch.log(torch.exp(logits - largest).sum(dim=-1, keepdim=True))).squeeze(-1)
    return lse.square().mean()


def z_loss_halved_logits(logits):
    """Right for all-zero logits, wrong elsewhere: gets the generic hint past the by-hand case."""
    return torch.logsumexp(logits / 2, dim=-1).square().mean()


def z_loss_max(logits):
    return logits.max(dim=-1).values.square().mean()


def z_loss_summed(logits):
    return torch.logsumexp(logits, dim=-1).square().sum()


def z_loss_wrong_dim(logits):
    return torch.logsumexp(logits, dim=0).square().mean()


def z_loss_scaled(logits):
    """No named diagnosis: gets the generic hint."""
    return 1.7 * torch.logsumexp(logits, dim=-1).square().mean()


def _load(expert_indices, num_experts):
    return torch.bincount(expert_indices.reshape(-1), minlength=num_experts).float()


def bias_towards_busy_experts(bias, expert_indices, rate):
    load = _load(expert_indices, bias.shape[0])
    return bias + rate * torch.sign(load - load.mean())


def bias_proportional_step(bias, expert_indices, rate):
    load = _load(expert_indices, bias.shape[0])
    return bias + rate * (load.mean() - load)


def bias_first_choice_load(bias, expert_indices, rate):
    load = _load(expert_indices[:, 0], bias.shape[0])
    return bias + rate * torch.sign(load.mean() - load)


def bias_step_only(bias, expert_indices, rate):
    load = _load(expert_indices, bias.shape[0])
    return rate * torch.sign(load.mean() - load)


def bias_moves_experts_at_the_mean(bias, expert_indices, rate):
    """Every expert moves: up unless over the mean (a where instead of a sign)."""
    load = _load(expert_indices, bias.shape[0])
    return bias + rate * torch.where(load > load.mean(), -1.0, 1.0)


def bias_updated_in_place(bias, expert_indices, rate):
    """Right values, torchtitan-style in place: the caller's bias changes."""
    load = _load(expert_indices, bias.shape[0])
    bias += rate * torch.sign(load.mean() - load)
    return bias


def bias_half_rate(bias, expert_indices, rate):
    """No named diagnosis: gets the generic hint."""
    load = _load(expert_indices, bias.shape[0])
    return bias + 0.5 * rate * torch.sign(load.mean() - load)


MISTAKES = {
    "switch_aux_loss": [("f_not_divided_by_k", switch_loss_f_not_divided_by_k),
                        ("p_from_topk", switch_loss_p_from_topk),
                        ("missing_num_experts", switch_loss_missing_num_experts),
                        ("gshard_mean", switch_loss_gshard_mean), ("no_gradient", switch_loss_detached),
                        ("p_from_topk_weights", switch_loss_p_from_renormalised_topk),
                        ("first_choice_only", switch_loss_first_choice_only),
                        ("first_choice_only", switch_loss_f_from_argmax),
                        ("wrong_values", switch_loss_scaled), ("wrong_values", switch_loss_p_summed),
                        ("wrong_values", switch_loss_p_median), ("wrong_values", switch_loss_squared_counts),
                        ("wrong_values", switch_loss_pairs_reversed),
                        ("f_from_probabilities", switch_loss_f_from_probabilities)],
    "router_z_loss": [("missing_square", z_loss_missing_square), ("max_not_logsumexp", z_loss_max),
                      ("sum_not_mean", z_loss_summed), ("wrong_dim", z_loss_wrong_dim),
                      ("squared_mean", z_loss_squared_mean), ("overflow", z_loss_unstable),
                      ("wrong_values", z_loss_scaled), ("wrong_values", z_loss_halved_logits)],
    "bias_update": [("direction_inverted", bias_towards_busy_experts), ("no_sign", bias_proportional_step),
                    ("first_choice_only", bias_first_choice_load), ("replaced_bias", bias_step_only),
                    ("moved_balanced_expert", bias_moves_experts_at_the_mean),
                    ("mutated_input", bias_updated_in_place), ("wrong_values", bias_half_rate)],
}
