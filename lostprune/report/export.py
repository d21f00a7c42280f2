"""An experiment's measurements as one tidy CSV table: a row per network, test distribution
and metric, with what the network is (role, method, seed, arm, cycle, prune ratios)."""

from __future__ import annotations

import csv
from pathlib import Path

from .results import ExperimentResults

COLUMNS = (
    "network",
    "role",
    "method",
    "seed",
    "arm",
    "step",
    "prune_ratio",
    "paper_prune_ratio",
    "flop_reduction",
    "distribution",
    "metric",
    "value",
)


def write_csv(results: ExperimentResults, path: str | Path) -> Path:
    """Write every stored value of ``results`` to ``path`` (CSV, header first); networks in
    store order, their values sorted by distribution and metric. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for net in results.networks.values():
            for (distribution, metric), value in sorted(net.values.items()):
                writer.writerow(
                    [
                        net.key,
                        net.role,
                        net.method or "",
                        net.seed,
                        net.arm,
                        "" if net.step is None else net.step,
                        _number(net.ratio),
                        _number(net.paper_ratio),
                        _number(net.flop_reduction),
                        distribution,
                        metric,
                        _number(value),
                    ]
                )
    tmp.replace(path)
    return path


def _number(value) -> str:
    return "" if value is None else repr(float(value))
