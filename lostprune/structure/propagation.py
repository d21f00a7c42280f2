"""What removing rows and columns of prunable layers takes away once dead channels propagate,
tensor by tensor through the traced graph (docs/methods.md §Propagation).

Two rules of the original's FilterNet, made structural (no data needed):

* a channel that can only carry a constant — every weight row that feeds it is zero, so it
  holds a bias or BN shift — is *dropped* by each prunable layer that reads it: the column is
  zeroed (the constant is lost; retraining recovers it), as the original's constant-channel
  hooks do;
* a filter whose output no one reads any more (every reader's column zero, through BN,
  activations, residual adds, concats) is zeroed, as the original's zero-gradient rule does.

Unlike the channel groups of :mod:`.graph`, which unite every tensor a residual channel
passes through, the rules see each tensor apart: after ``out = block(x) + x`` a stem filter
whose channel is dead in ``x`` is dropped by the first block's conv that reads ``x``, while
the next block, which reads ``out``, keeps the column (the add made the channel live again).

:class:`Propagation` compiles the fx trace of a :class:`.graph.DependencyGraph` once into a
list of events over flat boolean arrays (all layers' rows and columns end to end, one slot
of channels per distinct tensor); one evaluation is a handful of numpy operations per layer
and residual add, so a method's root search can afford hundreds.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..core.masks import mask_factors, nonzero_rows_and_columns, outer_mask, single_value
from .folded_conv import FoldedConv2d
from .graph import (
    _ACTIVATION_MODULES,
    _BINARY_FUNCTIONS,
    _BINARY_METHODS,
    _ELEMENTWISE_FUNCTIONS,
    _ELEMENTWISE_METHODS,
    _FLATTEN_FUNCTIONS,
    _NON_TENSOR_METHODS,
    _NORM_MODULES,
    _REDUCE_FUNCTIONS,
    _REDUCE_METHODS,
    _SPATIAL_MODULES,
    DependencyGraph,
)

# Spatial modules whose output is not constant where the input is (zero padding enters the
# border); every other spatial op maps a constant channel to a constant one.
_BORDER_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d)


@dataclass
class _Value:
    """A tensor with channels: ``slot`` (index into ``Propagation.slots``), each channel
    covering ``span`` consecutive features after a flatten; ``dim`` 1 (NCHW / NC) or -1
    (features last, e.g. tokens)."""

    slot: int
    span: int = 1
    dim: int = 1


@dataclass
class _Layer:
    """A prunable conv / linear layer: its rows and input channels in the flat arrays."""

    name: str
    rows: slice
    cols: slice  # one entry per input channel / feature (Cin, not Cin / groups)
    groups: int
    inner: int  # kernel taps per (row, column) pair
    pairs: np.ndarray | None  # [Cout, Cin / groups] live taps per pair where the mask is not an outer product
    constant_output: bool  # its output can be constant (False for a border-folding conv)


class Propagation:
    """Compiled propagation of row / column removals over one model's trace.

    Args:
        graph: the model's dependency graph (its fx trace carries each node's shape).
        layers: {name: module} the caller may zero rows and columns of; other conv / linear
            layers are opaque (they read every input channel; their outputs are live).
        current_masks: {layer: 0/1 weight mask}; what they already remove stays removed.
    """

    def __init__(self, graph: DependencyGraph, layers: Mapping[str, nn.Module], current_masks: Mapping[str, Tensor]):
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
            rows, cols, pairs = _live(mask, groups)
            self.layers[name] = _Layer(name, slice(row_start, row_start + cout), slice(col_start, col_start + cin),
                                       groups, inner, pairs, not isinstance(module, FoldedConv2d))
            live_rows.append(rows)
            live_cols.append(cols)
            row_start += cout
            col_start += cin
        self.live_rows = np.concatenate(live_rows) if live_rows else np.zeros(0, dtype=bool)
        self.live_cols = np.concatenate(live_cols) if live_cols else np.zeros(0, dtype=bool)
        self.slots: list[slice] = []  # channel ranges in the flat per-tensor arrays
        self.events: list[tuple] = []
        self.read_always: list[int] = []  # slots read whatever the masks (network output, unknown ops)
        self.layer_output: dict[str, int] = {}  # layer -> slot of its (first) output
        self._compile(graph.fx_graph)
        self.channels = self.slots[-1].stop if self.slots else 0
        self.reaches_output = self._reaching_output()

    # ------------------------------------------------------------------ compile
    def _new_slot(self, channels: int) -> int:
        start = self.slots[-1].stop if self.slots else 0
        self.slots.append(slice(start, start + channels))
        return len(self.slots) - 1

    def _fresh(self, node: fx.Node) -> _Value | None:
        """A tensor whose channels are never constant (an op this analysis does not follow)."""
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        return _Value(self._new_slot(shape[1]))

    def _opaque(self, node: fx.Node, values: dict) -> _Value | None:
        """An op this analysis does not follow: it reads all of its inputs, its output is live."""
        for arg in node.all_input_nodes:
            self._read_all(values.get(arg))
        return self._fresh(node)

    def _read_all(self, value) -> None:
        if isinstance(value, _Value):
            self.read_always.append(value.slot)
        elif isinstance(value, (tuple, list)):
            for v in value:
                self._read_all(v)

    def _compile(self, graph: fx.Graph) -> None:
        values: dict[fx.Node, object] = {}
        for node in graph.nodes:
            values[node] = self._visit(node, values)
        # A layer called more than once (shared weights) is left opaque: each call reads all
        # of its inputs and its outputs are live, so neither rule touches it.
        calls: dict[str, int] = {}
        for event in self.events:
            if event[0] == "layer":
                calls[event[1].name] = calls.get(event[1].name, 0) + 1
        shared = {name for name, n in calls.items() if n > 1}
        if shared:
            self.read_always += [e[2] for e in self.events if e[0] == "layer" and e[1].name in shared]
            self.events = [e for e in self.events if not (e[0] == "layer" and e[1].name in shared)]

    def _visit(self, node: fx.Node, values: dict):
        def value(arg):
            v = values.get(arg) if isinstance(arg, fx.Node) else None
            return v if isinstance(v, _Value) else None

        if node.op == "placeholder":
            return self._fresh(node)
        if node.op == "get_attr" or (node.op == "call_method" and node.target in _NON_TENSOR_METHODS) \
                or node.target is getattr:
            return None
        if node.op == "output":
            for arg in node.all_input_nodes:
                self._read_all(values.get(arg))
            return None
        if node.target is operator.getitem:
            source, key = node.args
            container = values.get(source)
            if isinstance(container, (tuple, list)) and isinstance(key, int):
                return container[key]
            shape = _shape(source)
            if value(source) is not None and isinstance(key, tuple) and len(key) >= 2 \
                    and key[0] == slice(None) and key[1] == slice(None) and shape is not None and len(shape) == 4:
                return value(source)  # spatial indexing keeps channels
            return self._opaque(node, values)
        first = value(node.args[0]) if node.args else None
        if node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                return self._layer(node, node.target, module, first, values)
            if isinstance(module, _NORM_MODULES) and first is not None and first.span == 1 and first.dim == 1:
                return first
            if isinstance(module, _BORDER_MODULES) or (isinstance(module, nn.AvgPool2d) and _pads(module.padding)
                                                       and module.count_include_pad):
                return self._border(first) if first is not None else self._opaque(node, values)
            if isinstance(module, _ACTIVATION_MODULES + _SPATIAL_MODULES) and first is not None:
                return first
            if isinstance(module, nn.Flatten):
                return self._flatten(node, node.args[0], first, module.start_dim, module.end_dim, values)
            return self._opaque(node, values)
        target, is_method, args = node.target, node.op == "call_method", node.args
        if (is_method and target in _ELEMENTWISE_METHODS) or (not is_method and target in _ELEMENTWISE_FUNCTIONS):
            if first is None:
                return self._opaque(node, values)
            if target is F.pad:
                pad = args[1] if len(args) > 1 else node.kwargs.get("pad", ())
                mode = node.kwargs.get("mode", args[2] if len(args) > 2 else "constant")
                if len(pad) > 4:
                    return self._opaque(node, values)  # pads the channel dimension
                return self._border(first) if mode == "constant" and _pads(pad) else first
            if target is F.avg_pool2d:
                padding = node.kwargs.get("padding", args[3] if len(args) > 3 else 0)
                include = node.kwargs.get("count_include_pad", args[5] if len(args) > 5 else True)
                return self._border(first) if _pads(padding) and include else first
            return first
        if (is_method and target in _BINARY_METHODS) or (not is_method and target in _BINARY_FUNCTIONS):
            return self._binary(node, values)
        if not is_method and target in (torch.cat, torch.concat):
            return self._concat(node, values)
        if (is_method and target == "flatten") or (not is_method and target in _FLATTEN_FUNCTIONS):
            start = node.kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
            end = node.kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
            return self._flatten(node, args[0], first, start, end, values)
        if (is_method and target in ("view", "reshape")) or (not is_method and target is torch.reshape):
            in_shape, out_shape = _shape(args[0]), _shape(node)
            if first is not None and in_shape is not None and out_shape is not None:
                if len(out_shape) == 2 and out_shape[0] == in_shape[0] and first.dim == 1:
                    return self._flatten(node, args[0], first, 1, -1, values)
                if out_shape[:2] == in_shape[:2]:
                    return first
            return self._opaque(node, values)
        if (is_method and target in _REDUCE_METHODS) or (not is_method and target in _REDUCE_FUNCTIONS):
            dims = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            shape = _shape(args[0])
            if first is not None and shape and dims and all(d % len(shape) >= 2 for d in dims):
                return first
        return self._opaque(node, values)

    def _border(self, value: _Value) -> _Value:
        """Channel k of the output depends on channel k of the input only, but zero padding
        makes a constant input vary at the border: never constant, read where read."""
        slot = self._new_slot(self.slots[value.slot].stop - self.slots[value.slot].start)
        self.events.append(("border", slot, value.slot))
        return _Value(slot, value.span, value.dim)

    def _layer(self, node: fx.Node, name: str, module: nn.Module, value: _Value | None, values: dict):
        shape = _shape(node)
        in_shape = _shape(node.args[0])
        if name not in self.layers or value is None or shape is None or in_shape is None:
            return self._opaque(node, values)  # not prunable here: reads everything, output live
        layer = self.layers[name]
        if isinstance(module, nn.Conv2d) and (value.span != 1 or value.dim != 1):
            return self._opaque(node, values)
        if isinstance(module, nn.Linear) and len(in_shape) > 2 and value.dim != -1:
            return self._opaque(node, values)  # features must be the last dimension
        channels = self.slots[value.slot].stop - self.slots[value.slot].start
        if channels * value.span != layer.cols.stop - layer.cols.start:
            return self._opaque(node, values)
        out_dim = 1 if isinstance(module, nn.Conv2d) or len(in_shape) == 2 else -1
        slot = self._new_slot(layer.rows.stop - layer.rows.start)
        self.layer_output.setdefault(name, slot)
        self.events.append(("layer", layer, value.slot, value.span, slot))
        return _Value(slot, 1, out_dim)

    def _flatten(self, node, arg, value: _Value | None, start_dim: int, end_dim: int, values: dict):
        shape = _shape(arg)
        if value is None or shape is None:
            return self._opaque(node, values)
        end = end_dim % len(shape)
        if start_dim == 1 and end == len(shape) - 1 and value.dim == 1:
            inner = int(np.prod(shape[2:])) if len(shape) > 2 else 1
            return _Value(value.slot, value.span * inner, 1)
        if start_dim >= 2:
            return value
        return self._opaque(node, values)

    def _binary(self, node: fx.Node, values: dict):
        operands = [node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")]
        known = [(values.get(a) if isinstance(a, fx.Node) else None) for a in operands]
        known = [(v, a) for v, a in zip(known, operands) if isinstance(v, _Value)]
        out_shape = _shape(node)
        if not known or out_shape is None or len(out_shape) < 2:
            return self._opaque(node, values)
        width = out_shape[1] if known[0][0].dim == 1 else out_shape[-1]
        parts = []
        for v, arg in known:
            n = self.slots[v.slot].stop - self.slots[v.slot].start
            if n == width and v.span == known[0][0].span and v.dim == known[0][0].dim:
                parts.append((v.slot, False))
            elif n == 1:
                parts.append((v.slot, True))  # one channel broadcast over all
            else:
                return self._opaque(node, values)
        if len(parts) == 1:  # with a constant (a number or a buffer): constant in, constant out
            return known[0][0] if not parts[0][1] else self._opaque(node, values)
        slot = self._new_slot(width)
        self.events.append(("and", slot, tuple(parts)))
        return _Value(slot, known[0][0].span, known[0][0].dim)

    def _concat(self, node: fx.Node, values: dict):
        tensors = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        parts = [values.get(t) if isinstance(t, fx.Node) else None for t in tensors]
        shape = _shape(node)
        if shape is None or any(not isinstance(p, _Value) for p in parts):
            return self._opaque(node, values)
        if dim % len(shape) == 1 and all(p.span == 1 and p.dim == 1 for p in parts):
            slot = self._new_slot(sum(self.slots[p.slot].stop - self.slots[p.slot].start for p in parts))
            self.events.append(("cat", slot, tuple(p.slot for p in parts)))
            return _Value(slot)
        widths = {self.slots[p.slot].stop - self.slots[p.slot].start for p in parts}
        if dim % len(shape) != 1 and len(widths) == 1:
            slot = self._new_slot(widths.pop())
            self.events.append(("and", slot, tuple((p.slot, False) for p in parts)))
            return _Value(slot, parts[0].span, parts[0].dim)
        return self._opaque(node, values)

    def _reaching_output(self) -> np.ndarray:
        """Bool over the flat channel array: the channel flows to the network output through
        ops that keep it (or into an op this analysis does not follow). A layer's rows there
        are the network's outputs."""
        reach = np.zeros(self.channels, dtype=bool)
        for slot in self.read_always:
            reach[self.slots[slot]] = True
        for event in reversed(self.events):
            kind = event[0]
            if kind == "border":
                reach[self.slots[event[2]]] |= reach[self.slots[event[1]]]
            elif kind == "and":
                out = reach[self.slots[event[1]]]
                for slot, broadcast in event[2]:
                    reach[self.slots[slot]] |= out.any() if broadcast else out
            elif kind == "cat":
                out, start = reach[self.slots[event[1]]], 0
                for slot in event[2]:
                    n = self.slots[slot].stop - self.slots[slot].start
                    reach[self.slots[slot]] |= out[start:start + n]
                    start += n
        return reach

    # ------------------------------------------------------------------ queries
    def output_rows(self) -> np.ndarray:
        """Bool over the flat rows: the row's channel reaches the network output."""
        rows = np.zeros(len(self.live_rows), dtype=bool)
        for name, slot in self.layer_output.items():
            rows[self.layers[name].rows] = self.reaches_output[self.slots[slot]]
        return rows

    def fresh(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column keep vectors that remove nothing new."""
        return self.live_rows.copy(), self.live_cols.copy()

    def propagate(self, rows: np.ndarray, cols: np.ndarray, drop_constants: bool = True) -> tuple[np.ndarray, np.ndarray]:
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
                layer, source, span, out = event[1:]
                col = cols[layer.cols]
                reads = constant[self.slots[source]]
                col &= ~(np.repeat(reads, span) if span > 1 else reads)
                if layer.constant_output:
                    constant[self.slots[out]] = ~_row_live(layer, rows[layer.rows], col)
            elif kind == "and":
                out = np.ones(self.slots[event[1]].stop - self.slots[event[1]].start, dtype=bool)
                for slot, broadcast in event[2]:
                    out &= constant[self.slots[slot]].all() if broadcast else constant[self.slots[slot]]
                constant[self.slots[event[1]]] = out
            elif kind == "cat":
                constant[self.slots[event[1]]] = np.concatenate([constant[self.slots[s]] for s in event[2]])
            # "live" and "border" slots stay False

    def _drop_unread(self, rows: np.ndarray, cols: np.ndarray) -> None:
        read = np.zeros(self.channels, dtype=bool)
        for slot in self.read_always:
            read[self.slots[slot]] = True
        for event in reversed(self.events):
            kind = event[0]
            if kind == "layer":
                layer, source, span, out = event[1:]
                row = rows[layer.rows]
                row &= read[self.slots[out]]
                col_read = _col_read(layer, row, cols[layer.cols])
                if span > 1:
                    col_read = col_read.reshape(-1, span).any(1)
                read[self.slots[source]] |= col_read
            elif kind == "border":
                read[self.slots[event[2]]] |= read[self.slots[event[1]]]
            elif kind == "and":
                out = read[self.slots[event[1]]]
                for slot, broadcast in event[2]:
                    read[self.slots[slot]] |= out.any() if broadcast else out
            elif kind == "cat":
                out, start = read[self.slots[event[1]]], 0
                for slot in event[2]:
                    n = self.slots[slot].stop - self.slots[slot].start
                    read[self.slots[slot]] |= out[start:start + n]
                    start += n

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

    def masks(self, rows: np.ndarray, cols: np.ndarray, current_masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
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
            result[name] = mask * factor.view(*factor.shape, *([1] * (mask.dim() - 2))) if mask.dim() >= 2 \
                else mask * factor.view(-1)
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


def _live(mask: Tensor, groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Live rows, live input channels and (where the mask is not an outer product of the two)
    live taps per (row, column) pair of a weight mask."""
    value = single_value(mask)
    cout = mask.shape[0]
    cin = mask.shape[1] * groups if mask.dim() > 1 else 1
    if value is not None:
        live = bool(value != 0)
        return np.full(cout, live), np.full(cin, live), None
    factors = mask_factors(mask) if groups == 1 else None
    if factors is not None:
        rows, cols = (t.numpy() for t in factors)
        return rows & cols.any(), cols & rows.any(), None
    nonzero = mask.detach() != 0
    pairs = (nonzero.flatten(2).sum(2) if nonzero.dim() > 2 else nonzero).cpu().to(torch.float64)
    rows, _ = nonzero_rows_and_columns(mask)
    rows = rows.cpu().numpy()
    cin_g = pairs.shape[1]
    cols = (pairs.view(groups, cout // groups, cin_g) > 0).any(1).reshape(-1).numpy()
    inner = int(np.prod(mask.shape[2:])) if mask.dim() > 2 else 1
    if groups == 1 and int(nonzero.sum()) == inner * int(rows.sum()) * int(cols.sum()):
        return rows, cols, None  # every live (row, column) pair full: an outer product
    return rows, cols, pairs.numpy()


def _pads(padding) -> bool:
    if isinstance(padding, str):
        return padding != "valid"
    values = padding if isinstance(padding, (tuple, list)) else (padding,)
    return any(int(p) != 0 for p in values)


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
