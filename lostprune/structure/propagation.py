"""What removing rows and columns of prunable layers takes away once dead channels propagate,
tensor by tensor through the traced graph (docs/methods.md §Propagation).

Two rules of the original's FilterNet, made structural (no data needed):

* a channel that can only carry a constant — every weight row that feeds it is zero, so it
  holds a bias or BN shift (or what activations, pooling and zero padding make of it: values
  that do not depend on the input) — is *dropped* by each prunable layer that reads it: the
  column is zeroed (the constant is lost; retraining recovers it), as the original's
  constant-channel hooks do;
* a filter whose output no one reads any more (every reader's column zero, through BN,
  activations, residual adds, concats, reshapes, attention values) is zeroed, as the
  original's zero-gradient rule does.

Unlike the channel groups of :mod:`.graph`, which unite every tensor a residual channel
passes through, the rules see each tensor apart: after ``out = block(x) + x`` a stem filter
whose channel is dead in ``x`` is dropped by the first block's conv that reads ``x``, while
the next block, which reads ``out``, keeps the column (the add made the channel live again).

:class:`Propagation` compiles the fx trace of a :class:`.graph.DependencyGraph` once — with
the same walk over the same ops as the graph (:class:`.walk.ChannelWalk`; a label here is a
channel's index in flat boolean arrays) — into a list of events; one evaluation is a handful
of numpy operations per layer and residual add, so a method's root search can afford
hundreds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, fx, nn

from ..core.masks import live_structure, outer_mask, single_value
from .axes import Channels
from .graph import DependencyGraph
from .walk import ChannelWalk


@dataclass
class _Layer:
    """A prunable conv / linear layer: its rows and input channels in the flat arrays."""

    name: str
    rows: slice
    cols: slice  # one entry per input channel / feature (Cin, not Cin / groups)
    groups: int
    inner: int  # kernel taps per (row, column) pair
    pairs: np.ndarray | None  # [Cout, Cin / groups] live taps per pair where the mask is not an outer product


class Propagation:
    """Compiled propagation of row / column removals over one model's trace.

    Args:
        graph: the model's dependency graph (its fx trace carries each node's shape).
        layers: {name: module} the caller may zero rows and columns of; other conv / linear
            layers are opaque (they read every input channel; their outputs are live).
        current_masks: {layer: 0/1 weight mask}; what they already remove stays removed.
    """

    def __init__(
        self, graph: DependencyGraph, layers: Mapping[str, nn.Module], current_masks: Mapping[str, Tensor]
    ):
        self.names = list(layers)
        self.modules = graph.modules
        self.layers: dict[str, _Layer] = {}
        live_rows, live_cols = [], []
        row_start = col_start = 0
        for name, module in layers.items():
            mask = current_masks[name]
            cout = mask.shape[0]
            groups = getattr(module, "groups", 1)
            cin = mask.shape[1] * groups if mask.dim() > 1 else 1
            inner = int(np.prod(mask.shape[2:])) if mask.dim() > 2 else 1
            rows, cols, pairs = live_structure(mask, groups)
            self.layers[name] = _Layer(
                name,
                slice(row_start, row_start + cout),
                slice(col_start, col_start + cin),
                groups,
                inner,
                pairs,
            )
            live_rows.append(rows)
            live_cols.append(cols)
            row_start += cout
            col_start += cin
        self.live_rows = np.concatenate(live_rows) if live_rows else np.zeros(0, dtype=bool)
        self.live_cols = np.concatenate(live_cols) if live_cols else np.zeros(0, dtype=bool)
        self.events: list[tuple] = []
        self.read_always: list[
            np.ndarray
        ] = []  # channels read whatever the masks (network output, unknown ops)
        self.layer_output: dict[str, np.ndarray] = {}  # layer -> its (first) output channels
        compiler = _Compiler(graph.fx_graph, graph.modules, self)
        compiler.run()
        self.channels = compiler.count
        self._unshare()
        self.reaches_output = self._reaching_output()

    def _unshare(self) -> None:
        """A layer called more than once (shared weights) is left opaque: each call reads all
        of its inputs and its outputs are live, so neither rule touches it."""
        calls: dict[str, int] = {}
        for event in self.events:
            if event[0] == "layer":
                calls[event[1].name] = calls.get(event[1].name, 0) + 1
        shared = {name for name, n in calls.items() if n > 1}
        if shared:
            self.read_always += [e[2] for e in self.events if e[0] == "layer" and e[1].name in shared]
            self.events = [e for e in self.events if not (e[0] == "layer" and e[1].name in shared)]

    def _reaching_output(self) -> np.ndarray:
        """Bool over the flat channel array: the channel flows to the network output through
        ops that keep it (or into an op this analysis does not follow). A layer's rows there
        are the network's outputs."""
        reach = np.zeros(self.channels, dtype=bool)
        for labels in self.read_always:
            reach[labels] = True
        for event in reversed(self.events):
            if event[0] == "and":
                out = reach[event[1]]
                for part in event[2]:
                    reach[part[out]] = True
            elif event[0] == "gate":
                reach[event[2][reach[event[1]].any(1)]] = True
        return reach

    # ------------------------------------------------------------------ queries
    def output_rows(self) -> np.ndarray:
        """Bool over the flat rows: the row's channel reaches the network output."""
        rows = np.zeros(len(self.live_rows), dtype=bool)
        for name, labels in self.layer_output.items():
            rows[self.layers[name].rows] = self.reaches_output[labels]
        return rows

    def fresh(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column keep vectors that remove nothing new."""
        return self.live_rows.copy(), self.live_cols.copy()

    def propagate(
        self, rows: np.ndarray, cols: np.ndarray, drop_constants: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Final row and column keep vectors after removing ``~rows`` / ``~cols`` (and what the
        current masks remove): unread rows zeroed, and with ``drop_constants`` columns that
        read only a constant zeroed, until nothing changes."""
        rows = rows & self.live_rows
        cols = cols & self.live_cols
        for _ in range(64):  # each round removes something or stops; a few rounds in practice
            before = (rows.copy(), cols.copy())
            if drop_constants:
                self._drop_constants(rows, cols)
            self._drop_unread(rows, cols)
            if np.array_equal(before[0], rows) and np.array_equal(before[1], cols):
                break
        return rows, cols

    def _drop_constants(self, rows: np.ndarray, cols: np.ndarray) -> None:
        constant = np.zeros(self.channels, dtype=bool)
        for event in self.events:
            kind = event[0]
            if kind == "layer":
                layer, source, out = event[1:]
                col = cols[layer.cols]
                col &= ~constant[source]
                constant[out] = ~_row_live(layer, rows[layer.rows], col)
            elif kind == "and":  # constant where every part is
                out = constant[event[2][0]]
                for part in event[2][1:]:
                    out = out & constant[part]
                constant[event[1]] = out
            # "gate" passes no constant

    def _drop_unread(self, rows: np.ndarray, cols: np.ndarray) -> None:
        read = np.zeros(self.channels, dtype=bool)
        for labels in self.read_always:
            read[labels] = True
        for event in reversed(self.events):
            if event[0] == "layer":
                layer, source, out = event[1:]
                row = rows[layer.rows]
                row &= read[out]
                read[source[_col_read(layer, row, cols[layer.cols])]] = True
            elif event[0] == "gate":  # [heads, ...]: a head's rows are read where its output is
                read[event[2][read[event[1]].any(1)]] = True
            else:  # "and": a part is read where the result is
                out = read[event[1]]
                for part in event[2]:
                    read[part[out]] = True

    def kept_weights(self, rows: np.ndarray, cols: np.ndarray) -> int:
        """Prunable weights the final keep vectors (``propagate``'s result) keep."""
        total = 0
        for layer in self.layers.values():
            row, col = rows[layer.rows], cols[layer.cols]
            if layer.pairs is None:
                g = layer.groups
                total += layer.inner * int((row.reshape(g, -1).sum(1) * col.reshape(g, -1).sum(1)).sum())
            else:
                total += round(float((row[:, None] * layer.pairs * _col_matrix(layer, col)).sum()))
        return total

    def masks(
        self, rows: np.ndarray, cols: np.ndarray, current_masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """{layer: 0/1 weight mask}: the current masks with the final rows and columns zeroed."""
        result = {}
        for name, layer in self.layers.items():
            mask = current_masks[name]
            row, col = rows[layer.rows], cols[layer.cols]
            value = single_value(mask)
            if layer.groups == 1 and mask.dim() >= 2 and value is not None and bool(value == 1):
                result[name] = outer_mask(torch.from_numpy(row.copy()), torch.from_numpy(col.copy()), mask)
                continue
            factor = row[:, None] & _col_matrix(layer, col)  # [Cout, Cin / groups]
            factor = torch.from_numpy(factor).to(device=mask.device, dtype=mask.dtype)
            result[name] = (
                mask * factor.view(*factor.shape, *([1] * (mask.dim() - 2)))
                if mask.dim() >= 2
                else mask * factor.view(-1)
            )
        return result


def _col_matrix(layer: _Layer, col: np.ndarray) -> np.ndarray:
    """[Cout, Cin / groups]: the keep value of the input channel each weight column reads."""
    g = layer.groups
    cout = layer.rows.stop - layer.rows.start
    return np.repeat(col.reshape(g, -1), cout // g, axis=0)


def _row_live(layer: _Layer, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Rows that still hold a weight on a kept column."""
    if layer.pairs is None:
        g = layer.groups
        return row & np.repeat(col.reshape(g, -1).any(1), len(row) // g)
    return row & ((layer.pairs * _col_matrix(layer, col)).sum(1) > 0)


def _col_read(layer: _Layer, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Input channels a kept row holds a weight on."""
    g = layer.groups
    if layer.pairs is None:
        return col & np.repeat(row.reshape(g, -1).any(1), len(col) // g)
    per_pair = (layer.pairs * row[:, None]).reshape(g, -1, layer.pairs.shape[1]).sum(1) > 0  # [g, Cin / g]
    return col & per_pair.reshape(-1)


class _Compiler(ChannelWalk):
    """The walk of :mod:`.walk` with flat channel indices as labels: it appends the events of
    ``propagation`` (layers, elementwise combinations, attention heads) and the channels read
    whatever the masks."""

    follows_unions = False  # united channels are a slicing constraint, not a dataflow

    def __init__(self, graph: fx.Graph, modules: dict[str, nn.Module], propagation: Propagation):
        super().__init__(graph, modules)
        self.propagation = propagation
        self.count = 0

    def fresh(self, n: int, reason: str | None = None) -> np.ndarray:
        labels = np.arange(self.count, self.count + n)
        self.count += n
        return labels

    def lose(self, labels: np.ndarray, reason: str) -> None:
        self.propagation.read_always.append(np.asarray(labels).ravel())

    def read(self, labels: np.ndarray) -> None:
        self.propagation.read_always.append(np.asarray(labels).ravel())

    def gate(self, labels: np.ndarray, by: np.ndarray) -> None:
        self.propagation.events.append(("gate", by, labels))

    def combine(self, node: fx.Node, parts: list[np.ndarray], broadcast: list[np.ndarray]) -> np.ndarray:
        shape = parts[0].shape
        out = self.fresh(int(np.prod(shape))).reshape(shape)
        self.propagation.events.append(
            ("and", out.ravel(), [np.asarray(p).ravel() for p in parts + broadcast])
        )
        return out

    def mixed(self, ch: Channels, reason: str | None) -> Channels:
        # every output entry may depend on every input channel along the mixed dims
        self.lose(ch.labels, reason or "")
        return Channels(self.fresh(ch.labels.size).reshape(ch.labels.shape), ch.dims, ch.ndim, ch.fixed)

    def layer(
        self, node: fx.Node, name: str, module: nn.Module, in_labels: np.ndarray | None, reason: str
    ) -> np.ndarray:
        cout = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        layer = self.propagation.layers.get(name)
        width = layer.cols.stop - layer.cols.start if layer is not None else None
        if layer is not None and in_labels is None:
            in_labels = self.fresh(width)  # input channels no layer here produces: never constant
        if layer is None or len(in_labels) != width:
            if in_labels is not None:  # not prunable here: reads everything, output live
                self.lose(in_labels, "")
            return self.fresh(cout)
        out = self.fresh(cout)
        self.propagation.layer_output.setdefault(name, out)
        self.propagation.events.append(("layer", layer, np.asarray(in_labels).ravel(), out))
        return out
