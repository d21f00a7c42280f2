"""The op vocabulary of the channel analyses: which fx call targets do what to channels.

One table for every analysis that follows channels through a trace — the dependency graph
(:mod:`.channels`), the per-layer propagation (:mod:`.propagation`) and the constants of
removed channels (:mod:`.constants`) — so an op taught to one is taught to all. Each entry
names a *kind*; :mod:`.walk` says what a kind does to a tensor's channel axes.
"""

from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..core.shapes import ELEMENTWISE_MODULES
from .attention import window_mask, window_merge, window_partition

try:  # torchvision's per-sample drop path: identity in eval mode, a per-sample scale in training
    from torchvision.ops import stochastic_depth as _stochastic_depth
except ImportError:  # pragma: no cover - torchvision is a dependency, but keep the tables importable
    _stochastic_depth = None
try:  # Swin's patch merging: fx-wrapped, so the trace holds one call to it
    from torchvision.models.swin_transformer import _patch_merging_pad
except ImportError:  # pragma: no cover
    _patch_merging_pad = None

# --------------------------------------------------------------------------- modules
ACTIVATION_MODULES = ELEMENTWISE_MODULES  # one list: core/shapes.py
# ops over the last two dims (H, W of NCHW): channels pass where they are not among them
SPATIAL_MODULES = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
    nn.UpsamplingBilinear2d,
    nn.UpsamplingNearest2d,
    nn.ZeroPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
    nn.ConstantPad2d,
)
NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)  # per-channel statistics and affine (dim 1)

# --------------------------------------------------------------------------- functions and methods
ELEMENTWISE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.dropout,
    F.dropout2d,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    F.sigmoid,
    F.tanh,
    torch.clamp,
    torch.clip,
    torch.exp,
    torch.abs,
    torch.neg,
    torch.sqrt,
}
if _stochastic_depth is not None:
    ELEMENTWISE_FUNCTIONS.add(_stochastic_depth)
ELEMENTWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "clamp",
    "clamp_",
    "clip",
    "contiguous",
    "clone",
    "detach",
    "float",
    "half",
    "bfloat16",
    "double",
    "to",
    "type_as",
    "abs",
    "neg",
    "exp",
    "pow",
    "sqrt",
}
# spatial ops on the last two dims (NCHW): channels pass where they are not among them
SPATIAL_FUNCTIONS = {
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.avg_pool2d,
    F.max_pool2d,
    F.interpolate,
    F.upsample,
}
BINARY_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.mul,
    operator.imul,
    operator.sub,
    operator.isub,
    operator.truediv,
    operator.itruediv,
    torch.add,
    torch.mul,
    torch.sub,
    torch.div,
    torch.maximum,
    torch.minimum,
}
BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_"}
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
FLATTEN_FUNCTIONS = {torch.flatten}
NON_TENSOR_METHODS = {"size", "dim", "numel", "__len__"}

# kind of every other followed function (by object) and method (by name)
FUNCTION_KINDS = {
    torch.cat: "cat",
    torch.concat: "cat",
    torch.stack: "stack",
    torch.reshape: "reshape",
    torch.flatten: "flatten",
    torch.permute: "permute",
    torch.transpose: "transpose",
    torch.swapaxes: "transpose",
    torch.movedim: "movedim",
    torch.unsqueeze: "unsqueeze",
    torch.squeeze: "squeeze",
    torch.chunk: "chunk",
    torch.split: "split",
    torch.unbind: "unbind",
    torch.roll: "roll",
    F.pad: "pad",
    F.layer_norm: "layer_norm",
    F.softmax: "mix",
    F.log_softmax: "mix",
    torch.softmax: "mix",
    F.normalize: "mix",
    F.scaled_dot_product_attention: "attention",
    torch.matmul: "matmul",
    operator.matmul: "matmul",
    torch.bmm: "matmul",
}
METHOD_KINDS = {
    "view": "reshape",
    "reshape": "reshape",
    "flatten": "flatten",
    "unflatten": "unflatten",
    "permute": "permute",
    "transpose": "transpose",
    "swapaxes": "transpose",
    "movedim": "movedim",
    "unsqueeze": "unsqueeze",
    "squeeze": "squeeze",
    "chunk": "chunk",
    "split": "split",
    "unbind": "unbind",
    "expand": "expand",
    "expand_as": "expand",
    "repeat": "repeat",
    "roll": "roll",
    "softmax": "mix",
    "log_softmax": "mix",
    "matmul": "matmul",
    "bmm": "matmul",
}
if _patch_merging_pad is not None:
    FUNCTION_KINDS[_patch_merging_pad] = "patch_merging"
FUNCTION_KINDS.update(
    {window_partition: "window_partition", window_merge: "window_merge", window_mask: "constant"}
)


def op_kind(node: fx.Node) -> str | None:
    """The kind of a call_function / call_method node (None: an op no table lists)."""
    target = node.target
    if node.op == "call_method":
        if target in ELEMENTWISE_METHODS:
            return "elementwise"
        if target in BINARY_METHODS:
            return "binary"
        if target in REDUCE_METHODS:
            return "reduce"
        return METHOD_KINDS.get(target)
    if target in ELEMENTWISE_FUNCTIONS:
        return "elementwise"
    if target in SPATIAL_FUNCTIONS:
        return "spatial"
    if target in BINARY_FUNCTIONS:
        return "binary"
    if target in REDUCE_FUNCTIONS:
        return "reduce"
    try:
        return FUNCTION_KINDS.get(target)
    except TypeError:  # an unhashable target
        return None


def op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """How an error or freeze reason names the op of ``node``."""
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} module '{node.target}'"
    if node.op == "call_method":
        return f"method '.{node.target}()'"
    return f"function '{getattr(node.target, '__name__', str(node.target))}'"


def node_shape(node) -> tuple[int, ...] | None:
    """The traced output shape of a node (its ``tensor_meta``), None where it is not one tensor."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
