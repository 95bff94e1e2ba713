"""Timing a piece of code the way benchmarks do: warm up, repeat, report the median.

The first calls of a torch function are slower (memory allocation, kernel selection), and any
single measurement can be hit by another process, so::

    timing = time_callable(lambda: layer(x), repeats=20, warmup=3)
    timing.median_ms

Several callables compared with :func:`compare` are measured in interleaved rounds, so a
burst of background load hits all of them alike. Times are wall-clock seconds
(``time.perf_counter``) on whatever machine runs the lesson: read them as "measured here,
this time", never as constants.
"""

from __future__ import annotations

import random
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..validation import check_choice, check_non_negative_int, check_positive_int


@dataclass
class Timing:
    """Wall-clock seconds of each timed call of one callable.

    Attributes:
        times: seconds of every timed repeat (warm-up calls excluded), in order.
    """

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return statistics.median(self.times)

    @property
    def median_ms(self) -> float:
        """Median milliseconds per call."""
        return 1e3 * self.median

    @property
    def spread(self) -> float:
        """``(max - min) / median``: a rough idea of how noisy the machine was."""
        return (max(self.times) - min(self.times)) / self.median if self.median > 0 else 0.0


@contextmanager
def torch_threads(count: int | None):
    """Run torch on ``count`` threads inside the block, then restore the previous setting.

    ``None`` keeps the current setting. The course's toy models are tiny: a second thread
    mostly adds synchronisation, and on a busy machine several threads can be many times slower.
    """
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(check_positive_int("threads", count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""``"wall"``: elapsed time; ``"cpu"``: CPU time of this process (all its threads), which a
busy machine's other processes do not inflate when they take the cores away (with one thread
it is the steadier clock on a shared machine; with several it also counts threads spinning
while they wait for each other)."""


def time_callable(fn: Callable[[], object], repeats: int = 20, warmup: int = 3, clock: str = "wall") -> Timing:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed; return the :class:`Timing`.

    ``clock``: a name in :data:`CLOCKS`.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    check_positive_int("repeats", repeats)
    check_non_negative_int("warmup", warmup)
    check_choice("clock", clock, tuple(CLOCKS))
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = now()
        fn()
        times.append(now() - start)
    return Timing(times)


def compare(cases: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3,
            rounds: int = 4, seed: int | None = 0, progress: bool = False, clock: str = "wall") -> dict[str, Timing]:
    """Time every callable of ``cases`` (name -> fn), interleaved over ``rounds`` rounds.

    Each case is warmed up ``warmup`` times, then each round times every case
    ``repeats // rounds`` times (at least once), so slow and fast moments of the machine are
    shared among the cases. With a ``seed`` the order of the cases is shuffled each round, so
    no case always runs right after the same (say, a much larger) one; ``seed=None`` keeps
    the given order. ``progress`` shows a bar over the rounds; ``clock`` is a name in :data:`CLOCKS`.
    """
    if not isinstance(cases, dict) or not cases:
        raise ValueError("cases must be a non-empty dict of name -> callable")
    check_positive_int("repeats", repeats)
    check_positive_int("rounds", rounds)
    check_non_negative_int("warmup", warmup)
    per_round = max(1, repeats // rounds)
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    results = {name: Timing() for name in cases}
    order = list(cases)
    shuffler = random.Random(seed) if seed is not None else None
    for _ in tqdm(range(rounds), desc="timing rounds", disable=not progress):
        if shuffler is not None:
            shuffler.shuffle(order)
        for name in order:
            results[name].times.extend(time_callable(cases[name], repeats=per_round, warmup=0, clock=clock).times)
    return results


def format_table(timings: dict[str, Timing], baseline: str | None = None, unit: str = "ms") -> str:
    """A plain-text table: name, median time, and the ratio to ``baseline`` (default: the first case)."""
    if not timings:
        raise ValueError("timings must not be empty")
    baseline = next(iter(timings)) if baseline is None else baseline
    if baseline not in timings:
        raise ValueError(f"baseline must be one of {', '.join(map(repr, timings))}, got {baseline!r}")
    scale = {"ms": 1e3, "us": 1e6, "s": 1.0}
    if unit not in scale:
        raise ValueError(f"unit must be one of 'ms', 'us', 's', got {unit!r}")
    width = max(len(name) for name in timings) + 2
    lines = [f"{'case':<{width}}{'median ' + unit:>12}{'vs ' + baseline:>{len(baseline) + 6}}"]
    base = timings[baseline].median
    for name, timing in timings.items():
        lines.append(f"{name:<{width}}{timing.median * scale[unit]:>12.3f}"
                     f"{timing.median / base:>{len(baseline) + 6}.2f}")
    return "\n".join(lines)
