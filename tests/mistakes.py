"""Wrong implementations a learner is likely to write, one list per exercise task.

Each entry is ``(key, function)``: ``check(task, function)`` must fail with that mistake key,
so the learner gets the hint meant for that mistake. Several come from bugs that public MoE
implementations shipped (see COURSE.md): renormalised top-1, P_i from the top-k weights, f_i
not divided by k, dropped tokens passed through, capacity without /E or k, softmax over the
wrong dimension, gradient leaking into unchosen experts, z-loss without the square or with max.
Others come from learners: P_i from the renormalised top-k weights, f_i from first choices only,
the square of the mean logsumexp, a logsumexp that overflows on large logits.
"""

import math

import torch
import torch.nn.functional as F

import moe_teach

# ----------------------------------------------------------------------------- 01 experts


def relu_expert_no_activation(x, up_weight, up_bias, down_weight, down_bias):
    return (x @ up_weight.T + up_bias) @ down_weight.T + down_bias


def relu_expert_relu_on_output(x, up_weight, up_bias, down_weight, down_bias):
    return torch.relu((x @ up_weight.T + up_bias) @ down_weight.T + down_bias)


def relu_expert_no_bias(x, up_weight, up_bias, down_weight, down_bias):
    return torch.relu(x @ up_weight.T) @ down_weight.T


def relu_expert_untransposed(x, up_weight, up_bias, down_weight, down_bias):
    return torch.relu(x @ up_weight + up_bias) @ down_weight + down_bias


def relu_expert_gelu(x, up_weight, up_bias, down_weight, down_bias):
    return F.gelu(x @ up_weight.T + up_bias) @ down_weight.T + down_bias


def relu_expert_bias_after_relu(x, up_weight, up_bias, down_weight, down_bias):
    return (torch.relu(x @ up_weight.T) + up_bias) @ down_weight.T + down_bias


def relu_expert_no_up_bias(x, up_weight, up_bias, down_weight, down_bias):
    return torch.relu(x @ up_weight.T) @ down_weight.T + down_bias


def relu_expert_no_down_bias(x, up_weight, up_bias, down_weight, down_bias):
    return torch.relu(x @ up_weight.T + up_bias) @ down_weight.T


def relu_expert_leaky(x, up_weight, up_bias, down_weight, down_bias):
    """No named diagnosis: gets the generic hint."""
    return F.leaky_relu(x @ up_weight.T + up_bias, 0.1) @ down_weight.T + down_bias


def swiglu_swapped(x, gate_weight, up_weight, down_weight):
    return (F.silu(x @ up_weight.T) * (x @ gate_weight.T)) @ down_weight.T


def swiglu_relu(x, gate_weight, up_weight, down_weight):
    return (torch.relu(x @ gate_weight.T) * (x @ up_weight.T)) @ down_weight.T


def swiglu_sigmoid(x, gate_weight, up_weight, down_weight):
    return (torch.sigmoid(x @ gate_weight.T) * (x @ up_weight.T)) @ down_weight.T


def swiglu_added(x, gate_weight, up_weight, down_weight):
    return (F.silu(x @ gate_weight.T) + (x @ up_weight.T)) @ down_weight.T


def swiglu_silu_of_product(x, gate_weight, up_weight, down_weight):
    return F.silu((x @ gate_weight.T) * (x @ up_weight.T)) @ down_weight.T


def swiglu_silu_on_both(x, gate_weight, up_weight, down_weight):
    return (F.silu(x @ gate_weight.T) * F.silu(x @ up_weight.T)) @ down_weight.T


def swiglu_no_up(x, gate_weight, up_weight, down_weight):
    return F.silu(x @ gate_weight.T) @ down_weight.T


def swiglu_tanh(x, gate_weight, up_weight, down_weight):
    """No named diagnosis: gets the generic hint."""
    return (torch.tanh(x @ gate_weight.T) * (x @ up_weight.T)) @ down_weight.T


def count_without_bias(input_dim, hidden_dim, output_dim, activation, bias):
    in_layers = 2 if activation == "swiglu" else 1
    return in_layers * input_dim * hidden_dim + hidden_dim * output_dim


