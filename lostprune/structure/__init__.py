"""Structure: the torch.fx dependency graph of coupled channels (and, built on it, slicing)."""

from .graph import ChannelGroup, DependencyGraph, GraphError, Member, build_graph, trace

__all__ = ["ChannelGroup", "DependencyGraph", "GraphError", "Member", "build_graph", "trace"]
