"""Planted mistakes for exercise notebook 02_gating: (diagnosis key, wrong function) per task."""

import torch


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


MISTAKES = {
    "gate_probabilities": [("softmax_wrong_dim", gate_softmax_over_tokens), ("no_softmax", gate_raw_logits),
                           ("not_normalised", gate_sigmoid), ("log_softmax", gate_log_softmax),
                           ("transposed_output", gate_transposed),
                           ("wrong_values", gate_with_temperature)],
    "soft_mixture": [("unweighted", mixture_unweighted), ("softmax_wrong_dim", mixture_softmax_over_tokens),
                     ("router_no_grad", mixture_detached_gate), ("wrong_values", mixture_with_temperature)],
}
