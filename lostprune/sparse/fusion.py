"""Inference fusion for ``convert(fuse=True)`` and ``fuse()``: the rewrites every inference
converter makes, found with torch.fx.

- conv → BatchNorm2d (eval mode, running statistics): the BatchNorm is folded into the
  conv's weight and bias (a per-output-channel scale keeps the sparsity pattern);
- conv [→ BN] [→ + residual] → ReLU, when the conv goes sparse: the residual add and the ReLU
  run in the sparse kernel's epilogue (``SparseConv2d(relu=True)(x, residual)``);
- max-pooling on CPU runs in lostprune's vectorized kernel (``FastMaxPool2d``,
  ``ops.max_pool2d``): torch's NCHW CPU max-pool is scalar (about 6 ms for resnet18's stem pool,
  one thread, against 0.2 ms); exact.

Nothing is folded in training mode (BatchNorm then uses batch statistics); a conv whose
output has other readers, or a conv module called twice, is left as it is.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..core.copying import copy_model
from ..core.masks import effective_weight
from ..ops.pool import max_pool2d_module
from ..structure.folded_conv import FoldedConv2d
from .modules import SparseConv2d, SparseLinear

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


class FastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that pools a CPU float32 / float64 NCHW input with
    ``lostprune.ops.max_pool2d`` (vectorized; torch's NCHW CPU pool is scalar). Same values
    (padding reads as -inf, NaN propagates); channels-last inputs (torch's kernel for that
    layout is vectorized already), other devices and dtypes, dilation, ceil_mode and indices
    take the plain path, and so do arguments torch rejects (its own error message):
    ``ops.pool.max_pool2d_module``, which the sensitivity pass uses too."""

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2d_module(self, x)

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> FastMaxPool2d:
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode)


class _Tracer(fx.Tracer):
    """Keeps already-converted sparse layers (their wrappers branch on devices) and sliced
    models' border-folding convs (convs to fuse into) as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(
            m, (SparseConv2d, SparseLinear, FastMaxPool2d, FoldedConv2d)
        ) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a GraphModule whose nodes call the model's own submodules."""
    graph = _Tracer().trace(model)
    return fx.GraphModule(model, graph, model.__class__.__name__)


@dataclass
class ConvFusion:
    """What follows one conv and can be fused into it."""

    node: fx.Node  # the conv's call_module node
    bn: nn.BatchNorm2d | None = None  # folded into the weights
    bn_node: fx.Node | None = None
    residual: fx.Node | None = None  # added in the epilogue (sparse only)
    add_node: fx.Node | None = None
    relu_node: fx.Node | None = None  # ReLU in the epilogue (sparse only)
    notes: list[str] = field(default_factory=list)

    @property
    def relu(self) -> bool:
        return self.relu_node is not None

    def label(self, sparse: bool) -> str:
        """The fused ops, e.g. ``bn+add+relu`` (sparse) or ``bn`` (dense)."""
        parts = ["bn"] if self.bn is not None else []
        if sparse:
            parts += (["add"] if self.residual is not None else []) + (["relu"] if self.relu else [])
        return "+".join(parts)


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and len(node.args) == 1
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1


def _other_addend(node: fx.Node, current: fx.Node) -> fx.Node | None:
    """The other tensor of ``current + other`` at ``node`` (None: not such an add)."""
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )
    if not is_add or node.kwargs or len(node.args) != 2 or node.args[0] is not current:
        return None
    other = node.args[1]
    return other if isinstance(other, fx.Node) and other is not current else None


def _bn_problem(bn: nn.Module, conv: nn.Conv2d) -> str | None:
    if not isinstance(bn, nn.BatchNorm2d):
        return f"{type(bn).__name__} follows"
    if bn.training:
        return "BatchNorm in training mode (batch statistics): not folded"
    if bn.running_mean is None or bn.running_var is None:
        return "BatchNorm without running statistics: not folded"
    if bn.num_features != conv.out_channels:
        return "BatchNorm channels differ from the conv's"
    return None


