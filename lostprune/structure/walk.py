"""One walk over an fx trace that follows every tensor's channels (:class:`.axes.Channels`).

The dependency graph (:mod:`.channels`) and the per-layer propagation (:mod:`.propagation`)
are two subclasses of :class:`ChannelWalk`: the walk knows every op of
:mod:`.op_tables` — where channels go (permute, reshape, chunk, concat, indexing,
broadcasting), which ops combine channels elementwise (adds, multiplies), which mix them
(LayerNorm, softmax over a channel dim), where layers read and write them (conv, linear,
attention) — and calls the subclass's hooks for what that means to it: an element union or
a frozen channel there, a dataflow event or a channel read for sure here. So an op taught to
the walk is taught to both.

Rules that keep slicing exact (the graph acts on them, propagation ignores them):
* a reshape to a size written in the model's code (``view(B, N, -1, 64)``) keeps that dim's
  size: the labels along it go together (*fixed*); where every channel dim is written, the
  channels are frozen;
* a chunk into n parts removes the same channels from every part; a split or index with
  sizes written in the code freezes the dim (unless it is fixed);
* a grouped convolution removes channel j of every group together;
* an op that mixes entries along a channel dim (LayerNorm over the features, softmax) freezes
  them, unless the dim is fixed (a whole head goes or stays);
* attention (``F.scaled_dot_product_attention``) removes a head from q, k, v and the mask at
  once; q / k sizes must be fixed (the default scale is 1/sqrt(head size)).
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor, fx

from . import axes as ax
from .axes import Channels, NotFollowed, Opaque, Param
from .folded_conv import FoldedConv2d  # noqa: F401  (a leaf Conv2d; see tracing)
from .op_tables import ACTIVATION_MODULES, NORM_MODULES, SPATIAL_MODULES, node_shape, op_kind, op_name


def _arg(node: fx.Node, index: int, name: str, default=None):
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def _sizes(node: fx.Node) -> list:
    """The size arguments of a view / reshape call (varargs or one sequence)."""
    if node.op == "call_method":
        rest = list(node.args[1:]) or [node.kwargs.get("size", node.kwargs.get("shape", ()))]
    else:
        rest = [_arg(node, 1, "shape")]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    return rest


def _literal(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value != -1


class ChannelWalk:
    """Walks ``graph`` (with shapes, see ``tracing.propagate_shapes``) node by node; ``values``
    ends up holding, per node, its Channels / Opaque / Param (or a tuple of them, or None)."""

    follows_unions = True  # whether unite() is acted on (it makes some ops exact)

    def __init__(self, graph: fx.Graph, modules: dict[str, nn.Module]):
        self.graph = graph
        self.modules = modules
        self.root = modules[""]
        self.values: dict[fx.Node, object] = {}

    # ------------------------------------------------------------------ hooks
    def fresh(self, n: int, reason: str | None = None) -> np.ndarray:
        """New labels for ``n`` channels (``reason``: they can never be removed)."""
        raise NotImplementedError

    def lose(self, labels: np.ndarray, reason: str) -> None:
        """The channels are read in a way the walk does not follow."""
        raise NotImplementedError

    def read(self, labels: np.ndarray) -> None:
        """The channels are read (attention scores) but may still be removed, all together."""

    def gate(self, labels: np.ndarray, by: np.ndarray) -> None:
        """Row h of ``labels`` is read where row h of ``by`` is (an attention head's q and k are
        read where its output is)."""
        self.read(labels)

    def pin(self, labels: np.ndarray, reason: str) -> None:
        """The channels cannot be removed without changing the model's code (slicing)."""

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        """The channels go together (same shapes)."""

    def combine(self, node: fx.Node, parts: list[np.ndarray], broadcast: list[np.ndarray]) -> np.ndarray:
        """Labels of an elementwise combination of ``parts`` (same shapes; ``broadcast``: single
        channels spread over them)."""
        raise NotImplementedError

    def mixed(self, ch: Channels, reason: str | None) -> Channels:
        """Channels after an op that mixes entries along channel dims (``reason``: along dims
        that are not fixed)."""
        raise NotImplementedError

    def layer(self, node: fx.Node, name: str, module: nn.Module, in_labels: np.ndarray | None,
              reason: str) -> np.ndarray:
        """A conv / linear layer reads ``in_labels`` (None: channels the walk does not know,
        ``reason`` says why); returns the labels of its output channels."""
        raise NotImplementedError

    def norm(self, name: str, labels: np.ndarray) -> None:
        """A per-channel norm layer (BN) over ``labels``."""

    def param(self, name: str, axis: int, labels: np.ndarray) -> None:
        """Axis ``axis`` of parameter ``name`` is indexed by the channels ``labels``."""

    # ------------------------------------------------------------------ the walk
    def run(self) -> None:
        for node in self.graph.nodes:
            try:
                self.values[node] = self.visit(node)
            except NotFollowed:
                self.values[node] = self.unknown(node)

    def value(self, arg):
        return self.values.get(arg) if isinstance(arg, fx.Node) else None

    def release(self, value, reason: str) -> None:
        if isinstance(value, Channels):
            self.lose(value.labels, reason)
        elif isinstance(value, (tuple, list)):
            for v in value:
                self.release(v, reason)
        elif isinstance(value, dict):
            for v in value.values():
                self.release(v, reason)

    def unknown(self, node: fx.Node, why: str | None = None):
        reason = f"unsupported op {op_name(node, self.modules)} at node '{node.name}'" + (f" ({why})" if why else "")
        for arg in node.all_input_nodes:
            self.release(self.values.get(arg), reason)
        return Opaque(reason) if self.tensor_output(node) else None

    @staticmethod
    def tensor_output(node: fx.Node) -> bool:
        kind = node.meta.get("type")
        return kind is None or (isinstance(kind, type) and issubclass(kind, (Tensor, tuple, list)))

    def visit(self, node: fx.Node):
        if node.op == "placeholder":
            return Opaque("network input")
        if node.op == "get_attr":
            return self.get_attr(node)
        if node.op == "output":
            for arg in node.all_input_nodes:
                self.release(self.values.get(arg), "reaches the network output")
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        if node.target is operator.getitem:
            return self.getitem(node)
        if not self.tensor_output(node) or node.target is getattr:
            return None  # sizes, shapes, asserts
        if node.op == "call_method" and node.target in ("size", "dim", "numel", "__len__"):
            return None
        kind = op_kind(node)
        if kind is None:
            return self.unknown(node)
        return getattr(self, f"op_{kind}")(node)

    def get_attr(self, node: fx.Node):
        value = self.root
        for part in node.target.split("."):
            value = getattr(value, part, None)
        if isinstance(value, nn.Parameter):
            return Param(node.target, {a: a for a in range(value.dim()) if value.shape[a] > 1}, value.dim())
        return None  # a buffer or another constant: handled where it meets channels

    # ------------------------------------------------------------------ modules
    def visit_module(self, node: fx.Node, module: nn.Module):
        first = self.value(node.args[0]) if node.args else None
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return self.visit_layer(node, node.target, module, first)
        if isinstance(module, NORM_MODULES):
            if isinstance(first, Channels) and first.dims == (1,):
                self.norm(node.target, first.labels)
                return first
            return self.unknown(node)
        if isinstance(module, nn.LayerNorm):
            return self.normalized(node, first, len(module.normalized_shape))
        if isinstance(module, nn.GroupNorm):
            return self.mix_dims(node, first, (1,))
        if isinstance(module, nn.Softmax):
            return self.mix_dims(node, first, (module.dim,) if module.dim is not None else (1,))
        if isinstance(module, ACTIVATION_MODULES):
            return first
        if isinstance(module, SPATIAL_MODULES):
            return self.spatial(node, first)
        if isinstance(module, nn.Flatten):
            return self.reshaped(node, first, ())
        if isinstance(module, nn.Unflatten):
            shape = node_shape(node)
            dim = module.dim % len(shape) if shape else 0
            return self.reshaped(node, first, tuple(dim + i for i, s in enumerate(module.unflattened_size)
                                                    if _literal(s)))
        if isinstance(module, nn.MultiheadAttention):
            return self.unknown(node, "lostprune.structure.convert_attention replaces it by a traceable "
                                      "equivalent whose heads can be pruned; lostprune.prune does so")
        return self.unknown(node)

    def visit_layer(self, node: fx.Node, name: str, module: nn.Module, value):
        reason = value.reason if isinstance(value, Opaque) else f"input of '{name}' the analysis does not follow"
        in_labels = None
        if isinstance(module, nn.Conv2d):
            if isinstance(value, Channels):
                if value.dims == (1,) and value.ndim == 4:
                    in_labels = value.labels
                else:
                    self.lose(value.labels, f"channels on dims {value.dims} of the input of conv '{name}'")
        elif isinstance(value, Channels):
            last = value.ndim - 1
            if last not in value.dims:  # a linear layer over another dim (tokens): channels mixed
                self.lose(value.labels, f"linear layer '{name}' runs over another dim than the channels")
            elif value.dims == (last,):
                in_labels = value.labels
            elif self.follows_unions:
                others = tuple(d for d in value.dims if d != last)
                self.unite_along(value, others)
                in_labels = value.project((last,))
            else:
                self.lose(value.labels, f"linear layer '{name}' reads channels on several dims")
        out = self.layer(node, name, module, in_labels, reason)
        if isinstance(module, nn.Conv2d):
            return Channels(out, (1,), 4)
        shape = node_shape(node)
        ndim = len(shape) if shape else 2
        return Channels(out, (ndim - 1,), ndim)

    # ------------------------------------------------------------------ helpers
    def unite_along(self, ch: Channels, dims) -> None:
        """Labels along ``dims`` go together (they become fixed)."""
        for d in dims:
            axis = ch.axis(d)
            first = np.take(ch.labels, [0], axis=axis)
            self.unite(np.broadcast_to(first, ch.labels.shape), ch.labels)

    def spatial(self, node: fx.Node, value):
        """An op over the last two dims (pooling, interpolation, padding of NCHW)."""
        if not isinstance(value, Channels):
            return self.passthrough(node, value)
        if any(d >= value.ndim - 2 for d in value.dims):
            return self.unknown(node, "it runs over channel dims")
        return value

    def passthrough(self, node: fx.Node, value):
        if isinstance(value, (Opaque, Param)) or value is None:
            return value if not isinstance(value, Param) else None
        return self.unknown(node)

    def mix_dims(self, node: fx.Node, value, dims):
        if not isinstance(value, Channels):
            return value if isinstance(value, Opaque) else None
        dims = {d % value.ndim for d in dims}
        touched = dims & set(value.dims)
        if not touched:
            return value
        loose = touched - value.fixed
        reason = (f"normalized or mixed together by {op_name(node, self.modules)} at node '{node.name}'"
                  if loose else None)
        return self.mixed(value, reason)

    def normalized(self, node: fx.Node, value, count: int):
        ndim = value.ndim if isinstance(value, Channels) else 0
        return self.mix_dims(node, value, tuple(range(ndim - count, ndim)))

    # ------------------------------------------------------------------ elementwise
    def op_elementwise(self, node: fx.Node):
        first = self.value(node.args[0]) if node.args else None
        others = [a for a in node.all_input_nodes[1:] if isinstance(self.value(a), (Channels, Opaque))]
        if others and node.target not in ("to", "type_as"):
            return self.op_binary(node)
        return first

    def op_spatial(self, node: fx.Node):
        return self.spatial(node, self.value(node.args[0]))

    def op_binary(self, node: fx.Node):
        shape = node_shape(node)
        operands = [a for a in node.args if isinstance(a, fx.Node)] + \
                   [a for k, a in node.kwargs.items() if k in ("other", "input") and isinstance(a, fx.Node)]
        values = [self.value(a) for a in operands]
        if shape is None:
            return None
        opaque = [v for v in values if isinstance(v, Opaque)]
        if opaque:
            for v in values:
                self.release(v, opaque[0].reason)
            return opaque[0]
        channel_ops = [(a, v) for a, v in zip(operands, values) if isinstance(v, Channels)]
        if not channel_ops:
            params = [v for v in values if isinstance(v, Param)]
            if len(params) == 1 and all(isinstance(v, Param) or v is None for v in values):
                return ax.shift_param(params[0], len(shape))
            return None
        return self.combine_operands(node, shape, operands, values)

    def combine_operands(self, node: fx.Node, shape, operands, values, shapes=None):
        """Elementwise combination of tensors with broadcasting (binary ops, concat along
        another dim). ``shapes``: the operands' shapes where not their nodes' own."""
        shapes = shapes or [node_shape(a) if isinstance(a, fx.Node) else None for a in operands]
        full, single = [], []
        for arg_shape, v in zip(shapes, values):
            if not isinstance(v, Channels):
                continue
            v = ax.align(v, len(shape))
            arg_shape = (1,) * (len(shape) - len(arg_shape or ())) + tuple(arg_shape or ())
            if all(arg_shape[d] == shape[d] for d in v.dims):
                full.append(v)
            elif v.labels.size == 1:
                single.append(v)
            else:
                return self.unknown(node, "channels broadcast against each other")
        if not full:
            return ax.broadcast(single[0], shape)
        dims = full[0].dims
        if any(v.dims != dims for v in full):
            return self.unknown(node, "operands with channels on different dims")
        target = tuple(shape[d] for d in dims)
        for arg_shape, v in zip(shapes, values):  # parameters and constants along the channels
            if isinstance(v, Channels):
                continue
            if arg_shape is None:
                continue
            aligned = (1,) * (len(shape) - len(arg_shape)) + tuple(arg_shape)
            spread = [d for d in dims if aligned[d] > 1]
            if not spread:
                continue
            if isinstance(v, Param):
                self.param_along(node, ax.shift_param(v, len(shape)), full[0], spread)
            else:
                self.pin(full[0].labels, f"a per-channel constant that is not a parameter meets them at node "
                                         f"'{node.name}' (slicing cannot follow it)")
        fixed = frozenset.intersection(*[v.fixed for v in full])
        if len(full) == 1 and not single:
            return Channels(full[0].labels, dims, len(shape), fixed)
        broadcast = [np.broadcast_to(v.labels.reshape(-1)[:1].reshape((1,) * len(target)), target) for v in single]
        labels = self.combine(node, [v.labels for v in full], broadcast)
        return Channels(labels, dims, len(shape), fixed)

    def param_along(self, node: fx.Node, param: Param, ch: Channels, spread) -> None:
        """Parameter ``param`` varies along the channel dims ``spread`` of ``ch``."""
        where = {d: a for a, d in param.axes.items()}
        for d in spread:
            if d not in where:
                self.pin(ch.labels, f"a per-channel constant computed from parameter '{param.name}' meets them at "
                                    f"node '{node.name}' in a way slicing cannot follow")
                return
        for d in spread:
            others = tuple(o for o in ch.dims if o != d)
            if others and d not in ch.fixed:
                self.unite_along(ch, others)
            self.param(param.name, where[d], ch.project((d,)))

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
        literal = tuple(i for i, s in enumerate(_sizes(node)) if _literal(s)) if shape else ()
        return self.reshaped(node, self.value(node.args[0]), literal)

    def op_flatten(self, node: fx.Node):
        return self.reshaped(node, self.value(node.args[0]), ())

    def op_squeeze(self, node: fx.Node):
        return self.reshaped(node, self.value(node.args[0]), ())

    op_unsqueeze = op_squeeze

    def op_unflatten(self, node: fx.Node):
        shape = node_shape(node)
        dim, sizes = _arg(node, 1, "dim"), _arg(node, 2, "sizes", ())
        dim = dim % len(shape) if shape else 0
        return self.reshaped(node, self.value(node.args[0]), tuple(dim + i for i, s in enumerate(sizes) if _literal(s)))

    def permuted(self, value, perm):
        if isinstance(value, Channels):
            return ax.permute(value, perm)
        if isinstance(value, Param):
            return ax.permute_param(value, perm)
        return value if isinstance(value, Opaque) else None

    def op_permute(self, node: fx.Node):
        value = self.value(node.args[0])
        perm = list(node.args[1:]) if node.op == "call_method" else _arg(node, 1, "dims")
        if node.op == "call_method" and len(perm) == 1 and isinstance(perm[0], (tuple, list)):
            perm = list(perm[0])
        if "dims" in node.kwargs:
            perm = list(node.kwargs["dims"])
        return self.permuted(value, perm)

    def op_transpose(self, node: fx.Node):
        shape = node_shape(node)
        a, b = _arg(node, 1, "dim0"), _arg(node, 2, "dim1")
        return self.permuted(self.value(node.args[0]), ax.transpose_perm(len(shape), a, b))

    def op_movedim(self, node: fx.Node):
        shape = node_shape(node)
        perm = ax.movedim_perm(len(shape), _arg(node, 1, "source"), _arg(node, 2, "destination"))
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
        return self.split(node, _arg(node, 2, "dim", 0), equal=True)

    def op_split(self, node: fx.Node):
        size = _arg(node, 1, "split_size_or_sections", _arg(node, 1, "split_size"))
        return self.split(node, _arg(node, 2, "dim", 0), equal=isinstance(size, fx.Node))

    def op_unbind(self, node: fx.Node):
        return self.split(node, _arg(node, 1, "dim", 0), equal=False, drop=True)

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
                shifted = Channels(value.labels, tuple(d - (d > dim) for d in value.dims), ndim - 1,
                                   frozenset(d - (d > dim) for d in value.fixed))
                return tuple(shifted for _ in shapes)
            return tuple(value for _ in shapes)
        axis = value.axis(dim)
        bounds = np.cumsum([0] + [s[dim] if not drop else 1 for s in shapes])
        parts = [np.take(value.labels, np.arange(a, b), axis=axis) for a, b in zip(bounds[:-1], bounds[1:])]
        if dim not in value.fixed:
            if equal and len({p.shape for p in parts}) == 1:
                for p in parts[1:]:
                    self.unite(parts[0], p)
            else:
                self.pin(value.labels, f"split at node '{node.name}' into parts of sizes written in the model's code")
        if drop:
            dims = tuple(d - (d > dim) for d in value.dims if d != dim)
            fixed = frozenset(d - (d > dim) for d in value.fixed if d != dim)
            return tuple(Channels(p.squeeze(axis), dims, ndim - 1, fixed) if dims else None for p in parts)
        return tuple(Channels(p, value.dims, ndim, value.fixed) for p in parts)

    def op_cat(self, node: fx.Node):
        tensors = _arg(node, 0, "tensors")
        return self.concat(node, list(tensors), _arg(node, 1, "dim", 0))

    def op_stack(self, node: fx.Node):
        tensors, shape = list(_arg(node, 0, "tensors")), node_shape(node)
        dim = _arg(node, 1, "dim", 0) % len(shape)
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
            shapes.append(tuple(part[:dim] + [1] + part[dim:]) if part else None)
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
                reason = v.reason if isinstance(v, Opaque) else f"concatenated from a constant at node '{node.name}'"
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
        return None

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
        tensor_items = [i for i, k in enumerate(items) if isinstance(k, fx.Node) and node_shape(k) is not None]
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
            return Param(value.name, {a: mapping[d] for a, d in value.axes.items()
                                      if d in mapping and ax.full_slice(items_at(items, d), in_shape[d])},
                         len(out_shape))
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
        return Channels(labels, tuple(dims), len(out_shape), frozenset(mapping[d] for d in keep if d in value.fixed))

    # ------------------------------------------------------------------ reductions and mixing
    def op_reduce(self, node: fx.Node):
        value = self.value(node.args[0])
        dims = _arg(node, 1, "dim")
        keepdim = bool(_arg(node, 2, "keepdim", False))
        if not isinstance(value, Channels):
            return value if isinstance(value, Opaque) else None
        if dims is None:
            self.lose(value.labels, f"reduced over by {op_name(node, self.modules)} at node '{node.name}'")
            return None
        dims = {d % value.ndim for d in ([dims] if isinstance(dims, int) else dims)}
        if dims & set(value.dims):
            self.lose(value.labels, f"reduced over by {op_name(node, self.modules)} at node '{node.name}'")
            return None
        if keepdim:
            return value
        shift = lambda d: d - sum(1 for r in dims if r < d)  # noqa: E731
        return Channels(value.labels, tuple(shift(d) for d in value.dims), value.ndim - len(dims),
                        frozenset(shift(d) for d in value.fixed))

    def op_mix(self, node: fx.Node):
        default = 1 if node.target is torch.nn.functional.normalize else None
        dim = _arg(node, 2 if node.target is torch.nn.functional.normalize else 1, "dim", default)
        value = self.value(node.args[0])
        if dim is None:
            return self.unknown(node)
        return self.mix_dims(node, value, (dim,))

    def op_layer_norm(self, node: fx.Node):
        normalized = _arg(node, 1, "normalized_shape")
        return self.normalized(node, self.value(node.args[0]), len(normalized))

    def op_pad(self, node: fx.Node):
        value = self.value(node.args[0])
        amounts = list(_arg(node, 1, "pad", ()))
        if not isinstance(value, Channels):
            return self.passthrough(node, value)
        padded = {value.ndim - 1 - i // 2 for i, amount in enumerate(amounts)
                  if isinstance(amount, fx.Node) or amount != 0}
        if padded & set(value.dims):
            return self.unknown(node, "pads a channel dim")
        return value

    def op_roll(self, node: fx.Node):
        value = self.value(node.args[0])
        dims = _arg(node, 2, "dims")
        if not isinstance(value, Channels):
            return self.passthrough(node, value)
        if dims is None:
            return self.unknown(node, "rolls the flattened tensor")
        dims = {d % value.ndim for d in ([dims] if isinstance(dims, int) else dims)}
        if dims & set(value.dims):
            return self.unknown(node, "rolls a channel dim")
        return value

    def op_matmul(self, node: fx.Node):
        a, b = self.value(node.args[0]), self.value(node.args[1])
        shape = node_shape(node)
        if isinstance(a, Opaque) or isinstance(b, Opaque) or shape is None or len(shape) < 2:
            return self.unknown(node)
        if isinstance(a, Channels) and not isinstance(b, Channels):
            a = ax.align(a, len(shape))
            if a.ndim == len(shape) and a.ndim - 1 not in a.dims:
                return a  # rows (and batch dims) of a: out[.., n, :] depends on a[.., n, :] only
        if isinstance(b, Channels) and not isinstance(a, Channels):
            b = ax.align(b, len(shape))
            if b.ndim == len(shape) and b.ndim - 2 not in b.dims:
                return b
        if not isinstance(a, Channels) and not isinstance(b, Channels):
            return None
        return self.unknown(node, "channels on both operands or on the contracted dim")

    # ------------------------------------------------------------------ attention
    def op_attention(self, node: fx.Node):
        """``F.scaled_dot_product_attention(q, k, v, attn_mask, ...)``: q [..., L, E], k [..., S, E],
        v [..., S, Ev] -> [..., L, Ev]. Heads (channel dims among the batch dims) go from q, k,
        v and the mask together; E and Ev must be fixed (or carry no channels)."""
        names = ("query", "key", "value", "attn_mask")
        args = [_arg(node, i, n) for i, n in enumerate(names)]
        values = [self.value(a) for a in args]
        shape = node_shape(node)
        if any(isinstance(v, Opaque) for v in values) or shape is None:
            return self.unknown(node)
        n = len(shape)
        q, k, v, mask = [ax.align(x, n) if isinstance(x, Channels) else x for x in values]
        for x in (q, k, v, mask):
            if isinstance(x, Channels) and n - 2 in x.dims:
                return self.unknown(node, "channels on the token dim")
        explicit_scale = "scale" in node.kwargs and node.kwargs["scale"] is not None
        for x in (q, k, v):
            if isinstance(x, Channels) and n - 1 in x.dims and n - 1 not in x.fixed:
                if x is v and not any(isinstance(y, Channels) and set(y.dims) - {n - 1} for y in (q, k, mask)):
                    continue  # no heads: v's features are plain channels
                if self.follows_unions and (x is v or explicit_scale):
                    self.unite_along(x, (n - 1,))
                else:
                    self.pin(x.labels, f"the head size at attention node '{node.name}' is not a constant "
                                       "(write view(..., head_dim))")
        heads = [x for x in (q, k, v, mask) if isinstance(x, Channels) and set(x.dims) - {n - 1}]
        if heads:
            batch = tuple(d for d in heads[0].dims if d < n - 2)
            if any(tuple(d for d in x.dims if d < n - 2) != batch for x in heads):
                return self.unknown(node, "heads on different dims")
            first = heads[0].project(batch)
            for x in heads[1:]:
                other = x.project(batch)
                if other.shape != first.shape:
                    return self.unknown(node, "different head counts")
                self.unite(first, other)
            if not isinstance(v, Channels):
                return self.unknown(node, "heads of q / k without heads of v")
        for x in (q, k, mask):
            if isinstance(x, Channels):
                if heads and isinstance(v, Channels):
                    count = heads[0].project(batch).size
                    self.gate(x.labels.reshape(count, -1), v.labels.reshape(count, -1))
                else:
                    self.read(x.labels)
        mask_shape = node_shape(args[3]) if isinstance(args[3], fx.Node) else None
        if isinstance(mask, Param) and heads and mask_shape is not None:
            aligned = (1,) * (n - len(mask_shape)) + tuple(mask_shape)
            self.param_along(node, ax.shift_param(mask, n), heads[0], [d for d in batch if aligned[d] > 1])
        if not isinstance(v, Channels):
            return None
        return Channels(v.labels, v.dims, n, v.fixed)


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
