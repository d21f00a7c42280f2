"""The paper's figures from an experiment's results (matplotlib, written as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

from .results import ExperimentResults, is_corruption, is_noise, label

METHOD_STYLE = {
    "wt": ("tab:blue", "o"),
    "sipp": ("tab:orange", "s"),
    "ft": ("tab:green", "^"),
    "pfp": ("tab:red", "D"),
    "random": ("tab:gray", "x"),
    "snip": ("tab:purple", "v"),
    "l2": ("tab:olive", "P"),
}


def _style(method: str):
    return METHOD_STYLE.get(method, ("black", "."))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _accuracy_curve(results: ExperimentResults, method: str, distributions: list[str], arm: str):
    """Mean ratio and mean/std accuracy per schedule step, errors averaged over ``distributions``."""
    per_step: dict[int, list[tuple[float, float]]] = {}
    for curve in results.curves(method, arm):
        for net in curve.networks:
            errors = [net.error(d) for d in distributions]
            if all(e is not None for e in errors):
                per_step.setdefault(net.step, []).append((net.ratio, 1 - float(np.mean(errors))))
    steps = sorted(per_step)
    ratios = np.array([np.mean([r for r, _ in per_step[s]]) for s in steps])
    acc = np.array([np.mean([a for _, a in per_step[s]]) for s in steps])
    std = np.array([np.std([a for _, a in per_step[s]]) for s in steps])
    return ratios, acc, std


def _parent_accuracy(results: ExperimentResults, distributions: list[str], arm: str) -> float | None:
    values = []
    for (_seed, a), parent in results.parents().items():
        errors = [parent.error(d) for d in distributions]
        if a == arm and all(e is not None for e in errors):
            values.append(1 - float(np.mean(errors)))
    return float(np.mean(values)) if values else None


def panels(results: ExperimentResults) -> list[tuple[str, list[str]]]:
    """(title, distributions averaged) for the accuracy figure: nominal, every noise level,
    and the mean over all corruptions."""
    dists = results.distributions()
    out = [("nominal", ["nominal"])] if "nominal" in dists else []
    out += [(label(d), [d]) for d in dists if is_noise(d)]
    corruptions = [d for d in dists if is_corruption(d)]
    if corruptions:
        out.append((f"corruptions (mean of {len(corruptions)})", corruptions))
    return out


def accuracy_vs_ratio(results: ExperimentResults, path: Path, arm: str = "nominal") -> Path:
    groups = panels(results)
    cols = min(3, len(groups))
    rows = int(np.ceil(len(groups) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, dists) in zip(axes.flat, groups):
        for method in results.methods:
            ratios, acc, std = _accuracy_curve(results, method, dists, arm)
            if len(ratios):
                color, marker = _style(method)
                ax.plot(100 * ratios, 100 * acc, marker=marker, color=color, label=method.upper(), ms=4)
                ax.fill_between(100 * ratios, 100 * (acc - std), 100 * (acc + std), color=color, alpha=0.15)
        parent = _parent_accuracy(results, dists, arm)
        if parent is not None:
            ax.axhline(100 * parent, color="black", ls="--", lw=1, label="parent")
            ax.axhspan(100 * (parent - results.delta), 100 * parent, color="black", alpha=0.07)
        ax.set_title(title)
        ax.set_xlabel("prune ratio (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    return _save(fig, path)


def potential_bars(results: ExperimentResults, path: Path, arm: str = "nominal") -> Path:
    dists = results.distributions()
    methods = results.methods
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(dists) * len(methods) / 2 + 3), 3.8))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(dists))
    for i, method in enumerate(methods):
        means, stds = [], []
        for d in dists:
            p = results.prune_potential(method, d, arm)
            means.append(100 * p.mean if p else np.nan)
            stds.append(100 * p.std if p else 0.0)
        color, _ = _style(method)
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            color=color,
            label=method.upper(),
            capsize=2,
        )
    ax.set_xticks(x, [label(d) for d in dists], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"prune potential P (%), δ = {100 * results.delta:g} %")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def potential_vs_noise(results: ExperimentResults, path: Path, arm: str = "nominal") -> Path | None:
    noise = [d for d in results.distributions() if is_noise(d)]
    if not noise:
        return None
    levels = [0.0] + [float(d.rsplit(":", 1)[1]) for d in noise]
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for method in results.methods:
        values = [results.prune_potential(method, d, arm) for d in ["nominal", *noise]]
        means = [100 * v.mean if v else np.nan for v in values]
        stds = [100 * v.std if v else 0.0 for v in values]
        color, marker = _style(method)
        ax.errorbar(levels, means, yerr=stds, color=color, marker=marker, label=method.upper(), capsize=2)
    ax.set_xlabel(f"input noise level ({noise[0].split(':')[1]})")
    ax.set_ylabel("prune potential P (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def excess_error_plot(results: ExperimentResults, path: Path, arm: str = "nominal") -> Path | None:
    dists = results.distributions()
    groups = [
        (name, [d for d in dists if test(d)])
        for name, test in (("noise", is_noise), ("corruptions", is_corruption))
    ]
    groups = [(n, ds) for n, ds in groups if ds]
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(5.0 * len(groups), 3.6), squeeze=False)
    for ax, (name, ds) in zip(axes.flat, groups):
        for method in results.methods:
            points, fit = results.excess_errors(method, ds, arm)
            if not points:
                continue
            color, marker = _style(method)
            r = np.array([p[0] for p in points])
            e = np.array([p[1] for p in points])
            ax.scatter(
                100 * r,
                100 * e,
                color=color,
                marker=marker,
                s=14,
                label=f"{method.upper()} (slope {100 * fit.slope:.1f} %/100 %)" if fit else method.upper(),
            )
            if fit is not None:
                xs = np.linspace(0, r.max(), 20)
                ax.plot(100 * xs, 100 * fit.slope * xs, color=color, lw=1)
                if fit.band is not None:  # the bootstrap band of the line through the origin
                    ax.fill_between(
                        100 * xs,
                        100 * fit.band[0] * xs,
                        100 * fit.band[1] * xs,
                        color=color,
                        alpha=0.15,
                        lw=0,
                    )
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"excess error, mean over {name}")
        ax.set_xlabel("prune ratio (%)")
        ax.set_ylabel("excess error (%)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def similarity_plot(results: ExperimentResults, path: Path, arm: str = "nominal") -> Path | None:
    dists = [d for d in results.distributions() if d == "nominal" or is_noise(d)]
    dists = [d for d in dists if any(results.similarity(m, d, "agreement", arm) for m in results.methods)]
    if not dists:
        return None
    fig, axes = plt.subplots(2, len(dists), figsize=(4.0 * len(dists), 6.4), squeeze=False)
    for col, d in enumerate(dists):
        for row, (metric, title) in enumerate(
            (("agreement", "label agreement with parent"), ("softmax_l2", "‖softmax − parent softmax‖₂"))
        ):
            ax = axes[row, col]
            for method in results.methods:
                pts = results.similarity(method, d, metric, arm)
                if pts:
                    color, marker = _style(method)
                    ax.plot(
                        [100 * r for r, _ in pts],
                        [v for _, v in pts],
                        color=color,
                        marker=marker,
                        ms=4,
                        label=method.upper(),
                    )
            ref = results.reference_similarity(d, metric, arm)
            if ref is not None:
                ax.axhline(ref, color="black", ls=":", lw=1, label="separate network")
            ax.set_title(f"{title}\n({label(d)})", fontsize=9)
            ax.set_xlabel("prune ratio (%)")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def feature_heatmap(results: ExperimentResults, path: Path, seed: int, arm: str = "nominal") -> Path | None:
    found = results.feature_matrix(seed, arm)
    if found is None:
        return None
    names, matrix = found
    short = [
        n.replace("pruned/", "").replace(f"/s{seed}/{arm}", "").replace(f"s{seed}/{arm}/", "") for n in names
    ]
    fig, ax = plt.subplots(figsize=(0.55 * len(names) + 3, 0.5 * len(names) + 2))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), short, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), short, fontsize=7)
    ax.set_xlabel("model evaluated (B)")
    ax.set_ylabel("informative pixels of model A")
    fig.colorbar(image, ax=ax, label="confidence of B")
    return _save(fig, path)