def count_swiglu_as_two_matrices(input_dim, hidden_dim, output_dim, activation, bias):
    return input_dim * hidden_dim + hidden_dim * output_dim + (hidden_dim + output_dim if bias else 0)


def count_ignores_bias_flag(input_dim, hidden_dim, output_dim, activation, bias):
    in_layers = 2 if activation == "swiglu" else 1
    return in_layers * input_dim * hidden_dim + hidden_dim * output_dim + in_layers * hidden_dim + output_dim


def count_gate_for_every_activation(input_dim, hidden_dim, output_dim, activation, bias):
    return moe_teach.experts.expert_parameter_count(input_dim, hidden_dim, output_dim, "swiglu", bias)


def count_input_dim_as_output(input_dim, hidden_dim, output_dim, activation, bias):
    return moe_teach.experts.expert_parameter_count(input_dim, hidden_dim, input_dim, activation, bias)


def count_down_projection_only(input_dim, hidden_dim, output_dim, activation, bias):
    return hidden_dim * output_dim + (output_dim if bias else 0)


def count_forgot_down_bias(input_dim, hidden_dim, output_dim, activation, bias):
    """Off by one output_dim bias vector: gets the 'off by' hint."""
    count = moe_teach.experts.expert_parameter_count(input_dim, hidden_dim, output_dim, activation, bias)
    return count - (output_dim if bias else 0)


def count_float(input_dim, hidden_dim, output_dim, activation, bias):
    return float(moe_teach.experts.expert_parameter_count(input_dim, hidden_dim, output_dim, activation,
                                                          bias))


# ----------------------------------------------------------------------------- 02 gating


def gate_softmax_over_tokens(x, router_weight):
    return torch.softmax(x @ router_weight.T, dim=0)


def gate_raw_logits(x, router_weight):
    return x @ router_weight.T


def gate_sigmoid(x, router_weight):
    return torch.sigmoid(x @ router_weight.T)


def gate_transposed(x, router_weight):
    return torch.softmax(router_weight @ x.T, dim=0)


def gate_with_temperature(x, router_weight):
    """No named diagnosis: gets the generic hint."""
    return torch.softmax(x @ router_weight.T / 2, dim=-1)


def gate_log_softmax(x, router_weight):
    return torch.log_softmax(x @ router_weight.T, dim=-1)


def mixture_unweighted(x, router_weight, experts):
    return torch.stack([expert(x) for expert in experts], dim=1).mean(dim=1)


def mixture_softmax_over_tokens(x, router_weight, experts):
    probs = torch.softmax(x @ router_weight.T, dim=0)
    return (probs.unsqueeze(-1) * torch.stack([expert(x) for expert in experts], dim=1)).sum(1)


def mixture_detached_gate(x, router_weight, experts):
    probs = torch.softmax(x @ router_weight.T, dim=-1).detach()
    return (probs.unsqueeze(-1) * torch.stack([expert(x) for expert in experts], dim=1)).sum(1)


def mixture_with_temperature(x, router_weight, experts):
    """No named diagnosis: gets the generic hint."""
    probs = torch.softmax(x @ router_weight.T / 2, dim=-1)
    return (probs.unsqueeze(-1) * torch.stack([expert(x) for expert in experts], dim=1)).sum(1)


# ----------------------------------------------------------------------------- 03 top-k sparsity


def topk_not_renormalised(logits, k):
    return torch.softmax(logits, dim=-1).topk(k, dim=-1)


def topk_softmax_over_tokens(logits, k):
    weights, indices = torch.softmax(logits, dim=0).topk(k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), indices


def topk_smallest(logits, k):
    weights, indices = torch.softmax(logits, dim=-1).topk(k, dim=-1, largest=False)
    return weights / weights.sum(-1, keepdim=True), indices


def topk_logits_as_weights(logits, k):
    return logits.topk(k, dim=-1)


def topk_with_temperature(logits, k):
    """Right experts, weights from a softmax at temperature 2: gets the generic hint."""
    weights, indices = torch.softmax(logits / 2, dim=-1).topk(k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), indices


