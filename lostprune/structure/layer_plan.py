"""Per-layer structured pruning, the paper's way (docs/methods.md §FT, §PFP).

Each layer keeps its own top-k output filters (``by="out"``, FT) or input channels
(``by="in"``, PFP) by score, as in the original: no coupled groups. Structure is simulated
with masks, and what the removals imply is added by :class:`.propagation.Propagation`: a
channel left constant is dropped by its readers, a filter no one reads is zeroed. So
``removed_weights(kept)`` — the number a root search fits — is exactly the number of zeros
the masks of ``masks(kept)`` add, and exactly what ``PruneStats`` reports.

    plan = LayerPlan(graph, layers, current_masks, by="out")
    plan.rank({layer: L1 norm per filter})
    kept = {layer: k_l}                       # e.g. the same fraction of every layer's filters
    plan.removed_weights(kept), plan.masks(kept)

Which rows / columns a layer may lose (``candidates``): those of ungrouped convs and linear
layers (the original never prunes grouped or depthwise convs: their weights go only through
propagation), and for ``by="out"`` not the rows whose channel is a network output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from .graph import DependencyGraph
from .propagation import Propagation
from .search import last_within

C = TypeVar("C")  # a candidate of a fit: a ratio, a threshold, ...


class LayerPlan:
    """Per-layer kept counts -> final masks and removed weights, propagation included.

    Args:
        graph: the model's dependency graph (its trace).
        layers: {name: module} the method prunes.
        current_masks: {layer: 0/1 weight mask}; removed weights are never revived.
        by: ``"out"`` — counts are kept output filters per layer; ``"in"`` — kept input
            channels (features of a linear layer) per layer.
    """

    def __init__(
        self,
        graph: DependencyGraph,
        layers: Mapping[str, nn.Module],
        current_masks: Mapping[str, Tensor],
        *,
        by: str,
    ):
        if by not in ("out", "in"):
            raise ValueError(f"by must be 'out' (filters) or 'in' (input channels), got {by!r}")
        self.by = by
        self.layers = dict(layers)
        self.current_masks = dict(current_masks)
        self.propagation = Propagation(graph, self.layers, self.current_masks)
        prop = self.propagation
        self.total = sum(int(m.weight.numel()) for m in self.layers.values())
        self.base_kept = prop.kept_weights(*prop.propagate(*prop.fresh()))
        live = prop.live_rows if by == "out" else prop.live_cols
        protected = prop.output_rows() if by == "out" else np.zeros(len(live), dtype=bool)
        self.candidates: dict[str, np.ndarray] = {}  # layer -> bool [extent]: may be removed
        self.extent: dict[str, int] = {}
        for name, module in self.layers.items():
            where = self._where(name)
            self.extent[name] = where.stop - where.start
            if getattr(module, "groups", 1) == 1:
                self.candidates[name] = ~protected[where]
        self.units = [name for name, c in self.candidates.items() if c.any()]
        self.live = {name: int(live[self._where(name)].sum()) for name in self.layers}
        self._rank: np.ndarray | None = None  # flat: place in the layer's keeping order

    def _where(self, name: str) -> slice:
        layer = self.propagation.layers[name]
        return layer.rows if self.by == "out" else layer.cols

    # ------------------------------------------------------------------ ranking
    def rank(self, scores: Mapping[str, Tensor]) -> None:
        """Keeping order per unit: live candidates by descending score (ties: lower index
        first), then the ones already removed. Other rows / columns are always kept."""
        prop = self.propagation
        live = prop.live_rows if self.by == "out" else prop.live_cols
        rank = np.full(len(live), -1, dtype=np.int64)
        for name in self.units:
            where = self._where(name)
            s = torch.as_tensor(scores[name]).detach().flatten().double().cpu()
            if s.numel() != self.extent[name]:
                what = "output filters" if self.by == "out" else "input channels"
                raise ValueError(
                    f"scores[{name!r}] has {s.numel()} values but the layer has {self.extent[name]} {what}"
                )
            if not torch.isfinite(s).all():
                raise ValueError(f"scores of layer {name!r} contain NaN or inf")
            candidate = torch.from_numpy(self.candidates[name])
            alive = torch.from_numpy(live[where].copy()) & candidate
            # fixed (non-candidate) first so they are always inside the kept prefix, then live by
            # score, then dead
            key = torch.where(
                ~candidate, torch.full_like(s, math.inf), torch.where(alive, s, torch.full_like(s, -math.inf))
            )
            order = torch.sort(key, descending=True, stable=True).indices.numpy()
            layer_rank = np.empty(len(order), dtype=np.int64)
            layer_rank[order] = np.arange(len(order))
            rank[where] = layer_rank
        self._rank = rank

    def fixed(self, name: str) -> int:
        """Rows / columns of the layer that are never removed (not candidates)."""
        return int((~self.candidates[name]).sum()) if name in self.candidates else self.extent[name]

    # ------------------------------------------------------------------ effect of kept counts
    def keep_vectors(self, kept: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """Flat row and column keep vectors before propagation."""
        if self._rank is None:
            raise RuntimeError("rank(scores) must run before kept counts are evaluated")
        rows, cols = self.propagation.fresh()
        chosen = rows if self.by == "out" else cols
        limit = np.full(len(chosen), np.iinfo(np.int64).max, dtype=np.int64)
        for name, count in kept.items():
            limit[self._where(name)] = max(int(count), self.fixed(name))
        chosen &= (self._rank < limit) | (self._rank < 0)
        return rows, cols

    def final(self, kept: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
        return self.propagation.propagate(*self.keep_vectors(kept))

    def removed_weights(self, kept: Mapping[str, int]) -> int:
        """Prunable weights the masks of ``kept`` remove (zeros in the masks, all layers)."""
        return self.total - self.propagation.kept_weights(*self.final(kept))

    def masks(self, kept: Mapping[str, int]) -> dict[str, Tensor]:
        return self.propagation.masks(*self.final(kept), self.current_masks)

    # ------------------------------------------------------------------ search
    def fit(
        self,
        candidates: Sequence[C],
        kept_of: Callable[[C], dict[str, int]],
        target: int,
        tolerance: float = 0.005,
    ) -> dict[str, int]:
        """Kept counts from the family ``kept_of(c)``, ``candidates`` ordered so that removal
        grows: the member closest to ``target`` removed weights (``search.last_within``), then single
        moves (one layer keeps one more / one fewer) while they bring removal closer and it
        is more than ``tolerance · target`` away."""
        removed: dict[int, int] = {}

        def removed_at(i: int) -> int:
            if i not in removed:
                removed[i] = self.removed_weights(kept_of(candidates[i]))
            return removed[i]

        lo = last_within(len(candidates), removed_at, target)
        hi = min(lo + 1, len(candidates) - 1)  # the first over the target, unless none is
        best = min((lo, hi), key=lambda i: (abs(removed_at(i) - target), i))
        return self.refine(kept_of(candidates[best]), target, tolerance)

    def refine(self, kept: dict[str, int], target: int, tolerance: float = 0.005) -> dict[str, int]:
        """While removal is more than ``tolerance · target`` from ``target``: the single move
        (one unit keeps one more or one fewer) that brings it closest, and in small networks,
        where one channel is a coarse step, a pair of opposite moves where no single one helps."""
        kept = {name: kept.get(name, self.extent[name]) for name in self.units}
        removed = self.removed_weights(kept)
        small = len(self.units) <= 40  # pair moves cost O(n²) evaluations

        def valid(name: str, value: int) -> bool:
            return max(1, self.fixed(name)) <= value <= self.extent[name]

        for _ in range(4 * len(self.units) + 8):
            error = abs(target - removed)
            if error <= tolerance * target:
                break
            moves = [{name: step} for name in self.units for step in (-1, 1)]
            best = self._best(kept, moves, target, error, valid)
            if best is None and small:
                pairs = [{a: -1, b: 1} for a in self.units for b in self.units if a != b]
                best = self._best(kept, pairs, target, error, valid)
            if best is None:
                break
            kept, removed = best
        return kept

    def _best(self, kept: dict[str, int], moves: list[dict[str, int]], target: int, error: int, valid):
        """(kept, removed) after the valid move that brings removal closest to ``target``,
        if it beats ``error``; else None."""
        best = None
        for move in moves:
            if not all(valid(name, kept[name] + step) for name, step in move.items()):
                continue
            trial = dict(kept)
            for name, step in move.items():
                trial[name] += step
            removed = self.removed_weights(trial)
            if abs(target - removed) < error and (
                best is None or abs(target - removed) < abs(target - best[1])
            ):
                best = (trial, removed)
        return best
