"""Checks for exercise notebook 11_expert_parallelism (the exchange of expert parallelism).

The first three tasks are plain tensor maths, checked in this process. The fourth runs the
learner's function in two real processes joined by ``torch.distributed`` (gloo): its compiled
code is sent to the workers with :mod:`marshal` (a notebook function cannot be pickled into a
new process, and the spawned workers run the same Python), which rebuild it with ``torch``
and ``dist`` as its globals, run it on each rank's counts and report what it returned.
"""

from __future__ import annotations

import marshal
import types

import torch

from ...parallel import WorkerError, expert_counts, inverse_permutation, run_workers, send_splits
from ...parallel.exchange import arrival_local_experts, arrival_permutation
from .core import Mistake, _call, _expect_tensor, _NotDone, _seeded, register

# ----------------------------------------------------------------------------- task 1: send splits


def _routing(tokens: int, num_experts: int, top_k: int, seed: int) -> torch.Tensor:
    with _seeded(seed):
        return torch.stack([torch.randperm(num_experts)[:top_k] for _ in range(tokens)])


def _send_split_cases():
    cases = [(_routing(10, 4, 2, 110), 4, 2), (_routing(7, 8, 1, 111), 8, 4), (_routing(9, 6, 3, 112), 6, 3),
             (_routing(5, 4, 2, 113), 4, 1)]
    cases.append((torch.tensor([[0, 1], [1, 0], [0, 1]]), 4, 2))          # rank 1 receives nothing
    return cases


