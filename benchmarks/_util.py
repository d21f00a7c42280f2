"""Shared helpers for benchmark scripts: robust timing and the results section writer."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def time_call(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1, min_time: float = 0.05) -> float:
    """Median seconds per call. Each sample loops until it lasts at least ``min_time``."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        samples.append(elapsed / n)
    return statistics.median(samples)


def interleaved_ratio(baseline: Callable[[], object], candidate: Callable[[], object], *, rounds: int = 5,
                      min_time: float = 0.05) -> tuple[float, float, float]:
    """(baseline s, candidate s, baseline/candidate), sampled alternately so machine noise
    hits both sides alike."""
    baseline(), candidate()
    b, c = [], []
    for _ in range(rounds):
        b.append(time_call(baseline, repeat=1, warmup=0, min_time=min_time))
        c.append(time_call(candidate, repeat=1, warmup=0, min_time=min_time))
    tb, tc = statistics.median(b), statistics.median(c)
    return tb, tc, tb / tc


def machine_line() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def write_section(name: str, title: str, command: str, body: str) -> Path:
    """Write benchmarks/results/<name>.md; run benchmarks/write_results.py to assemble RESULTS.md."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(f"## {title}\n\nCommand: `{command}`  \nMachine: {machine_line()}  \n"
                    f"Date: {time.strftime('%Y-%m-%d')}\n\n{body.strip()}\n")
    return path
