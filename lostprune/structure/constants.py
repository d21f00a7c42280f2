"""Which channels are constant, and their values, at the input of every conv/linear layer.

A conv/linear output channel whose weight row is all zero is its bias everywhere: a constant.
BN, activations and the other per-channel ops map it to another constant; constant-preserving
spatial ops (max/adaptive pooling, interpolation, reflect/replicate padding, flatten) pass it
on; a residual add of two constants is a constant. Slicing folds such channels into their
consumers instead of computing them (docs/methods.md §Slicing).

The walk runs the fx graph on *probes*: per tensor, one value per channel (shaped
[1, C, 1, ...] so modules apply as they are), NaN where the channel is not known to be
constant. NaN propagates through arithmetic by itself; ops this walk does not know, and ops
that do not preserve constants (zero padding, average pooling that counts padding, anything
mixing channels), make their outputs unknown. Run the model in eval mode: BN folds with its
running statistics.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..core.masks import nonzero_rows_and_columns
from .folded_conv import FoldedConv2d
from .op_tables import (
    ACTIVATION_MODULES,
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    ELEMENTWISE_FUNCTIONS,
    ELEMENTWISE_METHODS,
    FLATTEN_FUNCTIONS,
    NORM_MODULES,
    REDUCE_FUNCTIONS,
    REDUCE_METHODS,
)
from .tracing import attr_value

# Spatial ops whose output is constant wherever the input is (no padding with zeros).
_CONSTANT_PRESERVING_MODULES = (
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
    nn.UpsamplingBilinear2d,
    nn.UpsamplingNearest2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
)
_CONSTANT_PRESERVING_FUNCTIONS = {
    F.max_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.interpolate,
    F.upsample,
}
_SPATIAL_FUNCTIONS = _CONSTANT_PRESERVING_FUNCTIONS | {F.avg_pool2d, F.pad}
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}


def _no_padding(padding) -> bool:
    values = padding if isinstance(padding, (tuple, list)) else (padding,)
    return all(v == 0 for v in values)


def _avg_pool_preserves(padding, count_include_pad, divisor_override) -> bool:
    # Averaging n copies of c gives c, unless padded zeros join the average or n is overridden.
    return divisor_override is None and (not count_include_pad or _no_padding(padding))


def _module_preserves(module: nn.Module) -> bool:
    if isinstance(module, _CONSTANT_PRESERVING_MODULES):
        return True
    if isinstance(module, nn.AvgPool2d):
        return _avg_pool_preserves(module.padding, module.count_include_pad, module.divisor_override)
    return False  # zero / constant padding and anything else


def _function_preserves(node: fx.Node) -> bool:
    if node.target in _CONSTANT_PRESERVING_FUNCTIONS:
        return True
    args, kwargs = node.args, node.kwargs
    if node.target is F.avg_pool2d:

        def arg(i, name, default):
            return kwargs.get(name, args[i] if len(args) > i else default)

        return _avg_pool_preserves(
            arg(3, "padding", 0), arg(5, "count_include_pad", True), arg(6, "divisor_override", None)
        )
    if node.target is F.pad:
        mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
        return mode != "constant"
    return False


class _NotConstant(Exception):
    """An operand of a per-channel op is not known to be constant."""


def zero_rows(weight: Tensor) -> Tensor:
    """Bool [rows]: weight rows that are all zero."""
    return ~nonzero_rows_and_columns(weight)[0]


class _Probes:
    def __init__(self, graph: fx.Graph, modules: dict[str, nn.Module], dead_rows: dict[str, Tensor]):
        self.graph = graph
        self.root = modules[""]
        self.modules = modules
        self.dead_rows = dead_rows
        reference = next(iter(self.root.parameters()), None)  # probes live where the modules do
        self.device = reference.device if reference is not None else torch.device("cpu")
        self.values: dict[fx.Node, object] = {}
        self.inputs: dict[str, list[Tensor | None]] = {}  # layer -> probe of its input, per call

    # ---- shapes
    @staticmethod
    def shape(node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def shaped(self, probe: Tensor | None, node: fx.Node) -> Tensor | None:
        """``probe`` as [1, C, 1, ...] for ``node``'s output (None if it does not fit)."""
        shape = self.shape(node)
        if probe is None or shape is None or len(shape) < 2 or probe.numel() != shape[1]:
            return None
        return probe.reshape(1, shape[1], *([1] * (len(shape) - 2)))

    def unknown_like(self, node: fx.Node, dtype) -> Tensor | None:
        shape = self.shape(node)
        if shape is None or len(shape) < 2:
            return None
        return torch.full((1, shape[1], *([1] * (len(shape) - 2))), math.nan, dtype=dtype, device=self.device)

    def probe(self, arg) -> Tensor | None:
        value = self.values.get(arg) if isinstance(arg, fx.Node) else None
        return value if isinstance(value, Tensor) else None

    # ---- walk
    def run(self) -> None:
        with torch.no_grad():
            for node in self.graph.nodes:
                try:
                    self.values[node] = self.visit(node)
                except (RuntimeError, TypeError, ValueError, IndexError):
                    self.values[node] = None  # an op that does not apply to probes: unknown

    def visit(self, node: fx.Node):
        if node.op in ("placeholder", "output"):
            return None
        if node.op == "get_attr":
            value = attr_value(self.root, node)
            return value if isinstance(value, Tensor) and value.numel() == 1 else None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        if node.target is operator.getitem:
            return self.visit_getitem(node)
        return self.visit_function(node)

    def visit_module(self, node: fx.Node, module: nn.Module):
        arg = node.args[0] if node.args else None
        probe = self.probe(arg)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return self.layer(node, module, arg, probe)
        if isinstance(module, NORM_MODULES + ACTIVATION_MODULES):
            return None if probe is None else self.shaped(module(probe.clone()), node)
        if isinstance(module, nn.Flatten):
            return self.flatten(node, arg, module.start_dim, module.end_dim)
        if _module_preserves(module):
            return self.shaped(probe, node)
        return None

    def layer(self, node: fx.Node, module: nn.Module, arg, probe: Tensor | None):
        in_shape = self.shape(arg)
        token_linear = isinstance(module, nn.Linear) and (in_shape is None or len(in_shape) != 2)
        self.inputs.setdefault(node.target, []).append(
            None if probe is None or token_linear else probe.flatten()
        )
        if token_linear:
            return None
        constant = self.dead_rows.get(node.target)
        constant = zero_rows(module.weight) if constant is None else constant.to(module.weight.device)
        if isinstance(module, FoldedConv2d):  # its fold term varies at the borders
            constant &= zero_rows(module.fold_weight)
        bias = (
            module.bias.detach()
            if module.bias is not None
            else torch.zeros(constant.shape[0], dtype=module.weight.dtype)
        )
        values = torch.where(constant.to(bias.device), bias, torch.full_like(bias, math.nan))
        return self.shaped(values, node)

    def flatten(self, node: fx.Node, arg, start_dim: int, end_dim: int = -1):
        probe, shape = self.probe(arg), self.shape(arg)
        if probe is None or shape is None or end_dim % len(shape) != len(shape) - 1:
            return None
        if start_dim >= 2:
            return self.shaped(probe, node)
        if start_dim == 1:  # channel c becomes features c·HW … (c+1)·HW − 1
            inner = math.prod(shape[2:])
            return self.shaped(probe.flatten().repeat_interleave(inner), node)
        return None

    def visit_getitem(self, node: fx.Node):
        source, key = node.args
        value = self.values.get(source)
        if isinstance(value, (tuple, list)) and isinstance(key, int):
            return value[key]
        shape = self.shape(source)
        if (
            isinstance(value, Tensor)
            and isinstance(key, tuple)
            and len(key) >= 2
            and key[0] == slice(None)
            and key[1] == slice(None)
            and shape is not None
            and len(shape) == 4
        ):
            return self.shaped(value, node)  # spatial indexing
        return None

    def visit_function(self, node: fx.Node):
        target, args = node.target, node.args
        is_method = node.op == "call_method"
        if is_method and target in _IDENTITY_METHODS:
            return self.shaped(self.probe(args[0]), node)
        if not is_method and target in _SPATIAL_FUNCTIONS:
            return self.shaped(self.probe(args[0]), node) if _function_preserves(node) else None
        if (is_method and target in ELEMENTWISE_METHODS | BINARY_METHODS) or (
            not is_method and target in ELEMENTWISE_FUNCTIONS | BINARY_FUNCTIONS
        ):
            return self.apply(node)
        if not is_method and target in (torch.cat, torch.concat):
            return self.concat(node)
        if (is_method and target == "flatten") or (not is_method and target in FLATTEN_FUNCTIONS):
            return self.flatten(
                node,
                args[0],
                node.kwargs.get("start_dim", args[1] if len(args) > 1 else 0),
                node.kwargs.get("end_dim", args[2] if len(args) > 2 else -1),
            )
        if (is_method and target in ("view", "reshape")) or (not is_method and target is torch.reshape):
            return self.reshape(node)
        if (is_method and target in REDUCE_METHODS) or (not is_method and target in REDUCE_FUNCTIONS):
            return self.reduce(node)
        return None

    def apply(self, node: fx.Node):
        """Run a per-channel op on the probes of its tensor arguments (scalars as they are)."""

        def substitute(value):
            if isinstance(value, fx.Node):
                probe = self.values.get(value)
                if not isinstance(probe, Tensor):
                    raise _NotConstant
                return probe.clone()
            if isinstance(value, (tuple, list)):
                return type(value)(substitute(v) for v in value)
            return value

        try:
            args = substitute(node.args)
            kwargs = {k: substitute(v) for k, v in node.kwargs.items()}
        except _NotConstant:
            return None
        if node.op == "call_method":
            result = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            result = node.target(*args, **kwargs)
        return self.shaped(result, node) if isinstance(result, Tensor) else None

    def concat(self, node: fx.Node):
        tensors = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        shape = self.shape(node)
        if shape is None or not isinstance(tensors, (tuple, list)):
            return None
        parts = []
        for t in tensors:
            probe = self.probe(t)
            parts.append(probe if probe is not None else self.unknown_like(t, self.dtype(t)))
        if any(p is None for p in parts):
            return None
        if dim % len(shape) == 1:
            return self.shaped(torch.cat([p.flatten() for p in parts]), node)
        first = parts[0]
        for p in parts[1:]:  # joined along space: constant only where every part agrees
            if p.shape != first.shape:
                return None
            first = torch.where(first == p, first, torch.full_like(first, math.nan))
        return self.shaped(first, node)

    def reshape(self, node: fx.Node):
        source = node.args[0]
        in_shape, out_shape = self.shape(source), self.shape(node)
        if in_shape is None or out_shape is None:
            return None
        if len(out_shape) == 2 and out_shape[0] == in_shape[0] and len(in_shape) >= 2:
            return self.flatten(node, source, 1)
        if out_shape[:2] == in_shape[:2]:
            return self.shaped(self.probe(source), node)
        return None

    def reduce(self, node: fx.Node):
        args = node.args
        probe, shape = self.probe(args[0]), self.shape(args[0])
        dims = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if probe is None or not shape or not dims or any(d % len(shape) < 2 for d in dims):
            return None
        target = node.target if isinstance(node.target, str) else node.target.__name__
        if target == "sum":  # a sum of n copies of c is n·c
            probe = probe * math.prod(shape[d % len(shape)] for d in dims)
        return self.shaped(probe, node)

    @staticmethod
    def dtype(node) -> torch.dtype:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return getattr(meta, "dtype", torch.float32) or torch.float32


def input_constants(
    graph: fx.Graph, modules: dict[str, nn.Module], dead_rows: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """{conv/linear name: [in channels or features]} — the constant value of each input
    column, NaN where it is not a known constant. A layer called more than once has a
    constant only where every call sees the same one. ``graph``: the model's trace with
    shapes (``DependencyGraph.fx_graph``); ``modules``: ``dict(model.named_modules())``.
    The model must be in eval mode.
    ``dead_rows``: {layer: bool [out]} of all-zero weight rows, when already known."""
    probes = _Probes(graph, modules, dead_rows or {})
    probes.run()
    result = {}
    for name, calls in probes.inputs.items():
        module = modules[name]
        width = module.weight.shape[1] * (module.groups if isinstance(module, nn.Conv2d) else 1)
        merged = None
        for probe in calls:
            if probe is None or probe.numel() != width:
                merged = torch.full((width,), math.nan)
                break
            probe = probe.to(torch.float64).cpu()
            merged = (
                probe
                if merged is None
                else torch.where(merged == probe, merged, torch.full_like(probe, math.nan))
            )
        result[name] = merged
    return result
