"""The experiment report as Markdown and HTML: figures, tables, and the paper's guidelines
(docs/methods.md §Guidelines) as flags a reader can act on."""

from __future__ import annotations

from pathlib import Path

from . import figures
from .blocks import Block, Image, Table, pm, rel, to_html, to_markdown
from .export import write_csv
from .results import ExperimentResults, is_corruption, is_noise, label
from .robust import robust_blocks

# Guideline 1 flags a method when its prune potential under a shift falls this far below
# the nominal one (absolute, in prune-ratio points) ...
FLAG_DROP = 0.10
# ... or to less than this fraction of the nominal one.
FLAG_FRACTION = 0.5


def potential_table(results: ExperimentResults, arm: str) -> Table:
    dists = results.distributions()
    rows = [
        [method.upper()] + [pm(results.prune_potential(method, d, arm)) for d in dists]
        for method in results.methods
    ]
    return Table(["method"] + [label(d) for d in dists], rows)


def control_table(results: ExperimentResults, control: str) -> Table:
    """Nominal accuracy of the control's networks per cycle, beside their parent's."""
    rows = [
        [str(curve.seed), arm, _acc(curve.parent.error("nominal"))]
        + [_acc(n.error("nominal")) for n in curve.networks]
        for arm in results.arms
        for curve in results.curves(control, arm)
    ]
    cycles = max((len(r) - 3 for r in rows), default=0)
    return Table(["seed", "training", "parent (%)"] + [f"cycle {i + 1} (%)" for i in range(cycles)], rows)


def guideline_flags(results: ExperimentResults, arm: str = "nominal") -> list[str]:
    """docs/methods.md §Guidelines (1): methods whose prune potential under a shift is far below the
    nominal one."""
    flags = []
    for method in results.methods:
        nominal = results.prune_potential(method, "nominal", arm)
        if nominal is None:
            continue
        worst = []
        for d in results.distributions():
            if d == "nominal":
                continue
            shifted = results.prune_potential(method, d, arm)
            if shifted is None:
                continue
            if nominal.mean - shifted.mean > FLAG_DROP or shifted.mean < FLAG_FRACTION * nominal.mean:
                worst.append((shifted.mean, d))
        if worst:
            worst.sort()
            listed = ", ".join(f"{label(d)} {100 * v:.0f} %" for v, d in worst[:4])
            more = f" and {len(worst) - 4} more" if len(worst) > 4 else ""
            flags.append(
                f"**{method.upper()}** prunes {100 * nominal.mean:.0f} % within δ on the nominal test set, "
                f"but far less under shift: {listed}{more}. Do not prune this far where such shifts can "
                "occur, or train for them (shift-aware training)."
            )
    return flags


