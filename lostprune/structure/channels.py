"""The channel analysis of the dependency graph: a :class:`.walk.ChannelWalk` whose labels
are channel elements (docs/methods.md §Group-aware variants).

A conv or linear layer creates fresh elements for its output channels ("out" rows of its
weight) and records that it reads the elements of its input ("in" columns); ops that combine
tensors channel by channel (residual add, multiply, concat along another dim, attention
heads of q, k and v) unite elements; shape ops move them (see :mod:`.walk`). Elements that
reach the network input or output, or pass an op the walk does not follow, are frozen with
the reason. :func:`.groups.assemble` then resolves the unions into channel groups.
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn
from torch import fx

from .axes import Channels
from .groups import DEPTHWISE, IN, NORM, OUT, PARAM, ChannelGroup, Elements, GraphError, assemble
from .walk import ChannelWalk


class GroupWalk(ChannelWalk):
    """Channel elements of every tensor of a trace, the unions between them, and the
    members (module, role) -> elements of each index."""

    def __init__(self, graph: fx.Graph, modules: dict[str, nn.Module]):
        super().__init__(graph, modules)
        self.elements = Elements()
        self.members: dict[tuple[str, str], np.ndarray] = {}
        self.dims: dict[tuple[str, str], int] = {}  # parameter members: the parameter's dim

    # ------------------------------------------------------------------ hooks
    def fresh(self, n: int, reason: str | None = None) -> np.ndarray:
        return self.elements.new(n, reason)

    def lose(self, labels: np.ndarray, reason: str) -> None:
        self.elements.freeze(labels, reason)

    def pin(self, labels: np.ndarray, reason: str) -> None:
        self.elements.freeze(labels, reason)

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        self.elements.union(a, b)

    def combine(self, node: fx.Node, parts: list[np.ndarray], broadcast: list[np.ndarray]) -> np.ndarray:
        for part in parts[1:]:
            self.elements.union(parts[0], part)
        for single in broadcast:
            self.elements.freeze(
                single, f"one channel broadcast over the channels of another tensor at node '{node.name}'"
            )
        return parts[0]

    def mixed(self, ch: Channels, reason: str | None) -> Channels:
        if reason:
            self.elements.freeze(ch.labels, reason)
        return ch

    def norm(self, name: str, labels: np.ndarray) -> None:
        self.record(name, NORM, labels)

    def param(self, name: str, axis: int, labels: np.ndarray) -> None:
        if self.dims.get((name, PARAM), axis) != axis:
            self.elements.freeze(labels, f"parameter '{name}' meets channels along two of its dims")
            return
        self.dims[(name, PARAM)] = axis
        self.record(name, PARAM, labels)

    def layer(
        self, node: fx.Node, name: str, module: nn.Module, in_labels: np.ndarray | None, reason: str
    ) -> np.ndarray:
        if isinstance(module, nn.Conv2d):
            cin, cout, groups = module.in_channels, module.out_channels, module.groups
        else:
            cin, cout, groups = module.in_features, module.out_features, 1
        if in_labels is None or len(in_labels) != cin:
            in_labels = self.elements.new(cin, reason)
        if groups == 1:
            self.record(name, IN, in_labels)
            self.record(name, OUT, self.elements.new(cout))
            return self.members[(name, OUT)]
        if groups == cin == cout:  # depthwise: channel k in -> channel k out
            self.record(name, DEPTHWISE, in_labels)
            return self.members[(name, DEPTHWISE)]
        # a grouped conv stays one: channel j of every group goes together, in and out
        grid = in_labels.reshape(groups, cin // groups)
        for g in range(1, groups):
            self.elements.union(grid[0], grid[g])
        self.record(name, IN, grid[0])
        out = self.elements.new(cout).reshape(groups, cout // groups)
        for g in range(1, groups):
            self.elements.union(out[0], out[g])
        self.record(name, OUT, out.reshape(-1))
        return self.members[(name, OUT)]

    # ------------------------------------------------------------------ members
    def record(self, module: str, role: str, ids: np.ndarray) -> None:
        key = (module, role)
        ids = np.asarray(ids).reshape(-1)
        if key in self.members:  # the module runs more than once: same weights, same channels
            previous = self.members[key]
            if len(previous) != len(ids):
                raise GraphError(f"module '{module}' is called with inputs of different widths")
            self.elements.union(previous, ids)
        else:
            self.members[key] = ids

    def groups(self) -> list[ChannelGroup]:
        return assemble(self.elements, self.members, self.dims)