def topk_returns_three(logits, k):
    probs = torch.softmax(logits, dim=-1)
    weights, indices = probs.topk(k, dim=-1)
    return probs, weights / weights.sum(-1, keepdim=True), indices


def topk_renormalised_only_when_k_above_one(logits, k):
    """Treats k = 1 as Switch routing: keeps the raw probability instead of renormalising it to 1."""
    weights, indices = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    return (weights / weights.sum(-1, keepdim=True) if k > 1 else weights), indices


def switch_renormalised(logits):
    weights, indices = torch.softmax(logits, dim=-1).topk(1, dim=-1)
    return weights / weights.sum(-1, keepdim=True), indices


def switch_softmax_over_kept_logit(logits):
    values, indices = logits.topk(1, dim=-1)
    return torch.softmax(values, dim=-1), indices


def switch_softmax_over_tokens(logits):
    probs = torch.softmax(logits, dim=0)
    indices = logits.argmax(-1, keepdim=True)
    return probs.gather(1, indices), indices


def switch_detached(logits):
    weights, indices = torch.softmax(logits, dim=-1).max(-1, keepdim=True)
    return weights.detach(), indices


def switch_squared_probability(logits):
    """No named diagnosis: gets the generic hint."""
    weights, indices = torch.softmax(logits, dim=-1).max(-1, keepdim=True)
    return weights ** 2, indices


def _route(x, router_weight, k):
    weights, indices = torch.softmax(x @ router_weight.T, dim=-1).topk(k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), indices


def sparse_dense_mixture(x, router_weight, experts, k):
    probs = torch.softmax(x @ router_weight.T, dim=-1)
    return (probs.unsqueeze(-1) * torch.stack([expert(x) for expert in experts], dim=1)).sum(1)


def sparse_mask_not_exactly_zero(x, router_weight, experts, k):
    """Compute every expert, then 'mask' unchosen ones with a tiny weight instead of zero."""
    weights, indices = _route(x, router_weight, k)
    dense = torch.full((x.shape[0], len(experts)), 1e-9).scatter(1, indices, weights)
    return (dense.unsqueeze(-1) * torch.stack([expert(x) for expert in experts], dim=1)).sum(1)


def sparse_not_renormalised(x, router_weight, experts, k):
    weights, indices = torch.softmax(x @ router_weight.T, dim=-1).topk(k, dim=-1)
    outputs = torch.stack([expert(x) for expert in experts], dim=1)
    dense = torch.zeros(x.shape[0], len(experts)).scatter(1, indices, weights)
    return (dense.unsqueeze(-1) * outputs).sum(1)


def sparse_first_choice_only(x, router_weight, experts, k):
    weights, indices = _route(x, router_weight, k)
    out = torch.zeros(x.shape[0], experts[0].output_dim)
    for e, expert in enumerate(experts):
        tokens = (indices[:, 0] == e).nonzero().reshape(-1)
        if len(tokens):
            out = out.index_add(0, tokens, weights[tokens, :1] * expert(x[tokens]))
    return out


def sparse_with_temperature(x, router_weight, experts, k):
    """No named diagnosis: gets the generic hint."""
    weights, indices = _route(x / 2, router_weight, k)
    outputs = torch.stack([expert(x) for expert in experts], dim=1)
    dense = torch.zeros(x.shape[0], len(experts)).scatter(1, indices, weights)
    return (dense.unsqueeze(-1) * outputs).sum(1)


# ----------------------------------------------------------------------------- 04 dispatch and capacity


def capacity_without_num_experts(num_tokens, num_experts, top_k, capacity_factor):
    return math.ceil(capacity_factor * num_tokens * top_k)


def capacity_without_top_k(num_tokens, num_experts, top_k, capacity_factor):
    return math.ceil(capacity_factor * num_tokens / num_experts)


def capacity_floor(num_tokens, num_experts, top_k, capacity_factor):
    return int(capacity_factor * num_tokens * top_k / num_experts)


