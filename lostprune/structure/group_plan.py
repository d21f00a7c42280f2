"""Group-aware structured pruning (docs/methods.md §Group-aware variants): score, allocate and
remove whole channel groups.

A structured method prunes *units*: the prunable channel groups of the dependency graph that
it may touch. Removing channel k of a unit removes it from every member at once (all producer
rows, BN entries, consumer columns), so what the masks remove is what slicing really drops.

    plan = GroupPlan(graph, layers, current_masks, by="out", coupled="sum", round_to=8)
    plan.rank({layer: score per output filter})   # unit score = reduce over its members
    counts = plan.fit_uniform(target)              # same fraction of every unit (FT)
    masks = plan.masks(counts)                     # {layer: 0/1 weight mask}

A method with its own allocation (PFP: c_ℓ(ε) kept input channels per layer from its error
analysis) works the same way with ``by="in"``:

    plan = GroupPlan(ctx.graph(), ctx.layers, ctx.current_masks, by="in", coupled=..., round_to=...)
    plan.rank(s)                                   # s = {layer: sensitivity per input column}
    counts_of = lambda eps: plan.counts_from_kept({layer: c_l(eps)}, s)   # snapped, rounded
    counts = plan.fit(eps_grid, counts_of, ctx.remove_budget())   # ascending ε: removal grows
    masks = plan.masks(counts)

``plan.removed_weights(counts)`` is exactly the number ``PruneStats`` will report, so a root
search on it hits the ratio on what is really removed.

``coupled``: how the members' scores of a channel combine into the unit's score — ``"sum"``
(default), ``"mean"``, ``"max"``, ``"min"`` or a callable ``[members, size] -> [size]`` — or
``"skip"`` to leave coupled groups (several producers: residual adds, depthwise convs) alone.
``round_to``: kept channels per unit are a multiple of it (or all of the unit's live ones),
so sliced layers run at full vector width; ``"auto"`` is the convolution kernels' channel tile
on the layers' device (``channel_multiple``: 16 on AVX-512 CPUs, 8 on AVX2 and CUDA).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..core.masks import outer_mask, single_value
from .granularity import channel_multiple
from .graph import DEPTHWISE, IN, OUT, ChannelGroup, DependencyGraph, GraphError
from .group_counts import Refinement, WeightCounter, flat
from .search import last_within

C = TypeVar("C")  # a candidate of a fit: a ratio, a threshold, ...

Reduce = Callable[[Tensor], Tensor]

REDUCES: dict[str, Reduce] = {
    "sum": lambda s: s.sum(0),
    "mean": lambda s: s.mean(0),
    "max": lambda s: s.amax(0),
    "min": lambda s: s.amin(0),
}
COUPLED_CHOICES = (*REDUCES, "skip")


def check_coupled(coupled, extra: tuple[str, ...] = ()) -> str | Reduce:
    """Validate the ``coupled`` option (a reduce name, ``"skip"``, a callable, or one of a
    method's ``extra`` choices)."""
    choices = (*COUPLED_CHOICES, *extra)
    if callable(coupled) or coupled in choices:
        return coupled
    raise ValueError(
        f"coupled must be one of {', '.join(map(repr, choices))} or a callable "
        f"[members, size] -> [size], got {coupled!r}"
    )


def check_round_to(round_to, device: torch.device | str | None = None) -> int:
    """Validate ``round_to`` (a positive integer, or ``"auto"``: ``channel_multiple(device)``)."""
    if isinstance(round_to, str) and round_to == "auto":
        return channel_multiple(device)
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise ValueError(
            f"round_to must be a positive integer (kept channels per group are rounded to a "
            f"multiple of it; 1 = no rounding) or 'auto' (the convolution kernels' channel tile "
            f"on the model's device), got {round_to!r}"
        )
    return int(round_to)


def allowed_kept(alive: int, round_to: int) -> list[int]:
    """Kept-channel counts a unit with ``alive`` live channels may end with: multiples of
    ``round_to`` from ``round_to`` up, and ``alive`` itself (nothing more removed)."""
    values = list(range(round_to, alive + 1, round_to))
    if not values or values[-1] != alive:
        values.append(alive)
    return values


def snap(kept: float, allowed: Sequence[int]) -> int:
    """The allowed count nearest to ``kept`` (ties keep more)."""
    i = bisect.bisect_left(allowed, kept)
    if i == 0:
        return allowed[0]
    if i == len(allowed):
        return allowed[-1]
    below, above = allowed[i - 1], allowed[i]
    return below if kept - below < above - kept else above


@dataclass
class Unit:
    """One prunable channel group, as a method sees it."""

    group: ChannelGroup
    dead: Tensor  # bool [size]: already removed by the current masks (never revived)
    allowed: list[int]  # kept counts it may end with, ascending
    score: Tensor | None = None  # [size] unit score per channel (after rank)
    order: Tensor | None = None  # channels in removal order: dead first, then ascending score

    @property
    def size(self) -> int:
        return self.group.size

    @property
    def alive(self) -> int:
        return self.size - int(self.dead.sum())

    def removed(self, count: int) -> Tensor:
        """Bool [size]: the first ``count`` channels in removal order."""
        gone = torch.zeros(self.size, dtype=torch.bool)
        gone[self.order[:count]] = True
        return gone


class GroupPlan:
    """The units a structured method may prune, their ranking, and what a removal costs.

    Args:
        graph: the model's dependency graph (``build_graph``).
        layers: {name: module} the method may touch (a unit needs all its producers among
            them for ``by="out"``, all its consumers for ``by="in"``).
        current_masks: {layer: 0/1 weight mask}; channels they already remove stay removed.
        by: ``"out"`` — scores are per output filter of the producers (FT); ``"in"`` —
            scores are per input channel of the consumers (PFP). Either way a removed
            channel's producer rows and consumer columns are zeroed.
        coupled, round_to: see the module docstring.
    """

    def __init__(
        self,
        graph: DependencyGraph,
        layers: Mapping[str, nn.Module],
        current_masks: Mapping[str, Tensor],
        *,
        by: str = "out",
        coupled="sum",
        round_to: int | str = 1,
    ):
        if by not in (OUT, IN):
            raise ValueError(f"by must be 'out' (filters) or 'in' (input channels), got {by!r}")
        self.graph = graph
        self.layers = dict(layers)
        self.current_masks = dict(current_masks)
        self.by = by
        self.coupled = check_coupled(coupled)
        weight = next((getattr(m, "weight", None) for m in self.layers.values()), None)
        self.round_to = check_round_to(round_to, weight.device if isinstance(weight, Tensor) else None)
        self.round_to_option = round_to
        if self.coupled != "skip":
            refuse_unsupported_coupling(graph)
        self.counter = WeightCounter(graph, {n: self.current_masks[n] for n in self.layers})
        dead = self.counter.removed_channels(*self.counter.fresh())
        self.skipped: list[ChannelGroup] = []  # coupled groups left alone by coupled="skip"
        self.units: list[Unit] = []
        for group in graph.groups:
            if not group.prunable or not self._selected(group):
                continue
            if group.coupled and self.coupled == "skip":
                self.skipped.append(group)
                continue
            start = self.counter.offset[group.id]
            gone = torch.from_numpy(dead[start : start + group.size].copy())
            alive = group.size - int(gone.sum())
            self.units.append(Unit(group, gone, allowed_kept(alive, self.round_to)))
        # the units' channels in the counter's numbering, and their removal ranks (see rank)
        self._unit_channels = flat([self.counter.offset[u.group.id] + np.arange(u.size) for u in self.units])
        self._ranks: tuple[list, np.ndarray] | None = None

    def _members(self, group: ChannelGroup):
        if self.by == OUT:
            return [m for m in group.members if m.role in (OUT, DEPTHWISE)]
        return [m for m in group.members if m.role == IN]

    def _selected(self, group: ChannelGroup) -> bool:
        members = self._members(group)
        return bool(members) and all(m.module in self.layers for m in members)

    # ------------------------------------------------------------------ scores
    def group_scores(self, scores: Mapping[str, Tensor]) -> list[Tensor]:
        """Per unit, the score of each channel: ``coupled`` reduce over the members' scores.

        ``scores[layer]``: one value per output filter (``by="out"``) or per input column
        (``by="in"``; a channel flattened into a linear layer reduces its span of columns
        with the same reduce). Members without scores are left out of the reduce."""
        reduce = REDUCES["sum"] if self.coupled == "skip" else REDUCES.get(self.coupled, self.coupled)
        result = []
        for unit in self.units:
            values = []
            for m in self._members(unit.group):
                if m.module not in scores:
                    continue
                layer_scores = self._layer_scores(m.module, scores[m.module], reduce)
                spans = layer_scores[m.index]  # [size, span]
                values.append(spans[:, 0] if m.span == 1 else reduce(spans.T))
            if not values:
                raise ValueError(f"no scores for any member of {unit.group!r}")
            score = reduce(torch.stack(values))
            if score.shape != (unit.size,):
                raise ValueError(
                    f"coupled reduce returned shape {tuple(score.shape)}, expected ({unit.size},)"
                )
            result.append(score)
        return result

    def _layer_scores(self, name: str, values, reduce: Reduce) -> Tensor:
        """A layer's scores per weight row (``by="out"``) or column (``by="in"``): a grouped
        conv's per-input-channel scores reduced over its groups (column j of the weight
        reads channel j of every group, and they go together)."""
        layer = self.layers[name]
        values = torch.as_tensor(values).detach().flatten().cpu().double()
        extent = layer.weight.shape[0 if self.by == OUT else 1]
        groups = getattr(layer, "groups", 1)
        if self.by == IN and groups > 1 and values.numel() == extent * groups:
            values = reduce(values.view(groups, extent))
        if values.numel() != extent:
            raise ValueError(
                f"scores[{name!r}] has {values.numel()} values but the layer has "
                f"{extent} {'output filters' if self.by == OUT else 'input columns'}"
            )
        return values

    def rank(self, scores: Mapping[str, Tensor]) -> None:
        """Set every unit's score and removal order (dead channels first, then ascending
        score; ties by channel index)."""
        for unit, score in zip(self.units, self.group_scores(scores)):
            values, dead = score.detach().cpu().numpy(), unit.dead.numpy()  # (numpy: small vectors)
            if not np.isfinite(values[~dead]).all():
                raise ValueError(f"scores of {unit.group!r} contain NaN or inf")
            unit.score = score
            unit.order = torch.from_numpy(np.argsort(np.where(dead, -np.inf, values), kind="stable"))

    # ------------------------------------------------------------------ counts
    def counts_for_kept(self, kept: Sequence[float]) -> list[int]:
        """Removal counts from wanted kept counts per unit (snapped to the allowed ones)."""
        return [u.size - snap(k, u.allowed) for u, k in zip(self.units, kept)]

    def uniform_counts(self, fraction: float) -> list[int]:
        """The same fraction of every unit's channels removed (rounded, snapped)."""
        return self.counts_for_kept([u.size - math.floor(fraction * u.size + 0.5) for u in self.units])

    def counts_from_kept(self, kept: Mapping[str, int], scores: Mapping[str, Tensor]) -> list[int]:
        """Per-unit removal counts from kept columns per layer (e.g. PFP's c_ℓ, ``by="in"``):
        layer ℓ wants its top-``kept[ℓ]`` input columns by ``scores[ℓ]``; a unit keeps as many
        channels as its most demanding member wants from it (then snapped). Which channels a
        unit keeps follows its own ranking (``rank``)."""
        wanted: list[int | None] = [None] * len(self.units)  # None: no member has a kept count
        for name, count in kept.items():
            if name not in self.layers:
                raise KeyError(f"kept names {name!r}, which is not among the layers of this plan")
            layer_scores = torch.as_tensor(scores[name]).detach().flatten().cpu().double()
            top = torch.zeros(layer_scores.numel(), dtype=torch.bool)
            top[torch.sort(layer_scores, descending=True, stable=True).indices[: max(0, int(count))]] = True
            columns = self.layers[name].weight.shape[1]
            if top.numel() != columns:  # a grouped conv: a column is wanted where any group wants it
                top = top.view(-1, columns).any(0)
            for i, unit in enumerate(self.units):
                for m in self._members(unit.group):
                    if m.module == name:
                        wanted[i] = max(wanted[i] or 0, int(top[m.index].any(1).sum()))
        return self.counts_for_kept([u.size if w is None else w for u, w in zip(self.units, wanted)])

    # ------------------------------------------------------------------ effect
    def _removal_ranks(self) -> np.ndarray:
        """Per unit channel (units concatenated): its place in the unit's removal order."""
        orders = [u.order for u in self.units]
        if self._ranks is None or any(a is not b for a, b in zip(self._ranks[0], orders)):
            ranks = np.empty(sum(u.size for u in self.units), dtype=np.int64)
            start = 0
            for unit in self.units:
                if unit.order is None:
                    ranks[start : start + unit.size] = unit.size  # never removed; counts > 0 are refused
                else:
                    ranks[start + unit.order.numpy()] = np.arange(unit.size)
                start += unit.size
            self._ranks = (orders, ranks)
        return self._ranks[1]

    def _zeroed(self, counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Final flat row and column keep vectors (see ``WeightCounter``): the removed
        channels' producer rows and consumer columns zeroed, with what that removes
        structurally."""
        counts = np.asarray(counts, dtype=np.int64).reshape(len(self.units))
        if any(u.order is None and c > 0 for u, c in zip(self.units, counts.tolist())):
            raise RuntimeError("rank(scores) must run before removal counts are evaluated")
        gone = self._removal_ranks() < np.repeat(counts, [u.size for u in self.units])
        marked = np.zeros(len(self.counter.forced_out), dtype=bool)
        marked[self._unit_channels[gone]] = True
        counter = self.counter
        rows, cols = counter.fresh()
        rows[counter.producer_rows[marked[counter.producer_channels]]] = False
        cols[counter.consumer_cols[marked[counter.consumer_channels]]] = False
        return counter.final(rows, cols)

    def removed_weights(self, counts: Sequence[int]) -> int:
        """Prunable weights the masks of ``counts`` remove: the zeros ``masks(counts)`` adds,
        the count ``PruneStats`` reports."""
        return self.counter.removed_weights(*self._zeroed(counts))

    def masks(self, counts: Sequence[int]) -> dict[str, Tensor]:
        """{layer: 0/1 weight mask}: the current masks with the removed channels zeroed in
        every member (producer rows and consumer columns: a removed filter's constant is
        dropped, not left for slicing to fold)."""
        rows, cols = self._zeroed(counts)
        masks = {}
        for name, mask in self.current_masks.items():
            if name not in self.layers:
                continue
            row_slice, col_slice = self.counter.slices(name)
            layer_rows, layer_cols = rows[row_slice], cols[col_slice]
            cut = [
                (dim, keep)
                for dim, keep in ((0, layer_rows), (1, layer_cols))
                if keep is not None and dim < mask.dim() and not keep.all()
            ]
            if not cut:
                masks[name] = mask.clone()  # (a ones_view comes out materialized)
                continue
            value = single_value(mask)
            if value is not None and bool(value == 1) and mask.dim() >= 2:  # an unpruned layer
                masks[name] = outer_mask(torch.from_numpy(layer_rows), torch.from_numpy(layer_cols), mask)
                continue
            # times 0/1 row and column vectors: a broadcast multiply is several times faster on
            # CPU than a copy followed by an indexed zero fill
            factor = None
            for dim, keep in cut:
                shape = [1] * mask.dim()
                shape[dim] = -1
                vector = torch.from_numpy(keep).to(device=mask.device, dtype=mask.dtype).view(shape)
                factor = vector if factor is None else factor * vector
            masks[name] = mask * factor
        return masks

    # ------------------------------------------------------------------ search
    def fit(self, candidates: Sequence[C], counts_of: Callable[[C], list[int]], target: int) -> list[int]:
        """Bisect ``candidates`` (ordered so that removal grows) for the last one whose
        counts remove at most ``target`` weights; returns its counts."""
        return counts_of(candidates[self.fit_index(candidates, counts_of, target)])

    def fit_index(self, candidates: Sequence[C], counts_of: Callable[[C], list[int]], target: int) -> int:
        """The index ``fit`` chooses (``search.last_within``)."""
        return last_within(len(candidates), lambda i: self.removed_weights(counts_of(candidates[i])), target)

    def fit_uniform(self, target: int, tolerance: float = 0.005) -> list[int]:
        """Counts removing ``target`` weights with the same fraction of every unit; where
        whole channels are too coarse a step, units then move one allowed step each (staying
        within one step of the common fraction) while that brings removal closer."""
        if not self.units:
            raise ValueError(
                "no channel group can be pruned (every group is frozen"
                + (", or coupled and skipped by coupled='skip'" if self.skipped else "")
                + ")"
            )
        if any(u.order is None for u in self.units):
            raise RuntimeError("rank(scores) must run before fit_uniform")
        # every fraction where some unit's rounded count steps: (k - 0.5) / size
        points = np.unique(
            np.concatenate([[0.0]] + [(np.arange(1, u.size + 1) - 0.5) / u.size for u in self.units])
        ).tolist()
        return self.refine(self.fit(points, self.uniform_counts, target), target, tolerance)

    def refine(self, counts: list[int], target: int, tolerance: float = 0.005) -> list[int]:
        """Where whole channels are too coarse a step to land within ``tolerance·target`` of
        ``target`` removed weights, move units one allowed step off ``counts`` while that
        brings removal closer."""
        if abs(target - self.removed_weights(counts)) > tolerance * target:
            counts = Refinement(self, counts).run(target, tolerance * target)
        return counts

    def constraints(self) -> list[str]:
        """The options that may keep this plan off a removal target, for warnings."""
        why = [self.skipped_note()] if self.skipped else []
        if self.round_to > 1:
            auto = " (auto)" if self.round_to_option == "auto" else ""
            why.append(f"round_to={self.round_to}{auto} rounds kept channels")
        return why

    def skipped_note(self) -> str:
        return f"coupled='skip' leaves {len(self.skipped)} coupled groups alone"

    def summary(self, counts: Sequence[int]) -> str:
        lines = []
        for unit, count in zip(self.units, counts):
            producers = ", ".join(m.module for m in unit.group.producers)
            lines.append(f"  group {unit.group.id} [{producers}]: keep {unit.size - count}/{unit.size}")
        return "\n".join(lines)


def refuse_unsupported_coupling(graph: DependencyGraph) -> None:
    """A coupled group frozen by an op the graph does not understand would silently keep a
    whole stage of channels: name the node and op, and the ways out."""
    for group in graph.groups:
        if (
            not group.prunable
            and group.coupled
            and group.reason
            and group.reason.startswith("unsupported op")
        ):
            producers = ", ".join(m.module for m in group.producers)
            raise GraphError(
                f"a coupled channel group ({group.size} channels produced by {producers}) passes an {group.reason}; "
                "its channels cannot be removed consistently. Pass coupled='skip' to leave coupled groups alone, "
                "or leaf_modules=[...] to make the op's module opaque."
            )