def _check_send_splits(fn):
    for indices, num_experts, world_size in _send_split_cases():
        expected = send_splits(expert_counts(indices, num_experts), world_size)
        got = _call(fn, indices.clone(), num_experts, world_size)
        case = f"(tokens={indices.shape[0]}, k={indices.shape[1]}, num_experts={num_experts}, world_size={world_size})"
        if isinstance(got, torch.Tensor):
            raise Mistake("not_a_list", f"your splits are a tensor; all_to_all_single wants a list of {world_size} "
                          "Python ints", "Turn the per-rank numbers into plain ints with .tolist().")
        if not isinstance(got, (list, tuple)):
            raise Mistake("not_a_list", f"your splits should be a list of {world_size} ints, got a "
                          f"{type(got).__name__}", "Return one number per destination rank, as a list.")
        if len(got) == num_experts and num_experts != world_size:
            raise Mistake("per_expert_counts", f"you returned {len(got)} numbers, one per expert; the splits "
                          f"have one per rank ({world_size}) {case}",
                          "Add up the counts of the experts each rank owns: rank r owns a block of "
                          "num_experts / world_size consecutive experts.")
        if len(got) != world_size:
            raise Mistake("wrong_length", f"you returned {len(got)} numbers; there should be one per rank, "
                          f"{world_size} {case}", "One split per destination rank, rank 0 first.")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in got):
            raise Mistake("not_a_list", "your splits should be Python ints, got "
                          f"{sorted({type(v).__name__ for v in got})}", "Use .tolist() on an integer tensor.")
        if list(got) == expected:
            continue
        local = num_experts // world_size
        flat = indices.reshape(-1)
        candidates = {
            "round_robin": torch.bincount(flat % world_size, minlength=world_size).tolist(),
            "first_choice_only": torch.bincount(indices[:, 0] // local, minlength=world_size).tolist(),
            "tokens_not_assignments": [int(((indices // local) == d).any(dim=1).sum()) for d in range(world_size)],
        }
        messages = {
            "round_robin": ("you gave expert e to rank e % world_size; here each rank owns a block of "
                            "consecutive experts", "Rank r owns a block of L consecutive experts starting at "
                            "expert r times L, where L is num_experts // world_size."),
            "first_choice_only": ("you counted only each token's first choice", "Every one of the k choices "
                                  "of a token is a row to send: count all of them."),
            "tokens_not_assignments": ("you counted tokens, not assignments: a token with two experts on the "
                                       "same rank is sent twice", "Count (token, expert) pairs, the entries of "
                                       "expert_indices."),
        }
        for key, value in candidates.items():
            if list(got) == value:
                raise Mistake(key, f"{messages[key][0]} {case}", messages[key][1])
        raise Mistake("wrong_values", f"your splits {list(got)} are not the rows this rank sends to each rank {case}",
                      "Count the assignments per expert (torch.bincount with minlength), then add up each "
                      "rank's block of experts.")


# ----------------------------------------------------------------------------- task 2: arrival permutation

_PERMUTATION_CASES = [(torch.tensor([1, 2, 1, 0, 2, 1]), 3), (torch.tensor([2, 0, 1, 3]), 2),
                      (torch.tensor([0, 3, 2, 1, 1, 0, 2, 2]), 2), (torch.tensor([2, 1, 3, 1]), 4),
                      (torch.tensor([0, 0, 0, 0]), 2)]


def _check_arrival_permutation(fn):
    ambiguous = None             # a mistake two candidates explain equally: let a later case decide
    for recv_counts, world_size in _PERMUTATION_CASES:
        expected = arrival_permutation(recv_counts, world_size)
        rows = int(recv_counts.sum())
        case = f"(recv_counts={recv_counts.tolist()}, world_size={world_size})"
        got = _call(fn, recv_counts.clone(), world_size)
        _expect_tensor(got, (rows,), "One entry per received row: the permutation has sum(recv_counts) entries.")
        if got.dtype not in (torch.int64, torch.int32):
            raise Mistake("not_long", f"your permutation has dtype {got.dtype}; it indexes rows, so it must be "
                          "an integer tensor", "torch.argsort returns int64 indices.")
        if not torch.equal(got.sort().values, torch.arange(rows)):
            raise Mistake("not_a_permutation", f"your result is not a permutation of 0..{rows - 1} {case}",
                          "Return the order of the rows (what argsort returns), not the local expert ids.")
        if torch.equal(got.long(), expected):
            continue
        local_of_row = arrival_local_experts(recv_counts, world_size)
        candidates = {
            "identity": torch.arange(rows),
            "inverse_instead": inverse_permutation(expected),
        }
        messages = {
            "identity": ("your permutation leaves the rows in arrival order, which is [source rank][local "
                         "expert]: each expert's rows are still scattered over the source blocks",
                         "Give every received row its local expert id, then sort the rows by it."),
            "inverse_instead": ("you returned the inverse: received[perm] with your perm does not group the "
                                "rows by expert", "perm[i] is the arrival position of the row that goes to "
                                "place i, which is what argsort gives."),
        }
        matching = [key for key, value in candidates.items() if torch.equal(got.long(), value)]
        if len(matching) > 1:
            ambiguous = ambiguous or Mistake(matching[0], f"{messages[matching[0]][0]} {case}",
                                             messages[matching[0]][1])
            continue
        if matching:
            raise Mistake(matching[0], f"{messages[matching[0]][0]} {case}", messages[matching[0]][1])
        if not bool((local_of_row[got.long()].diff() >= 0).all()):
            raise Mistake("not_grouped", f"received[perm] is not grouped by local expert {case}",
                          "recv_counts is laid out [source rank][local expert]: give each received row its "
                          "local expert id from that layout, then sort by it.")
        raise Mistake("not_stable", f"the rows are grouped by expert, but not in source order inside a group {case}",
                      "Inside one expert, rows from source 0 come first and each source keeps its order: use a "
                      "stable sort (torch.argsort(..., stable=True)).")
    if ambiguous is not None:
        raise ambiguous


# ----------------------------------------------------------------------------- task 3: inverse permutation


def _check_inverse(fn):
    with _seeded(130):
        perms = [torch.tensor([2, 0, 1]), torch.randperm(9), torch.tensor([0]), torch.randperm(20)]
    for perm in perms:
        expected = inverse_permutation(perm)
        got = _call(fn, perm.clone())
        _expect_tensor(got, perm.shape, "The inverse has one entry per entry of perm.")
        if got.dtype not in (torch.int64, torch.int32):
            raise Mistake("not_long", f"your inverse has dtype {got.dtype}; index tensors must be integers",
                          "Create the result with the integer dtype of perm (torch.empty_like copies the dtype).")
        if torch.equal(got.long(), expected):
            continue
        if torch.equal(got.long(), perm):
            raise Mistake("returned_perm",
                          f"you returned the permutation itself, not its inverse (perm={perm.tolist()})",
                          "The inverse answers the opposite question: where did row i go? Scatter positions "
                          "into the places perm names.")
        if torch.equal(got.long(), perm[perm]):
            raise Mistake("applied_twice", "you applied the permutation to itself; that is perm twice, not undone",
                          "Write position i into entry perm[i] of a new tensor.")
        raise Mistake("wrong_values", f"y[perm][your_inverse] does not give y back (perm={perm.tolist()})",
                      "Check on a 3-element example by hand: rows[perm][inverse] must equal rows.")


# ----------------------------------------------------------------------------- task 4: a real two-process exchange

_COUNT_CASES = [[torch.tensor([1, 5, 4, 2]), torch.tensor([4, 2, 3, 3])],
                [torch.tensor([0, 0, 6, 2]), torch.tensor([3, 0, 1, 0])]]
_REAL_RUNS: dict[bytes, dict] = {}


def _as_python(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_as_python(v) for v in value]
    return value


def exchange_worker(rank: int, world_size: int, code: bytes, defaults, cases: list) -> dict:
    """Runs in each process: the learner's function on this rank's counts, then (if every rank's
    splits are right) a real token exchange with those splits. Rank 0 returns all ranks' answers."""
    import torch.distributed as dist

    from ...parallel.exchange import exchange_counts

    namespace = {"torch": torch, "dist": dist, "__builtins__": __builtins__}
    fn = types.FunctionType(marshal.loads(code), namespace, None, defaults)
    answers, tokens_ok = [], []
    for case in cases:
        mine = case[rank].clone()
        result = fn(mine.clone(), world_size)
        recv_counts = exchange_counts(mine)
        expected = (recv_counts.tolist(), send_splits(mine, world_size), send_splits(recv_counts, world_size))
        answers.append(_as_python(result) if isinstance(result, (tuple, list)) else repr(type(result)))
        right = torch.tensor([int(isinstance(result, (tuple, list)) and _as_python(result) == list(expected))])
        dist.all_reduce(right, op=dist.ReduceOp.MIN)
        if bool(right):          # every rank is right: send real rows with the learner's splits
            _, input_splits, output_splits = result
            rows = torch.arange(sum(input_splits), dtype=torch.float32) + 1000 * rank
            received = torch.empty(sum(output_splits))
            dist.all_to_all_single(received, rows, list(output_splits), list(input_splits))
            tokens_ok.append(int(received.numel()) == sum(expected[2]))
    gathered = [None] * world_size
    dist.all_gather_object(gathered, {"answers": answers, "tokens_ok": tokens_ok})
    return {"ranks": gathered}


def _expected_exchange(case):
    world_size = len(case)
    local = case[0].numel() // world_size
    out = []
    for rank in range(world_size):
        recv = torch.cat([case[s][rank * local:(rank + 1) * local] for s in range(world_size)])
        out.append((recv.tolist(), send_splits(case[rank], world_size), send_splits(recv, world_size)))
    return out


def _real_run(fn) -> dict:
    code = getattr(fn, "__code__", None)
    if code is None or code.co_freevars:
        raise Mistake("not_plain_function", "the check needs a plain function defined with def at the top of a cell",
                      "Define the function at the top level of a cell (not inside another function), using only "
                      "torch and dist.")
    key = marshal.dumps(code)
    if key not in _REAL_RUNS:
        try:
            _REAL_RUNS[key] = run_workers(exchange_worker, 2, timeout=45, code=key, defaults=fn.__defaults__,
                                          cases=_COUNT_CASES)
        except WorkerError as error:
            if "NotImplementedError" in str(error):
                raise _NotDone from None
            if "timed out" in str(error):
                raise Mistake("hung", "your function did not finish on every rank within 45 s",
                              "Every rank must make the same collective calls in the same order; a call that "
                              "only some ranks make waits forever.") from None
            raise Mistake("raised", f"on a real run: {str(error).splitlines()[0][:300]}",
                          "Read the error: all_to_all_single needs an output tensor of the right size and "
                          "split lists of Python ints; the function may use only torch and dist.") from None
    return _REAL_RUNS[key]


def _check_exchange_on_two_processes(fn):
    run = _real_run(fn)
    for number, case in enumerate(_COUNT_CASES):
        for rank, expected in enumerate(_expected_exchange(case)):
            got = run["ranks"][rank]["answers"][number]
            where = f"(rank {rank} of 2, its counts {case[rank].tolist()})"
            if not isinstance(got, list) or len(got) != 3:
                raise Mistake("return_format", "your function should return (recv_counts, input_splits, "
                              "output_splits)", "Return the three results together as a tuple, in this order.")
            recv, input_splits, output_splits = got
            own = case[rank].tolist()
            if recv != expected[0]:
                if recv == own:
                    raise Mistake("counts_not_exchanged", f"your recv_counts are this rank's own counts {where}",
                                  "The counts must travel: each rank sends each other rank the counts of that "
                                  "rank's experts, with one all_to_all_single on the count tensor.")
                if recv == [sum(v) for v in zip(*(c.tolist() for c in case))]:
                    raise Mistake("all_reduce_not_all_to_all", f"your recv_counts are summed over all ranks {where}",
                                  "A sum (all_reduce) mixes the sources; all_to_all_single keeps one block per "
                                  "source rank, laid out [source rank][local expert].")
                raise Mistake("wrong_recv_counts", f"your recv_counts {recv} are not what this rank receives {where}",
                              "Allocate an output tensor like the counts and exchange with all_to_all_single.")
            if [input_splits, output_splits] == [expected[2], expected[1]] and expected[1] != expected[2]:
                raise Mistake("splits_swapped", f"your input and output splits are swapped {where}",
                              "input_splits are what this rank sends (from its own counts); output_splits what "
                              "it receives (from the exchanged counts).")
            if [input_splits, output_splits] != [expected[1], expected[2]]:
                local = len(own) // 2
                wrong_axis = [torch.tensor(own).view(2, local).sum(0).tolist(),
                              torch.tensor(recv).view(2, local).sum(0).tolist()]
                if [input_splits, output_splits] == wrong_axis:
                    raise Mistake("summed_wrong_axis", f"your splits add up each local expert over ranks {where}",
                                  "View the counts as [rank, local expert] and add up along the local experts, "
                                  "one total per rank.")
                raise Mistake("wrong_splits", f"your splits {input_splits}, {output_splits} are off {where}",
                              "Each split lists one number of rows per rank: the counts of that rank's block.")
    if not all(all(r["tokens_ok"]) for r in run["ranks"]):
        raise Mistake("exchange_failed", "your splits were right but the token exchange with them went wrong",
                      "Pass the splits as lists of Python ints.")


register("11_expert_parallelism", {
    "send_splits": _check_send_splits,
    "arrival_permutation": _check_arrival_permutation,
    "inverse_permutation": _check_inverse,
    "exchange_on_two_processes": _check_exchange_on_two_processes,
})
