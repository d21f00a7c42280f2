"""The shape ops of :class:`.walk.ChannelWalk`: where reshapes, permutes, splits, joins and
indexing move a tensor's channels (:mod:`.axes`), and the constraints they put on removing
them (written sizes fix a dim, chunks shrink alike, written positions freeze)."""

from __future__ import annotations

import itertools

import numpy as np
from torch import fx

from . import axes as ax
from .axes import Channels, Opaque, Param
from .op_tables import node_shape


def call_arg(node: fx.Node, index: int, name: str, default=None):
    """Argument ``name`` of a call node, given by keyword or at position ``index``."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def _sizes(node: fx.Node) -> list:
    """The size arguments of a view / reshape call (varargs or one sequence)."""
    if node.op == "call_method":
        rest = list(node.args[1:]) or [node.kwargs.get("size", node.kwargs.get("shape", ()))]
    else:
        rest = [call_arg(node, 1, "shape")]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    return rest


def written_size(value) -> bool:
    """A size argument written in the model's code (an int other than -1; a computed size is a node)."""
    return isinstance(value, int) and not isinstance(value, bool) and value != -1


class ShapeOps:
    """Mixed into :class:`.walk.ChannelWalk` (whose hooks and helpers it calls)."""

    # ------------------------------------------------------------------ reshapes
    def reshaped(self, node: fx.Node, value, literal: tuple[int, ...]):
        in_shape, out_shape = node_shape(node.args[0]), node_shape(node)
        if in_shape is None or out_shape is None:
            return self.passthrough(node, value)
        if isinstance(value, Param):
            return ax.reshape_param(value, in_shape, out_shape)
        if not isinstance(value, Channels):
            return value if isinstance(value, Opaque) else None
        ch, kept = ax.reshape(value, in_shape, out_shape)
        if not kept:
            self.lose(value.labels, f"a single channel squeezed away at node '{node.name}'")
        if ch is None:
            return None
        written = [d for d in ch.dims if d in literal]
        if written and len(written) == len(ch.dims) and not set(written) <= ch.fixed:
            self.pin(ch.labels, f"reshaped at node '{node.name}' to sizes written in the model's code")
            return Channels(ch.labels, ch.dims, ch.ndim, frozenset(ch.dims))
        if written:
            self.unite_along(ch, written)
        return Channels(ch.labels, ch.dims, ch.ndim, ch.fixed | frozenset(written))

    def op_reshape(self, node: fx.Node):
        shape = node_shape(node)
        literal = tuple(i for i, s in enumerate(_sizes(node)) if written_size(s)) if shape else ()
        return self.reshaped(node, self.value(node.args[0]), literal)

    def op_flatten(self, node: fx.Node):
        return self.reshaped(node, self.value(node.args[0]), ())

    def op_squeeze(self, node: fx.Node):
        return self.reshaped(node, self.value(node.args[0]), ())

    op_unsqueeze = op_squeeze

    def op_unflatten(self, node: fx.Node):
        shape = node_shape(node)
        dim, sizes = call_arg(node, 1, "dim"), call_arg(node, 2, "sizes", ())
        dim = dim % len(shape) if shape else 0
        return self.reshaped(
            node, self.value(node.args[0]), tuple(dim + i for i, s in enumerate(sizes) if written_size(s))
        )

    def permuted(self, value, perm):
        if isinstance(value, Channels):
            return ax.permute(value, perm)
        if isinstance(value, Param):
            return ax.permute_param(value, perm)
        return value if isinstance(value, Opaque) else None

    def op_permute(self, node: fx.Node):
        value = self.value(node.args[0])
        perm = list(node.args[1:]) if node.op == "call_method" else call_arg(node, 1, "dims")
        if node.op == "call_method" and len(perm) == 1 and isinstance(perm[0], (tuple, list)):
            perm = list(perm[0])
        if "dims" in node.kwargs:
            perm = list(node.kwargs["dims"])
        return self.permuted(value, perm)

    def op_transpose(self, node: fx.Node):
        shape = node_shape(node)
        a, b = call_arg(node, 1, "dim0"), call_arg(node, 2, "dim1")
        return self.permuted(self.value(node.args[0]), ax.transpose_perm(len(shape), a, b))

    def op_movedim(self, node: fx.Node):
        shape = node_shape(node)
        perm = ax.movedim_perm(len(shape), call_arg(node, 1, "source"), call_arg(node, 2, "destination"))
        return self.permuted(self.value(node.args[0]), perm)

    def op_expand(self, node: fx.Node):
        value, shape = self.value(node.args[0]), node_shape(node)
        if isinstance(value, Param):
            return ax.shift_param(value, len(shape))
        if not isinstance(value, Channels):
            return value if isinstance(value, Opaque) else None
        return ax.broadcast(value, shape)

    def op_repeat(self, node: fx.Node):
        value, in_shape, shape = self.value(node.args[0]), node_shape(node.args[0]), node_shape(node)
        if not isinstance(value, Channels):
            return value if isinstance(value, Opaque) else None
        value = ax.align(value, len(shape))
        aligned = (1,) * (len(shape) - len(in_shape)) + tuple(in_shape)
        reps = [shape[d] // aligned[d] for d in value.dims]
        return Channels(np.tile(value.labels, reps), value.dims, value.ndim, value.fixed)

    # ------------------------------------------------------------------ splits and joins
    def op_chunk(self, node: fx.Node):
        return self.split(node, call_arg(node, 2, "dim", 0), equal=True)

    def op_split(self, node: fx.Node):
        size = call_arg(node, 1, "split_size_or_sections", call_arg(node, 1, "split_size"))
        return self.split(node, call_arg(node, 2, "dim", 0), equal=isinstance(size, fx.Node))

    def op_unbind(self, node: fx.Node):
        return self.split(node, call_arg(node, 1, "dim", 0), equal=False, drop=True)

    def split(self, node: fx.Node, dim: int, equal: bool, drop: bool = False):
        value, meta = self.value(node.args[0]), node.meta.get("tensor_meta")
        if not isinstance(meta, (tuple, list)):
            return self.unknown(node)
        shapes = [tuple(m.shape) for m in meta]
        if isinstance(value, Opaque):
            return tuple(value for _ in shapes)
        ndim = len(node_shape(node.args[0]))
        dim %= ndim
        if isinstance(value, Param):
            axes = {a: (d - (d > dim) if drop else d) for a, d in value.axes.items() if d != dim}
            return tuple(Param(value.name, axes, ndim - drop) for _ in shapes)
        if not isinstance(value, Channels):
            return tuple(None for _ in shapes)
        if dim not in value.dims:
            if drop:
                shifted = Channels(
                    value.labels,
                    tuple(d - (d > dim) for d in value.dims),
                    ndim - 1,
                    frozenset(d - (d > dim) for d in value.fixed),
                )
                return tuple(shifted for _ in shapes)
            return tuple(value for _ in shapes)
        axis = value.axis(dim)
        bounds = np.cumsum([0] + [s[dim] if not drop else 1 for s in shapes])
        parts = [np.take(value.labels, np.arange(a, b), axis=axis) for a, b in itertools.pairwise(bounds)]
        if dim not in value.fixed:
            if equal and len({p.shape for p in parts}) == 1:
                for p in parts[1:]:
                    self.unite(parts[0], p)
            else:
                self.pin(
                    value.labels,
                    f"split at node '{node.name}' into parts of sizes written in the model's code",
                )
        if drop:
            dims = tuple(d - (d > dim) for d in value.dims if d != dim)
            fixed = frozenset(d - (d > dim) for d in value.fixed if d != dim)
            return tuple(Channels(p.squeeze(axis), dims, ndim - 1, fixed) if dims else None for p in parts)
        return tuple(Channels(p, value.dims, ndim, value.fixed) for p in parts)

    def op_cat(self, node: fx.Node):
        tensors = call_arg(node, 0, "tensors")
        return self.concat(node, list(tensors), call_arg(node, 1, "dim", 0))

    def op_stack(self, node: fx.Node):
        tensors, shape = list(call_arg(node, 0, "tensors")), node_shape(node)
        dim = call_arg(node, 1, "dim", 0) % len(shape)
        values = []
        for t in tensors:
            v = self.value(t)
            if isinstance(v, Channels):
                v = ax.unsqueeze(v, dim)
            elif isinstance(v, Param):
                v = ax.shift_param(v, 0, inserted=dim)
            values.append(v)
        shapes = []
        for t in tensors:
            part = list(node_shape(t) or ())
            shapes.append((*part[:dim], 1, *part[dim:]) if part else None)
        return self.concat(node, tensors, dim, values, shapes)

    def concat(self, node: fx.Node, tensors, dim: int, values=None, shapes=None):
        shape = node_shape(node)
        values = values if values is not None else [self.value(t) for t in tensors]
        if shape is None:
            return None
        dim %= len(shape)
        opaque = [v for v in values if isinstance(v, Opaque)]
        tracked = [v for v in values if isinstance(v, Channels)]
        if opaque and (not tracked or dim not in tracked[0].dims):
            for v in values:
                self.release(v, opaque[0].reason)
            return opaque[0]
        if not tracked:
            return None
        ref = tracked[0]
        if dim not in ref.dims:
            return self.combine_operands(node, shape, list(tensors), values, shapes)
        axis = ref.axis(dim)
        parts = []
        for t, v in zip(tensors, values):
            part_shape = node_shape(t)
            if isinstance(v, Channels):
                if v.dims != ref.dims:
                    return self.unknown(node, "parts with channels on different dims")
                parts.append(v.labels)
            else:
                size = tuple(part_shape[d] for d in ref.dims) if part_shape else None
                if size is None:
                    return self.unknown(node)
                reason = (
                    v.reason
                    if isinstance(v, Opaque)
                    else f"concatenated from a constant at node '{node.name}'"
                )
                parts.append(self.fresh(int(np.prod(size)), reason).reshape(size))
        fixed = frozenset.intersection(*[v.fixed for v in tracked]) - {dim}
        return Channels(np.concatenate(parts, axis=axis), ref.dims, len(shape), fixed)

    def op_patch_merging(self, node: fx.Node):
        """torchvision's Swin patch merging: pad H, W to even, four strided slices, concat on C."""
        value = self.value(node.args[0])
        if not isinstance(value, Channels) or value.dims != (value.ndim - 1,):
            return self.passthrough(node, value) if not isinstance(value, Channels) else self.unknown(node)
        return Channels(np.concatenate([value.labels] * 4), value.dims, value.ndim)

    def op_window_partition(self, node: fx.Node):
        """Swin's windows (``attention.window_partition``): [B, H, W, C] -> [B·nW, N, C]."""
        value = self.value(node.args[0])
        if not isinstance(value, Channels) or value.dims != (value.ndim - 1,):
            return self.passthrough(node, value) if not isinstance(value, Channels) else self.unknown(node)
        return Channels(value.labels, (2,), 3, value.fixed and frozenset({2}))

    def op_window_merge(self, node: fx.Node):
        """The inverse of ``attention.window_partition`` (its second argument only lends its shape)."""
        value = self.value(node.args[0])
        if not isinstance(value, Channels) or value.dims != (value.ndim - 1,):
            return self.passthrough(node, value) if not isinstance(value, Channels) else self.unknown(node)
        return Channels(value.labels, (3,), 4, value.fixed and frozenset({3}))

    def op_constant(self, node: fx.Node):
        """A function of its inputs' shapes only (Swin's window mask)."""
        return

    # ------------------------------------------------------------------ indexing
    def getitem(self, node: fx.Node):
        source, key = node.args
        value = self.values.get(source)
        if isinstance(value, (tuple, list)):
            return value[key] if isinstance(key, int) else None
        if isinstance(value, Opaque):
            return value
        if not isinstance(value, (Channels, Param)):
            return None
        in_shape, out_shape = node_shape(source), node_shape(node)
        if in_shape is None or out_shape is None:
            return self.unknown(node)
        items = ax.normalize_key(key, len(in_shape))
        tensor_items = [
            i for i, k in enumerate(items) if isinstance(k, fx.Node) and node_shape(k) is not None
        ]
        if len(tensor_items) > 1 or any(isinstance(k, (list, bool)) for k in items):
            return self.unknown(node, "advanced indexing")
        mapping, out_dim, in_dim = {}, 0, 0  # input dim -> output dim
        dropped_ints = {}
        for k in items:
            if k is None:
                out_dim += 1
                continue
            if isinstance(k, fx.Node) and node_shape(k) is not None:
                out_dim += len(node_shape(k))
                dropped_ints[in_dim] = "tensor"
            elif isinstance(k, slice):
                mapping[in_dim] = out_dim
                out_dim += 1
            else:
                dropped_ints[in_dim] = k
            in_dim += 1
        if isinstance(value, Param):
            return Param(
                value.name,
                {
                    a: mapping[d]
                    for a, d in value.axes.items()
                    if d in mapping and ax.full_slice(items_at(items, d), in_shape[d])
                },
                len(out_shape),
            )
        labels, keep = value.labels, []
        for d in value.dims:
            axis_item = items_at(items, d)
            if d in dropped_ints:
                k = dropped_ints[d]
                if not isinstance(k, int) or isinstance(k, bool):
                    return self.unknown(node, "indexes a channel dim")
                if d not in value.fixed:
                    self.pin(value.labels, f"indexed at node '{node.name}' by a position written in the code")
                labels = np.take(labels, [k], axis=len(keep))
                labels = labels.squeeze(len(keep))
                continue
            if not ax.full_slice(axis_item, in_shape[d]):
                if any(isinstance(b, fx.Node) for b in (axis_item.start, axis_item.stop, axis_item.step)):
                    return self.unknown(node, "slices a channel dim by a computed range")
                if d not in value.fixed:
                    self.pin(value.labels, f"sliced at node '{node.name}' by a range written in the code")
                labels = np.take(labels, np.arange(in_shape[d])[axis_item], axis=len(keep))
            keep.append(d)
        dims = [mapping[d] for d in keep]
        if not dims:
            return None
        return Channels(
            labels, tuple(dims), len(out_shape), frozenset(mapping[d] for d in keep if d in value.fixed)
        )


def items_at(items: list, d: int):
    """The key item that indexes input dim ``d`` (``items`` from ``axes.normalize_key``)."""
    in_dim = 0
    for k in items:
        if k is None:
            continue
        if in_dim == d:
            return k
        in_dim += 1
    return slice(None)
