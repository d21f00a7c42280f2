"""The stop rule of the paper's guidelines (docs/methods.md §Guidelines): how far to prune so that the network
stays within δ of its parent not only on the nominal test set but on every listed shift.

``recommend_ratio(results, shifts, delta)`` takes either

- an experiment's ``lostprune.report.ExperimentResults`` (with ``method=`` and ``arm=``), or
- a plain table of one method: ``{ratio: {distribution: error}}`` with the parent at ratio 0,
  e.g. ``{0.0: {"nominal": 0.08, "fog:3": 0.21}, 0.5: {...}, 0.8: {...}}`` (a pandas
  DataFrame indexed by ratio, one column per distribution, becomes one with
  ``df.to_dict("index")``), or a list of such tables, one per seed.

Per seed it returns the largest prune ratio whose network has, on the nominal test set and
on every listed shift, an error at most the parent's error there plus δ; over seeds, the
smallest of those (a ratio that was safe for every seed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .potential import DEFAULT_DELTA, READINGS, prune_potential

NOMINAL = "nominal"


def recommend_ratio(
    results,
    shifts: Sequence[str] | None = None,
    delta: float | None = None,
    *,
    method: str | None = None,
    arm: str = "nominal",
    reading: str = "any",
    include_nominal: bool = True,
) -> float:
    """The largest prune ratio within ``delta`` of the parent on every distribution of
    ``shifts`` (default: every distribution in ``results``) and, with ``include_nominal``,
    on the nominal test set. ``reading`` as for prune potential: ``"any"`` network, or the
    ``"prefix"`` of the schedule before the first network that fails. Returns 0.0 when no
    pruned network qualifies. ``delta`` defaults to the experiment's δ (0.005 for tables)."""
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
    if isinstance(shifts, str):
        raise TypeError(f"shifts must be a list of distribution names, got the string {shifts!r}")
    curves = _curves(results, method, arm)
    if delta is None:
        delta = float(getattr(results, "delta", DEFAULT_DELTA))
    available = set().union(*(set(parent) for _, _, parent in curves))
    wanted = list(
        dict.fromkeys(
            ([NOMINAL] if include_nominal else [])
            + (sorted(available - {NOMINAL}) if shifts is None else list(shifts))
        )
    )
    if not wanted:
        raise ValueError("shifts is empty and include_nominal is False: nothing to check the networks on")
    missing = [d for d in wanted if d not in available]
    if missing:
        raise ValueError(
            f"shifts: no errors for {', '.join(map(repr, missing))} in the results "
            f"(available: {', '.join(sorted(available))})"
        )
    return min(
        _recommend_one(ratios, errors, parent, wanted, delta, reading) for ratios, errors, parent in curves
    )


def _recommend_one(ratios, errors, parent, distributions, delta, reading) -> float:
    """One seed: a network qualifies when it is within δ on every distribution; the worst
    excess over the parent (error − parent error − δ, max over distributions) ≤ 0 is
    then the same test as prune potential's, with 'error' = that excess + δ and parent 0."""
    worst = np.full(len(ratios), -np.inf)
    for d in distributions:
        if parent.get(d) is None:
            raise ValueError(f"the parent has no error on {d!r}")
        column = np.array([e.get(d, np.nan) for e in errors], dtype=np.float64)
        if np.isnan(column).any():
            raise ValueError(f"a pruned network has no error on {d!r}")
        worst = np.maximum(worst, column - float(parent[d]))
    passed = np.where(worst <= delta + 1e-12, 0.0, 1.0)  # 0 = within δ everywhere, 1 = fails somewhere
    return prune_potential(ratios, passed, 0.0, 0.0, reading)


def _curves(results, method, arm) -> list[tuple[list[float], list[dict], dict]]:
    """[(ratios, [{distribution: error} per network], {distribution: parent error})] per seed."""
    if hasattr(results, "curves") and hasattr(results, "methods"):  # lostprune.report.ExperimentResults
        if method is None:
            raise ValueError(
                f"method is required with experiment results (one of {', '.join(results.methods)})"
            )
        curves = results.curves(method, arm)
        if not curves:
            raise ValueError(
                f"no evaluated networks for method={method!r}, arm={arm!r} "
                f"(methods: {', '.join(results.methods)}; arms: {', '.join(results.arms)})"
            )
        return [
            (curve.ratios, [_errors_of(n.values) for n in curve.networks], _errors_of(curve.parent.values))
            for curve in curves
        ]
    if method is not None:
        raise ValueError("method= applies to experiment results; a plain table holds one method's networks")
    tables = [results] if isinstance(results, Mapping) else list(results)
    if not tables:
        raise ValueError("results is empty")
    return [_table_curve(t, i) for i, t in enumerate(tables)]


def _errors_of(values: Mapping) -> dict:
    return {d: v for (d, m), v in values.items() if m == "error"}


def _table_curve(table, index: int) -> tuple[list[float], list[dict], dict]:
    name = "results" if index == 0 else f"results[{index}]"
    if not isinstance(table, Mapping):
        raise TypeError(f"{name} must map prune ratio -> {{distribution: error}}, got {type(table).__name__}")
    rows = {}
    for ratio, errors in table.items():
        try:
            r = float(ratio)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name}: keys must be prune ratios in [0, 1) (0 = the parent), got {ratio!r}"
            ) from None
        if not 0 <= r < 1:
            raise ValueError(f"{name}: keys must be prune ratios in [0, 1) (0 = the parent), got {ratio!r}")
        if not isinstance(errors, Mapping):
            raise TypeError(f"{name}[{ratio!r}] must map distribution -> error, got {errors!r}")
        rows[r] = {str(d): float(e) for d, e in errors.items() if e is not None and not _isnan(e)}
    if 0.0 not in rows:
        raise ValueError(f"{name} needs the parent's errors at ratio 0")
    parent = rows.pop(0.0)
    ratios = sorted(rows)
    return ratios, [rows[r] for r in ratios], parent


def _isnan(value) -> bool:
    try:
        return bool(np.isnan(value))
    except TypeError:
        return False
