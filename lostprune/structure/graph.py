"""The dependency graph of coupled channels (docs/methods.md §Group-aware variants).

``build_graph`` traces a model with torch.fx (:mod:`.tracing`), walks the trace with the
channel analysis (:mod:`.channels`: every channel of every tensor an element, unions where
ops tie channels together) and gathers the connected components into channel groups
(:mod:`.groups`): the units that can be removed one at a time. The trace and groups are kept
per model and reused while the model's structure is unchanged (:mod:`.trace_cache`).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from ..core.accounting import COUNTED_MODULES, output_count
from ..core.masks import nonzero_rows_and_columns
from . import tracing
from .channels import GroupWalk
from .groups import DEPTHWISE, IN, NORM, OUT, PARAM, ChannelGroup, GraphError, Member
from .trace_cache import TraceCache, structure_key
from .tracing import leaf_spec, trace

__all__ = [
    "DEPTHWISE",
    "IN",
    "NORM",
    "OUT",
    "PARAM",
    "ChannelGroup",
    "DependencyGraph",
    "GraphError",
    "Member",
    "build_graph",
    "trace",
]


@dataclass
class DependencyGraph:
    """Channel groups of a model, and what a set of weight masks removes structurally.

    ``fx_graph``: the trace, each node's ``meta["tensor_meta"]`` holding its output shape on
    the example input (shared with graphs of structurally identical models)."""

    model: nn.Module
    fx_graph: fx.Graph
    groups: list[ChannelGroup]
    modules: dict[str, nn.Module] = field(repr=False, default_factory=dict)
    leaf_modules: tuple = ()  # as given to build_graph
    traced_training: bool = False  # some module was in training mode when traced

    @functools.cached_property
    def gm(self) -> fx.GraphModule:
        """The trace as a ``GraphModule`` of ``model`` (built on first use)."""
        return fx.GraphModule(self.model, copy.deepcopy(self.fx_graph))

    def output_positions(self) -> tuple[dict[str, int], dict[str, int]] | None:
        """``core.accounting.output_positions`` of the model on the example input, read off
        the trace's shapes instead of another forward pass — or None where the trace may
        not see every call that function's hooks see: a model traced in training mode (its
        forward may branch on it), a counted module fx traces through or that sits inside
        an opaque leaf, an output that is not one tensor."""
        if self.traced_training:
            return None
        tracer = tracing.Tracer(*leaf_spec(self.leaf_modules))

        def hidden(module: nn.Module, prefix: str, inside_leaf: bool) -> bool:
            for name, child in module.named_children():
                qualified = f"{prefix}.{name}" if prefix else name
                # containers are never called: fx's leaf rule does not apply to them
                leaf = tracer.is_leaf_module(child, qualified) and not isinstance(
                    child, (nn.ModuleList, nn.ModuleDict)
                )
                if isinstance(child, COUNTED_MODULES) and (inside_leaf or not leaf):
                    return True
                if hidden(child, qualified, inside_leaf or leaf):
                    return True
            return False

        if hidden(self.model, "", False):
            return None
        positions: dict[str, int] = {}
        elements: dict[str, int] = {}
        for node in self.fx_graph.nodes:
            if node.op != "call_module" or not isinstance(self.modules[node.target], COUNTED_MODULES):
                continue
            meta = node.meta.get("tensor_meta")
            if not isinstance(getattr(meta, "shape", None), torch.Size):
                return None
            is_layer, n = output_count(self.modules[node.target], tuple(meta.shape))
            target = positions if is_layer else elements
            target[node.target] = target.get(node.target, 0) + n
        return positions, elements

    def groups_of(self, module: str, role: str | None = None) -> list[ChannelGroup]:
        return [
            g
            for g in self.groups
            if any(m.module == module and (role is None or m.role == role) for m in g.members)
        ]

    @staticmethod
    def _alive(masks: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per masked module: which weight rows (dim 0) and columns (dim 1) hold a nonzero."""
        rows, cols = {}, {}
        for name, mask in masks.items():
            live_rows, live_cols = nonzero_rows_and_columns(mask)
            rows[name] = live_rows.cpu()
            if live_cols is not None:
                cols[name] = live_cols.cpu()
        return rows, cols

    @staticmethod
    def alive_channels(
        group: ChannelGroup, rows: dict[str, Tensor], cols: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        """Bool [size]: the group's channels some producer still writes; bool [size] or None:
        those some consumer still reads (None: the group has no consumer). ``rows`` / ``cols``:
        per module, bool CPU tensors of its live weight rows / columns; a module without an
        entry counts as dense. (numpy: a few microseconds per member, several times that in
        torch; slicing asks once per group.)"""
        alive_out = np.zeros(group.size, dtype=bool)
        alive_in = None
        for m in group.members:
            if m.role in (OUT, DEPTHWISE):
                live = rows.get(m.module)
            elif m.role == IN:
                alive_in = np.zeros(group.size, dtype=bool) if alive_in is None else alive_in
                live = cols.get(m.module)
            else:
                continue
            target = alive_out if m.role != IN else alive_in
            if live is None:
                target[:] = True
            else:
                target |= live.numpy()[m.index.numpy()].any(1)
        return torch.from_numpy(alive_out), None if alive_in is None else torch.from_numpy(alive_in)

    @staticmethod
    def removed_of(alive: tuple[Tensor, Tensor | None]) -> Tensor:
        """Bool [size]: structurally gone channels, from ``alive_channels``: constant (no
        producer writes them) or unread (consumers exist and none reads them)."""
        alive_out, alive_in = alive
        return ~alive_out if alive_in is None else ~alive_out | ~alive_in

    def removed_channels(self, masks: dict[str, Tensor], alive=None) -> dict[int, Tensor]:
        """Per prunable group: bool [size], True where the channel is structurally gone — every
        producer row is zero (the channel is constant) or every consumer column is zero (nobody
        reads it). Modules without a mask count as dense. ``alive``: ``_alive(masks)`` if known."""
        rows, cols = alive if alive is not None else self._alive(masks)
        return {g.id: self.removed_of(self.alive_channels(g, rows, cols)) for g in self.groups if g.prunable}

    def summary(self) -> str:
        lines = [
            (
                f"{len(self.groups)} channel groups "
                f"({sum(g.prunable for g in self.groups)} prunable, {sum(g.coupled for g in self.groups)} coupled)"
            )
        ]
        lines += [f"  {g!r}" for g in self.groups]
        return "\n".join(lines)


_TRACES = TraceCache()  # structure key -> trace and groups


def build_graph(
    model: nn.Module, example_input: Tensor, leaf_modules=(), *, reuse_from: nn.Module | None = None
) -> DependencyGraph:
    """Trace ``model`` on ``example_input`` (N x C x H x W, N >= 1) and group its coupled channels.

    ``leaf_modules``: module types or qualified names to keep opaque when the model's own
    forward cannot be traced; channels entering and leaving them are frozen.
    ``reuse_from``: accepted for compatibility; any model of the same structure reuses a trace.

    The trace and groups are kept (the last 16 structures) and reused by the next call on any
    model with the same ``structure_key`` (module names, types, attributes, tensor shapes,
    training modes, input shape, ``leaf_modules``): the same model, a copy of it, another
    instance of the architecture.
    """
    if not isinstance(example_input, Tensor):
        raise TypeError("example_input must be a tensor batch (N x C x H x W)")
    modules = dict(model.named_modules())
    key = structure_key(model, example_input, leaf_modules)
    cached = _TRACES.get(key)
    if cached is None:
        fx_graph = tracing.trace_graph(model, leaf_modules)
        tracing.propagate_shapes(fx_graph, modules, example_input)
        walk = GroupWalk(fx_graph, modules)
        walk.run()
        cached = (fx_graph, walk.groups())
        _TRACES.put(key, cached)
    fx_graph, groups = cached
    # Fresh group objects: a caller may edit its groups without touching the cached ones.
    groups = [g.copy() for g in groups]
    return DependencyGraph(
        model, fx_graph, groups, modules, tuple(leaf_modules), any(m.training for m in modules.values())
    )