def capacity_rounded_per_token(num_tokens, num_experts, top_k, capacity_factor):
    return math.ceil(capacity_factor * num_tokens / num_experts) * top_k


def capacity_tensor(num_tokens, num_experts, top_k, capacity_factor):
    return torch.tensor(capacity_factor * num_tokens * top_k / num_experts).ceil().long()


def capacity_plus_one(num_tokens, num_experts, top_k, capacity_factor):
    """No named diagnosis: gets the generic hint."""
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts) + 1


def _positions(order, num_experts):
    one_hot = F.one_hot(order, num_experts)
    return ((one_hot.cumsum(0) - one_hot) * one_hot).sum(-1)


def keep_token_major(expert_indices, num_experts, capacity):
    """Serves (token, slot) pairs row by row: a token's 2nd choice before the next token's 1st."""
    return (_positions(expert_indices.reshape(-1), num_experts) < capacity).view_as(expert_indices)


def keep_off_by_one(expert_indices, num_experts, capacity):
    num_tokens, k = expert_indices.shape
    return (_positions(expert_indices.T.reshape(-1), num_experts) <= capacity).view(k, num_tokens).T


def keep_reshaped_without_transpose(expert_indices, num_experts, capacity):
    """Right order of service, but the column-major result is viewed straight as [T, k]."""
    return (_positions(expert_indices.T.reshape(-1), num_experts) < capacity).view_as(expert_indices)


def keep_drop_whole_expert(expert_indices, num_experts, capacity):
    """Drops every assignment of an over-full expert instead of only the overflow."""
    counts = torch.bincount(expert_indices.reshape(-1), minlength=num_experts)
    return counts[expert_indices] <= capacity


def keep_later_tokens_first(expert_indices, num_experts, capacity):
    """Within a choice, serves the last token first: right counts, wrong assignments."""
    flipped = expert_indices.flip(0)
    num_tokens, k = flipped.shape
    kept = (_positions(flipped.T.reshape(-1), num_experts) < capacity).view(k, num_tokens).T
    return kept.flip(0)


def _dispatch(x, experts, expert_indices, weights):
    outputs = torch.stack([expert(x) for expert in experts], dim=1)                  # [T, E, O]
    chosen = outputs[torch.arange(x.shape[0])[:, None], expert_indices]            # [T, k, O]
    return (chosen * weights.unsqueeze(-1)).sum(1)


def dispatch_dropped_passthrough(x, experts, expert_indices, expert_weights, kept):
    """A dropped assignment passes the token through as x * p (a bug public code shipped)."""
    outputs = torch.stack([expert(x) for expert in experts], dim=1)
    chosen = outputs[torch.arange(x.shape[0])[:, None], expert_indices]
    chosen = torch.where(kept.unsqueeze(-1), chosen, x.unsqueeze(1))
    return (chosen * expert_weights.unsqueeze(-1)).sum(1)


def dispatch_ignores_kept(x, experts, expert_indices, expert_weights, kept):
    return _dispatch(x, experts, expert_indices, expert_weights)


def dispatch_renormalised_after_drop(x, experts, expert_indices, expert_weights, kept):
    weights = expert_weights * kept
    return _dispatch(x, experts, expert_indices, weights / weights.sum(-1, keepdim=True).clamp(min=1e-9))


def dispatch_kept_inverted(x, experts, expert_indices, expert_weights, kept):
    return _dispatch(x, experts, expert_indices, expert_weights * ~kept)


def dispatch_doubled_weights(x, experts, expert_indices, expert_weights, kept):
    """No named diagnosis: gets the generic hint."""
    return _dispatch(x, experts, expert_indices, 2 * expert_weights * kept)


# ----------------------------------------------------------------------------- 05 load balancing


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


# ----------------------------------------------------------------------------- 06 transformer block


def block_post_norm(block, x):
    x = block.norm1(x + block.attention(x))
    return block.norm2(x + block.feed_forward(x))


def block_missing_residual(block, x):
    x = x + block.attention(block.norm1(x))
    return block.feed_forward(block.norm2(x))


def block_ffn_without_norm(block, x):
    x = x + block.attention(block.norm1(x))
    return x + block.feed_forward(x)


