"""Random baseline (docs/methods.md §Baselines): the same fraction of each layer's surviving weights removed
uniformly at random (seeded with ``seed=``)."""

from __future__ import annotations

import operator

import torch

from .base import PruneContext, PruningMethod
from .registry import register_method


@register_method("random")
class RandomPruning(PruningMethod):
    description = "uniform random weights, same fraction per layer (baseline)"
    option_names = ("seed",)

    def compute_masks(self, ctx: PruneContext):
        seed = ctx.option("seed", 0)
        try:
            seed = operator.index(seed)
        except TypeError:
            raise TypeError(f"random: seed must be an integer, got {seed!r}") from None
        generator = torch.Generator().manual_seed(seed)
        masks = {}
        for name in ctx.layers:
            current = ctx.current_masks[name]
            keep = round((1.0 - ctx.ratio) * current.numel())
            alive = (current.flatten() != 0).nonzero().flatten().cpu()
            keep = min(keep, len(alive))
            chosen = alive[torch.randperm(len(alive), generator=generator)[:keep]]
            mask = torch.zeros(current.numel(), dtype=current.dtype)
            mask[chosen] = 1
            masks[name] = mask.view_as(current).to(current.device)
        return masks
