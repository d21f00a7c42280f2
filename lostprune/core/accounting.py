"""Accounting (docs/methods.md §Prune ratio): parameters, prune ratios and FLOPs of a (masked) model."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from .layers import weight_of, weight_parameter
from .shapes import shape_only_forward


@dataclass
class LayerStats:
    name: str
    kind: str  # "Conv2d" / "Linear"
    weight_shape: tuple[int, ...]
    weights: int  # prunable weights of the layer
    kept: int  # weights still there (structure included)
    macs_dense: int | None  # multiply-accumulates per sample, dense
    macs_kept: int | None  # multiply-accumulates per sample over kept weights
    shared_with: tuple[str, ...] = ()  # other layers using this weight (tied): counted here, once

    @property
    def ratio(self) -> float:
        return 1.0 - self.kept / self.weights if self.weights else 0.0


@dataclass
class PruneStats:
    """What a pruning step produced (docs/methods.md §Prune ratio). ``achieved_ratio`` is over the prunable
    weights; ``paper_prune_ratio`` (PR) is 1 − size(pruned)/size(unpruned) over all parameters."""

    method: str
    target_ratio: float
    achieved_ratio: float
    total_params: int  # every parameter (BN, biases included), dense
    prunable_params: int  # weights of the layers the method may touch
    nonzero_params: int  # parameters left (total minus everything removed)
    removed_params: int
    paper_prune_ratio: float
    flops_dense: int | None  # conv/linear MACs per sample, dense
    flops_pruned: int | None  # conv/linear MACs per sample over kept weights
    other_ops_dense: int | None  # BN / elementwise ops per sample, counted separately
    other_ops_pruned: int | None
    layers: list[LayerStats] = field(default_factory=list)
    # layers whose every weight is removed (tied layers included): they output their bias alone
    emptied_layers: list[str] = field(default_factory=list)

    @property
    def flop_reduction(self) -> float | None:
        if not self.flops_dense or self.flops_pruned is None:
            return None
        return 1.0 - self.flops_pruned / self.flops_dense

    def summary(self) -> str:
        flops = f", FLOPs −{100 * self.flop_reduction:.1f} %" if self.flop_reduction is not None else ""
        return (
            f"{self.method}: target {100 * self.target_ratio:.2f} %, achieved {100 * self.achieved_ratio:.2f} % "
            f"of {self.prunable_params:,} prunable weights (PR {100 * self.paper_prune_ratio:.2f} % of "
            f"{self.total_params:,} parameters){flops}"
            + (
                f"; emptied (every weight removed): {', '.join(self.emptied_layers)}"
                if self.emptied_layers
                else ""
            )
        )


_ELEMENTWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish)
COUNTED_MODULES = (nn.Conv2d, nn.Linear, *_ELEMENTWISE)  # what output_positions counts


def output_count(module: nn.Module, shape: tuple[int, ...]) -> tuple[bool, int] | None:
    """What one call of ``module`` with an output of ``shape`` adds to ``output_positions``:
    (True, output positions per sample) for a conv / linear layer, (False, output elements
    per sample) for a BN / activation, None for any other module."""
    if isinstance(module, nn.Conv2d):
        return True, math.prod(shape[2:])
    if isinstance(module, nn.Linear):
        return True, math.prod(shape[1:]) // shape[-1]
    if isinstance(module, _ELEMENTWISE):
        return False, math.prod(shape[1:])
    return None


def output_positions(model: nn.Module, example_input: Tensor) -> tuple[dict[str, int], dict[str, int]]:
    """Per-sample output positions of every conv/linear ({name: H_out·W_out or tokens}) and
    output elements of every BN/activation module, from one eval-mode forward pass."""
    positions: dict[str, int] = {}
    elements: dict[str, int] = {}

    def count(module, inputs, output, name):
        is_layer, n = output_count(module, tuple(output.shape))
        target = positions if is_layer else elements
        target[name] = target.get(name, 0) + n

    hooks = [
        module.register_forward_hook(functools.partial(count, name=name))
        for name, module in model.named_modules()
        if isinstance(module, COUNTED_MODULES)
    ]
    try:
        shape_only_forward(model, example_input[:1])
    finally:
        for h in hooks:
            h.remove()
    return positions, elements


def compute_stats(
    model: nn.Module,
    layers: dict[str, nn.Module],
    removed: dict[str, Tensor] | None = None,
    *,
    kept: dict[str, int] | None = None,
    method: str = "",
    target_ratio: float = 0.0,
    example_input: Tensor | None = None,
    positions: tuple[dict[str, int], dict[str, int]] | None = None,
    shared: dict[str, list[str]] | None = None,
) -> PruneStats:
    """Stats of ``model`` where ``removed`` maps parameter names to 0/1 keep masks (the
    weight masks of pruned layers) — or ``kept`` maps them to the number of entries kept (the
    masks' nonzeros, no masks needed). Parameters without either count as kept. ``positions``: ``output_positions(model, example_input)`` where already known
    (``DependencyGraph.output_positions``). ``shared``: {layer: other modules using its weight}
    (``core.layers.split_shared``); a Parameter is counted once however many modules use it,
    and every module using a pruned weight computes over its kept entries."""
    if (removed is None) == (kept is None):
        raise TypeError("compute_stats takes either removed= (masks) or kept= (counts)")
    shared = shared or {}
    modules = dict(model.named_modules())
    total = sum(p.numel() for p in model.parameters())  # each Parameter once, shared or not
    kept_by_name = (
        {name: int(mask.sum()) for name, mask in removed.items()} if removed is not None else dict(kept or {})
    )
    # by Parameter identity: a tied weight is one tensor whichever module names it
    kept_of: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for key, count in kept_by_name.items():
        module_name, _, param_name = key.rpartition(".")
        module = modules.get(module_name)
        param = weight_parameter(module, param_name) if module is not None else None
        if param is not None and id(param) not in kept_of:
            kept_of[id(param)], sizes[id(param)] = count, param.numel()
    removed_total = sum(sizes[key] - count for key, count in kept_of.items())

    def kept_weights(module: nn.Module) -> int:
        param = weight_parameter(module)
        weights = weight_of(module).numel()
        return kept_of.get(id(param), weights) if param is not None else weights

    at: dict[str, int]  # output positions per layer
    elements: dict[str, int]
    if example_input is None:
        at, elements = {}, {}
    else:
        at, elements = positions if positions is not None else output_positions(model, example_input)
    layer_stats = []
    for name, layer in layers.items():
        weights = weight_of(layer).numel()
        kept_here = kept_weights(layer)
        pos = at.get(name)
        if pos is not None:  # a tied layer's uses all compute over the one kept weight
            pos += sum(at.get(other, 0) for other in shared.get(name, ()))
        layer_stats.append(
            LayerStats(
                name,
                type(layer).__name__,
                tuple(weight_of(layer).shape),
                weights,
                kept_here,
                None if pos is None else weights * pos,
                None if pos is None else kept_here * pos,
                tuple(shared.get(name, ())),
            )
        )
    prunable = sum(s.weights for s in layer_stats)
    kept_prunable = sum(s.kept for s in layer_stats)
    emptied = [n for s in layer_stats if s.weights and not s.kept for n in (s.name, *s.shared_with)]
    flops_dense = flops_pruned = other_dense = other_pruned = None
    if example_input is not None:
        flops_dense = flops_pruned = 0
        for name, module in modules.items():
            if name in at:
                weights = weight_of(module).numel()
                flops_dense += weights * at[name]
                flops_pruned += kept_weights(module) * at[name]
        other_dense = sum(elements.values())
        other_pruned = 0
        for name, count in elements.items():
            share = 1.0
            param = weight_parameter(modules[name])
            if param is not None and id(param) in kept_of:
                # a BN with removed channels: its kept fraction (float32, like a mask mean)
                share = float(torch.tensor(kept_of[id(param)], dtype=torch.float32) / param.numel())
            other_pruned += round(count * share)
    return PruneStats(
        method=method,
        target_ratio=float(target_ratio),
        achieved_ratio=1.0 - kept_prunable / prunable if prunable else 0.0,
        total_params=total,
        prunable_params=prunable,
        nonzero_params=total - removed_total,
        removed_params=removed_total,
        paper_prune_ratio=removed_total / total if total else 0.0,
        flops_dense=flops_dense,
        flops_pruned=flops_pruned,
        other_ops_dense=other_dense,
        other_ops_pruned=other_pruned,
        layers=layer_stats,
        emptied_layers=emptied,
    )
