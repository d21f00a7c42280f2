"""The numbers FINDINGS.md cites, from a results directory of `lostprune run cifar10_resnet20_cpu`.

    python studies/cifar10_resnet20_cpu/summarize.py RESULTS_DIR > studies/cifar10_resnet20_cpu/summary.md

Everything here comes from `lostprune.report.ExperimentResults`, the same code that writes the
report: prune potentials (mean ± std over seeds, the config's readings), the parents, the control,
excess-error slopes with their bootstrap band, and functional similarity along the schedule.
"""

from __future__ import annotations

import sys

import numpy as np

from lostprune.report.results import ExperimentResults, is_corruption, is_noise, label

# The paper's ResNet20 / CIFAR-10 prune potentials at δ = 0.5 % (its table; FT and PFP there
# probably use a stricter δ, see the reference notes), and its parent's accuracy.
PAPER = {"wt": 84.9, "sipp": 84.9, "ft": 52.1, "pfp": 44.9}
PAPER_PARENT = 91.4


def pm(summary) -> str:
    if summary is None:
        return "–"
    if len(summary.values) > 1:
        return f"{100 * summary.mean:.1f} ± {100 * summary.std:.1f}"
    return f"{100 * summary.mean:.1f}"


def acc(error: float | None) -> str:
    return "–" if error is None else f"{100 * (1 - error):.2f}"


def main(root: str) -> None:
    results = ExperimentResults(root)
    steps = len(results.config.get("schedule", {}).get("ratios") or [])
    dists = results.distributions()
    print(f"# Summary of `{root}`\n")
    print("Readings: " + " ".join(results.readings()) + "\n")

    print("## Parents and control (nominal test accuracy, %)\n")
    cycles = steps if results.controls else 0
    print("| seed | parent | " + " | ".join(f"control, cycle {i + 1}" for i in range(cycles)) + " |")
    print("|---|---|" + "---|" * cycles)
    for (seed, arm), parent in sorted(results.parents().items()):
        row = [str(seed), acc(parent.error("nominal"))]
        for control in results.controls:
            for curve in results.curves(control, arm):
                if curve.seed == seed:
                    row += [acc(n.error("nominal")) for n in curve.networks]
        print("| " + " | ".join(row) + " |")
    for ref in results.references().values():
        print(f"\nSeparately trained network (seed {ref.seed}): {acc(ref.error('nominal'))} %")

    print("\n## Prune potential (%, mean ± std over seeds)\n")
    print("| distribution | " + " | ".join(m.upper() for m in results.methods) + " |")
    print("|---|" + "---|" * len(results.methods))
    print("| paper, nominal | " + " | ".join(f"{PAPER.get(m, float('nan')):.1f}" for m in results.methods) + " |")
    for d in dists:
        print(f"| {label(d)} | " + " | ".join(pm(results.prune_potential(m, d)) for m in results.methods) + " |")
    if results.controls:
        control = results.controls[0]
        print(f"\nAgainst the control (not the paper's reading): each network compared with the {control} network "
              "of the same seed and cycle instead of the parent, so that what retraining alone costs or buys "
              "is not counted as pruning's (under noise draw by draw, on the same noisy inputs).\n")
        print("| distribution | " + " | ".join(m.upper() for m in results.methods) + " |")
        print("|---|" + "---|" * len(results.methods))
        for d in dists:
            print(f"| {label(d)} | " + " | ".join(pm(results.prune_potential(m, d, control=control))
                                                    for m in results.methods) + " |")
    print("\nSeeds with a complete, evaluated schedule: " + ", ".join(
        f"{m.upper()} {len([c for c in results.curves(m) if len(c.networks) == steps])}" for m in results.methods)
        + f" (of {len(results.seeds)}); ± is the std over those seeds.")

    print("\n## Nominal accuracy along the schedule (%, mean over seeds)\n")
    for method in results.methods + results.controls:
        curves = results.curves(method)
        if not curves:
            continue
        steps = min(len(c.networks) for c in curves)
        cells = []
        for i in range(steps):
            ratio = np.mean([c.networks[i].ratio for c in curves])
            accuracy = np.mean([1 - c.networks[i].error("nominal") for c in curves])
            delta = np.mean([c.parent.error("nominal") - c.networks[i].error("nominal") for c in curves])
            where = f"cycle {i + 1}" if method in results.controls else f"{100 * ratio:.0f}"  # a control prunes nothing
            cells.append(f"{where}: {100 * accuracy:.2f} ({100 * delta:+.2f})")
        print(f"- {method.upper()}: " + "; ".join(cells))

    print("\n## Excess error: slope of the line through the origin (error points per unit prune ratio)\n")
    print("Against the parent (the paper's reading), per seed, and against the control: each network's excess "
          "error minus that of the unpruned network retrained on the same cycles (same seed and cycle).\n")
    groups = [("noise", [d for d in dists if is_noise(d)]), ("corruptions", [d for d in dists if is_corruption(d)])]
    variants = [("all seeds", {}), *((f"seed {seed}", {"seeds": [seed]}) for seed in results.seeds)]
    variants += [(f"all seeds, against the {c} control", {"control": c}) for c in results.controls]
    for name, chosen in groups:
        if not chosen:
            continue
        for method in results.methods:
            for variant, options in variants:
                points, fit = results.excess_errors(method, chosen, **options)
                if fit is None:
                    continue
                band = f", 95 % band [{fit.band[0]:.4f}, {fit.band[1]:.4f}]" if fit.band is not None else ""
                print(f"- {name}, {method.upper()}, {variant}: slope {fit.slope:.4f}{band} "
                      f"(R² {fit.r_squared:.2f}, {len(points)} networks)")

    print("\n## Functional similarity to the parent (label agreement, mean over seeds)\n")
    for d in [d for d in dists if d == "nominal" or is_noise(d)]:
        ref = results.reference_similarity(d)
        ref_text = f"; separately trained network: {ref:.3f}" if ref is not None else ""
        print(f"- {label(d)}{ref_text}")
        for method in results.methods:
            pts = results.similarity(method, d)
            if pts:
                print(f"  - {method.upper()}: " + ", ".join(f"{100 * r:.0f} %: {v:.3f}" for r, v in pts))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/cifar10_resnet20_cpu")
