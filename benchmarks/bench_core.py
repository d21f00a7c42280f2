"""The core on real data: a small CNN trained about a minute on the built-in digits, then WT
at 80 % with a short retrain (learning-rate rewinding), plus what masks cost in training.

    python benchmarks/bench_core.py                 # writes benchmarks/results/core.md (a few minutes)
    python benchmarks/bench_core.py --seeds 1       # one seed, quicker
    python -m pytest benchmarks/bench_core.py --benchmark-enable
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

import lostprune
import lostprune.data as data
import lostprune.models as models
from benchmarks._util import interleaved_ratio, write_section
from lostprune.train import TrainConfig, evaluate, prune_retrain, train

PARENT = TrainConfig(epochs=30, lr=0.05, batch_size=64, weight_decay=5e-4, schedule="cosine", warmup_epochs=1)
RETRAIN_EPOCHS = 5
PRUNINGS = [("wt", 0.8), ("wt", 0.9), ("wt", 0.95), ("ft", 0.5)]
CASCADE = [0.5, 0.2, 0.1, 0.05]  # keep ratios of a 4-cycle WT cascade


def one_epoch(model, splits):
    config = dataclasses.replace(PARENT, epochs=1, warmup_epochs=0)
    return lambda: train(model, splits, config, progress=False)


def run_seed(splits, seed: int) -> dict:
    torch.manual_seed(seed)
    parent = models.create("small_cnn")
    started = time.perf_counter()
    train(parent, splits, dataclasses.replace(PARENT, seed=seed), progress=False)
    seconds = time.perf_counter() - started
    row = {
        "parent": evaluate(parent, splits.test)["accuracy"],
        "parent_seconds": seconds,
        "parent_val": evaluate(parent, splits.validation)["accuracy"],
    }
    retrain = dataclasses.replace(PARENT.scaled(RETRAIN_EPOCHS), seed=seed)
    for method, ratio in PRUNINGS:
        pruned = lostprune.prune(parent, method, ratio, progress=False)
        row[f"{method}{ratio}_noretrain"] = evaluate(pruned.model, splits.test)["accuracy"]
        (network,) = prune_retrain(
            parent,
            method,
            [1 - ratio],
            splits,
            retrain,
            mode="oneshot",
            progress=False,
            evaluate=lambda m: evaluate(m, splits.test),
        )
        row[f"{method}{ratio}"] = network.metrics["accuracy"]
        row[f"{method}{ratio}_achieved"] = network.achieved_ratio
        row[f"{method}{ratio}_seconds"] = network.train_seconds
    for network in prune_retrain(
        parent,
        "wt",
        CASCADE,
        splits,
        retrain,
        mode="cascade",
        progress=False,
        evaluate=lambda m: evaluate(m, splits.test),
    ):
        row[f"cascade{network.cycle}"] = network.metrics["accuracy"]
        row[f"cascade{network.cycle}_achieved"] = network.achieved_ratio
    return row


def mean_std(values) -> str:
    values = [100 * v for v in values]
    return (
        f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
        if len(values) > 1
        else f"{values[0]:.2f}"
    )


# ----------------------------------------------------------------------------- pytest-benchmark
def test_train_epoch_dense(benchmark):
    splits = data.load("digits")
    benchmark(one_epoch(models.create("small_cnn"), splits))


def test_train_epoch_masked_wt80(benchmark):
    splits = data.load("digits")
    benchmark(one_epoch(lostprune.prune(models.create("small_cnn"), "wt", 0.8, progress=False).model, splits))


def test_load_digits_cached(benchmark):
    data.load("digits")
    benchmark(data.digits.load_digits)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    splits = data.load("digits")
    rows, loads = [], [os.getloadavg()[0]]
    for seed in range(args.seeds):
        rows.append(run_seed(splits, seed))
        print(f"seed {seed}: {rows[-1]}", flush=True)
        loads.append(os.getloadavg()[0])

    parent = [r["parent"] for r in rows]
    lines = [
        "| network | retrain | achieved prune ratio | test accuracy (%) | Δ vs parent (points) |",
        "|---|---|---|---|---|",
        (
            f"| small_cnn parent ({PARENT.epochs} epochs, {statistics.mean(r['parent_seconds'] for r in rows):.0f} s "
            f"per run) | — | 0 | {mean_std(parent)} | — |"
        ),
    ]
    for method, ratio in PRUNINGS:
        key = f"{method}{ratio}"
        achieved = statistics.mean(r[f"{key}_achieved"] for r in rows)
        for suffix, label in (("_noretrain", "none"), ("", f"{RETRAIN_EPOCHS} epochs")):
            accuracy = [r[key + suffix] for r in rows]
            delta = [a - p for a, p in zip(accuracy, parent)]
            lines.append(
                f"| {method.upper()} {100 * ratio:.0f} % | {label} | {100 * achieved:.4f} % | "
                f"{mean_std(accuracy)} | {mean_std(delta)} |"
            )
    for cycle, keep in enumerate(CASCADE, 1):
        accuracy = [r[f"cascade{cycle}"] for r in rows]
        achieved = statistics.mean(r[f"cascade{cycle}_achieved"] for r in rows)
        lines.append(
            f"| WT cascade, cycle {cycle} (keep {keep}) | {RETRAIN_EPOCHS} epochs per cycle | "
            f"{100 * achieved:.4f} % | {mean_std(accuracy)} | "
            f"{mean_std([a - p for a, p in zip(accuracy, parent)])} |"
        )

    dense = models.create("small_cnn")
    masked = lostprune.prune(models.create("small_cnn"), "wt", 0.8, progress=False).model
    t_dense, t_masked, ratio = interleaved_ratio(
        one_epoch(dense, splits), one_epoch(masked, splits), rounds=3, min_time=0.0
    )
    cold_started = time.perf_counter()
    data.digits._upsample()
    cold = time.perf_counter() - cold_started
    data.digits.digits_tensors.cache_clear()
    disk_started = time.perf_counter()
    data.digits.digits_tensors()
    disk = time.perf_counter() - disk_started
    warm_started = time.perf_counter()
    data.digits.load_digits()
    warm = time.perf_counter() - warm_started

    body = f"""