def build(results: ExperimentResults, out: Path) -> list[Block]:
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    config = results.config
    blocks: list[Block] = [f"# lostprune report: {config.get('name', results.root.name)}"]
    schedule = config.get("schedule", {})
    blocks.append(
        f"Network **{config.get('network')}** on **{config.get('data', {}).get('name')}**, methods "
        f"{', '.join(m.upper() for m in results.methods)}, {schedule.get('mode', 'cascade')} prune–retrain "
        f"cycles, seeds {', '.join(map(str, results.seeds))}. Prune ratios are fractions of the prunable "
        "weights removed. Results: `" + str(results.root) + "`."
    )
    blocks.append("## How the numbers are computed")
    blocks += [f"* {line}" for line in results.readings()]
    if results.failed:
        blocks.append(
            f"⚠ {len(results.failed)} task(s) failed; their networks are missing below "
            f"(first: `{results.failed[0]['key']}`)."
        )

    parents = [
        [f"{seed}", arm, _acc(p.error("nominal")), _acc(p.error(_first_noise(results)))]
        for (seed, arm), p in sorted(results.parents().items())
    ]
    blocks += [
        "## Parent networks",
        Table(
            ["seed", "training", "nominal accuracy (%)", f"accuracy, {label(_first_noise(results))} (%)"],
            parents,
        ),
    ]
    for control in results.controls:
        blocks += [
            f"## Control: {control}",
            (
                "The parent retrained on the same prune–retrain cycles as the pruned networks, pruned by "
                "nothing: how much of a pruned network's accuracy comes from the extra training alone. Prune "
                "potentials below compare with the parent itself, as the paper does."
            ),
            control_table(results, control),
        ]

    for arm in results.arms:
        suffix = "" if arm == "nominal" else f" ({arm} training)"
        tag = "" if arm == "nominal" else f"_{arm}"
        blocks.append(f"## Accuracy vs prune ratio{suffix}")
        blocks.append(
            Image(
                rel(figures.accuracy_vs_ratio(results, fig_dir / f"accuracy{tag}.png", arm), out),
                "Test accuracy of every pruned network; dashed: parent, grey band: within δ of it.",
            )
        )
        blocks.append(f"## Prune potential{suffix}")
        blocks.append(potential_table(results, arm))
        blocks.append(
            Image(
                rel(figures.potential_bars(results, fig_dir / f"potential{tag}.png", arm), out),
                "Prune potential per method and test distribution (mean ± std over seeds).",
            )
        )
        noise_fig = figures.potential_vs_noise(results, fig_dir / f"potential_noise{tag}.png", arm)
        if noise_fig:
            blocks.append(Image(rel(noise_fig, out), "Prune potential as the input noise grows."))
        excess = figures.excess_error_plot(results, fig_dir / f"excess_error{tag}.png", arm)
        if excess:
            blocks.append(f"## Excess error{suffix}")
            blocks.append(_excess_table(results, arm))
            blocks.append(
                Image(
                    rel(excess, out),
                    "Excess error e(θ̂, D′) of every pruned network and the line fitted through the origin.",
                )
            )
        similarity = figures.similarity_plot(results, fig_dir / f"similarity{tag}.png", arm)
        if similarity:
            blocks.append(f"## Functional similarity{suffix}")
            blocks.append(
                Image(
                    rel(similarity, out),
                    "Pruned networks vs their parent on the same (noisy) "
                    "inputs; dotted: a separately trained network.",
                )
            )
        for seed in results.seeds:
            heat = figures.feature_heatmap(results, fig_dir / f"features_s{seed}{tag}.png", seed, arm)
            if heat:
                blocks.append(f"## Informative features (seed {seed}){suffix}")
                blocks.append(
                    Image(
                        rel(heat, out),
                        "Confidence of model B on images reduced to model A's most informative pixels.",
                    )
                )
    blocks += robust_blocks(results, fig_dir, out)
    blocks.append("## Guidelines")
    flags = guideline_flags(results)
    blocks += flags or ["No method lost much prune potential under the shifts tested."]
    return blocks


def _excess_table(results: ExperimentResults, arm: str) -> Table:
    dists = results.distributions()
    groups = [
        (name, [d for d in dists if test(d)])
        for name, test in (("noise", is_noise), ("corruptions", is_corruption))
    ]
    groups = [(n, ds) for n, ds in groups if ds]
    rows = []
    for method in results.methods:
        row = [method.upper()]
        for _, ds in groups:
            _, fit = results.excess_errors(method, ds, arm)
            band = f" [{100 * fit.band[0]:+.2f}, {100 * fit.band[1]:+.2f}]" if fit and fit.band else ""
            row.append(f"{100 * fit.slope:+.2f}{band}" if fit else "–")
        rows.append(row)
    unit = "% error per 100 % pruned" + (", 95 % bootstrap band" if results.excess_bootstrap else "")
    return Table(["method"] + [f"slope, {n} ({unit})" for n, _ in groups], rows)


def _first_noise(results: ExperimentResults) -> str:
    return next((d for d in results.distributions() if is_noise(d)), "nominal")


def _acc(error: float | None) -> str:
    return "–" if error is None else f"{100 * (1 - error):.2f}"


def write_report(results_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write report.md, report.html and figures/*.png; returns the Markdown file's path."""
    results = ExperimentResults(results_dir)
    out = Path(out) if out is not None else results.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    blocks = build(results, out)
    markdown = out / "report.md"
    write_csv(results, out / "results.csv")
    blocks.append(
        "Every measurement of this report, one row per network, test distribution and metric: "
        "[results.csv](results.csv)."
    )
    markdown.write_text(to_markdown(blocks))
    (out / "report.html").write_text(to_html(blocks, f"lostprune report: {results.config.get('name', '')}"))
    return markdown
