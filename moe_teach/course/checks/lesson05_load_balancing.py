"""Checks for exercise notebook 05_load_balancing (load balancing)."""

from __future__ import annotations

import math

import torch

from ...losses import router_z_loss, switch_load_balancing_loss
from ...routing import topk_softmax
from .core import (
    Mistake,
    _backward,
    _call,
    _close,
    _diagnose,
    _expect_scalar,
    _expect_tensor,
    _has_grad,
    _how_far,
    _max_diff,
    _seeded,
    register,
)


def _switch_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(probs [T, E], expert_indices [T, k]) pairs: skewed routing first, then the edge cases."""
    cases = []
    for seed, (tokens, num_experts, k) in enumerate([(16, 8, 2), (12, 6, 1), (10, 5, 3), (6, 3, 3),
                                                     (1, 4, 2)]):
        with _seeded(90 + seed):
            # a per-expert offset skews the routing: some experts are clearly more popular than others
            skew = torch.linspace(2.0, -2.0, num_experts)
            probs, _, indices = topk_softmax(torch.randn(tokens, num_experts) + skew, k)
        cases.append((probs, indices))
    cases.append((torch.full((4, 4), 0.25), torch.arange(4)[:, None]))                  # uniform: loss 1
    cases.append((torch.eye(3)[[0, 0, 0, 0]], torch.zeros(4, 1, dtype=torch.long)))     # collapse: loss E
    return cases


def _switch_candidates(probs: torch.Tensor, indices: torch.Tensor, expected: torch.Tensor) -> dict:
    """What the common wrong versions of the Switch loss give on this case."""
    tokens, num_experts = probs.shape
    k = indices.shape[1]
    counts = torch.bincount(indices.reshape(-1), minlength=num_experts).float()
    fractions = counts / (tokens * k)
    chosen = torch.zeros_like(probs).scatter(1, indices, 1.0)
    top_weights = probs.gather(1, indices)
    top_weights = top_weights / top_weights.sum(-1, keepdim=True)
    renormalised = torch.zeros_like(probs).scatter(1, indices, top_weights)
    first_counts = torch.bincount(indices[:, 0], minlength=num_experts).float()
    candidates = {
        "f_not_divided_by_k": expected * k,
        "missing_num_experts": expected / num_experts,
        "gshard_mean": expected / num_experts ** 2,
        "p_from_topk": num_experts * (fractions * (probs * chosen).mean(0)).sum(),
        "p_from_topk_weights": num_experts * (fractions * renormalised.mean(0)).sum(),
        "first_choice_only": num_experts * (first_counts / tokens * probs.mean(0)).sum(),
        "p_divided_by_k": expected / k,
        "counts_not_fractions": expected * tokens * k,
        "f_from_probabilities": num_experts * probs.mean(0).square().sum(),
    }
    if k == 1:  # at k = 1 these mistakes change nothing
        for key in ("f_not_divided_by_k", "p_divided_by_k", "first_choice_only", "p_from_topk_weights"):
            del candidates[key]
    return candidates


def _probe_loss(fn, probs: torch.Tensor, indices: torch.Tensor) -> float | None:
    """The learner's loss on a probe input, or None when it cannot be had (error, not a number)."""
    try:
        loss = fn(probs.clone(), indices.clone())
        value = float(torch.as_tensor(loss).detach().reshape(()))
    except Exception:  # noqa: BLE001 - a probe only refines the hint; the main check reports errors
        return None
    return value if math.isfinite(value) else None