@contextmanager
def eval_pass(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for one recording pass (BatchNorm statistics untouched), then
    every submodule's own training flag back (``model.train(flag)`` would overwrite them)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def propagate_shapes(gm: fx.GraphModule, example_input) -> None:
    """Record every node's output shape (``node.meta['tensor_meta']``) from one eval pass."""
    from torch.fx.passes.shape_prop import ShapeProp

    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    with eval_pass(gm):
        ShapeProp(gm).propagate(*args)


def _shape(node: fx.Node) -> torch.Size | None:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


def plan(gm: fx.GraphModule) -> dict[str, ConvFusion]:
    """Per Conv2d target: the BatchNorm, residual add and ReLU that directly follow it.
    Residual adds are fused only where recorded shapes (``propagate_shapes``) prove both
    addends have the conv's output shape (the epilogue does not broadcast)."""
    modules = dict(gm.named_modules())
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    fusions: dict[str, ConvFusion] = {}
    for target, nodes in calls.items():
        conv = modules[target]
        if not isinstance(conv, nn.Conv2d):
            continue
        fusion = fusions[target] = ConvFusion(nodes[0])
        if len(nodes) > 1:
            fusion.notes.append(f"conv called {len(nodes)} times: not fused")
            continue
        current = nodes[0]
        user = _single_user(current)
        if (
            user is not None
            and user.op == "call_module"
            and isinstance(modules.get(user.target), nn.modules.batchnorm._BatchNorm)
        ):
            problem = _bn_problem(modules[user.target], conv)
            if problem is not None:
                fusion.notes.append(problem)
                continue
            fusion.bn, fusion.bn_node, current = modules[user.target], user, user
            user = _single_user(current)
        if user is None:
            continue
        other = _other_addend(user, current)
        shape = _shape(fusion.node)
        if other is not None and shape is not None and _shape(other) == shape:
            fusion.residual, fusion.add_node, current = other, user, user
            user = _single_user(current)
        elif other is not None:
            fusion.notes.append("residual add not fused (shapes unknown without example_input)")
            continue
        if user is not None and _is_relu(user, modules):
            fusion.relu_node = user
    return fusions


def fold_batchnorm(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of conv → ``bn`` (eval mode) as one conv, computed in float64: zeros
    stay zeros, so the sparsity pattern is kept."""
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        folded_bias = shift if bias is None else bias.double() * scale + shift
        folded = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        return folded.to(weight.dtype), folded_bias.to(weight.dtype)


def dense_conv(
    conv: nn.Conv2d, weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d | None = None
) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` like ``conv`` (no prune hooks) holding ``weight`` and ``bias`` —
    a ``FoldedConv2d`` if ``conv`` is one, its border term scaled by ``bn`` (folded into
    ``weight`` and ``bias`` already) where given."""
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    if isinstance(conv, FoldedConv2d):  # the border term goes through the BN's scale like the weight
        fold_weight = conv.fold_weight if bn is None else fold_batchnorm(conv.fold_weight, None, bn)[0]
        new = FoldedConv2d.from_conv(new, fold_weight.clone())
    return new.train(conv.training)


def bn_folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A dense conv computing ``bn(conv(x))`` (eval mode): ``dense_conv`` of the folded weights."""
    weight, bias = fold_batchnorm(effective_weight(conv).detach(), conv.bias, bn)
    return dense_conv(conv, weight, bias, bn)


def fuse(model: nn.Module) -> fx.GraphModule:
    """``model`` rewritten for dense inference: every eval-mode BatchNorm2d folded into the
    conv before it and CPU max-pooling vectorized (``FastMaxPool2d``) — ``convert(fuse=True)``
    without sparse layers. Outputs equal the model's up to float rounding. For eval mode only
    (raises in training mode, where BatchNorm uses batch statistics); the model must trace
    with torch.fx. Returns a GraphModule keeping the model's plain attributes."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError(
            "fuse: the model is in training mode (BatchNorm uses batch statistics there); "
            "call model.eval() first"
        )
    gm = trace(copy_model(model))
    fusions = plan(gm)
    replacements = {
        target: bn_folded_conv(gm.get_submodule(target), fusion.bn)
        for target, fusion in fusions.items()
        if fusion.bn is not None
    }
    fused = rewrite(gm, fusions, replacements)
    keep_attributes(model, fused)
    return fused


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def rewrite(
    gm: fx.GraphModule,
    fusions: dict[str, ConvFusion],
    replacements: dict[str, nn.Module],
    fast_pool: bool = True,
) -> fx.GraphModule:
    """Install ``replacements`` (conv target → new module: a folded dense conv, or a
    SparseConv2d whose epilogue covers the fused ReLU / residual) and drop the fused nodes."""
    graph = gm.graph
    replaced: dict[fx.Node, fx.Node] = {}  # erased pattern end -> the call standing for it
    for target, new in replacements.items():
        _set_module(gm, target, new)
        fusion = fusions.get(target)
        if fusion is None:
            continue
        sparse = isinstance(new, SparseConv2d)
        pattern = [fusion.node] + [n for n in (fusion.bn_node,) if n is not None]
        residual = None
        if sparse:
            pattern += [n for n in (fusion.add_node, fusion.relu_node) if n is not None]
            residual = fusion.residual
            while residual in replaced:  # its own pattern was fused already
                residual = replaced[residual]
        if len(pattern) == 1:
            continue
        last = pattern[-1]
        with graph.inserting_before(last):
            call = graph.call_module(
                target, (fusion.node.args[0],) + ((residual,) if residual is not None else ())
            )
        last.replace_all_uses_with(call)
        replaced[last] = call
        for node in reversed(pattern):
            graph.erase_node(node)
    if fast_pool:
        for node in graph.nodes:
            module = gm.get_submodule(node.target) if node.op == "call_module" else None
            if type(module) is nn.MaxPool2d and not module.return_indices:
                _set_module(gm, node.target, FastMaxPool2d.from_pool(module))
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def keep_attributes(source: nn.Module, target: nn.Module) -> None:
    """Plain public attributes of ``source`` (``input_size``, ``task``, ...) on ``target``."""
    for key, value in vars(source).items():
        if not key.startswith("_") and key != "training" and not hasattr(target, key):
            setattr(target, key, value)
