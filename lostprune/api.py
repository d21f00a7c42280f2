"""The front door: ``prune`` any model in one call."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from .core.accounting import PruneStats, compute_stats
from .core.layers import prunable_layers
from .core.masks import apply_masks, current_masks, settle_masks
from .data.batches import first_batch, iter_inputs
from .methods import PruneContext, available_methods, get_method
from .structure.attention import convert_attention
from .structure.trace_cache import EXAMPLE_INPUT


@dataclass
class PruneResult:
    model: nn.Module  # the pruned model (masks in torch.nn.utils.prune format)
    # layer name -> 0/1 weight mask; a layer pruned for the first time holds this very tensor as
    # its weight_mask buffer (no copy): change a clone, not the mask itself
    masks: dict[str, Tensor]
    stats: PruneStats
    method: str

    def __repr__(self) -> str:
        return f"PruneResult({self.stats.summary()})"


def _check_ratio(ratio) -> float:
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise TypeError(f"ratio must be a number in [0, 1), got {ratio!r}") from None
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"ratio must be in [0, 1) (the fraction of prunable weights removed), got {ratio!r}")
    return value


def _example_input(model: nn.Module, data, example_input: Tensor | None, device) -> Tensor | None:
    if example_input is not None:
        if not isinstance(example_input, Tensor) or example_input.dim() < 2:
            raise ValueError("example_input must be a batch tensor (N x C x H x W or N x features)")
        return example_input[:1].to(device)
    if data is not None:
        return first_batch(data, "data", batch_size=1).to(device)
    size = getattr(model, "input_size", None)
    if size is not None:
        return torch.randn(1, *size, generator=torch.Generator().manual_seed(0)).to(device)
    return None


def prune(model: nn.Module, method: str, ratio: float, data=None, *, layers=None, exclude=None,
          inplace: bool = False, example_input: Tensor | None = None, progress: bool = True,
          batch_size: int = 64, leaf_modules=(), **options) -> PruneResult:
    """Prune ``model`` so that ``ratio`` of its prunable weights are removed.

    Args:
        model: any ``nn.Module`` with Conv2d/Linear layers; already-pruned models are pruned
            further (removed weights are never revived).
        method: ``"wt"``, ``"sipp"``, ``"ft"``, ``"pfp"`` or another registered method.
        ratio: fraction of the prunable weights to remove, in [0, 1).
        data: S, the inputs data-informed methods (SiPP, PFP, SNIP) score with — a tensor, a
            Dataset, a DataLoader or an iterable of batches / (inputs, labels); use a held-out
            split, never the test set.
        layers / exclude: which layers to prune, by qualified name (prefixes select submodules),
            type or predicate; default all Conv2d and Linear.
        inplace: prune ``model`` itself instead of a deep copy. Either way, ``nn.MultiheadAttention``
            and torchvision's Swin attention are replaced by equivalents whose heads can be
            pruned (``lostprune.structure.convert_attention``).
        example_input: a batch used to trace the model (structured methods) and count FLOPs;
            defaults to the first sample of ``data`` or ``model.input_size``.
        leaf_modules: module types or names the dependency graph treats as opaque.
        **options: method-specific options.
    """
    pruning_method = get_method(method)
    ratio = _check_ratio(ratio)
    if pruning_method.option_names is not None:
        unknown = sorted(set(options) - set(pruning_method.option_names))
        if unknown:  # before any expensive pass
            allowed = ", ".join(pruning_method.option_names) or "none"
            raise TypeError(f"method {pruning_method.name!r} got unexpected options: {', '.join(unknown)} "
                            f"(it takes: {allowed})")
    prunable_layers(model, layers, exclude)  # validate before copying
    target = model if inplace else copy.deepcopy(settle_masks(model))
    # attention whose heads the graph can see and the data pass can score (same function)
    convert_attention(target)
    selected = prunable_layers(target, layers, exclude)
    device = next(iter(selected.values())).weight.device
    if pruning_method.data_informed:
        if data is None:
            raise ValueError(f"method {pruning_method.name!r} is data-informed: pass data=S, a held-out set "
                             "of at least 2 inputs (never the test set)")
        count = sum(x.shape[0] for x in iter_inputs(data, "data", batch_size=batch_size, limit=2))
        if count < 2:
            raise ValueError(f"data has {count} input; method {pruning_method.name!r} needs at least 2")
    sample = _example_input(target, data, example_input, device)
    current = current_masks(selected, materialize=False)  # unpruned layers: a view of one, no memory
    ctx = PruneContext(model=target, layers=selected, ratio=ratio, current_masks=current, data=data,
                       example_input=sample, options=dict(options), progress=progress, batch_size=batch_size,
                       leaf_modules=tuple(leaf_modules))
    masks = pruning_method.compute_masks(ctx)
    if ctx.options:
        raise TypeError(f"method {pruning_method.name!r} got unexpected options: {', '.join(sorted(ctx.options))}")
    missing = set(selected) - set(masks)
    if missing:
        raise RuntimeError(f"method {pruning_method.name!r} returned no mask for {sorted(missing)}")
    # a method may hand back a current mask unchanged: a ones_view becomes a real tensor here
    masks = {n: (m.detach() if m.requires_grad else m).contiguous() for n, m in masks.items()}
    # the method's own masks (shapes are still checked), installed as the masks of the copy
    apply_masks(selected, masks, validate=False, copy=False)
    # the masks are the truth: what the statistics count as removed is what they zero
    kept = {f"{name}.weight": int(torch.count_nonzero(mask)) for name, mask in masks.items()}
    positions = ctx.graph().output_positions() if ctx._graph is not None else None  # the trace's shapes
    stats = compute_stats(target, selected, kept=kept, method=pruning_method.name, target_ratio=ratio,
                          example_input=sample, positions=positions)
    if sample is not None:  # slice_model traces the pruned model on it
        setattr(target, EXAMPLE_INPUT, sample.detach())
    return PruneResult(target, masks, stats, pruning_method.name)


__all__ = ["PruneResult", "available_methods", "prune"]
