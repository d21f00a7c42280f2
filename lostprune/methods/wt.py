"""WT — weight thresholding (Renda et al. 2020; docs/methods.md §WT): score |w|, keep the largest
B = (1 − ratio)·N over all prunable layers together."""

from __future__ import annotations

from ..core.layers import weight_of
from .allocation import keep_top_global
from .base import PruneContext, PruningMethod
from .registry import register_method


@register_method("wt")
class WeightThresholding(PruningMethod):
    description = "global weight magnitude |w| (unstructured)"
    option_names = ()

    def compute_masks(self, ctx: PruneContext):
        scores = {name: weight_of(layer).detach().abs() for name, layer in ctx.layers.items()}
        return keep_top_global(scores, ctx.keep_budget(), ctx.current_masks)
