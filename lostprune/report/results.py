"""An experiment's store as tidy Python objects, and the paper's derived metrics over it:
prune potential per method × distribution (mean ± std over seeds), excess error with its
line through the origin, functional similarity, informative-feature matrices."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..experiments.store import Store, StoreDamaged, damage
from ..metrics import excess_error, fit_excess_error, prune_potential, prune_potential_over_draws, summarize


@dataclass
class Network:
    key: str
    role: str
    seed: int
    arm: str
    method: str | None
    step: int | None
    ratio: float  # achieved prune ratio of the prunable weights
    paper_ratio: float | None
    flop_reduction: float | None
    values: dict[tuple[str, str], float] = field(default_factory=dict)  # (distribution, metric) -> value
    draws: dict[str, list[float]] = field(default_factory=dict)  # distribution -> error of each noise draw

    def error(self, distribution: str) -> float | None:
        return self.values.get((distribution, "error"))

    def error_draws(self, distribution: str) -> list[float] | None:
        """The error on each noise draw (one value for a deterministic test set)."""
        if distribution in self.draws:
            return self.draws[distribution]
        error = self.error(distribution)
        return None if error is None else [error]


@dataclass
class Curve:
    """One method's networks of one seed and arm, in schedule order, with their parent."""

    method: str
    seed: int
    arm: str
    parent: Network
    networks: list[Network]

    @property
    def ratios(self) -> list[float]:
        return [n.ratio for n in self.networks]

    def errors(self, distribution: str) -> list[float]:
        return [n.error(distribution) for n in self.networks]


