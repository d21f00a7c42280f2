"""FT — filter thresholding (Renda et al. 2020 with the criterion of Li et al. 2017; SPEC §2.2).

Score of output filter i: ‖W_i‖₁. Allocation: the same fraction of filters removed in every
layer (at least one kept; the network's output layer and other frozen channels keep all),
with the fraction chosen so that the prunable weights *actually removed* — a removed filter
also removes the matching input channel of every consumer (dependency graph) — meet the
ratio. The per-layer counts are integers, so the fraction is searched over the points where
some layer's count changes; where whole filters are too coarse a step (small networks),
single filters then move between layers (each stays within one filter of the common
fraction) while that brings the achieved ratio closer to the target.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import PruneContext, PruningMethod
from .registry import register_method


class _FilterPlan:
    """Per layer: removable filters in removal order, and how many a fraction removes."""

    def __init__(self, ctx: PruneContext, norm: int):
        graph = ctx.graph()
        self.ctx = ctx
        self.graph = graph
        self.order: dict[str, Tensor] = {}
        self.already: dict[str, int] = {}
        self.limit: dict[str, int] = {}
        self.size: dict[str, int] = {}
        for name, layer in ctx.layers.items():
            removable = graph.removable_outputs(name)
            if not removable.any():
                continue
            mask = ctx.current_masks[name]
            weight = (layer.weight.detach() * mask).flatten(1)
            dead = ~(mask.flatten(1) != 0).any(1).cpu()
            score = weight.norm(p=norm, dim=1).cpu().double()
            score[dead] = -1.0  # already removed: first in line, never revived
            candidates = removable.nonzero().flatten()
            ranked = candidates[torch.sort(score[candidates], stable=True).indices]
            self.order[name] = ranked
            self.size[name] = weight.shape[0]
            self.already[name] = int(dead.sum())
            self.limit[name] = min(len(ranked), weight.shape[0] - 1)

    def counts(self, fraction: float) -> dict[str, int]:
        return {name: max(self.already[name], min(self.limit[name], int(math.floor(fraction * self.size[name] + 0.5))))
                for name in self.order}

    def masks(self, counts: dict[str, int]) -> dict[str, Tensor]:
        masks = {}
        for name, mask in self.ctx.current_masks.items():
            mask = mask.clone()
            if name in counts and counts[name] > 0:
                mask[self.order[name][: counts[name]].to(mask.device)] = 0
            masks[name] = mask
        return masks

    def removed(self, counts: dict[str, int]) -> int:
        effective = self.graph.effective_masks(self.masks(counts))
        return sum(int(layer.weight.numel() - effective[f"{name}.weight"].sum())
                   for name, layer in self.ctx.layers.items())

    def breakpoints(self) -> list[float]:
        """Fractions at which some layer's filter count changes."""
        points = {0.0}
        for name, size in self.size.items():
            points.update((k - 0.5) / size for k in range(1, self.limit[name] + 1))
        return sorted(points)


def _refine(plan: _FilterPlan, counts: dict[str, int], removed: int, target: int, tolerance: float) -> dict[str, int]:
    """Whole filters are coarse steps in small networks: move single filters (one layer ±1,
    or +1 in one layer and −1 in another, each layer within one filter of the common fraction)
    while that brings the removed weights closer to the target."""
    base = dict(counts)
    names = list(plan.order)

    def allowed(name: str, value: int) -> bool:
        return abs(value - base[name]) <= 1 and plan.already[name] <= value <= plan.limit[name]

    error = abs(removed - target)
    for _ in range(2 * len(names)):
        moves = [{a: counts[a] + d} for a in names for d in (1, -1)]
        if len(names) <= 40:  # pair moves cost O(L²) evaluations: only where steps are coarse
            moves += [{a: counts[a] + 1, b: counts[b] - 1} for a in names for b in names if a != b]
        best = None
        for move in moves:
            if not all(allowed(n, v) for n, v in move.items()):
                continue
            trial = dict(counts, **move)
            trial_error = abs(plan.removed(trial) - target)
            if trial_error < error and (best is None or trial_error < best[0]):
                best = (trial_error, trial)
        if best is None:
            break
        error, counts = best
        if error <= tolerance:
            break
    return counts


def filter_masks(ctx: PruneContext, norm: int) -> dict[str, Tensor]:
    plan = _FilterPlan(ctx, norm)
    if not plan.order:
        raise ValueError("no layer has filters that can be removed (every output channel is frozen: "
                         "network output, grouped convolution or unsupported op)")
    target = ctx.remove_budget()
    points = plan.breakpoints()
    # Largest breakpoint whose removal stays at or below the target (removal grows with f).
    lo, hi = 0, len(points) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if plan.removed(plan.counts(points[mid])) <= target:
            lo = mid
        else:
            hi = mid - 1
    counts = plan.counts(points[lo])
    removed = plan.removed(counts)
    tolerance = 0.005 * target
    if abs(target - removed) > tolerance:
        counts = _refine(plan, counts, removed, target, tolerance)
    return plan.masks(counts)


@register_method("ft")
class FilterThresholding(PruningMethod):
    structured = True
    description = "filter L1 norm, same fraction of filters per layer (structured)"
    norm = 1

    def compute_masks(self, ctx: PruneContext):
        return filter_masks(ctx, self.norm)


@register_method("l2")
class FilterL2Thresholding(FilterThresholding):
    description = "filter L2 norm, same fraction of filters per layer (structured)"
    norm = 2
