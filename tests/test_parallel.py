"""Expert parallelism on localhost: the W-process layer equals the one-process MoELayer.

Every multi-process test goes through ``run_workers`` with a timeout, and several cases share
one launch (starting processes costs more than the cases). Tolerance: 1e-5 absolute for
outputs and gradients of order 1 (float32; the sums run in a different order on each side).
"""

import argparse
import time

import pytest
import torch
import torch.multiprocessing as mp

from moe_teach import MoELayer
from moe_teach.course import cli
from moe_teach.parallel import (
    WorkerError,
    arrival_local_experts,
    arrival_permutation,
    expert_counts,
    inverse_permutation,
    local_expert_counts,
    run_workers,
    send_splits,
    shard_moe_layer,
)

TOLERANCE = 1e-5
TIMEOUT = 90


def _cases(world_size):
    cases = [{"num_experts": e, "top_k": k, "capacity_factor": cf, "seed": i}
             for i, (e, k, cf) in enumerate((e, k, cf) for e in (4, 8) for k in (1, 2) for cf in (None, 1.0, 0.5))]
    if world_size > 1:   # a rank that receives nothing, and all tokens on rank 0's experts
        local = 8 // world_size
        cases += [{"num_experts": 8, "top_k": 2, "capacity_factor": cf, "avoid_ranks": [world_size - 1],
                   "seed": 20} for cf in (None, 1.0)]
        cases += [{"num_experts": 8, "top_k": min(2, local), "capacity_factor": cf,
                   "avoid_ranks": list(range(1, world_size)), "seed": 21} for cf in (None, 1.0)]
    return cases


@pytest.fixture(scope="module", params=[1, 2, 4])
def checked(request):
    world_size = request.param
    return world_size, run_workers("check", world_size, cases=_cases(world_size), timeout=TIMEOUT)


def _case_id(result):
    return (f"W={result['world_size']} E={result['num_experts']} k={result['top_k']} "
            f"cf={result['capacity_factor']} avoid={result.get('avoid_ranks', [])}")


def test_outputs_and_gradients_equal_the_one_process_layer(checked):
    world_size, results = checked
    assert len(results) == len(_cases(world_size))
    for result in results:
        assert result["experts_checked"] == list(range(result["num_experts"])), _case_id(result)
        for key in ("output_diff", "input_grad_diff", "expert_grad_diff", "router_grad_diff"):
            assert result[key] < TOLERANCE, (_case_id(result), key, result[key])
        assert result["output_scale"] > 0.1            # the outputs compared are not all zero


def test_capacity_cases_really_drop_and_dropless_cases_do_not(checked):
    _, results = checked
    for result in results:
        if result["capacity_factor"] is None:
            assert result["dropped"] == 0
        elif result["capacity_factor"] == 0.5:
            assert result["dropped"] > 0, _case_id(result)


def test_edge_cases_route_as_intended(checked):
    world_size, results = checked
    for result in results:
        avoid = result.get("avoid_ranks", [])
        if avoid and result["capacity_factor"] is None:
            received = result["received_per_rank"]
            assert all(received[r] == 0 for r in avoid), received
            assert sum(received) == world_size * 12 * result["top_k"]


@pytest.mark.parametrize(("world_size", "capacity_factor"), [(2, None), (2, 1.0)])
def test_training_steps_match_one_process_training(world_size, capacity_factor):
    result = run_workers("train", world_size, steps=4, num_experts=8, top_k=2, capacity_factor=capacity_factor,
                         timeout=TIMEOUT)
    losses, reference = result["losses"], result["reference_losses"]
    assert len(losses) == 4 and losses[-1] != losses[0]            # the weights really moved
    assert max(abs(a - b) for a, b in zip(losses, reference)) < 1e-5
    assert result["expert_weight_diff"] < 1e-5 and result["router_weight_diff"] < 1e-5


# ----------------------------------------------------------------------------- the exchange maths


