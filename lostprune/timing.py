"""Robust timers. Numbers on a shared machine drift, so comparisons are ratios of runs
sampled alternately in the same process (``interleaved_ratio``). Below every other layer:
``sparse.convert`` calibrates with them, ``lostprune bench`` and the benchmarks report them."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_call(
    fn: Callable[[], object],
    *,
    repeat: int = 5,
    warmup: int = 1,
    min_time: float = 0.05,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median seconds per call. Each sample loops until it lasts at least ``min_time``.
    ``clock=time.thread_time`` counts only this thread's CPU time: for single-threaded work
    on a shared machine, what the call costs rather than when the scheduler ran it."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        n, start = 0, clock()
        while True:
            fn()
            n += 1
            elapsed = clock() - start
            if elapsed >= min_time:
                break
        samples.append(elapsed / n)
    return statistics.median(samples)


def interleaved_ratio(
    baseline: Callable[[], object],
    candidate: Callable[[], object],
    *,
    rounds: int = 5,
    min_time: float = 0.05,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float, float]:
    """(baseline s, candidate s, baseline/candidate), medians of samples taken alternately
    so machine noise hits both sides alike."""
    baseline(), candidate()
    b, c = [], []
    for _ in range(rounds):
        b.append(time_call(baseline, repeat=1, warmup=0, min_time=min_time, clock=clock))
        c.append(time_call(candidate, repeat=1, warmup=0, min_time=min_time, clock=clock))
    tb, tc = statistics.median(b), statistics.median(c)
    return tb, tc, tb / tc
