"""CPU training speed of the choices `lostprune.train` makes by default: channels-last memory
format (``TrainConfig.channels_last=None`` → on for the CPU), torch threads set to the
physical cores (``lostprune._threads.set_threads``, the experiments' ``threads``), and the
bfloat16 autocast ``amp=True`` turns on (the CPU study config uses it).

One SGD step (Nesterov momentum, weight decay) of ResNet20 on a batch of 128 CIFAR-sized
images, dense and pruned by WT to 80 % (masked weights, as retraining runs them), sampled
alternately against the baseline in the same run (``interleaved_ratio``).

    python benchmarks/bench_training.py        # writes benchmarks/results/training.md
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lostprune
from benchmarks._util import interleaved_ratio, write_section
from lostprune import models
from lostprune._threads import physical_cores
from lostprune.train.evaluate import cpu_has_bfloat16


def make_step(model: torch.nn.Module, channels_last: bool, threads: int, amp: bool = False):
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    inputs, targets = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    model.train()

    def step():
        torch.set_num_threads(threads)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):  # as train(amp=True) on the CPU
            loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def network(pruned: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10)
    return lostprune.prune(model, "wt", 0.8, progress=False).model if pruned else model


def main() -> None:
    cores = physical_cores()
    logical = torch.get_num_threads()
    rows = []

    def compare(name: str, label: str, baseline, candidate) -> None:
        base, cand, ratio = interleaved_ratio(baseline, candidate, rounds=7, min_time=0.5)
        rows.append(f"| {name} | {label} | {1e3 * base:.0f} | {1e3 * cand:.0f} | **{ratio:.2f}x** |")
        print(rows[-1], flush=True)

    for pruned in (False, True):
        name = "ResNet20, WT 80 % (masked)" if pruned else "ResNet20, dense"
        for threads in sorted({1, cores}):
            compare(
                name,
                f"channels-last vs contiguous, {threads} thread(s)",
                make_step(network(pruned), False, threads),
                make_step(network(pruned), True, threads),
            )
        compare(
            name,
            "bfloat16 autocast vs float32 (channels-last, 1 thread)",
            make_step(network(pruned), True, 1),
            make_step(network(pruned), True, 1, amp=True),
        )
        if cores > 1:
            compare(
                name,
                f"1 thread vs {cores} (channels-last)",
                make_step(network(pruned), True, cores),
                make_step(network(pruned), True, 1),
            )
    torch.set_num_threads(logical)  # the machine line reports torch's default
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = (
        f"One SGD step (batch 128, 3×32×32) on the CPU; {cores} physical core(s), torch's default "
        f"{logical} thread(s), load average {load:.1f} at the end of the run. Ratio = baseline ms / "
        "candidate ms (> 1: the candidate is faster).\n\n"
        "| network | candidate vs baseline | baseline ms | candidate ms | speed-up |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nbfloat16 autocast (`train(..., amp=True)` on the CPU): this CPU computes bfloat16 in "
        f"hardware (AVX512-BF16 or AMX): {'yes' if cpu_has_bfloat16() else 'no (emulated)'}. On a CPU "
        "without it `train` warns that bfloat16 is emulated."
        "\n\nOn a machine shared with other jobs, more threads than free cores lose "
        "most (the '1 thread vs N' rows): experiments take `threads` (default: the physical cores, a "
        "warning beyond them); on a busy machine set `threads: 1`."
    )
    path = write_section(
        "training",
        "Training on the CPU: memory format, threads and bfloat16",
        "python benchmarks/bench_training.py",
        body,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
