"""Start ``N`` worker processes on this machine, wait for them, return what rank 0 measured.

:func:`run_workers` spawns ``N`` fresh Python processes (``torch.multiprocessing``'s
``spawn``), each joining a process group on ``127.0.0.1`` at a free port, runs one worker
task (a function ``task(rank, world_size, **kwargs)`` defined in an importable module) and
returns rank 0's return value. Functions typed into a notebook cannot be sent to a spawned
process, which is why the worker tasks live in :mod:`moe_teach.parallel.workers`.

It never hangs its caller: if a worker raises, or the whole run passes ``timeout`` seconds,
every worker is ended and one :class:`WorkerError` names the rank and its error.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
import traceback
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..validation import check_choice, check_positive_float, check_positive_int

BACKENDS = ("gloo", "nccl")


class WorkerError(RuntimeError):
    """A worker process raised, died or ran past the timeout. ``rank`` is the one to look at."""

    def __init__(self, rank: int | None, message: str):
        super().__init__(message)
        self.rank = rank


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _loopback_interface() -> str | None:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)


def check_launch_args(nproc, backend: str, timeout) -> None:
    """Clear errors for a bad number of processes, backend or timeout, before anything starts."""
    check_positive_int("nproc", nproc)
    check_choice("backend", backend, BACKENDS)
    check_positive_float("timeout", timeout)
    if backend == "nccl" and torch.cuda.device_count() < nproc:
        raise ValueError(f"backend 'nccl' needs one CUDA GPU per process: nproc={nproc} but "
                         f"{torch.cuda.device_count()} GPU(s) are visible; use backend='gloo' on a CPU")


def _worker_main(rank: int, world_size: int, port: int, backend: str, task, kwargs: dict,
                 result_dir: str, timeout: float) -> None:
    """What each spawned process runs: join the group, run ``task``, write the result or the error."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)                      # the processes share the machine's cores
    interface = _loopback_interface()
    if interface and backend == "gloo":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    folder = Path(result_dir)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        # the launcher's deadline ends a hung run; the group's own timeout is only a backstop
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout + 60))
        result = task(rank, world_size, **kwargs)
        if rank == 0:
            torch.save(result, folder / "result.pt")
        dist.barrier()                            # nobody leaves while a peer may still be sending
    except BaseException as error:  # noqa: BLE001 - every failure must reach the parent
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        (folder / f"rank{rank}.error").write_text(f"{time.time()!r}\n{text}\n{traceback.format_exc()}")
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _first_error(folder: Path, ranks: list[int]) -> tuple[int, str]:
    """The rank whose error came first (the others usually fail because it left) and its message."""
    found = []
    for rank in ranks:
        path = folder / f"rank{rank}.error"
        if path.exists():
            stamp, message = path.read_text().split("\n", 2)[:2]
            found.append((float(stamp), rank, message))
    if not found:
        return ranks[0], "the process died without a Python error (killed, or out of memory?)"
    _, rank, message = min(found)
    return rank, message


def _end_all(processes) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=2)
        if process.is_alive():
            process.kill()
            process.join(timeout=2)


def run_workers(task, nproc: int, *, backend: str = "gloo", timeout: float = 60.0, **kwargs):
    """Run ``task(rank, nproc, **kwargs)`` in ``nproc`` new processes; return rank 0's result.

    Args:
        task: a worker function defined at module level in an importable module, or the name of
            one in :data:`moe_teach.parallel.workers.WORKER_TASKS` (e.g. ``"check"``).
        nproc: number of processes ``W >= 1``.
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (one CUDA GPU per process).
        timeout: seconds for the whole run, start-up included; past it every worker is ended.
        kwargs: passed to every worker (they must be picklable: numbers, lists, tensors).

    Raises:
        WorkerError: a worker raised or died (the message names the rank and its error), or
            the run passed ``timeout`` (the message names the ranks still running).
    """
    check_launch_args(nproc, backend, timeout)
    if isinstance(task, str):
        from .workers import WORKER_TASKS

        check_choice("task", task, tuple(WORKER_TASKS))
        task = WORKER_TASKS[task]
    if not callable(task):
        raise TypeError(f"task must be a worker function or a task name, got {type(task).__name__}")
    context = mp.get_context("spawn")
    with TemporaryDirectory(prefix="moe_teach_parallel_") as result_dir:
        folder = Path(result_dir)
        port = free_port()
        processes = [context.Process(target=_worker_main, daemon=True,
                                     args=(rank, nproc, port, backend, task, kwargs, result_dir, timeout))
                     for rank in range(nproc)]
        deadline = time.monotonic() + timeout
        try:
            for process in processes:
                process.start()
            while True:
                codes = [process.exitcode for process in processes]
                failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
                if failed:
                    time.sleep(0.2)                   # let the other ranks write their errors too
                    rank, message = _first_error(folder, failed + [r for r in range(nproc) if r not in failed])
                    raise WorkerError(rank, f"rank {rank} of {nproc} failed: {message}")
                if all(code == 0 for code in codes):
                    break
                if time.monotonic() > deadline:
                    running = [rank for rank, code in enumerate(codes) if code is None]
                    raise WorkerError(running[0], f"timed out after {timeout:g} s: rank(s) "
                                      f"{', '.join(map(str, running))} of {nproc} still running (hung?); "
                                      "every worker was ended")
                time.sleep(0.02)
        finally:
            _end_all(processes)
        return torch.load(folder / "result.pt", weights_only=False)
