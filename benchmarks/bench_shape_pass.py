"""The shape-only pass on meta tensors (``core.shapes.shape_only_forward``, run twice by every
prune + slice: the trace's shape propagation and the sliced model's check) against a real
batch-1 forward, and what its shape rules save (issue 20, pruning overhead).

Interleaved in one process, one thread, the thread's CPU time:
- meta pass with every shape rule ÷ the same pass without the rules (adaptive pools, Conv2d,
  Linear, binary ops) and ÷ the same pass without the two newest (binary ops inside a
  forward, such as a squeeze-excitation's scale times its input, and convs on one 1x1 pixel:
  ``core.shapes._BinaryShapes``, ``_one_pixel``);
- meta pass ÷ a real batch-1 forward in eval mode;
- a cold prune + slice (group-aware FT at 50 %, as bench_zoo.py) with ÷ without the rules.

    python benchmarks/bench_shape_pass.py            # writes benchmarks/results/shape_pass.md
    python benchmarks/bench_shape_pass.py --rounds 5 --models mobilenet_v3_small
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lostprune.core.shapes as shapes
from benchmarks._util import interleaved_ratio, write_section
from benchmarks.bench_zoo import clear_traces, cpu_line, create, example, lostprune_step

MODELS = ["mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "resnet18"]


@contextlib.contextmanager
def without_rules():
    """Inside, the meta passes run torch's own meta kernels everywhere: no adaptive-pool rule,
    no Conv2d / Linear rule, no binary-op rule (shape-keeping modules still pass their input
    through)."""
    pools, layers = dict(shapes.ADAPTIVE_POOLS), dict(shapes.LAYER_RULES)
    shapes.ADAPTIVE_POOLS.clear()
    shapes.LAYER_RULES.clear()
    try:
        with without_newest_rules():
            yield
    finally:
        shapes.ADAPTIVE_POOLS.update(pools)
        shapes.LAYER_RULES.update(layers)


@contextlib.contextmanager
def without_newest_rules():
    """Inside, binary ops take torch's meta kernels (a trace's and a forward's alike) and a
    conv on one 1x1 pixel its own meta kernel; the other rules act."""
    binary, one_pixel = shapes._BinaryShapes, shapes._one_pixel
    shapes._BinaryShapes = contextlib.nullcontext
    shapes._one_pixel = lambda input, weight: False
    try:
        yield
    finally:
        shapes._BinaryShapes, shapes._one_pixel = binary, one_pixel


def measure(name: str, rounds: int) -> dict:
    model, x = create(name), example(name)

    def meta():
        shapes.shape_only_forward(model, x)

    def meta_without():
        with without_rules():
            shapes.shape_only_forward(model, x)

    def meta_older():
        with without_newest_rules():
            shapes.shape_only_forward(model, x)

    def real():
        with torch.no_grad():
            model(x)

    def cold(rule: bool) -> float:
        clear_traces()
        gc.collect()  # outside the timed span
        with contextlib.nullcontext() if rule else without_rules():
            start = time.thread_time()
            lostprune_step(model, x, 0.5)
            return time.thread_time() - start

    clock = time.thread_time
    t_without, t_meta, _ = interleaved_ratio(meta_without, meta, rounds=rounds, clock=clock)
    t_older, t_meta_again, _ = interleaved_ratio(meta_older, meta, rounds=rounds, clock=clock)
    t_real, _, _ = interleaved_ratio(real, meta, rounds=rounds, clock=clock)
    cold(True), cold(False)  # warm-up
    samples = {True: [], False: []}
    for _ in range(rounds):
        for rule in (False, True):
            samples[rule].append(cold(rule))
    c_with, c_without = statistics.median(samples[True]), statistics.median(samples[False])
    return {
        "model": name,
        "pools": sum(type(m) in shapes.ADAPTIVE_POOLS for m in model.modules()),
        "meta_ms": t_meta * 1e3,
        "meta_without_ms": t_without * 1e3,
        "meta_older_ms": t_older * 1e3,
        "meta_again_ms": t_meta_again * 1e3,
        "real_ms": t_real * 1e3,
        "cold_ms": c_with * 1e3,
        "cold_without_ms": c_without * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per comparison")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = []
    for name in args.models:
        rows.append(measure(name, args.rounds))
        r = rows[-1]
        print(
            f"{name}: meta {r['meta_ms']:.1f} ms (without the rules {r['meta_without_ms']:.1f}), real "
            f"{r['real_ms']:.1f} ms; cold prune + slice {r['cold_ms']:.1f} ms (without {r['cold_without_ms']:.1f})",
            flush=True,
        )
    lines = [
        (
            f"CPU: {cpu_line()}. "
            "One thread, the thread's CPU time, medians of interleaved rounds in one process; random "
            "weights, one 3×224×224 image. *Meta pass*: `shape_only_forward` (parameters swapped for "
            "meta tensors; BatchNorms and activations pass their input through; adaptive pools, "
            "`Conv2d` and `Linear` give their output shape without running torch's Python meta "
            "kernels, and so do binary ops, in the trace's shape pass and inside a forward: the rules "
            "measured here; *newest*: binary ops inside a forward and convs on one 1×1 pixel, timed "
            "in their own interleaved rounds). "
            "*Cold prune + slice*: group-aware FT at 50 % and `slice_model(inplace=True)` from an empty "
            "trace cache, as `bench_zoo.py` times it (two meta passes; where twice one pass's saving, the last "
            "column, is a small share of a cold run, the cold columns differ by the run's noise)."
        ),
        "",
        (
            "| model | adaptive pools | meta pass (ms) | without the rules (ms) | rules save | real forward (ms) "
            "| without the newest rules (ms) | newest save | meta ÷ real | cold prune + slice (ms) | without the rules (ms) "
            "| cold ÷ without | 2 × the meta pass's saving (ms) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['pools']} | {r['meta_ms']:.1f} | {r['meta_without_ms']:.1f} | "
        f"{1 - r['meta_ms'] / r['meta_without_ms']:.0%} | {r['real_ms']:.1f} | {r['meta_older_ms']:.1f} | "
        f"{1 - r['meta_again_ms'] / r['meta_older_ms']:.0%} | {r['meta_ms'] / r['real_ms']:.2f}× | "
        f"{r['cold_ms']:.1f} | {r['cold_without_ms']:.1f} | {r['cold_ms'] / r['cold_without_ms']:.3f} | "
        f"{2 * (r['meta_without_ms'] - r['meta_ms']):.1f} |"
        for r in rows
    ]
    if not args.no_write:
        command = "python benchmarks/bench_shape_pass.py" + (
            f" --models {' '.join(args.models)}" if args.models != MODELS else ""
        )
        print(write_section("shape_pass", "Shape-only passes (CPU)", command, "\n".join(lines)))
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