def _switch_fallback_hint(fn) -> str:
    """A hint built from what the learner's loss does when f_i or P_i is made uniform.

    With every P_i equal to 1/E the loss reduces to the sum of the f_i, and with every f_i
    equal to 1/E to the sum of the P_i: both should be exactly 1.
    """
    tokens, num_experts, k = 8, 4, 2
    with _seeded(97):
        skewed_probs = torch.softmax(2 * torch.randn(tokens, num_experts) + torch.linspace(2, -2, 4), -1)
        skewed_indices = torch.multinomial(skewed_probs, k)       # distinct experts per token, skewed
    balanced_indices = torch.stack([torch.arange(tokens) % num_experts,
                                    (torch.arange(tokens) + 1) % num_experts], dim=1)
    uniform_probs = torch.full((tokens, num_experts), 1 / num_experts)
    sum_f = _probe_loss(fn, uniform_probs, skewed_indices)
    sum_p = _probe_loss(fn, skewed_probs, balanced_indices)
    f_off = sum_f is not None and not math.isclose(sum_f, 1, rel_tol=1e-4)
    p_off = sum_p is not None and not math.isclose(sum_p, 1, rel_tol=1e-4)
    if f_off and p_off and math.isclose(sum_f, sum_p, rel_tol=1e-3):
        return (f"With either the probabilities or the assignments made perfectly uniform your loss is "
                f"{sum_f:.3g} instead of 1: an overall factor is off. Check the constant in front of the "
                "sum, and whether you sum or average where the spec says (over tokens, over experts).")
    parts = []
    if f_off:
        parts.append(f"with every probability equal to 1/E your loss is {sum_f:.3g} instead of 1, so your "
                     "f_i do not sum to 1: count every assignment and divide by their total number")
    if p_off:
        parts.append(f"with perfectly balanced assignments your loss is {sum_p:.3g} instead of 1, so your "
                     "P_i do not sum to 1: average each expert's probability over the tokens")
    if parts:
        text = "; ".join(parts)
        return text[0].upper() + text[1:] + "."
    if sum_f is None or sum_p is None:
        return ("Check the pieces one at a time: print your f_i and your P_i for a small input; each "
                "should sum to 1, and perfectly uniform routing should give a loss of exactly 1.")
    return ("Your f_i and your P_i each sum to 1 (with either one uniform your loss is 1), so look at how "
            "they are paired: both must follow the same expert order, f_i counting expert i's "
            "assignments and P_i averaging probs[:, i] over the tokens.")


def _check_switch_aux_loss(fn):
    messages = {
        "f_not_divided_by_k": (("your loss is k times too large: f_i was divided by the number of tokens, "
                               "not by the number of assignments tokens * k"),
                               "f_i is a fraction of all tokens * k assignments, so the f_i sum to 1."),
        "missing_num_experts": ("your loss is off by a factor of the number of experts",
                                "The spec's loss is scaled by the number of experts so that uniform "
                                "routing gives exactly 1."),
        "gshard_mean": ("your loss is the mean of f_i * P_i (GShard's convention, minimum 1/E^2)",
                        "This course sums over the experts and scales by the number of experts, so "
                        "uniform routing gives 1."),
        "p_from_topk": ("P_i was computed from the chosen experts' probabilities only",
                        ("P_i is the mean over all tokens of the full softmax probability of expert i, "
                        "whether or not the token chose it.")),
        "p_from_topk_weights": ("your P_i come from the renormalised top-k weights, not from the "
                                "router probabilities",
                                "P_i must come from the full softmax over all experts, not the top-k "
                                "weights: average probs[:, i] over all tokens, chosen or not."),
        "first_choice_only": ("your f_i count only each token's first choice, not all k of its experts",
                              "Each token is assigned to k experts: count every one of the k assignments "
                              "of each token (all columns of expert_indices), not just the first."),
        "p_divided_by_k": ("your loss is k times too small: P_i was divided by tokens * k",
                           "P_i is a plain mean over tokens of probs[:, i]."),
        "counts_not_fractions": ("you used raw counts for f_i instead of fractions",
                                 "Divide the counts by tokens * k."),
        "f_from_probabilities": (("your f_i are the mean probabilities P_i again, so your loss is E times "
                                  "the sum of the squared P_i"),
                                 "f_i must count the chosen experts: the fraction of all tokens * k "
                                 "assignments (the entries of expert_indices) that went to expert i. It is "
                                 "a count, with no gradient; only P_i carries the gradient."),
    }
    for case_number, (probs, indices) in enumerate(_switch_cases()):
        expected = switch_load_balancing_loss(probs, indices)
        grad_probs = probs.clone().requires_grad_(True)
        loss = _expect_scalar(_call(fn, grad_probs, indices.clone()))
        if not _close(loss, expected):
            _diagnose(loss, _switch_candidates(probs, indices, expected), messages, (
                "wrong_values", f"your loss is {loss.item():.4g}, {_how_far(loss, expected)}",
                _switch_fallback_hint(fn)))
        if case_number == 0:
            _backward(loss, "the router probabilities")
            if not _has_grad(grad_probs):
                raise Mistake("no_gradient", "no gradient reaches the probabilities",
                              "P_i must stay a differentiable mean of probs; f_i is a constant count.")