def block_norm1_twice(block, x):
    x = x + block.attention(block.norm1(x))
    return x + block.feed_forward(block.norm1(x))


def block_residual_from_normed(block, x):
    h = block.norm1(x)
    x = h + block.attention(h)
    h = block.norm2(x)
    return h + block.feed_forward(h)


def block_doubled_feed_forward(block, x):
    """No named diagnosis: gets the generic hint."""
    x = x + block.attention(block.norm1(x))
    return x + 2 * block.feed_forward(block.norm2(x))


def block_calls_itself(block, x):
    return block(x)


def aux_last_layer_only(model, balance_coef, z_coef):
    losses = moe_teach.moe_layers(model)[-1].last_record.aux_losses
    return balance_coef * losses["switch"] + z_coef * losses["z"]


def aux_balance_coef_unused(model, balance_coef, z_coef):
    return sum(layer.last_record.aux_losses["switch"] + z_coef * layer.last_record.aux_losses["z"]
               for layer in moe_teach.moe_layers(model))


def aux_averaged(model, balance_coef, z_coef):
    layers = moe_teach.moe_layers(model)
    losses = [layer.last_record.aux_losses for layer in layers]
    total = sum(balance_coef * aux["switch"] + z_coef * aux["z"] for aux in losses)
    return total / len(layers)


def aux_item(model, balance_coef, z_coef):
    return torch.tensor(sum(balance_coef * layer.last_record.aux_losses["switch"].item()
                            + z_coef * layer.last_record.aux_losses["z"].item()
                            for layer in moe_teach.moe_layers(model)))


def aux_every_block(model, balance_coef, z_coef):
    """Assumes every block has an MoE feed-forward (fails on dense blocks)."""
    return sum(balance_coef * block.feed_forward.last_record.aux_losses["switch"]
               + z_coef * block.feed_forward.last_record.aux_losses["z"] for block in model)


def aux_scaled(model, balance_coef, z_coef):
    """No named diagnosis: gets the generic hint."""
    return 1.7 * sum(balance_coef * layer.last_record.aux_losses["switch"]
                     + z_coef * layer.last_record.aux_losses["z"] for layer in moe_teach.moe_layers(model))