class ExperimentResults:
    def __init__(self, root: str | Path):
        root = Path(root)
        path = root / "results.sqlite" if root.is_dir() else root
        if not path.is_file():
            raise FileNotFoundError(
                f"no results store at {path} (run `lostprune run CONFIG --out {root}` first)"
            )
        reason = damage(path)
        if reason is not None:
            raise StoreDamaged(
                f"{path} is damaged ({reason}); `lostprune run CONFIG --out {path.parent}` with the "
                "experiment's config keeps it aside and restores its backup"
            )
        store = Store(path)
        try:
            self.root = path.parent
            self.config = yaml.safe_load(store.get_meta("config") or "{}")
            self.counts = store.counts()
            self.networks: dict[str, Network] = {}
            for row in store.networks():
                self.networks[row["key"]] = Network(
                    row["key"],
                    row["role"],
                    row["seed"],
                    row["arm"],
                    row["method"],
                    row["step"],
                    row["achieved_ratio"],
                    row["paper_ratio"],
                    row["flop_reduction"],
                )
            for row in store.results():
                if row["network"] in self.networks:
                    network = self.networks[row["network"]]
                    network.values[(row["distribution"], row["metric"])] = row["value"]
                    if row["metric"] == "error" and row["extra"]:
                        draws = json.loads(row["extra"]).get("draws")
                        if draws:
                            network.draws[row["distribution"]] = [float(v) for v in draws]
            self.failed = [dict(r) for r in store.tasks("failed")]
        finally:
            store.close()
        metrics = self.config.get("metrics", {})
        self.delta = float(metrics.get("delta", 0.005))
        # the readings of the original implementation, where chosen (see MetricsConfig)
        self.boundary = metrics.get("boundary", "inclusive")
        self.noise_potential = metrics.get("noise_potential", "mean_error")
        self.excess_bootstrap = int(metrics.get("excess_bootstrap", 0))

    # ------------------------------------------------------------------ structure
    def parents(self) -> dict[tuple[int, str], Network]:
        return {(n.seed, n.arm): n for n in self.networks.values() if n.role == "parent"}

    def references(self) -> dict[tuple[int, str], Network]:
        return {(n.seed, n.arm): n for n in self.networks.values() if n.role == "reference"}

    @property
    def methods(self) -> list[str]:
        """The pruning methods with networks, in config order (controls left out: they prune
        nothing, so they have no prune potential or excess error)."""
        return [m for m in self._found_methods() if not _is_control(m)]

    @property
    def controls(self) -> list[str]:
        """Control methods with networks (e.g. ``unpruned``: the parent retrained on the cycles)."""
        return [m for m in self._found_methods() if _is_control(m)]

    def _found_methods(self) -> list[str]:
        order = self.config.get("methods", [])
        found = {n.method for n in self.networks.values() if n.method}
        return [m for m in order if m in found] + sorted(found - set(order))

    @property
    def arms(self) -> list[str]:
        return sorted({n.arm for n in self.networks.values()}, key=lambda a: (a != "nominal", a))

    @property
    def seeds(self) -> list[int]:
        return sorted({n.seed for n in self.networks.values()})

    def distributions(self) -> list[str]:
        """Test distributions in the order they were evaluated (nominal first)."""
        seen: dict[str, None] = {}
        for n in self.networks.values():
            for dist, metric in n.values:
                if metric == "error":
                    seen.setdefault(dist, None)
        names = list(seen)
        return sorted(names, key=lambda d: (d != "nominal", _kind(d), _level(d), d))

    def curves(self, method: str, arm: str = "nominal") -> list[Curve]:
        parents = self.parents()
        out = []
        for seed in self.seeds:
            if (seed, arm) not in parents:
                continue
            nets = sorted(
                (
                    n
                    for n in self.networks.values()
                    if n.method == method and n.seed == seed and n.arm == arm and n.role == "pruned"
                ),
                key=lambda n: n.step,
            )
            nets = [n for n in nets if n.error("nominal") is not None]
            if nets:
                out.append(Curve(method, seed, arm, parents[(seed, arm)], nets))
        return out

    # ------------------------------------------------------------------ metrics
    def curve_potential(
        self,
        curve: Curve,
        distribution: str,
        delta: float | None = None,
        reading: str = "any",
        control: Curve | None = None,
    ) -> float | None:
        """P_δ of one seed's curve, with the experiment's boundary and, under input noise, its
        noise reading (P of the mean error over draws, or the mean over draws of P); None
        without data.

        ``control``: the control's curve of the same seed. Each network is then held against
        the control's network of the same cycle instead of the parent: its error moves by what
        the control's retraining changed (strict boundary: acc_i + δ > acc_control_i), so what
        retraining alone costs is not counted as pruning's. None where a cycle has no control."""
        delta = self.delta if delta is None else delta
        twins = None
        if control is not None:
            by_step = {n.step: n for n in control.networks}
            twins = [by_step.get(n.step) for n in curve.networks]
            if any(t is None for t in twins):
                return None
        if is_noise(distribution) and self.noise_potential == "per_draw":
            draws = [n.error_draws(distribution) for n in curve.networks]
            parent = curve.parent.error_draws(distribution)
            if twins is not None:
                draws = _held_against(draws, [t.error_draws(distribution) for t in twins], parent)
            if draws is None or parent is None or any(d is None or len(d) != len(parent) for d in draws):
                return None
            return prune_potential_over_draws(curve.ratios, draws, parent, delta, reading, self.boundary).mean
        errors, parent = curve.errors(distribution), curve.parent.error(distribution)
        if twins is not None:
            errors = _held_against(errors, [t.error(distribution) for t in twins], parent)
        if errors is None or parent is None or any(e is None for e in errors):
            return None
        return prune_potential(curve.ratios, errors, parent, delta, reading, self.boundary)

    def prune_potential(
        self,
        method: str,
        distribution: str,
        arm: str = "nominal",
        delta: float | None = None,
        reading: str = "any",
        control: str | None = None,
    ):
        """P_δ over seeds (SeedSummary: mean, std, values) or None without data. ``control``:
        a control method, each seed's networks held against its networks (``curve_potential``);
        seeds without a control curve are left out."""
        twins = {c.seed: c for c in self.curves(control, arm)} if control is not None else {}
        values = [
            self.curve_potential(curve, distribution, delta, reading, twins.get(curve.seed))
            for curve in self.curves(method, arm)
            if control is None or curve.seed in twins
        ]
        values = [v for v in values if v is not None]
        return summarize(values) if values else None

    def readings(self) -> list[str]:
        """Which reading of each metric the numbers use, in words, for the report."""
        config, metrics = self.config, self.config.get("metrics", {})
        noise = (config.get("test") or {}).get("noise") or {}
        draws = int(noise.get("draws", 1)) if noise else 0
        text = [
            f"Prune potential P: δ = {100 * self.delta:g} %, the largest ratio of any network (not only "
            "a prefix of the schedule) whose error is "
            + (
                "at most the parent's + δ (inclusive)"
                if self.boundary == "inclusive"
                else "below the parent's + δ (strict, the original implementation's acc + δ > acc_parent)"
            )
            + "."
        ]
        if noise:
            text.append(
                f"Under input noise ({noise.get('kind', 'gaussian')}, normalized space, {draws} draw(s) per "
                "level): "
                + (
                    "P of the error averaged over the draws."
                    if self.noise_potential == "mean_error"
                    else "P of each draw (parent and pruned network on the same noisy inputs), "
                    "averaged over the draws (the original implementation's reading)."
                )
            )
        subset = (config.get("eval") or {}).get("shift_test_size")
        test_size = (config.get("data") or {}).get("test_size")
        whole = f"{test_size} test images (an equal share per class)" if test_size else "the whole test set"
        if subset:
            text.append(
                f"Nominal errors on {whole}; noisy and corrupted test sets on a class-balanced subset of "
                f"{subset} of them."
            )
        else:
            text.append(f"Errors on {whole}, nominal and shifted.")
        text.append(
            "Excess-error slope: least squares through the origin"
            + (
                f", with a 95 % bootstrap band ({self.excess_bootstrap} resamples of the networks)."
                if self.excess_bootstrap
                else ", no bootstrap band."
            )
        )
        if metrics.get("informative_features"):
            mode = metrics.get("feature_mode", "gradient")
            step = float(metrics.get("feature_step", 0.01))
            text.append(
                "Informative features: "
                + (
                    "exact backward selection (one forward pass per candidate pixel"
                    if mode == "exact"
                    else "the gradient approximation of backward selection (first-order estimate of each pixel's removal"
                )
                + f"), {100 * step:g} % of the pixels a round, ranked by log-probability; "
                f"{metrics.get('feature_images', 16)} test images, an equal share per class."
            )
        return text

    def excess_errors(
        self,
        method: str,
        distributions: list[str],
        arm: str = "nominal",
        control: str | None = None,
        seeds: list[int] | None = None,
    ):
        """[(ratio, excess error over the mean of ``distributions``)] over all seeds (or
        ``seeds``), and the line through the origin fitted to them.

        ``control``: a control method (the parent retrained on the same cycles, pruned by
        nothing); each network's excess error minus the control's at the same seed and cycle,
        which removes what retraining alone does to the gap between shifted and nominal error
        (in a cascade every network of a seed inherits it, so it would pass for a slope).
        Networks without a control counterpart are left out."""
        baseline: dict[tuple[int, int], float] = {}
        if control is not None:
            for curve, net, value in self._excess_by_network(control, distributions, arm, seeds):
                baseline[(curve.seed, net.step)] = value
        points = []
        for curve, net, value in self._excess_by_network(method, distributions, arm, seeds):
            if control is None:
                points.append((net.ratio, value))
            elif (curve.seed, net.step) in baseline:
                points.append((net.ratio, value - baseline[(curve.seed, net.step)]))
        if not points:
            return [], None
        fit = fit_excess_error(
            [r for r, _ in points], [e for _, e in points], bootstrap=self.excess_bootstrap
        )
        return points, fit

    def _excess_by_network(self, method: str, distributions: list[str], arm: str, seeds: list[int] | None):
        for curve in self.curves(method, arm):
            if seeds is not None and curve.seed not in seeds:
                continue
            parent = curve.parent
            p_nom = parent.error("nominal")
            p_shift = [parent.error(d) for d in distributions]
            if p_nom is None or any(v is None for v in p_shift):
                continue
            for net in curve.networks:
                shifted = [net.error(d) for d in distributions]
                if net.error("nominal") is None or any(v is None for v in shifted):
                    continue
                yield curve, net, excess_error(net.error("nominal"), shifted, p_nom, p_shift)

    def similarity(self, method: str, distribution: str, metric: str = "agreement", arm: str = "nominal"):
        """[(ratio, mean over seeds of the metric vs the parent)] along the schedule."""
        by_step: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for curve in self.curves(method, arm):
            for net in curve.networks:
                value = net.values.get((distribution, metric))
                if value is not None:
                    by_step[net.step].append((net.ratio, value))
        return [
            (float(np.mean([r for r, _ in pts])), float(np.mean([v for _, v in pts])))
            for _, pts in sorted(by_step.items())
        ]

    def reference_similarity(self, distribution: str, metric: str = "agreement", arm: str = "nominal"):
        values = [
            ref.values.get((distribution, metric)) for (seed, a), ref in self.references().items() if a == arm
        ]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    def feature_matrix(self, seed: int, arm: str = "nominal", metric: str = "confidence"):
        """(names, matrix[a][b]) of informative-feature comparisons, or None."""
        rows = {}
        for net in self.networks.values():
            if net.seed != seed or net.arm != arm:
                continue
            for (dist, m), value in net.values.items():
                if m == metric and dist.startswith("features_of:"):
                    rows.setdefault(dist.split(":", 1)[1], {})[net.key] = value
        if not rows:
            return None
        names = sorted(rows, key=lambda k: (not k.startswith("parent"), k.startswith("reference"), k))
        matrix = np.array([[rows[a].get(b, np.nan) for b in names] for a in names])
        return names, matrix


