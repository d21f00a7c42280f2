"""Latency measurement: robust timers and ``lostprune bench`` on a saved network.

Numbers on a shared machine drift, so comparisons are ratios of runs sampled alternately
in the same process (``interleaved_ratio``)."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def time_call(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1, min_time: float = 0.05,
              clock: Callable[[], float] = time.perf_counter) -> float:
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


def interleaved_ratio(baseline: Callable[[], object], candidate: Callable[[], object], *, rounds: int = 5,
                      min_time: float = 0.05, clock: Callable[[], float] = time.perf_counter
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


def _variants(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The ways to run a pruned network: masked (prune hooks), dense (masks folded in),
    sliced (channels really removed) and sparse (packed kernels), where they apply."""
    from .core.masks import remove_masks

    out = {"masked": model}
    dense = remove_masks(copy.deepcopy(model)).eval()
    out["dense"] = dense
    try:
        from .structure import slice_model

        out["sliced"] = slice_model(model).eval()
    except (ImportError, ValueError):
        pass
    try:
        from .sparse import convert

        out["sparse"] = convert(copy.deepcopy(dense)).eval()
    except ImportError:
        pass
    return out


def bench_network(path: str, batches: Sequence[int] = (1, 32), repeat: int = 5):
    """A rich table of CPU latency per variant and batch size, with speedups over dense."""
    from rich.table import Table

    from .io import load_network

    model = load_network(path).eval()
    size = getattr(model, "input_size", None)
    if size is None:
        raise ValueError(f"{path}: the network does not record its input size")
    variants = _variants(model)
    table = Table(title=f"CPU latency of {path} ({torch.get_num_threads()} threads)")
    table.add_column("batch", justify="right")
    for name in variants:
        table.add_column(f"{name} (ms)", justify="right")
    for name in variants:
        if name != "dense":
            table.add_column(f"{name} speedup", justify="right")
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, *size)
            times = {name: time_call(lambda m=m: m(x), repeat=repeat) for name, m in variants.items()}
            cells = [f"{1e3 * t:.2f}" for t in times.values()]
            cells += [f"{times['dense'] / t:.2f}×" for name, t in times.items() if name != "dense"]
            table.add_row(str(batch), *cells)
    return table
