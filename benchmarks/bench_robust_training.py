"""Shift-aware (robust) training: its cost per epoch, and its effect on prune potential.

1. Overhead: one training epoch on the built-in digits (small CNN, batch 64, CPU) with the
   ``ShiftAugmentation`` batch transform against the clean pipeline, sampled alternately
   (``interleaved_ratio``), for the default mix, the robust demo's mix and a heavy one.
2. Effect: the experiment runner on the shipped ``demo_robust`` config (both training arms,
   nominal and shift-aware) over several seeds; mean prune potential over the held-out corruptions (the 15 benchmark
   corruptions at severity 3, none of them trained on) per method and arm.

    python benchmarks/bench_robust_training.py            # writes benchmarks/results/robust_training.md
    python benchmarks/bench_robust_training.py --seeds 0 1 --skip-overhead
    python -m pytest benchmarks/bench_robust_training.py --benchmark-enable
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._util import interleaved_ratio, write_section
from lostprune import data, models
from lostprune.robustness.corruptions import NAMES
from lostprune.train import TrainConfig, train
from lostprune.train.augment import DEFAULT_TRAINING_CORRUPTIONS, ShiftAugmentation

HELD_OUT = list(NAMES[:15])  # the benchmark's 15; the default training mix is the other 4
MIXES = {
    "default (4 extra corruptions × severities 0–5 + Gaussian noise)": {},
    "noise only (Gaussian, levels 0–0.3)": {"corruptions": ()},
    "heavy: the 15 benchmark corruptions × 0–5 + noise": {"corruptions": HELD_OUT},
}


def experiment_config(seeds: list[int], methods: list[str], prune_sample: str = "shifted") -> dict:
    """The shipped robust demo (`lostprune demo --robust` is its seed 0) over more seeds."""
    from lostprune.experiments.config import resolve_config_path

    config = yaml.safe_load(resolve_config_path("demo_robust").read_text())
    assert config["test"]["corruptions"]["names"] == HELD_OUT
    robust = {**config["robust"], "prune_sample": prune_sample}
    return {**config, "name": "bench_robust_training", "seeds": seeds, "methods": methods, "robust": robust}


# ----------------------------------------------------------------------------- pytest-benchmark
def _batch():
    splits = data.load("digits")
    return splits, next(iter(splits.loader("train", 64, shuffle=False)))[0]


def test_augment_default_mix(benchmark):
    splits, x = _batch()
    augment = ShiftAugmentation(mean=splits.mean, std=splits.std, seed=0)
    benchmark(augment, x)


def test_augment_heavy_mix(benchmark):
    splits, x = _batch()
    augment = ShiftAugmentation(HELD_OUT, mean=splits.mean, std=splits.std, seed=0)
    benchmark(augment, x)


# ----------------------------------------------------------------------------- overhead
def epoch_overhead() -> list[str]:
    splits = data.load("digits")
    config = TrainConfig(epochs=1, lr=0.05, batch_size=64, schedule="constant")
    model = models.create("small_cnn", num_classes=10, width=16)

    def epoch(transform=None):
        return lambda: train(model, splits.train, config, batch_transform=transform, progress=False)

    lines = ["| augmentation | clean epoch (s) | augmented epoch (s) | overhead |", "|---|---|---|---|"]
    for name, options in MIXES.items():
        augment = ShiftAugmentation(**{"mean": splits.mean, "std": splits.std, **options})
        clean, augmented, _ = interleaved_ratio(epoch(), epoch(augment), rounds=5)
        lines.append(f"| {name} | {clean:.2f} | {augmented:.2f} | {100 * (augmented / clean - 1):+.0f} % |")
        print(lines[-1], flush=True)
    return lines


# ----------------------------------------------------------------------------- effect
def accuracy_by_ratio(results, held_out: list[str]) -> list[str]:
    """Absolute accuracies (not relative to a parent) per method, arm and schedule step, mean
    over seeds: what shift-aware training does to the pruned networks themselves."""
    import statistics

    steps = max(len(c.networks) for m in results.methods for a in results.arms for c in results.curves(m, a))
    lines = [
        (
            "\nAbsolute accuracy, mean over seeds — nominal test set / mean of the held-out corruptions (%); "
            "P above compares each network with its own arm's parent:\n"
        ),
        "| method | training | parent | "
        + " | ".join(f"cycle {i + 1}" for i in range(steps))
        + " | mean of pruned, held-out |",
        "|---|---|---|" + "---|" * steps + "---|",
    ]

    def cell(networks) -> tuple[str, float]:
        nominal = statistics.mean(100 * (1 - n.error("nominal")) for n in networks)
        shifted = statistics.mean(100 * (1 - statistics.mean(n.error(d) for d in held_out)) for n in networks)
        return f"{nominal:.1f} / {shifted:.1f}", shifted

    for method in results.methods:
        for arm in results.arms:
            curves = results.curves(method, arm)
            if not curves:
                continue
            parent, _ = cell([c.parent for c in curves])
            steps = [cell([c.networks[i] for c in curves]) for i in range(len(curves[0].networks))]
            pruned = statistics.mean(value for _, value in steps)
            ratios = [statistics.mean(c.networks[i].ratio for c in curves) for i in range(len(steps))]
            lines.append(
                f"| {method.upper()} | {arm} | {parent} | "
                + " | ".join(f"{text} ({100 * r:.0f} %)" for (text, _), r in zip(steps, ratios))
                + f" | {pruned:.2f} |"
            )
    return lines


def effect(
    seeds: list[int], methods: list[str], out: Path, workers: int, prune_sample: str = "shifted"
) -> tuple[list[str], str]:
    from lostprune.experiments import run
    from lostprune.report import ExperimentResults, write_report
    from lostprune.report.robust import held_out_corruptions, mean_potential

    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    config_path.write_text(yaml.safe_dump(experiment_config(seeds, methods, prune_sample), sort_keys=False))
    root = run(config_path, out / "run", workers=workers)
    report = write_report(root)
    results = ExperimentResults(root)
    held_out = held_out_corruptions(results)
    lines = []
    for delta in (0.005, 0.01, 0.02):
        lines += [
            (
                f"\n**δ = {100 * delta:g} %** — mean prune potential over the {len(held_out)} held-out "
                "corruptions (%), per seed and mean ± std:\n"
            ),
            "| method | nominal training | shift-aware training | gain (points) |",
            "|---|---|---|---|",
        ]
        results.delta = delta
        for method in results.methods:
            cells = []
            for arm in ("nominal", "robust"):
                s = mean_potential(results, method, held_out, arm)
                per_seed = ", ".join(f"{100 * v:.1f}" for v in s.values)
                cells.append((s, f"{100 * s.mean:.1f} ± {100 * s.std:.1f} ({per_seed})"))
            gain = 100 * (cells[1][0].mean - cells[0][0].mean)
            lines.append(f"| {method.upper()} | {cells[0][1]} | {cells[1][1]} | {gain:+.1f} |")
        nominal_rows = []
        for method in results.methods:
            p = [results.prune_potential(method, "nominal", arm) for arm in ("nominal", "robust")]
            nominal_rows.append(f"{method.upper()} {100 * p[0].mean:.1f} → {100 * p[1].mean:.1f}")
        lines.append(f"\nNominal test set, nominal → shift-aware training: {'; '.join(nominal_rows)}.")
    results.delta = 0.005
    parents = [
        "\n| seed | training | nominal accuracy (%) | mean accuracy, held-out corruptions (%) |",
        "|---|---|---|---|",
    ]
    for (seed, arm), parent in sorted(results.parents().items()):
        shifted = [parent.error(d) for d in held_out]
        parents.append(
            f"| {seed} | {arm} | {100 * (1 - parent.error('nominal')):.2f} | "
            f"{100 * (1 - sum(shifted) / len(shifted)):.2f} |"
        )
    return parents + lines + accuracy_by_ratio(results, held_out), str(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=None, help="default: wt, ft and pfp when available")
    parser.add_argument("--out", type=Path, default=Path("/tmp/lostprune-bench-robust"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument(
        "--prune-sample",
        choices=("shifted", "clean"),
        default="shifted",
        help="what SiPP/PFP score on in the shift-aware arm (robust.prune_sample)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread per process keeps timings stable
    from lostprune.methods import available_methods

    methods = args.methods or [m for m in ("wt", "ft", "pfp") if m in available_methods()]
    command = "python benchmarks/bench_robust_training.py" + "".join(f" {a}" for a in sys.argv[1:])
    overhead = [] if args.skip_overhead else epoch_overhead()
    lines, report = effect(args.seeds, methods, args.out, args.workers, args.prune_sample)
    body = [
        "### Cost: epoch time with the augmentation vs the clean pipeline",
        (
            "Built-in digits (1,129 training images), small CNN (width 16), batch 64, one CPU thread; "
            "medians of 5 interleaved epochs each."
        ),
        "",
    ] + (overhead or ["(not measured in this run)"])
    body += [
        "",
        "### Effect: prune potential on held-out corruptions",
        (
            "The shipped `demo_robust` config (`lostprune demo --robust` is seed 0) run by the experiment "
            f"runner: digits, small CNN (width 16), methods {', '.join(m.upper() for m in methods)}, "
            "cascade to prune ratios 0.3/0.5/0.7/0.8/0.9, parent 12 epochs, retraining 3 epochs per cycle, "
            f"seeds {', '.join(map(str, args.seeds))}. Shift-aware arm: parent and retraining on the default "
            f"mix ({', '.join(DEFAULT_TRAINING_CORRUPTIONS)} at severities 0–5, Gaussian noise 0–0.3). "
            f"Held-out test corruptions: the 15 of the benchmark at severity 3 (360 test images: one image is "
            f"0.28 %). In the shift-aware arm PFP scores on S {'plus one shifted copy of it' if args.prune_sample == 'shifted' else 'alone'} "
            f"(`robust.prune_sample: {args.prune_sample}`). P is measured against each arm's own parent. "
            f"Report: `{report}`."
        ),
    ]
    body += lines
    print(write_section("robust_training", "Shift-aware training (CPU, digits)", command, "\n".join(body)))


if __name__ == "__main__":
    main()