def _kind(distribution: str) -> int:
    return 0 if distribution == "nominal" else 1 if is_noise(distribution) else 2


def _level(distribution: str) -> float:
    try:
        return float(distribution.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0.0


def is_noise(distribution: str) -> bool:
    return distribution.startswith("noise:")


def is_corruption(distribution: str) -> bool:
    return distribution.startswith("corruption:")


def label(distribution: str) -> str:
    """'noise:gaussian:0.1' -> 'gaussian noise 0.1', 'corruption:fog:3' -> 'fog 3'."""
    parts = distribution.split(":")
    if parts[0] == "noise":
        return f"{parts[1]} noise {parts[2]}"
    if parts[0] == "corruption":
        return f"{parts[1].replace('_', ' ')} {parts[2]}"
    return distribution


def _held_against(errors, moved, parent):
    """``errors`` (per network: one value, or its noise draws) moved by what the control
    network of the same cycle changed against the parent (``moved`` minus ``parent``); None
    where a value is missing or the draws do not line up."""
    if parent is None or any(v is None for v in (*errors, *moved)):
        return None
    p = np.asarray(parent, dtype=np.float64)
    rows = [np.asarray(v, dtype=np.float64) for v in (*errors, *moved)]
    if any(r.shape != p.shape for r in rows):
        return None
    return [(e - m + p).tolist() for e, m in zip(rows[: len(errors)], rows[len(errors) :])]


def _is_control(method: str) -> bool:
    from ..methods import available_methods, get_method

    return method in available_methods() and get_method(method).control
