"""Structure: the torch.fx dependency graph of coupled channels, group-aware structured
pruning (``GroupPlan``), the paper's per-layer pruning (``LayerPlan``), physical channel
slicing (``slice_model``) and attention modules whose heads can be pruned."""

from .attention import MultiheadAttention, convert_attention
from .folded_conv import FoldedConv2d
from .granularity import channel_multiple
from .graph import ChannelGroup, DependencyGraph, GraphError, Member, build_graph, trace
from .group_plan import GroupPlan, Unit, allowed_kept, snap
from .slicing import SliceReport, SlicingWarning, slice_model

__all__ = [
    "ChannelGroup",
    "DependencyGraph",
    "FoldedConv2d",
    "GraphError",
    "GroupPlan",
    "Member",
    "MultiheadAttention",
    "SliceReport",
    "SlicingWarning",
    "Unit",
    "allowed_kept",
    "build_graph",
    "channel_multiple",
    "convert_attention",
    "slice_model",
    "snap",
    "trace",
]
