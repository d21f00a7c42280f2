"""The front door: ``prune`` any model in one call."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from .core.accounting import PruneStats, compute_stats, output_positions
from .core.copying import copy_model
from .core.layers import prunable_layers, split_shared
from .core.masks import apply_masks, count_nonzero, current_masks, settle_masks, share_mask
from .core.shapes import blame_input
from .data.batches import as_pair_dataset, check_batch_size, first_batch, iter_inputs
from .methods import PruneContext, available_methods, get_method
from .structure.attention import convert_attention
from .structure.trace_cache import EXAMPLE_INPUT


@dataclass
class PruneResult:
    model: nn.Module  # the pruned model (masks in torch.nn.utils.prune format)
    # layer name -> 0/1 weight mask; a layer pruned for the first time holds this very tensor as
    # its weight_mask buffer (no copy): change a clone, not the mask itself. Layers sharing one
    # weight Parameter have one entry, the first's (stats.layers[i].shared_with names the others)
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


def _reusable(data):
    """``data`` as something that can be iterated more than once: S is read for checks, the
    example input and the scoring pass, so a one-shot iterator (a generator) is collected into
    a list of its batches; an (inputs, labels) pair of tensors becomes a TensorDataset."""
    data = as_pair_dataset(data)
    return (
        list(data) if isinstance(data, Iterator) else data
    )  # never iter(): a DataLoader would start workers


def _example_input(model: nn.Module, data, example_input, device, dtype) -> tuple[Tensor | None, str]:
    """(one sample the model is run / traced on, the argument it came from)."""
    if example_input is not None:
        if not isinstance(example_input, Tensor) or example_input.dim() < 2:
            raise ValueError(
                "example_input must be a batch tensor (N x C x H x W or N x features), got "
                + (
                    f"shape {tuple(example_input.shape)}"
                    if isinstance(example_input, Tensor)
                    else type(example_input).__name__
                )
            )
        if example_input.shape[0] == 0:
            raise ValueError(
                f"example_input is an empty batch (shape {tuple(example_input.shape)}); pass one sample"
            )
        if example_input.is_meta:
            raise ValueError(
                "example_input is on the meta device; pass a real tensor (only its shape matters), "
                "e.g. torch.zeros(1, C, H, W)"
            )
        return example_input[:1].to(device), "example_input"
    if data is not None:
        return first_batch(data, "data", batch_size=1, dtype=dtype).to(device), "data (its first sample)"
    size = getattr(model, "input_size", None)
    if size is not None:
        try:
            shape = (1, *(int(n) for n in size))
        except (TypeError, ValueError):
            raise ValueError(f"model.input_size must be the (C, H, W) of one sample, got {size!r}") from None
        return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(
            device, dtype
        ), "model.input_size"
    return None, ""


def _check_weights(layers: dict[str, nn.Module]) -> None:
    meta = [name for name, module in layers.items() if module.weight.is_meta]
    if meta:
        raise ValueError(
            f"model: the weights of {meta[0]!r}"
            + (f" and {len(meta) - 1} more layers" if len(meta) > 1 else "")
            + " are on the meta device (shapes without values), there is nothing to score: materialize "
            "them first (model.to_empty(device=...) and load_state_dict)"
        )


def prune(
    model: nn.Module,
    method: str,
    ratio: float,
    data=None,
    *,
    layers=None,
    exclude=None,
    inplace: bool = False,
    example_input: Tensor | None = None,
    progress: bool | None = None,
    batch_size: int = 64,
    leaf_modules=(),
    **options,
) -> PruneResult:
    """Prune ``model`` so that ``ratio`` of its prunable weights are removed.

    Args:
        model: any ``nn.Module`` with Conv2d/Linear layers; already-pruned models are pruned
            further (removed weights are never revived). Layers sharing one weight Parameter
            (tied weights) are one prunable tensor with one mask, counted once.
        method: ``"wt"``, ``"sipp"``, ``"ft"``, ``"pfp"`` or another registered method.
        ratio: fraction of the prunable weights to remove, in [0, 1).
        data: S, the inputs data-informed methods (SiPP, PFP, SNIP) score with — a tensor, a
            Dataset, a DataLoader, an (inputs, labels) pair or an iterable of batches / (inputs,
            labels); use a held-out split, never the test set.
        layers / exclude: which layers to prune, by qualified name (prefixes select submodules),
            type or predicate (one or a list); default all Conv2d and Linear.
        inplace: prune ``model`` itself instead of a deep copy. Either way, ``nn.MultiheadAttention``
            and torchvision's Swin attention are replaced by equivalents whose heads can be
            pruned (``lostprune.structure.convert_attention``).
        example_input: a batch used to trace the model (structured methods) and count FLOPs;
            defaults to the first sample of ``data`` or ``model.input_size``. The model is run
            on one sample of it before anything else, so an input it cannot take fails at once.
        batch_size: batch size of the passes over ``data``.
        leaf_modules: module types or names the dependency graph treats as opaque.
        **options: method-specific options.

    A layer left without any weight is named in a warning and in ``stats.emptied_layers``.
    """
    pruning_method = get_method(method)
    ratio = _check_ratio(ratio)
    batch_size = check_batch_size(batch_size)
    if pruning_method.option_names is not None:
        unknown = sorted(set(options) - set(pruning_method.option_names))
        if unknown:  # before any expensive pass
            allowed = ", ".join(pruning_method.option_names) or "none"
            raise TypeError(
                f"method {pruning_method.name!r} got unexpected options: {', '.join(unknown)} "
                f"(it takes: {allowed})"
            )
    chosen = prunable_layers(model, layers, exclude)
    _check_weights(chosen)  # validate before copying
    data = _reusable(data)
    target = model if inplace else copy_model(settle_masks(model))
    # attention whose heads the graph can see and the data pass can score (same function)
    if convert_attention(target) or target is not model:  # (else the layers chosen above)
        chosen = prunable_layers(target, layers, exclude)
    selected, shared = split_shared(target, chosen)
    if shared and pruning_method.structured:
        owner, aliases = next(iter(shared.items()))
        raise ValueError(
            f"{pruning_method.name}: layers {owner!r} and {aliases[0]!r} share one weight Parameter (tied "
            "weights); removing its channels would change both layers, which the channel analysis "
            f"does not model: exclude them (exclude={[owner, *aliases]!r}) or use an unstructured "
            "method (wt, sipp, snip, random)"
        )
    first = next(iter(selected.values())).weight
    device, dtype = first.device, first.dtype
    if pruning_method.data_informed:
        if data is None:
            raise ValueError(
                f"method {pruning_method.name!r} is data-informed: pass data=S, a held-out set "
                "of at least 2 inputs (never the test set)"
            )
        shape = (
            tuple(example_input.shape[1:])
            if isinstance(example_input, Tensor) and example_input.dim() >= 2
            else None
        )
        count = sum(
            x.shape[0]
            for x in iter_inputs(
                data, "data", batch_size=batch_size, limit=2, expected_shape=shape, dtype=dtype
            )
        )
        if count < 2:
            raise ValueError(f"data has {count} input; method {pruning_method.name!r} needs at least 2")
    sample, source = _example_input(target, data, example_input, device, dtype)
    current = current_masks(
        selected, materialize=False, validate=True
    )  # unpruned layers: a view of one, no memory
    ctx = PruneContext(
        model=target,
        layers=selected,
        ratio=ratio,
        current_masks=current,
        data=data,
        example_input=sample,
        options=dict(options),
        progress=progress,
        batch_size=batch_size,
        leaf_modules=tuple(leaf_modules),
    )
    # the model runs on the example input before any expensive pass: the trace a structured
    # method needs anyway, else the shape pass the statistics need anyway
    positions = None
    if pruning_method.structured:
        with blame_input(target, sample, source) if sample is not None else contextlib.nullcontext():
            ctx.graph()
    elif sample is not None:
        with blame_input(target, sample, source):
            positions = output_positions(target, sample)
    masks = pruning_method.compute_masks(ctx)
    if ctx.options:
        raise TypeError(
            f"method {pruning_method.name!r} got unexpected options: {', '.join(sorted(ctx.options))}"
        )
    missing = set(selected) - set(masks)
    if missing:
        raise RuntimeError(f"method {pruning_method.name!r} returned no mask for {sorted(missing)}")
    # a method may hand back a current mask unchanged: a ones_view becomes a real tensor here
    masks = {n: (m.detach() if m.requires_grad else m).contiguous() for n, m in masks.items()}
    # the method's own masks (shapes are still checked), installed as the masks of the copy
    apply_masks(selected, masks, validate=False, copy=False)
    modules = dict(target.named_modules()) if shared else {}
    for owner, aliases in shared.items():  # a tied weight: one mask, shared by every layer using it
        for alias in aliases:
            share_mask(selected[owner], modules[alias])
    # the masks are the truth: what the statistics count as removed is what they zero
    kept = {f"{name}.weight": count_nonzero(mask) for name, mask in masks.items()}
    if ctx._graph is not None:
        positions = ctx.graph().output_positions()  # the trace's shapes
    stats = compute_stats(
        target,
        selected,
        kept=kept,
        method=pruning_method.name,
        target_ratio=ratio,
        example_input=sample,
        positions=positions,
        shared=shared,
    )
    if sample is not None:  # slice_model traces the pruned model on it
        setattr(target, EXAMPLE_INPUT, sample.detach())
    if stats.emptied_layers:
        warnings.warn(
            f"{pruning_method.name} at ratio {ratio:g} removed every weight of "
            f"{len(stats.emptied_layers)} layer(s): {', '.join(stats.emptied_layers[:8])}"
            + (" …" if len(stats.emptied_layers) > 8 else "")
            + " (emptied: they output their bias alone; see result.stats.emptied_layers)",
            stacklevel=2,
        )
    return PruneResult(target, masks, stats, pruning_method.name)


__all__ = ["PruneResult", "available_methods", "prune"]
