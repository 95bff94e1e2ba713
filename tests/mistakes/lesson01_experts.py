"""Planted mistakes for exercise notebook 01_experts: (diagnosis key, wrong function) per task."""

import torch
import torch.nn.functional as F

import moe_teach


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
}