MISTAKES = {
    "relu_expert": [("no_activation", relu_expert_no_activation),
                    ("activation_on_output", relu_expert_relu_on_output),
                    ("missing_bias", relu_expert_no_bias), ("missing_bias", relu_expert_no_up_bias),
                    ("missing_bias", relu_expert_no_down_bias), ("raised", relu_expert_untransposed),
                    ("wrong_activation", relu_expert_gelu),
                    ("bias_after_activation", relu_expert_bias_after_relu),
                    ("wrong_values", relu_expert_leaky)],
    "swiglu_expert": [("swapped_gate_up", swiglu_swapped), ("wrong_activation", swiglu_relu),
                      ("wrong_activation", swiglu_sigmoid), ("added_branches", swiglu_added),
                      ("silu_of_product", swiglu_silu_of_product), ("silu_on_both", swiglu_silu_on_both),
                      ("missing_up", swiglu_no_up), ("wrong_values", swiglu_tanh)],
    "count_expert_parameters": [("forgot_bias", count_without_bias),
                                ("swiglu_gate", count_swiglu_as_two_matrices),
                                ("not_int", count_float), ("ignored_bias_flag", count_ignores_bias_flag),
                                ("gate_without_swiglu", count_gate_for_every_activation),
                                ("ignored_output_dim", count_input_dim_as_output),
                                ("one_layer_only", count_down_projection_only),
                                ("wrong_count", count_forgot_down_bias)],
    "gate_probabilities": [("softmax_wrong_dim", gate_softmax_over_tokens), ("no_softmax", gate_raw_logits),
                           ("not_normalised", gate_sigmoid), ("log_softmax", gate_log_softmax),
                           ("transposed_output", gate_transposed),
                           ("wrong_values", gate_with_temperature)],
    "soft_mixture": [("unweighted", mixture_unweighted), ("softmax_wrong_dim", mixture_softmax_over_tokens),
                     ("router_no_grad", mixture_detached_gate), ("wrong_values", mixture_with_temperature)],
    "top_k_routing": [("not_renormalised", topk_not_renormalised),
                      ("softmax_wrong_dim", topk_softmax_over_tokens),
                      ("picked_smallest", topk_smallest), ("weights_are_logits", topk_logits_as_weights),
                      ("wrong_values", topk_with_temperature), ("return_format", topk_returns_three),
                      ("not_renormalised", topk_renormalised_only_when_k_above_one)],
    "switch_routing": [("renormalised_top1", switch_renormalised),
                       ("renormalised_top1", switch_softmax_over_kept_logit),
                       ("softmax_wrong_dim", switch_softmax_over_tokens), ("no_gradient", switch_detached),
                       ("wrong_values", switch_squared_probability)],
    "sparse_moe_forward": [("dense_mixture", sparse_dense_mixture),
                           ("gradient_leak", sparse_mask_not_exactly_zero),
                           ("not_renormalised", sparse_not_renormalised),
                           ("first_choice_only", sparse_first_choice_only),
                           ("wrong_values", sparse_with_temperature)],
    "capacity_per_expert": [("missing_num_experts", capacity_without_num_experts),
                            ("missing_top_k", capacity_without_top_k), ("rounded_down", capacity_floor),
                            ("wrong_capacity", capacity_plus_one),
                            ("rounded_too_early", capacity_rounded_per_token), ("not_int", capacity_tensor)],
    "keep_mask": [("token_major_priority", keep_token_major), ("over_capacity", keep_off_by_one),
                  ("dropped_with_room", keep_drop_whole_expert), ("wrong_priority", keep_later_tokens_first),
                  ("reshape_order", keep_reshaped_without_transpose)],
    "dispatch_with_capacity": [("dropped_passthrough", dispatch_dropped_passthrough),
                               ("ignored_kept", dispatch_ignores_kept),
                               ("renormalised_after_drop", dispatch_renormalised_after_drop),
                               ("kept_inverted", dispatch_kept_inverted),
                               ("wrong_values", dispatch_doubled_weights)],
    "switch_aux_loss": [("f_not_divided_by_k", switch_loss_f_not_divided_by_k),
                        ("p_from_topk", switch_loss_p_from_topk),
                        ("missing_num_experts", switch_loss_missing_num_experts),
                        ("gshard_mean", switch_loss_gshard_mean), ("no_gradient", switch_loss_detached),
                        ("p_from_topk_weights", switch_loss_p_from_renormalised_topk),
                        ("first_choice_only", switch_loss_first_choice_only),
                        ("first_choice_only", switch_loss_f_from_argmax),
                        ("wrong_values", switch_loss_scaled), ("wrong_values", switch_loss_p_summed),
                        ("wrong_values", switch_loss_p_median), ("wrong_values", switch_loss_squared_counts),
                        ("wrong_values", switch_loss_pairs_reversed)],
    "router_z_loss": [("missing_square", z_loss_missing_square), ("max_not_logsumexp", z_loss_max),
                      ("sum_not_mean", z_loss_summed), ("wrong_dim", z_loss_wrong_dim),
                      ("squared_mean", z_loss_squared_mean), ("overflow", z_loss_unstable),
                      ("wrong_values", z_loss_scaled), ("wrong_values", z_loss_halved_logits)],
    "block_forward": [("post_norm", block_post_norm), ("missing_residual", block_missing_residual),
                      ("missing_norm", block_ffn_without_norm), ("called_block", block_calls_itself),
                      ("wrong_norm", block_norm1_twice), ("residual_from_norm", block_residual_from_normed),
                      ("wrong_values", block_doubled_feed_forward)],
    "total_aux_loss": [("one_layer_only", aux_last_layer_only),
                       ("balance_coef_unused", aux_balance_coef_unused),
                       ("averaged", aux_averaged), ("detached", aux_item), ("raised", aux_every_block),
                       ("wrong_values", aux_scaled)],
}