Built-in digits (sklearn's 1,797 real 8×8 digits upsampled to 3×32×32; splits 1,129 train /
180 validation / 128 S / 360 test), `small_cnn` (0.14 M parameters), {args.seeds} seed(s),
mean ± std. Parent: SGD momentum 0.9, batch 64, lr 0.05, weight decay 5e-4, 1 warm-up epoch
then cosine, {PARENT.epochs} epochs, random 2-pixel shifts. Retraining is learning-rate
rewinding: the parent's schedule squeezed into {RETRAIN_EPOCHS} epochs, re-run from its start
on the surviving weights (`prune_retrain(..., mode="oneshot")`; the cascade rows prune the
previous cycle's network further, `mode="cascade"`). Test accuracy on the 360 test images
(one image = 0.28 points). Times are wall clock on a machine shared with other jobs: the
1-minute load average read {", ".join(f"{x:.1f}" for x in loads)} (before and after each seed; 2 cores).

{chr(10).join(lines)}

Done-when check: the parent reaches {mean_std(parent)} % (goal ≥ 95 %); WT at 80 % after a
{RETRAIN_EPOCHS}-epoch retrain is {mean_std([r["wt0.8"] - r["parent"] for r in rows])} points from it
(goal: within one point).

What masks cost in training (same run, interleaved): one epoch of the dense `small_cnn`
{t_dense:.2f} s, of the WT-80 % masked one {t_masked:.2f} s, dense/masked = {ratio:.2f}×
(the masked forward multiplies weight by mask; the loop re-zeroes the raw weights after each step).
Loading the digits: cold (importing scikit-learn, upsampling) {1e3 * cold:.0f} ms, from the disk cache
{1e3 * disk:.1f} ms, `load("digits")` with the tensor in memory {1e3 * warm:.2f} ms.
"""
    print(
        write_section(
            "core",
            "Core: training and WT on the built-in digits (CPU)",
            f"python benchmarks/bench_core.py --seeds {args.seeds}",
            body,
        )
    )


if __name__ == "__main__":
    main()
