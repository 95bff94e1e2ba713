"""Planted mistakes for exercise notebook 11_expert_parallelism: (diagnosis key, wrong function) per task.

The exchange mistakes run in two real processes; each makes the same collective calls on
every rank, so none of them hangs.
"""

import torch
import torch.distributed as dist


def splits_per_expert(expert_indices, num_experts, world_size):
    return torch.bincount(expert_indices.reshape(-1), minlength=num_experts).tolist()


def splits_round_robin(expert_indices, num_experts, world_size):
    """Experts dealt out like cards (e % W) instead of in blocks."""
    return torch.bincount(expert_indices.reshape(-1) % world_size, minlength=world_size).tolist()


def splits_first_choice_only(expert_indices, num_experts, world_size):
    local = num_experts // world_size
    return torch.bincount(expert_indices[:, 0] // local, minlength=world_size).tolist()


def splits_count_tokens(expert_indices, num_experts, world_size):
    """A token with two experts on the same rank counted once."""
    owner = expert_indices // (num_experts // world_size)
    return [int((owner == d).any(dim=1).sum()) for d in range(world_size)]


def splits_as_tensor(expert_indices, num_experts, world_size):
    counts = torch.bincount(expert_indices.reshape(-1), minlength=num_experts)
    return counts.view(world_size, -1).sum(dim=1)


def splits_off_by_one(expert_indices, num_experts, world_size):
    """No named diagnosis: gets the generic hint."""
    counts = torch.bincount(expert_indices.reshape(-1), minlength=num_experts)
    return [n + 1 for n in counts.view(world_size, -1).sum(dim=1).tolist()]


def _local_ids(recv_counts, world_size):
    return torch.repeat_interleave(torch.arange(recv_counts.numel() // world_size).repeat(world_size), recv_counts)


def permutation_identity(recv_counts, world_size):
    return torch.arange(int(recv_counts.sum()))


def permutation_inverse(recv_counts, world_size):
    perm = torch.argsort(_local_ids(recv_counts, world_size), stable=True)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    return inverse


def permutation_counts_transposed(recv_counts, world_size):
    """Reads the counts as [local expert][source rank] instead of [source rank][local expert]."""
    local = recv_counts.numel() // world_size
    counts = recv_counts.view(world_size, local).T.reshape(-1)
    return torch.argsort(torch.repeat_interleave(torch.arange(local).repeat(world_size), counts), stable=True)


def permutation_sources_reversed(recv_counts, world_size):
    """Grouped by expert, but later rows first inside each group."""
    ids = _local_ids(recv_counts, world_size)
    return torch.argsort(ids * (ids.numel() + 1) - torch.arange(ids.numel()), stable=True)


def permutation_returns_ids(recv_counts, world_size):
    return torch.sort(_local_ids(recv_counts, world_size)).values


def inverse_returns_perm(perm):
    return torch.arange(perm.numel())[perm]


def inverse_applied_twice(perm):
    return perm[perm]


def inverse_float(perm):
    inverse = torch.empty(perm.numel())
    inverse[perm] = torch.arange(perm.numel()).float()
    return inverse


def inverse_flipped(perm):
    """No named diagnosis: gets the generic hint."""
    return perm.flip(0)


def exchange_without_exchanging(send_counts, world_size):
    recv_counts = send_counts.clone()
    return (recv_counts, send_counts.view(world_size, -1).sum(dim=1).tolist(),
            recv_counts.view(world_size, -1).sum(dim=1).tolist())


def exchange_with_all_reduce(send_counts, world_size):
    recv_counts = send_counts.clone()
    dist.all_reduce(recv_counts)
    return (recv_counts, send_counts.view(world_size, -1).sum(dim=1).tolist(),
            recv_counts.view(world_size, -1).sum(dim=1).tolist())


def exchange_splits_swapped(send_counts, world_size):
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts)
    return (recv_counts, recv_counts.view(world_size, -1).sum(dim=1).tolist(),
            send_counts.view(world_size, -1).sum(dim=1).tolist())


def exchange_summed_wrong_axis(send_counts, world_size):
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts)
    return (recv_counts, send_counts.view(world_size, -1).sum(dim=0).tolist(),
            recv_counts.view(world_size, -1).sum(dim=0).tolist())


MISTAKES = {
    "send_splits": [("per_expert_counts", splits_per_expert), ("round_robin", splits_round_robin),
                    ("first_choice_only", splits_first_choice_only),
                    ("tokens_not_assignments", splits_count_tokens), ("not_a_list", splits_as_tensor),
                    ("wrong_values", splits_off_by_one)],
    "arrival_permutation": [("identity", permutation_identity), ("inverse_instead", permutation_inverse),
                            ("not_grouped", permutation_counts_transposed),
                            ("not_stable", permutation_sources_reversed),
                            ("not_a_permutation", permutation_returns_ids)],
    "inverse_permutation": [("returned_perm", inverse_returns_perm), ("applied_twice", inverse_applied_twice),
                            ("not_long", inverse_float), ("wrong_values", inverse_flipped)],
    "exchange_on_two_processes": [("counts_not_exchanged", exchange_without_exchanging),
                                  ("all_reduce_not_all_to_all", exchange_with_all_reduce),
                                  ("splits_swapped", exchange_splits_swapped),
                                  ("summed_wrong_axis", exchange_summed_wrong_axis)],
}