def _z_loss_fallback_hint(fn, num_experts: int = 4) -> str:
    """By-hand case first: all-zero logits give log(E) squared; if that passes, point past it."""
    try:
        at_zero = float(torch.as_tensor(fn(torch.zeros(3, num_experts))).detach().reshape(()))
    except Exception:  # noqa: BLE001 - a probe only refines the hint
        at_zero = None
    if at_zero is not None and math.isclose(at_zero, math.log(num_experts) ** 2, rel_tol=1e-4):
        return ("Your loss is right when every logit is zero, so look at what changes when the logits "
                "differ: one logsumexp per token over its experts, each squared, then the mean over tokens.")
    return ("Try a case you can do by hand: for all-zero logits every token's logsumexp is "
            "log(num_experts), so the loss should be log(num_experts) ** 2.")


def _z_loss_cases() -> list[torch.Tensor]:
    """Router logits [T, E]: ordinary ones (one token included), then large ones."""
    cases = []
    for seed, (tokens, num_experts) in enumerate([(6, 4), (5, 8), (1, 3)]):
        with _seeded(100 + seed):
            cases.append(3 * torch.randn(tokens, num_experts) + 1)
    with _seeded(103):
        cases.append(1000 + 3 * torch.randn(4, 5))   # large logits: exp overflows without stabilising
    return cases


def _check_router_z_loss(fn):
    messages = {
        "missing_square": ("your loss is the mean logsumexp, not its square",
                           "Square each token's logsumexp before taking the mean."),
        "squared_mean": ("your loss is the square of the mean logsumexp, not the mean of the squares",
                         "Square each token's logsumexp first, then average those squares over the "
                         "tokens: squaring the average is not the same."),
        "max_not_logsumexp": ("you used the largest logit instead of the logsumexp",
                              "The z-loss uses the logsumexp over the experts (a smooth maximum that "
                              "torch.logsumexp computes), not the plain maximum."),
        "sum_not_mean": ("your loss is summed over tokens instead of averaged",
                         "Take the mean over tokens so the loss does not grow with the batch size."),
        "wrong_dim": ("the logsumexp was taken over tokens instead of experts",
                      "Use dim=-1: one logsumexp per token, over its experts."),
    }
    for logits in _z_loss_cases():
        expected = router_z_loss(logits)
        grad_logits = logits.clone().requires_grad_(True)
        loss = _expect_scalar(_call(fn, grad_logits))
        if not torch.isfinite(loss) and logits.abs().max() > 100:
            raise Mistake("overflow",
                          f"your loss is {loss.item()} for logits around {logits.mean().item():.0f}: "
                          "the computation overflowed",
                          "exp of a large logit is inf in floating point (exp(1000) already is), so "
                          "computing exp, then sum, then log breaks down. Use torch.logsumexp, which is "
                          "numerically stable, or subtract each token's largest logit before exp and "
                          "add it back after the log.")
        if not _close(loss, expected):
            lse = torch.logsumexp(logits, dim=-1)
            candidates = {
                "missing_square": lse.mean(),
                "squared_mean": lse.mean().square(),
                "max_not_logsumexp": logits.max(-1).values.square().mean(),
                "sum_not_mean": lse.square().sum(),
                "wrong_dim": torch.logsumexp(logits, dim=0).square().mean(),
            }
            if logits.shape[0] == 1:  # one token: the square of the mean is the mean of the square
                del candidates["squared_mean"]
            _diagnose(loss, candidates, messages, (
                "wrong_values", f"your loss is {loss.item():.4g}, {_how_far(loss, expected)}",
                _z_loss_fallback_hint(fn)))
        _backward(loss, "the logits")
        if not _has_grad(grad_logits):
            raise Mistake("no_gradient", "no gradient reaches the logits", "Use torch operations only.")
        if not torch.isfinite(grad_logits.grad).all():
            raise Mistake("overflow", "the gradient of your loss is not finite (inf or nan)",
                          "Use torch.logsumexp, which is numerically stable, or subtract each token's "
                          "largest logit before exp and add it back after the log.")


