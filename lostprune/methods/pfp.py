"""PFP — provable filter pruning (Liebenwein et al. 2020), deterministic variant (SPEC §2.4).

Structured: PFP removes *input channels* (weight columns) and with them the producing filters.
By default it removes whole channel groups (SPEC §3, ``coupled="sum"``), so that what the
masks remove is what ``slice_model`` really drops; ``coupled="per_layer"`` is SPEC §2.4 read
one layer at a time (below).

1. Scores (:func:`channel_sensitivities`): per layer and input channel j, s_j = the max over S,
   output units, edges of channel j and positions of the relative contribution g.
2. Allocation by error analysis (:func:`kept_channels`): for one relative error ε shared by
   all layers, layer ℓ keeps c_ℓ(ε) = clamp(⌈Σ_j 1 − (1 − p_j)^{m_ℓ(ε)}⌉, 1, Cin_ℓ) channels,
   p_j = s_j / S_ℓ, S_ℓ = Σ_j s_j, m_ℓ(ε) = ⌈K(6 + 2ε) α_ℓ S_ℓ / ε²⌉,
   α_ℓ = 2C ln(8 (P_ℓ + 1) κ_ℓ / δ), κ_ℓ = kh·kw, C = 3, K = 3, δ = 1e-16, P_ℓ = output positions.
   Layers whose sensitivities are spread (hard to approximate) thus keep more channels.
3. A root search on ε meets the budget on the prunable weights really removed. No reweighting.

Whole channel groups (default; :func:`group_masks`), as for FT: a group channel's score is
the reduce of its consumers' s_j (``coupled="sum" | "mean" | "max" | "min" | callable``), a
group keeps as many channels as its most demanding consumer's c_ℓ(ε) asks of it, and ε is
searched on what slicing really removes; ``coupled="skip"`` leaves coupled groups (residual
adds, depthwise convs) alone; ``round_to=8`` keeps a multiple of 8 channels per group
(``"auto"``: the convolution kernels' channel tile on the model's device).

Per layer (``coupled="per_layer"``; :func:`allocate`, :func:`channel_masks`): each layer keeps
its own top-c_ℓ input channels by s_j. A channel no layer reads any more loses its producing
filter (the dependency graph's ``effective_masks``); a channel coupled through a residual add
keeps its producers (when every consumer would drop it, the consumer that scores it highest
keeps it). Columns one consumer drops while another still reads the channel are zeros in the
masked model but stay in a sliced one: a randomly initialized ResNet18 at 70 % computes 1.16×
the conv work the masks count after slicing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ..core.accounting import output_positions
from ..datapass import collect_sensitivities, sample_count
from ..structure.graph import IN, DependencyGraph
from ..structure.group_plan import GroupPlan, check_coupled
from .base import PruneContext, PruningMethod
from .registry import register_method

C, K, DELTA = 3.0, 3.0, 1e-16
PER_LAYER = "per_layer"  # coupled= value: SPEC §2.4 one layer at a time, not whole groups
_LOG10_EPS_RANGE = (-8.0, 20.0)  # ε from "keep everything" to "one channel per layer"


# --------------------------------------------------------------------------- scores
def channel_sensitivities(ctx: PruneContext) -> dict[str, Tensor]:
    """{layer name: s_j per input channel} of the context's layers on its data S (SPEC §2.4)."""
    return collect_sensitivities(ctx.model, ctx.batches(), ctx.layers, kind="channel", progress=ctx.progress,
                                 total=sample_count(ctx.data))


# --------------------------------------------------------------------------- error-based allocation
@dataclass
class LayerErrorModel:
    """What the error analysis needs of one layer."""

    scores: Tensor  # s_j per input channel, float64 on the CPU
    positions: int  # P: output positions per sample
    kernel: int  # κ = kh·kw

    @property
    def alpha(self) -> float:
        return 2.0 * C * math.log(8.0 * (self.positions + 1) * self.kernel / DELTA)

    def samples(self, eps: float) -> float:
        """m(ε) = ⌈K (6 + 2ε) α S / ε²⌉."""
        value = K * (6.0 + 2.0 * eps) * self.alpha * float(self.scores.sum()) / eps ** 2
        return float(math.ceil(value)) if value < 2.0 ** 52 else value


