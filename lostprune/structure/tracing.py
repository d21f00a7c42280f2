"""Tracing a model with torch.fx for the channel analyses, and annotating every node with
the shape of its output on an example input (``meta["tensor_meta"]``, as fx's ShapeProp)."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ..core.shapes import shape_only_forward
from .folded_conv import FoldedConv2d  # a sliced model's conv: a leaf like nn.Conv2d
from .groups import GraphError

TRACED_CONSTANT = "lostprune_traced_constant"  # node.meta key


class Tracer(fx.Tracer):
    def __init__(self, leaf_modules: tuple[type, ...] = (), leaf_names: tuple[str, ...] = ()):
        super().__init__()
        self.leaf_modules = leaf_modules
        self.leaf_names = leaf_names

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        if isinstance(m, (FoldedConv2d, *self.leaf_modules)) or qualified_name in self.leaf_names:
            return True
        return super().is_leaf_module(m, qualified_name)


def trace(model: nn.Module, leaf_modules=()) -> fx.GraphModule:
    """fx-trace ``model`` (Conv/Linear/BN and other torch.nn modules are leaves)."""
    return fx.GraphModule(model, trace_graph(model, leaf_modules))


def leaf_spec(leaf_modules) -> tuple[tuple[type, ...], tuple[str, ...]]:
    return (
        tuple(m for m in leaf_modules if isinstance(m, type)),
        tuple(m for m in leaf_modules if isinstance(m, str)),
    )


def trace_graph(model: nn.Module, leaf_modules=()) -> fx.Graph:
    tracer = Tracer(*leaf_spec(leaf_modules))
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types for data-dependent control flow
        where = failing_module(exc)
        raise GraphError(
            f"cannot trace {type(model).__name__} with torch.fx"
            + (f" (inside {where})" if where else "")
            + f": {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Pass leaf_modules=[ModuleType or 'qualified.name'] to treat the offending submodule as "
            "an opaque leaf (its channels are then left unpruned), or make its forward traceable."
        ) from exc
    # A tensor made inside forward (``torch.tensor(0.5)``) becomes a ``get_attr`` of an
    # attribute fx's tracer sets on this model instance only; the trace is reused for copies
    # and other instances of the structure, so the node carries the value itself.
    for node in graph.nodes:
        if node.op == "get_attr" and node.target.startswith("_tensor_constant"):
            node.meta[TRACED_CONSTANT] = getattr(model, node.target)
    return graph


def attr_value(root: nn.Module, node: fx.Node):
    """The value of a ``get_attr`` node: a traced constant's own, else the attribute of ``root``."""
    if TRACED_CONSTANT in node.meta:
        return node.meta[TRACED_CONSTANT]
    value = root
    for part in node.target.split("."):
        value = getattr(value, part)
    return value


def failing_module(exc: Exception) -> str | None:
    """The innermost module forward in the traceback of ``exc`` (``Type.forward``)."""
    tb = exc.__traceback__
    where = None
    while tb is not None:
        frame = tb.tb_frame
        self_obj = frame.f_locals.get("self")
        if isinstance(self_obj, nn.Module) and frame.f_code.co_name == "forward":
            where = f"{type(self_obj).__name__}.forward"
        tb = tb.tb_next
    return where


def propagate_shapes(graph: fx.Graph, modules: dict[str, nn.Module], example_input: Tensor) -> None:
    """Annotate every node with ``meta["tensor_meta"]`` as fx's ``ShapeProp`` does, running
    the graph (not a ``GraphModule``: no code generation) in ``shape_only_forward``."""
    root = modules[""]

    def run(x: Tensor) -> None:
        env: dict[fx.Node, object] = {}
        inputs = iter([x])
        for node in graph.nodes:
            if node.op == "output":
                return
            args = fx.node.map_arg(node.args, env.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            if node.op == "placeholder":
                value = next(inputs, args[0] if args else _MISSING)
                if value is _MISSING:
                    raise GraphError(
                        f"forward of {type(root).__name__} takes more than one input "
                        f"('{node.target}'); build_graph traces it on one example input"
                    )
            elif node.op == "get_attr":
                value = attr_value(root, node)
            elif node.op == "call_module":
                value = modules[node.target](*args, **kwargs)
            elif node.op == "call_method":
                value = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:  # (binary ops on meta tensors: shape_only_forward gives their shapes by rule)
                value = node.target(*args, **kwargs)
            env[node] = value
            if type(value) is Tensor:  # its metadata outside shape_only_forward's torch-function mode
                with torch._C.DisableTorchFunction():  # (through it, each query is a Python call)
                    _annotate(node, value)
            else:  # (a tuple, a size, a tensor subclass with its own torch function)
                _annotate(node, value)

    shape_only_forward(root, example_input, call=run)


_MISSING = object()


def _annotate(node: fx.Node, value) -> None:
    found = False

    def metadata(obj):
        nonlocal found
        if isinstance(obj, Tensor):
            found = True
            # memory_format left None: nothing reads it, and finding it tests three layouts'
            # contiguity (most of the annotation's cost)
            return _extract_tensor_metadata(obj, include_contiguity=False)
        return obj

    meta = fx.node.map_aggregate(value, metadata)
    if found:
        node.meta["tensor_meta"] = meta
    node.meta["type"] = type(value)
