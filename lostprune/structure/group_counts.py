"""Counting what a group-aware removal takes away, without building masks
(docs/methods.md §Group-aware variants), and the step-by-step refinement of per-group
removal counts towards a target — the two inner loops of ``GroupPlan``'s root searches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
from torch import Tensor

from ..core.masks import live_structure
from .graph import DEPTHWISE, IN, OUT, DependencyGraph


class WeightCounter:
    """Counts the prunable weights a removal takes away — the zeros of the masks
    ``GroupPlan.masks`` builds from the same keep vectors — without building masks.

    Per layer, M[r, c] = surviving weights of row r and input column c in the current mask;
    a removal zeroes rows (and columns); a channel is then structurally gone when all its
    producer rows or all its consumer columns are dead; kept = rowkeep · M · colkeep. Dense
    and structurally masked layers have M = inner · live_rows ⊗ live_cols, which makes every
    count O(rows + cols) instead of O(rows · cols).

    Rows and columns of all layers live in two flat arrays (layer ℓ at ``slices(ℓ)``), the
    channels of all prunable groups in one (group g from
    ``offset[g.id]``), so that an evaluation is a handful of vectorized numpy operations.
    """

    def __init__(self, graph: DependencyGraph, masks: Mapping[str, Tensor]):
        self.layer = {name: i for i, name in enumerate(masks)}
        self.matrix: dict[int, np.ndarray] = {}  # layer -> M, where M is not an outer product
        inner, live_rows, live_cols = [], [], []
        for i, mask in enumerate(masks.values()):
            inner.append(int(np.prod(mask.shape[2:])) if mask.dim() > 2 else 1)
            rows, cols, pairs = live_structure(mask)
            if pairs is not None:  # not an outer product: counted per (row, column) pair
                self.matrix[i] = pairs
            live_rows.append(rows)
            live_cols.append(cols)
        self.inner = np.array(inner, dtype=np.int64)
        self.outer = np.array([i not in self.matrix for i in range(len(inner))], dtype=bool)
        self.total = sum(mask.numel() for mask in masks.values())
        self.live_rows = np.concatenate(live_rows) if live_rows else np.zeros(0, dtype=bool)
        self.live_cols = np.concatenate(live_cols) if live_cols else np.zeros(0, dtype=bool)
        self.row_layer = np.repeat(np.arange(len(inner)), [len(r) for r in live_rows])
        self.col_layer = np.repeat(np.arange(len(inner)), [len(c) for c in live_cols])
        self.row_start = np.r_[0, np.cumsum([len(r) for r in live_rows])].astype(np.int64)
        self.col_start = np.r_[0, np.cumsum([len(c) for c in live_cols])].astype(np.int64)

        # channels of the prunable groups and the rows / columns of their members
        self.groups = [g for g in graph.groups if g.prunable]
        self.offset: dict[int, int] = {}
        sizes = [g.size for g in self.groups]
        channels = int(sum(sizes))
        self.forced_out = np.zeros(channels, dtype=bool)  # a producer outside the counted layers
        self.forced_in = np.zeros(channels, dtype=bool)
        self.has_in = np.zeros(channels, dtype=bool)
        self.member_rows: dict[int, np.ndarray] = {}  # id(member) -> global rows / columns [size, span]
        self.member_cols: dict[int, np.ndarray] = {}
        producer_rows, producer_channels, consumer_cols, consumer_channels = [], [], [], []
        base = 0
        for g in self.groups:
            self.offset[g.id] = base
            span_channels = np.arange(base, base + g.size)
            for m in g.members:
                if m.role == IN:
                    self.has_in[base : base + g.size] = True
                if m.role not in (OUT, DEPTHWISE, IN):
                    continue
                if m.module not in self.layer:
                    (self.forced_in if m.role == IN else self.forced_out)[base : base + g.size] = True
                    continue
                layer = self.layer[m.module]
                index = m.index.numpy()
                channel = np.repeat(span_channels, index.shape[1])
                if m.role == IN:
                    self.member_cols[id(m)] = self.col_start[layer] + index
                    consumer_cols.append(self.member_cols[id(m)].reshape(-1))
                    consumer_channels.append(channel)
                else:
                    self.member_rows[id(m)] = self.row_start[layer] + index
                    producer_rows.append(self.member_rows[id(m)].reshape(-1))
                    producer_channels.append(channel)
            base += g.size
        self.producer_rows, self.producer_channels = flat(producer_rows), flat(producer_channels)
        self.consumer_cols, self.consumer_channels = flat(consumer_cols), flat(consumer_channels)

    def slices(self, layer: str | int) -> tuple[slice, slice]:
        """Where a layer (name or index) sits in the flat row and column arrays."""
        i = self.layer[layer] if isinstance(layer, str) else layer
        return (
            slice(int(self.row_start[i]), int(self.row_start[i + 1])),
            slice(int(self.col_start[i]), int(self.col_start[i + 1])),
        )

    def fresh(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column masks that zero nothing."""
        return np.ones(len(self.live_rows), dtype=bool), np.ones(len(self.live_cols), dtype=bool)

    @staticmethod
    def _per_layer(start: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Per layer: how many of its entries of bool ``values`` are set (int64)."""
        if len(start) == 1:
            return np.zeros(0, dtype=np.int64)
        return np.add.reduceat(values, start[:-1], dtype=np.int64)  # every layer has rows and columns

    def removed_channels(self, rowmask: np.ndarray, colmask: np.ndarray) -> np.ndarray:
        """Bool over the groups' channels (group g at ``offset[g.id]``): gone after zeroing
        rowmask / colmask."""
        rows, cols = rowmask & self.live_rows, colmask & self.live_cols
        row_alive = rows & (self._per_layer(self.col_start, cols) > 0)[self.row_layer]
        col_alive = cols & (self._per_layer(self.row_start, rows) > 0)[self.col_layer]
        for layer, m in self.matrix.items():
            r, c = self.slices(layer)
            row_alive[r] = rowmask[r] & (m @ colmask[c] > 0)
            col_alive[c] = colmask[c] & (rowmask[r] @ m > 0)
        alive_out = self.forced_out.copy()
        alive_out[self.producer_channels[row_alive[self.producer_rows]]] = True
        alive_in = self.forced_in.copy()
        alive_in[self.consumer_channels[col_alive[self.consumer_cols]]] = True
        return ~alive_out | (self.has_in & ~alive_in)

    def final(self, rowmask: np.ndarray, colmask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column keep vectors once the channels that zeroing rowmask / colmask
        removes structurally are gone from every member: their producer rows and their
        consumer columns (a constant channel's columns too — the constant is dropped)."""
        gone = self.removed_channels(rowmask, colmask)
        rowkeep, colkeep = rowmask & self.live_rows, colmask & self.live_cols
        rowkeep[self.producer_rows[gone[self.producer_channels]]] = False
        colkeep[self.consumer_cols[gone[self.consumer_channels]]] = False
        return rowkeep, colkeep

    def removed_weights(self, rowkeep: np.ndarray, colkeep: np.ndarray) -> int:
        """Prunable weights that final keep vectors (``final``) remove."""
        rows = self._per_layer(self.row_start, rowkeep)
        cols = self._per_layer(self.col_start, colkeep)
        kept = float((self.inner * rows * cols)[self.outer].sum())
        for layer, m in self.matrix.items():
            r, c = self.slices(layer)
            kept += float(rowkeep[r].astype(np.float64) @ m @ colkeep[c].astype(np.float64))
        return int(self.total - round(kept))


def flat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


class _Plan(Protocol):
    """What a refinement reads of its plan (``GroupPlan``, which imports this module)."""

    units: Sequence

    def removed_weights(self, counts: Sequence[int]) -> int: ...


class Refinement:
    """Moves units one allowed step off the common fraction to close the gap to the
    target: greedily by each move's own effect (2n evaluations a round), then — in small
    networks, where steps are coarse — by pairs (+1 here, −1 there)."""

    def __init__(self, plan: _Plan, counts: list[int]):
        self.plan = plan
        self.base = [u.allowed.index(u.size - c) for u, c in zip(plan.units, counts)]

    def counts(self, index: Sequence[int]) -> list[int]:
        return [u.size - u.allowed[i] for u, i in zip(self.plan.units, index)]

    def valid(self, index: Sequence[int]) -> bool:
        return all(
            abs(i - b) <= 1 and 0 <= i < len(u.allowed) for i, b, u in zip(index, self.base, self.plan.units)
        )

    def moved(self, index: list[int], moves: Mapping[int, int]) -> list[int] | None:
        trial = list(index)
        for unit, step in moves.items():
            trial[unit] += step
        return trial if self.valid(trial) else None

    def run(self, target: int, tolerance: float) -> list[int]:
        removed_of = self.plan.removed_weights
        index = list(self.base)
        removed = removed_of(self.counts(index))
        n = len(index)
        for _ in range(4):  # greedy rounds on single-move effects
            gap = target - removed
            if abs(gap) <= tolerance:
                return self.counts(index)
            step = -1 if gap > 0 else 1  # one allowed kept count down = remove more
            effects = []
            for unit in range(n):
                trial = self.moved(index, {unit: step})
                if trial is not None:
                    effects.append((removed_of(self.counts(trial)) - removed, unit))
            chosen, total = {}, 0
            for effect, unit in sorted(effects, key=lambda e: -abs(e[0])):
                if abs(gap - (total + effect)) < abs(gap - total):
                    chosen[unit], total = step, total + effect
            trial = self.moved(index, chosen) if chosen else None
            if trial is None:
                break
            trial_removed = removed_of(self.counts(trial))
            if abs(target - trial_removed) >= abs(gap):
                break
            index, removed = trial, trial_removed
        if n <= 40:  # pair moves cost O(n²) evaluations: only where steps are coarse
            for _ in range(2 * n):
                error = abs(target - removed)
                if error <= tolerance:
                    break
                best = None
                for a in range(n):
                    for moves in [{a: -1}, {a: 1}] + [{a: -1, b: 1} for b in range(n) if b != a]:
                        trial = self.moved(index, moves)
                        if trial is None:
                            continue
                        trial_removed = removed_of(self.counts(trial))
                        if abs(target - trial_removed) < error and (
                            best is None or abs(target - trial_removed) < abs(target - best[1])
                        ):
                            best = (trial, trial_removed)
                if best is None:
                    break
                index, removed = best
        return self.counts(index)