def kept_channels(model: LayerErrorModel, eps: float) -> int:
    """c(ε): the expected number of distinct channels in m(ε) samples from p, clamped to [1, Cin]."""
    n = model.scores.numel()
    total = float(model.scores.sum())
    if total <= 0.0:
        return 1  # no channel contributes on S
    p = (model.scores / total).clamp(max=1.0)
    m = model.samples(eps)
    # 1 - (1 - p)^m, accurate for tiny p and huge m
    expected = float((-torch.expm1(m * torch.log1p(-p))).sum())
    return max(1, min(n, math.ceil(expected - 1e-9)))


def error_models(ctx: PruneContext, scores: dict[str, Tensor]) -> dict[str, LayerErrorModel]:
    positions, _ = output_positions(ctx.model, ctx.example_input)
    models = {}
    for name, layer in ctx.layers.items():
        kernel = layer.weight[0, 0].numel() if isinstance(layer, nn.Conv2d) else 1
        s = scores[name].detach().double().cpu()
        models[name] = LayerErrorModel(s, max(1, positions.get(name, 1)), kernel)
    return models


# --------------------------------------------------------------------------- masks from channel counts
def removable_channels(graph: DependencyGraph, name: str, n_channels: int) -> Tensor:
    """Bool [input channels of layer `name`]: True where the column belongs to a prunable group."""
    removable = torch.zeros(n_channels, dtype=torch.bool)
    for group in graph.groups_of(name, IN):
        if group.prunable:
            for member in group.consumers:
                if member.module == name:
                    removable[member.index.reshape(-1)] = True
    return removable


def column_mask(layer: nn.Module, keep: Tensor, compact: bool = False) -> Tensor:
    """A 0/1 weight mask keeping the input channels where ``keep`` (bool [Cin]) is True;
    ``compact``: one entry per (output, input) pair of a conv instead of per weight."""
    weight = layer.weight
    if isinstance(layer, nn.Conv2d):
        groups = layer.groups
        cout_g, cin_g = weight.shape[0] // groups, weight.shape[1]
        if compact:
            return keep.view(groups, 1, cin_g).expand(groups, cout_g, cin_g).reshape(weight.shape[:2]).float()
        ones = (1,) * (weight.dim() - 2)
        full = keep.view(groups, 1, cin_g, *ones).expand(groups, cout_g, cin_g, *weight.shape[2:])
        return full.reshape(weight.shape).float()
    return keep[None, :].expand(weight.shape).float()