def test_send_splits_and_arrival_layout():
    indices = torch.tensor([[3, 0], [1, 2], [3, 1]])
    counts = expert_counts(indices, 4)
    assert counts.tolist() == [1, 2, 1, 2]
    assert send_splits(counts, 2) == [3, 3]
    recv_counts = torch.tensor([2, 0, 1, 3])        # from source 0: 2, 0; from source 1: 1, 3
    assert arrival_local_experts(recv_counts, 2).tolist() == [0, 0, 0, 1, 1, 1]
    assert local_expert_counts(recv_counts, 2) == [3, 3]
    recv_counts = torch.tensor([1, 2, 1, 0, 2, 1])  # 3 sources, 2 local experts
    perm = arrival_permutation(recv_counts, 3)
    assert arrival_local_experts(recv_counts, 3)[perm].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert perm.tolist() == [0, 3, 4, 5, 1, 2, 6]   # stable: each source's rows keep their order


def test_inverse_permutation_undoes_the_resort():
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    rows = torch.randn(50, 3)
    assert torch.equal(rows[perm][inverse_permutation(perm)], rows)
    assert torch.equal(inverse_permutation(perm)[perm], torch.arange(50))


def test_shard_copies_its_experts_and_router():
    layer = MoELayer(8, num_experts=4, top_k=2)
    shard = shard_moe_layer(layer, rank=1, world_size=2)
    assert torch.equal(shard.experts[0].up.weight, layer.experts[2].up.weight)
    assert torch.equal(shard.router.proj.weight, layer.router.proj.weight)
    with torch.no_grad():
        shard.experts[0].up.weight.add_(1.0)
    assert not torch.equal(shard.experts[0].up.weight, layer.experts[2].up.weight)


# ----------------------------------------------------------------------------- bad arguments and failures


def test_experts_not_divisible_by_world_size():
    with pytest.raises(ValueError, match=r"num_experts \(6\) must be divisible by world_size \(4\)"):
        shard_moe_layer(MoELayer(8, num_experts=6), rank=0, world_size=4)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"nproc": 0}, "nproc must be a positive int"),
    ({"nproc": 2, "backend": "mpi"}, "backend must be one of 'gloo', 'nccl'"),
    ({"nproc": 2, "timeout": 0}, "timeout must be a number > 0"),
])
def test_launcher_rejects_bad_arguments_before_starting(kwargs, words):
    with pytest.raises(ValueError, match=words):
        run_workers("check", cases=[], **kwargs)


@pytest.mark.parametrize(("argv", "flag"), [
    (["--nproc", "0"], "--nproc"), (["--nproc", "4", "--experts", "6"], "--experts (6) must be divisible"),
    (["--backend", "mpi"], "--backend"), (["--top-k", "9"], "--top-k"), (["--capacity-factor", "-1"],
                                                                          "--capacity-factor"),
])
def test_cli_names_the_bad_flag(argv, flag, capsys):
    assert cli.main(["parallel", *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert flag in error and "\n" not in error and "Traceback" not in error


def test_a_raising_worker_fails_the_launch_quickly_naming_its_rank():
    started = time.monotonic()
    with pytest.raises(WorkerError, match="rank 1 of 2 failed: RuntimeError: deliberate failure on rank 1") as info:
        run_workers("fail", 2, fail_rank=1, mode="raise", timeout=TIMEOUT)
    assert info.value.rank == 1
    assert time.monotonic() - started < 30
    assert not mp.active_children()                # every worker was ended


def test_a_hanging_worker_is_ended_at_the_timeout():
    started = time.monotonic()
    with pytest.raises(WorkerError, match="timed out after 3 s"):
        run_workers("fail", 2, fail_rank=0, mode="hang", timeout=3)
    assert time.monotonic() - started < 15
    assert not mp.active_children()


def test_cli_check_prints_the_differences_last(capsys):
    args = argparse.Namespace(nproc=2, experts=4, top_k=2, capacity_factor=None, check=True, steps=0, tokens=16,
                              backend="gloo", timeout=float(TIMEOUT), seed=0)
    from moe_teach.course import parallel_cli

    assert parallel_cli.run(args) == 0
    last = capsys.readouterr().out.strip().split("\n")[-1]
    output_part, grad_part = last.split(" ")
    assert output_part.startswith("max_output_diff=") and grad_part.startswith("max_grad_diff=")
    assert float(output_part.split("=")[1]) < TOLERANCE and float(grad_part.split("=")[1]) < TOLERANCE
