"""One walk over an fx trace that follows every tensor's channels (:class:`.axes.Channels`;
docs/methods.md §Channel walk).

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

Why one ~500-line file: it is one class whose methods are the per-op rules of the walk, each
a few lines, read side by side (the op tables are in :mod:`.op_tables`, shapes in
:mod:`.walk_shapes`); split, a rule and its siblings would live in different files.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor, fx

from . import axes as ax
from .axes import Channels, NotFollowed, Opaque, Param
from .op_tables import ACTIVATION_MODULES, NORM_MODULES, SPATIAL_MODULES, node_shape, op_kind, op_name
from .tracing import attr_value
from .walk_shapes import ShapeOps, call_arg, written_size


class ChannelWalk(ShapeOps):
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

    def layer(
        self, node: fx.Node, name: str, module: nn.Module, in_labels: np.ndarray | None, reason: str
    ) -> np.ndarray:
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
        reason = f"unsupported op {op_name(node, self.modules)} at node '{node.name}'" + (
            f" ({why})" if why else ""
        )
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
        value = attr_value(self.root, node)
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
            return self.reshaped(
                node, first, tuple(dim + i for i, s in enumerate(module.unflattened_size) if written_size(s))
            )
        if isinstance(module, nn.MultiheadAttention):
            return self.unknown(
                node,
                "lostprune.structure.convert_attention replaces it by a traceable "
                "equivalent whose heads can be pruned; lostprune.prune does so",
            )
        return self.unknown(node)

    def visit_layer(self, node: fx.Node, name: str, module: nn.Module, value):
        reason = (
            value.reason if isinstance(value, Opaque) else f"input of '{name}' the analysis does not follow"
        )
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
        reason = (
            f"normalized or mixed together by {op_name(node, self.modules)} at node '{node.name}'"
            if loose
            else None
        )
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
        operands = [a for a in node.args if isinstance(a, fx.Node)] + [
            a for k, a in node.kwargs.items() if k in ("other", "input") and isinstance(a, fx.Node)
        ]
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
                self.pin(
                    full[0].labels,
                    f"a per-channel constant that is not a parameter meets them at node "
                    f"'{node.name}' (slicing cannot follow it)",
                )
        fixed = frozenset.intersection(*[v.fixed for v in full])
        if len(full) == 1 and not single:
            return Channels(full[0].labels, dims, len(shape), fixed)
        broadcast = [
            np.broadcast_to(v.labels.reshape(-1)[:1].reshape((1,) * len(target)), target) for v in single
        ]
        labels = self.combine(node, [v.labels for v in full], broadcast)
        return Channels(labels, dims, len(shape), fixed)

    def param_along(self, node: fx.Node, param: Param, ch: Channels, spread) -> None:
        """Parameter ``param`` varies along the channel dims ``spread`` of ``ch``."""
        where = {d: a for a, d in param.axes.items()}
        for d in spread:
            if d not in where:
                self.pin(
                    ch.labels,
                    f"a per-channel constant computed from parameter '{param.name}' meets them at "
                    f"node '{node.name}' in a way slicing cannot follow",
                )
                return
        for d in spread:
            others = tuple(o for o in ch.dims if o != d)
            if others and d not in ch.fixed:
                self.unite_along(ch, others)
            self.param(param.name, where[d], ch.project((d,)))

    # ------------------------------------------------------------------ reductions and mixing
    def op_reduce(self, node: fx.Node):
        value = self.value(node.args[0])
        dims = call_arg(node, 1, "dim")
        keepdim = bool(call_arg(node, 2, "keepdim", False))
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
        return Channels(
            value.labels,
            tuple(shift(d) for d in value.dims),
            value.ndim - len(dims),
            frozenset(shift(d) for d in value.fixed),
        )

    def op_mix(self, node: fx.Node):
        default = 1 if node.target is torch.nn.functional.normalize else None
        dim = call_arg(node, 2 if node.target is torch.nn.functional.normalize else 1, "dim", default)
        value = self.value(node.args[0])
        if dim is None:
            return self.unknown(node)
        return self.mix_dims(node, value, (dim,))

    def op_layer_norm(self, node: fx.Node):
        normalized = call_arg(node, 1, "normalized_shape")
        return self.normalized(node, self.value(node.args[0]), len(normalized))

    def op_pad(self, node: fx.Node):
        value = self.value(node.args[0])
        amounts = list(call_arg(node, 1, "pad", ()))
        if not isinstance(value, Channels):
            return self.passthrough(node, value)
        padded = {
            value.ndim - 1 - i // 2
            for i, amount in enumerate(amounts)
            if isinstance(amount, fx.Node) or amount != 0
        }
        if padded & set(value.dims):
            return self.unknown(node, "pads a channel dim")
        return value

    def op_roll(self, node: fx.Node):
        value = self.value(node.args[0])
        dims = call_arg(node, 2, "dims")
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
        args = [call_arg(node, i, n) for i, n in enumerate(names)]
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
                if x is v and not any(
                    isinstance(y, Channels) and set(y.dims) - {n - 1} for y in (q, k, mask)
                ):
                    continue  # no heads: v's features are plain channels
                if self.follows_unions and (x is v or explicit_scale):
                    self.unite_along(x, (n - 1,))
                else:
                    self.pin(
                        x.labels,
                        f"the head size at attention node '{node.name}' is not a constant "
                        "(write view(..., head_dim))",
                    )
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