class ChannelPlan:
    """Per layer: input channels in keeping order (channels that cannot be removed first, then
    by score), and the masks a set of per-layer channel counts gives."""

    def __init__(self, ctx: PruneContext, scores: dict[str, Tensor]):
        self.ctx = ctx
        self.graph = ctx.graph()
        self.scores = {name: s.detach().double().cpu() for name, s in scores.items()}
        self.order: dict[str, Tensor] = {}
        self.fixed: dict[str, int] = {}  # channels that are always kept
        self.current = {name: m.detach().float().cpu() for name, m in ctx.current_masks.items()}
        self._kept: dict[tuple, int] = {}
        for name, layer in ctx.layers.items():
            s = self.scores[name]
            removable = removable_channels(self.graph, name, s.numel())
            priority = torch.where(removable, s, torch.full_like(s, math.inf))
            self.order[name] = torch.sort(priority, descending=True, stable=True).indices
            self.fixed[name] = int((~removable).sum())
        # Per layer: which input channels (columns) still hold a nonzero weight.
        self.current_columns = {name: (m != 0).transpose(0, 1).flatten(1).any(1)
                                for name, m in self.current.items()}
        # The search counts kept weights on compact masks: one entry per (output, input) pair,
        # weighted by how many of its kernel weights survive (9x less work for 3x3 convs).
        self.pair_weights = {name: (m != 0).flatten(2).sum(2).float() if m.dim() > 2 else (m != 0).float()
                             for name, m in self.current.items()}
        # Residual-coupled groups whose consumers are all pruned here (a consumer outside the
        # pruned layers reads every channel, so those need no protection).
        self.coupled = [g for g in self.graph.groups if g.prunable and g.coupled and g.consumers
                        and all(m.module in ctx.layers for m in g.consumers)]

    def keep_vectors(self, counts: dict[str, int]) -> dict[str, Tensor]:
        """{layer: bool [input channels]} kept by the counts (before the earlier masks)."""
        keep = {}
        for name in self.ctx.layers:
            vector = torch.zeros(self.scores[name].numel(), dtype=torch.bool)
            vector[self.order[name][: max(counts[name], self.fixed[name])]] = True
            keep[name] = vector
        self._keep_coupled_producers(keep)
        return keep

    def masks(self, counts: dict[str, int]) -> dict[str, Tensor]:
        keep = self.keep_vectors(counts)
        return {name: self.current[name] * column_mask(layer, keep[name])
                for name, layer in self.ctx.layers.items()}

    def _keep_coupled_producers(self, keep: dict[str, Tensor]) -> None:
        """A residual-coupled channel that every consumer drops would lose its producers: the
        consumer scoring it highest (among those where it is still alive) keeps it."""
        for group in self.coupled:
            alive = torch.zeros(group.size, dtype=torch.bool)
            for m in group.consumers:
                alive |= (keep[m.module] & self.current_columns[m.module])[m.index].any(1)
            for k in (~alive).nonzero().flatten().tolist():
                best, best_score = None, -math.inf
                for m in group.consumers:
                    if not self.current_columns[m.module][m.index[k]].any():
                        continue  # removed in an earlier step: never revived
                    score = float(self.scores[m.module][m.index[k]].max())
                    if score > best_score:
                        best, best_score = m, score
                if best is not None:
                    keep[best.module][best.index[k]] = True

    def kept_weights(self, counts: dict[str, int]) -> int:
        """Prunable weights kept once removed channels have propagated (graph.effective_masks)."""
        key = tuple(counts.values())
        if key not in self._kept:
            keep = self.keep_vectors(counts)
            compact = {name: (self.pair_weights[name] != 0).float() * column_mask(layer, keep[name], True)
                       for name, layer in self.ctx.layers.items()}
            effective = self.graph.effective_masks(compact)
            self._kept[key] = int(sum(float((effective[f"{name}.weight"] * self.pair_weights[name]).sum())
                                      for name in self.ctx.layers))
        return self._kept[key]


def channel_masks(ctx: PruneContext, scores: dict[str, Tensor], counts: dict[str, int]) -> dict[str, Tensor]:
    """Masks keeping the top-``counts[layer]`` input channels of every layer by score."""
    plan = ChannelPlan(ctx, scores)
    return {name: m.to(ctx.current_masks[name].device) for name, m in plan.masks(counts).items()}


def allocate(ctx: PruneContext, scores: dict[str, Tensor],
             models: dict[str, LayerErrorModel]) -> dict[str, int]:
    """Per-layer kept channel counts: c_ℓ(ε) with ε found by bisection (on log ε) so the
    prunable weights really kept meet ``ctx.keep_budget()``; the closer of the two bracketing
    allocations wins, then single-channel moves close a remaining gap (coarse networks)."""
    plan = ChannelPlan(ctx, scores)
    target = ctx.keep_budget()

    def counts_at(log_eps: float) -> dict[str, int]:
        return {name: kept_channels(model, 10.0 ** log_eps) for name, model in models.items()}

    lo, hi = _LOG10_EPS_RANGE  # kept weights fall as ε grows; ε -> 0 keeps every channel
    lo_counts = {name: plan.scores[name].numel() for name in models}
    hi_counts = counts_at(hi)
    lo_kept, hi_kept = plan.kept_weights(lo_counts), plan.kept_weights(hi_counts)
    if lo_kept <= target:
        return lo_counts
    if hi_kept > target:
        warnings.warn(f"pfp: the budget keeps {target:,} prunable weights but one channel per layer (plus "
                      f"the channels that cannot be removed) keeps {hi_kept:,}; pruning as far as PFP can",
                      stacklevel=4)
        return hi_counts
    # Bisect until the bracketing allocations differ by a single channel (or ε converges).
    while sum(abs(lo_counts[n] - hi_counts[n]) for n in lo_counts) > 1 and hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        mid_counts = counts_at(mid)
        mid_kept = plan.kept_weights(mid_counts)
        if mid_kept >= target:
            lo, lo_counts, lo_kept = mid, mid_counts, mid_kept
        else:
            hi, hi_counts, hi_kept = mid, mid_counts, mid_kept
    counts, kept = (lo_counts, lo_kept) if lo_kept - target <= target - hi_kept else (hi_counts, hi_kept)
    return _refine(plan, counts, kept, target, 0.005 * ctx.remove_budget())


