"""ExperimentResults' excess-error fits on hand-made networks (no run needed)."""

import numpy as np
import pytest

from lostprune.metrics import excess_error
from lostprune.report.results import ExperimentResults, Network

RATIOS = [0.2, 0.5, 0.8]
SHIFT = "noise:gaussian:0.1"


def _results(
    rows: dict[str, tuple[int, str, str | None, int | None, float, float, float]],
) -> ExperimentResults:
    """rows: key -> (seed, role, method, step, ratio, nominal error, shifted error)."""
    results = ExperimentResults.__new__(ExperimentResults)
    results.config = {"methods": ["wt", "unpruned"]}
    results.excess_bootstrap = 0
    results.networks = {}
    for key, (seed, role, method, step, ratio, nominal, shifted) in rows.items():
        net = Network(key, role, seed, "nominal", method, step, ratio, None, None)
        net.values = {("nominal", "error"): nominal, (SHIFT, "error"): shifted}
        results.networks[key] = net
    return results


def _study(offset: dict[int, float], slope: float):
    """Per seed: every retrained network (control too) carries a shared offset in its shifted
    error (what a cascade inherits from one retraining); pruning adds slope * ratio on top."""
    rows = {}
    for seed in (0, 1):
        rows[f"parent/s{seed}"] = (seed, "parent", None, None, 0.0, 0.10, 0.20)
        for step, r in enumerate(RATIOS):
            rows[f"wt/s{seed}/{step}"] = (
                seed,
                "pruned",
                "wt",
                step,
                r,
                0.11,
                0.21 + offset[seed] + slope * r,
            )
            rows[f"ctrl/s{seed}/{step}"] = (seed, "pruned", "unpruned", step, 0.0, 0.10, 0.20 + offset[seed])
    return _results(rows)


def test_excess_errors_against_the_control_remove_the_shared_offset():
    results = _study({0: 0.02, 1: -0.03}, slope=0.01)
    points, plain = results.excess_errors("wt", [SHIFT])
    expected = [
        excess_error(0.11, [0.21 + off + 0.01 * r], 0.10, [0.20]) for off in (0.02, -0.03) for r in RATIOS
    ]
    assert [e for _, e in points] == pytest.approx(expected)
    r = np.array(RATIOS * 2)
    assert plain.slope == pytest.approx(float(r @ np.array(expected) / (r @ r)))
    points, adjusted = results.excess_errors("wt", [SHIFT], control="unpruned")
    assert [e for _, e in points] == pytest.approx([0.01 * x for x in RATIOS * 2])
    assert adjusted.slope == pytest.approx(0.01)
    _, seed1 = results.excess_errors("wt", [SHIFT], seeds=[1])
    assert seed1.slope < 0  # seed 1's offset alone reads as a negative slope, though pruning adds +0.01


def test_networks_without_a_control_counterpart_are_left_out():
    results = _study({0: 0.0, 1: 0.0}, slope=0.02)
    del results.networks["ctrl/s1/2"]
    points, fit = results.excess_errors("wt", [SHIFT], control="unpruned")
    assert len(points) == 5 and fit.slope == pytest.approx(0.02)
    assert results.excess_errors("wt", [SHIFT], control="nothing") == ([], None)


def test_prune_potential_against_the_control_holds_each_network_against_its_cycle():
    """A control that loses 0.6 points at every cycle (retraining alone) fails δ = 0.5 % itself:
    against the parent no pruned network qualifies; against the control the ones that lose at
    most δ more than it do (acc_i + δ > acc_control_i, strict)."""
    rows = {"parent/s0": (0, "parent", None, None, 0.0, 0.100, 0.20)}
    for step, (r, err) in enumerate(zip(RATIOS, (0.107, 0.110, 0.112))):
        rows[f"wt/s0/{step}"] = (0, "pruned", "wt", step, r, err, 0.20)
        rows[f"ctrl/s0/{step}"] = (0, "pruned", "unpruned", step, 0.0, 0.106, 0.20)
    results = _results(rows)
    results.delta, results.boundary, results.noise_potential = 0.005, "strict", "per_draw"
    assert results.prune_potential("wt", "nominal").values == (0.0,)
    against = results.prune_potential("wt", "nominal", control="unpruned")
    assert against.values == (0.5,)  # 0.110 < 0.106 + 0.005, 0.112 is not
    # under noise, draw by draw on the same noisy inputs
    for key, draws in {
        "parent/s0": [0.20, 0.30],
        "ctrl/s0/0": [0.21, 0.31],
        "ctrl/s0/1": [0.21, 0.31],
        "ctrl/s0/2": [0.21, 0.31],
        "wt/s0/0": [0.21, 0.31],
        "wt/s0/1": [0.22, 0.31],
        "wt/s0/2": [0.22, 0.40],
    }.items():
        results.networks[key].draws[SHIFT] = draws
    assert results.prune_potential("wt", SHIFT).values == (0.0,)
    against = results.prune_potential("wt", SHIFT, control="unpruned")
    assert against.values == (pytest.approx(0.35),)  # draw 0: 0.2, draw 1: 0.5
    del results.networks["ctrl/s0/2"]  # a cycle without its control: no value for that seed
    assert results.prune_potential("wt", "nominal", control="unpruned") is None
