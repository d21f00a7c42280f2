"""Shared helpers for benchmark scripts: robust timing and the results section writer."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

import torch

from lostprune.timing import interleaved_ratio, time_call  # noqa: F401  (re-exported for the suites)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The AVX2 build on an AVX-512 machine: our kernels, oneDNN and ATen all limited to AVX2.
AVX2_ENV = {"LOSTPRUNE_MARCH": "x86-64-v3", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def machine_line() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo) with its family and model numbers (a virtual
    machine may name only "AMD EPYC", whatever the generation), else what platform knows."""
    with contextlib.suppress(OSError):
        info = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
            if not line.strip():
                break  # the first CPU's block is enough
        if "model name" in info:
            ids = [f"{k} {info[k]}" for k in ("cpu family", "model") if k in info]
            return info["model name"] + (f" ({', '.join(ids)})" if ids else "")
    return platform.processor() or platform.machine()


def write_section(name: str, title: str, command: str, body: str, directory: Path = RESULTS_DIR) -> Path:
    """Write <directory>/<name>.md (default benchmarks/results/); run benchmarks/write_results.py
    to assemble RESULTS.md."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.md"
    path.write_text(
        f"## {title}\n\nCommand: `{command}`  \nMachine: {machine_line()}  \n"
        f"Date: {time.strftime('%Y-%m-%d')}\n\n{body.strip()}\n"
    )
    return path
