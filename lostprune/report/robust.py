"""The report's answer to the paper's guidelines 2–4 (docs/methods.md §Guidelines): nominal- vs shift-trained
prune potential side by side per method and held-out distribution, with excess error for
both, and the prune ratio to stop at (``lostprune.metrics.recommend_ratio``) per method."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metrics import recommend_ratio, summarize
from .blocks import Image, Table, pm, rel
from .results import ExperimentResults, is_corruption, is_noise, label

ROBUST = "robust"


def training_corruptions(results: ExperimentResults) -> list[str]:
    robust = results.config.get("robust") or {}
    return list(robust.get("corruptions") or [])


def seen_in_training(results: ExperimentResults, distribution: str) -> bool:
    """Whether the shift-aware arm trained on this distribution's kind of shift: one of its
    training corruptions, or input noise of the kind it trained with."""
    robust = results.config.get("robust") or {}
    if is_corruption(distribution):
        return distribution.split(":")[1] in training_corruptions(results)
    if is_noise(distribution):
        noise = robust.get("noise") or {}
        return bool(noise) and distribution.split(":")[1] == noise.get("kind")
    return False


def held_out_corruptions(results: ExperimentResults) -> list[str]:
    return [d for d in results.distributions() if is_corruption(d) and not seen_in_training(results, d)]


def mean_potential(results: ExperimentResults, method: str, distributions: list[str], arm: str):
    """Per seed, the mean prune potential over ``distributions``; then mean ± std over seeds."""
    values = []
    for curve in results.curves(method, arm):
        per_shift = []
        for d in distributions:
            value = results.curve_potential(curve, d)
            if value is not None:
                per_shift.append(value)
        if per_shift and len(per_shift) == len(distributions):
            values.append(float(np.mean(per_shift)))
    return summarize(values) if values else None


def _slope(results: ExperimentResults, method: str, distributions: list[str], arm: str) -> str:
    _, fit = results.excess_errors(method, distributions, arm)
    return f"{100 * fit.slope:+.2f}" if fit is not None else "–"


def _gain(a, b) -> str:
    return "–" if a is None or b is None else f"{round(100 * (b.mean - a.mean), 1) + 0.0:+.1f}"  # no "-0.0"


def comparison_table(results: ExperimentResults) -> Table:
    """Rows per method: the mean over held-out corruptions, then nominal and every shifted
    distribution; P (%) and the excess-error slope for nominal and shift-aware training."""
    held_out = held_out_corruptions(results)
    rows = []
    for method in results.methods:
        entries = []
        if held_out:
            entries.append(
                (
                    f"mean of {len(held_out)} held-out corruption{'s' if len(held_out) > 1 else ''}",
                    held_out,
                    True,
                )
            )
        for d in results.distributions():
            seen = " (seen in training)" if seen_in_training(results, d) else ""
            entries.append((label(d) + seen, [d], d != "nominal"))
        for i, (name, dists, excess) in enumerate(entries):
            nominal = mean_potential(results, method, dists, "nominal")
            robust = mean_potential(results, method, dists, ROBUST)
            rows.append(
                [
                    method.upper() if i == 0 else "",
                    name,
                    pm(nominal),
                    pm(robust),
                    _gain(nominal, robust),
                    _slope(results, method, dists, "nominal") if excess else "",
                    _slope(results, method, dists, ROBUST) if excess else "",
                ]
            )
    return Table(
        [
            "method",
            "test distribution",
            "P, nominal training (%)",
            "P, shift-aware training (%)",
            "gain (points)",
            "excess error slope, nominal",
            "excess error slope, shift-aware",
        ],
        rows,
    )


def recommendation_rows(results: ExperimentResults) -> list[list[str]]:
    """Per method and training arm: the prune ratio to stop at on the nominal test set alone
    and on every test distribution, and the distributions that limit it."""
    shifts = [d for d in results.distributions() if d != "nominal"]
    rows = []
    for method in results.methods:
        for arm in results.arms:
            if not results.curves(method, arm):
                continue
            try:
                nominal = recommend_ratio(results, [], method=method, arm=arm)
                every = recommend_ratio(results, shifts, method=method, arm=arm)
                own = {
                    d: recommend_ratio(results, [d], method=method, arm=arm, include_nominal=False)
                    for d in shifts
                }
            except ValueError:  # an unfinished run: some network is not evaluated yet
                rows.append([method.upper(), _arm_label(arm), "–", "–", "not evaluated yet"])
                continue
            limiting = sorted((v, d) for d, v in own.items() if v < nominal)
            lowest = [label(d) for v, d in limiting if v == limiting[0][0]] if limiting else []
            rows.append(
                [
                    method.upper(),
                    _arm_label(arm),
                    f"{100 * nominal:.1f}",
                    f"{100 * every:.1f}",
                    ", ".join(lowest[:3]) + (f" (+{len(lowest) - 3})" if len(lowest) > 3 else "") or "–",
                ]
            )
    return rows


def recommendation_table(results: ExperimentResults) -> Table:
    return Table(
        [
            "method",
            "training",
            "stop at, nominal test set (%)",
            "stop at, every test distribution (%)",
            "limited by",
        ],
        recommendation_rows(results),
    )


def _arm_label(arm: str) -> str:
    return "shift-aware" if arm == ROBUST else arm


def comparison_figure(results: ExperimentResults, path: Path) -> Path | None:
    """Per method, prune potential on nominal and every held-out distribution, nominal vs
    shift-aware training."""
    from .figures import _save, plt

    held_out = held_out_corruptions(results)
    dists = ["nominal"] + [
        d for d in results.distributions() if d != "nominal" and not seen_in_training(results, d)
    ]
    groups = [(label(d), [d]) for d in dists if d in results.distributions()]
    if held_out:
        groups.append(("held-out mean", held_out))
    methods = results.methods
    if not methods or not groups:
        return None
    fig, axes = plt.subplots(
        len(methods),
        1,
        figsize=(max(5.0, 0.5 * len(groups) + 1.5), 3.0 * len(methods) + 0.8),
        squeeze=False,
        sharey=True,
    )
    x = np.arange(len(groups))
    for ax, method in zip(axes.flat, methods):
        for offset, arm, color in ((-0.2, "nominal", "tab:gray"), (0.2, ROBUST, "tab:green")):
            values = [mean_potential(results, method, ds, arm) for _, ds in groups]
            ax.bar(
                x + offset,
                [100 * v.mean if v else np.nan for v in values],
                0.4,
                yerr=[100 * v.std if v else 0.0 for v in values],
                color=color,
                capsize=2,
                label=f"{_arm_label(arm)} training",
            )
        ax.set_xticks(x, [name for name, _ in groups], rotation=45, ha="right", fontsize=8)
        ax.set_title(method.upper())
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat:
        ax.set_ylabel(f"P (%), δ = {100 * results.delta:g} %")
    axes[0, 0].legend(fontsize=8)
    return _save(fig, path)


def summary_sentences(results: ExperimentResults) -> list[str]:
    """One line per method: what shift-aware training did to the held-out prune potential."""
    held_out = held_out_corruptions(results)
    if not held_out:
        return []
    lines = []
    for method in results.methods:
        nominal = mean_potential(results, method, held_out, "nominal")
        robust = mean_potential(results, method, held_out, ROBUST)
        if nominal is None or robust is None:
            continue
        verb = "raised" if robust.mean > nominal.mean else "did not raise"
        lines.append(
            f"**{method.upper()}**: shift-aware training {verb} the mean prune potential over "
            f"{len(held_out)} held-out corruptions ({100 * nominal.mean:.1f} % → {100 * robust.mean:.1f} %)."
        )
    return lines


def robust_blocks(results: ExperimentResults, fig_dir: Path, out: Path) -> list:
    """The shift-aware comparison (when the experiment has that arm) and the stop rule."""
    blocks: list = []
    if ROBUST in results.arms:
        trained = ", ".join(c.replace("_", " ") for c in training_corruptions(results)) or "none"
        blocks.append("## Shift-aware training: nominal vs robust")
        blocks.append(
            f"The shift-aware arm trains the parent and retrains every pruned network on a per-sample mix "
            f"of corruptions ({trained}; severities 0–5) and input noise. Prune potential P is measured "
            "against each arm's own parent; distributions marked *seen in training* are not held out. "
            "Excess-error slopes are % error per 100 % pruned."
        )
        blocks.append(comparison_table(results))
        figure = comparison_figure(results, fig_dir / "shift_aware.png")
        if figure is not None:
            blocks.append(
                Image(
                    rel(figure, out),
                    "Prune potential per method: nominal (grey) vs shift-aware "
                    "(green) training, on nominal and held-out test data.",
                )
            )
        blocks += summary_sentences(results)
    table = recommendation_table(results)
    if table.rows:
        blocks.append("## Recommended prune ratio")
        blocks.append(
            f"The largest prune ratio whose network stays within δ = {100 * results.delta:g} % of its "
            "parent on the nominal test set only, and on every test distribution "
            "(`lostprune.metrics.recommend_ratio`; the smallest over seeds). Prune to the second number "
            "where those shifts can occur."
        )
        blocks.append(table)
    return blocks
