"""Prune potential and excess error (docs/methods.md §Prune potential, docs/methods.md §Excess error).

Prune potential P_δ: the largest prune ratio among the produced networks whose error on a
test distribution D is at most the parent's error on D plus δ. Two readings:

- ``"any"``: any network that qualifies counts, even if a less pruned one failed;
- ``"prefix"`` (monotone prefix): walk the networks by increasing ratio and stop at the
  first that fails; the potential is the last ratio before it.

Both are 0 when no pruned network qualifies (the parent itself, ratio 0, always does).
Whether a network on the boundary qualifies: ``boundary="inclusive"`` (error ≤ parent + δ) or
``"strict"`` (error < parent + δ; the original implementation's acc + δ > acc_parent).

Under input noise the errors are means over noise draws; the original implementation instead
computes P for each draw (the pruned networks and the parent on the same noisy inputs) and
averages P over the draws: ``prune_potential_over_draws``.

Excess error e(θ̂, D′) = [err(θ̂, D′) − err(θ̂, D)] − [err(θ, D′) − err(θ, D)], with D the
nominal test set, D′ a shifted one (or the mean over several), θ the parent and θ̂ a pruned
network; reported per network and as a line through the origin against the prune ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

READINGS = ("any", "prefix")
BOUNDARIES = ("inclusive", "strict")
DEFAULT_DELTA = 0.005


@dataclass(frozen=True)
class SeedSummary:
    """mean ± std (population std, ddof = 0) of one value over seeds."""

    mean: float
    std: float
    values: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.std:.2g} (n={len(self.values)})"


def summarize(values: Sequence[float]) -> SeedSummary:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("summarize: no values")
    return SeedSummary(float(arr.mean()), float(arr.std()), tuple(float(v) for v in arr))


def _check_rate(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be an error rate in [0, 1], got {value}")
    return value


def _check_curve(
    ratios: Sequence[float] | np.ndarray,
    errors: Sequence[float] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(ratios, dtype=np.float64).reshape(-1)
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if r.shape != e.shape:
        raise ValueError(f"ratios and errors must have the same length, got {r.size} and {e.size}")
    if r.size and (not np.all(np.isfinite(r)) or r.min() < 0 or r.max() >= 1):
        raise ValueError(f"ratios must be prune ratios in [0, 1), got values in [{r.min()}, {r.max()}]")
    if e.size and (not np.all(np.isfinite(e)) or e.min() < 0 or e.max() > 1):
        raise ValueError(f"errors must be error rates in [0, 1], got values in [{e.min()}, {e.max()}]")
    return r, e


def prune_potential(
    ratios: Sequence[float] | np.ndarray,
    errors: Sequence[float] | np.ndarray,
    parent_error: float,
    delta: float = DEFAULT_DELTA,
    reading: str = "any",
    boundary: str = "inclusive",
) -> float:
    """P_δ of one prune curve: ``ratios[i]`` and ``errors[i]`` describe the i-th pruned network
    (error on the test distribution of interest), ``parent_error`` the parent on the same one."""
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    if not math.isfinite(delta) or not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    r, e = _check_curve(ratios, errors)
    if r.size == 0:
        raise ValueError("ratios is empty: a prune potential needs at least one pruned network")
    limit = _check_rate(parent_error, "parent_error") + delta
    # the tolerance absorbs float round-off of error rates that are counts / N
    ok = e <= limit + 1e-12 if boundary == "inclusive" else e < limit - 1e-12
    if reading == "any":
        return float(r[ok].max()) if ok.any() else 0.0
    order = np.argsort(r, kind="stable")
    best = 0.0
    for i in order:
        if not ok[i]:
            break
        best = float(r[i])
    return best


def prune_potential_over_seeds(
    ratios,
    errors: Sequence[Sequence[float]],
    parent_errors: Sequence[float],
    delta: float = DEFAULT_DELTA,
    reading: str = "any",
    boundary: str = "inclusive",
) -> SeedSummary:
    """P_δ per seed, then mean ± std. ``ratios`` is one list shared by all seeds or one list
    per seed; ``errors[s]`` and ``parent_errors[s]`` belong to seed s."""
    errors = [list(e) for e in errors]
    if len(errors) != len(parent_errors):
        raise ValueError(f"{len(errors)} error curves but {len(parent_errors)} parent errors (one per seed)")
    per_seed_ratios = (
        list(ratios)
        if len(ratios) and isinstance(ratios[0], (list, tuple, np.ndarray))
        else [ratios] * len(errors)
    )
    if len(per_seed_ratios) != len(errors):
        raise ValueError(f"{len(per_seed_ratios)} ratio lists but {len(errors)} error curves")
    return summarize(
        [
            prune_potential(r, e, p, delta, reading, boundary)
            for r, e, p in zip(per_seed_ratios, errors, parent_errors)
        ]
    )


def prune_potential_over_draws(
    ratios: Sequence[float] | np.ndarray,
    errors: Sequence[Sequence[float]] | np.ndarray,
    parent_errors: Sequence[float] | np.ndarray,
    delta: float = DEFAULT_DELTA,
    reading: str = "any",
    boundary: str = "inclusive",
) -> SeedSummary:
    """P_δ per noise draw, then mean ± std over the draws (the original's prune potential
    under noise). ``errors[i][d]``: network i on draw d; ``parent_errors[d]``: the parent on
    the same draw (the same noisy inputs)."""
    table = np.asarray(errors, dtype=np.float64)
    parent = np.asarray(parent_errors, dtype=np.float64).reshape(-1)
    if table.ndim != 2 or table.shape[1] != parent.size or parent.size == 0:
        raise ValueError(
            f"errors must be networks × draws with as many draws as parent_errors ({parent.size}), "
            f"got shape {table.shape}"
        )
    return summarize(
        [
            prune_potential(ratios, table[:, d], parent[d], delta, reading, boundary)
            for d in range(parent.size)
        ]
    )


def _mean_rate(value, name: str) -> float:
    values: list = [value] if np.isscalar(value) else list(value)
    if not values:
        raise ValueError(f"{name} is empty")
    return float(np.mean([_check_rate(v, name) for v in values]))


def excess_error(pruned_nominal: float, pruned_shifted, parent_nominal: float, parent_shifted) -> float:
    """e(θ̂, D′) = [err(θ̂, D′) − err(θ̂, D)] − [err(θ, D′) − err(θ, D)].

    The shifted errors may be lists (one per shifted test set, in the same order for the
    pruned network and the parent): their means are used."""
    pruned_gap = _mean_rate(pruned_shifted, "pruned_shifted") - _check_rate(pruned_nominal, "pruned_nominal")
    parent_gap = _mean_rate(parent_shifted, "parent_shifted") - _check_rate(parent_nominal, "parent_nominal")
    return pruned_gap - parent_gap


@dataclass(frozen=True)
class ExcessErrorFit:
    """Least-squares line through the origin, excess ≈ slope · ratio; ``band``: the
    bootstrap confidence interval of the slope (None without resamples)."""

    slope: float
    ratios: tuple[float, ...]
    values: tuple[float, ...]
    r_squared: float  # of the line through the origin (uncentered)
    band: tuple[float, float] | None = None
    confidence: float = 0.95
    resamples: int = 0

    def predict(self, ratio: float) -> float:
        return self.slope * float(ratio)


def fit_excess_error(
    ratios: Sequence[float],
    excess: Sequence[float],
    *,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> ExcessErrorFit:
    """slope = Σ rᵢ eᵢ / Σ rᵢ² over the pruned networks. ``bootstrap`` > 0: the slope's
    percentile interval at ``confidence`` over that many resamples of the points (with
    replacement), as the band the original implementation plots."""
    r = np.asarray(ratios, dtype=np.float64).reshape(-1)
    e = np.asarray(excess, dtype=np.float64).reshape(-1)
    if r.shape != e.shape or r.size == 0:
        raise ValueError(
            f"ratios and excess must be non-empty and of equal length, got {r.size} and {e.size}"
        )
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(e))):
        raise ValueError("ratios and excess must be finite")
    denom = float(r @ r)
    if denom == 0:
        raise ValueError(
            "fit_excess_error: all ratios are 0; a line through the origin needs a pruned network"
        )
    slope = float(r @ e) / denom
    total = float(e @ e)
    residual = float(((e - slope * r) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else 1.0
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap must be an integer >= 0 (resamples), got {bootstrap!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    band = None
    if bootstrap:
        pick = np.random.default_rng(seed).integers(0, r.size, (bootstrap, r.size))
        rr, ee = r[pick], e[pick]
        denoms = (rr * rr).sum(1)
        slopes = (rr * ee).sum(1)[denoms > 0] / denoms[
            denoms > 0
        ]  # a resample of only ratio-0 points has no line
        tail = 100 * (1 - confidence) / 2
        band = (float(np.percentile(slopes, tail)), float(np.percentile(slopes, 100 - tail)))
    return ExcessErrorFit(slope, tuple(r.tolist()), tuple(e.tolist()), r2, band, confidence, bootstrap)