def _refine(plan: ChannelPlan, counts: dict[str, int], kept: int, target: int,
            tolerance: float) -> dict[str, int]:
    """Whole channels are coarse steps in small networks: move single channels (one layer ±1)
    while that brings the kept weights closer to the budget."""
    names = list(counts)
    error = abs(kept - target)
    for _ in range(len(names)):
        if error <= tolerance:
            break
        best = None
        for name in names:
            n = plan.scores[name].numel()
            for step in (1, -1):
                value = counts[name] + step
                if not max(1, plan.fixed[name]) <= value <= n:
                    continue
                trial = dict(counts, **{name: value})
                trial_error = abs(plan.kept_weights(trial) - target)
                if trial_error < error and (best is None or trial_error < best[0]):
                    best = (trial_error, trial)
        if best is None:
            break
        error, counts = best
    return counts


def group_masks(ctx: PruneContext, scores: dict[str, Tensor], models: dict[str, LayerErrorModel],
                coupled, round_to: int) -> dict[str, Tensor]:
    """Masks removing whole channel groups: the group plan's counts for c_ℓ(ε), with ε the
    largest on a fine log grid whose removal stays within the budget, then single steps
    (one group ±1 allowed count) where channels are too coarse to land on it."""
    plan = GroupPlan(ctx.graph(), ctx.layers, ctx.current_masks, by="in", coupled=coupled, round_to=round_to)
    if not plan.units:
        raise ValueError("pfp: no input channel group can be removed (every group is frozen"
                         + (f"; {plan.skipped_note()}" if plan.skipped else "") + ")")
    plan.rank(scores)
    target = ctx.remove_budget()
    # ascending ε: fewer channels kept, removal grows (what GroupPlan.fit bisects)
    grid = torch.logspace(*_LOG10_EPS_RANGE, steps=2048, dtype=torch.float64).tolist()

    def counts_of(eps: float) -> list[int]:
        return plan.counts_from_kept({name: kept_channels(model, eps) for name, model in models.items()}, scores)

    counts = plan.refine(plan.fit(grid, counts_of, target), target)
    ctx.warn_off_target("pfp", plan.removed_weights(counts), plan.constraints())
    return plan.masks(counts)


@register_method("pfp")
class ProvableFilterPruning(PruningMethod):
    structured = True
    data_informed = True
    description = "channel sensitivity on S, error-based allocation over whole channel groups (structured)"
    option_names = ("coupled", "round_to")

    def compute_masks(self, ctx: PruneContext):
        coupled = check_coupled(ctx.option("coupled", "sum"), extra=(PER_LAYER,))
        round_to = ctx.option("round_to", 1)
        if coupled == PER_LAYER and round_to != 1:
            raise ValueError(f"pfp: round_to={round_to!r} rounds whole channel groups and cannot be combined "
                             "with coupled='per_layer' (use coupled='sum')")
        scores = channel_sensitivities(ctx)
        models = error_models(ctx, scores)
        if coupled == PER_LAYER:
            return channel_masks(ctx, scores, allocate(ctx, scores, models))
        return group_masks(ctx, scores, models, coupled, round_to)