def _bias_cases() -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """(bias [E], expert_indices [T, k], rate): skewed top-2, top-1 with an expert at the mean load and
    an unchosen last expert, top-3."""
    cases = []
    with _seeded(140):
        skewed = torch.randn(12, 6) + torch.linspace(2.0, -2.0, 6)
        cases.append((0.1 * torch.randn(6), skewed.topk(2, dim=-1).indices, 0.01))
    # loads [3, 2, 1, 2], mean 2: experts 1 and 3 sit exactly at the mean and must not move
    cases.append((torch.tensor([0.05, -0.02, 0.0, 0.01]), torch.tensor([[0], [0], [0], [1], [1], [2], [3], [3]]),
                  0.001))
    cases.append((torch.zeros(5), torch.tensor([[0, 1, 2], [0, 1, 3], [0, 2, 1], [1, 0, 2]]), 0.05))
    return cases


def _check_bias_update(fn):
    messages = {
        "direction_inverted": ("the bias of an over-loaded expert went up: the update pushes towards the busy "
                               "experts", "The bias should make an over-loaded expert less attractive: "
                               "its bias goes down, an under-loaded expert's goes up."),
        "no_sign": ("the change is proportional to how far each load is from the mean, not a fixed step",
                    "DeepSeek-V3's rule moves every bias by the same amount, rate, up or down: take the "
                    "sign of the load's difference from the mean."),
        "first_choice_only": ("your loads count only each token's first choice",
                              "Every one of a token's k assignments loads its expert: count all columns of "
                              "expert_indices."),
        "rate_unused": ("the bias moved by 1 instead of by rate", "Scale the step by rate."),
        "replaced_bias": ("your result is the step alone: the old bias was not added",
                          "Return the old bias plus the step, so the bias accumulates over steps."),
        "moved_balanced_expert": ("an expert whose load is exactly the mean was moved",
                                  "An expert at the mean load keeps its bias: the sign of zero is zero."),
    }
    for bias, indices, rate in _bias_cases():
        num_experts = bias.shape[0]
        load = torch.bincount(indices.reshape(-1), minlength=num_experts).float()
        direction = torch.sign(load.mean() - load)
        expected = bias + rate * direction
        out = _call(fn, bias.clone(), indices.clone(), rate)
        _expect_tensor(out, bias.shape, "The new bias has one entry per expert, like the old one: [E].")
        if not out.is_floating_point():
            raise Mistake("not_float", f"the new bias should be a float tensor, got {out.dtype}",
                          "Count the loads, then compare them as floats (the mean of integers is a float).")
        if _close(out, expected):
            continue
        first_load = torch.bincount(indices[:, 0], minlength=num_experts).float()
        candidates = {
            "direction_inverted": bias - rate * direction,
            "no_sign": bias + rate * (load.mean() - load),
            "first_choice_only": bias + rate * torch.sign(first_load.mean() - first_load),
            "rate_unused": bias + direction,
            "replaced_bias": rate * direction,
            "moved_balanced_expert": [bias + rate * torch.where(load > load.mean(), -1.0, 1.0),
                                      bias + rate * torch.where(load < load.mean(), 1.0, -1.0)],
        }
        if indices.shape[1] == 1:
            del candidates["first_choice_only"]
        if not bool((load == load.mean()).any()):
            del candidates["moved_balanced_expert"]
        _diagnose(out, candidates, messages, (
            "wrong_values", f"the new bias differs from the rule's by up to {_max_diff(out, expected):.3g}",
            "Check the pieces one at a time: each expert's load (its assignments, over all k columns), "
            "the mean load, the direction (up for under-loaded experts), and a step of exactly rate."))


register("05_load_balancing", {
    "switch_aux_loss": _check_switch_aux_loss,
    "router_z_loss": _check_router_z_loss,
    "bias_update": _check_bias_update,
})
