"""SiPP — sensitivity-informed pruning (Baykal et al. 2019), deterministic variant (docs/methods.md §SiPP).

Score of weight w_ir: its sensitivity, the max over the data set S of the mean over output
positions of its relative contribution g_ir to its unit's (sign-split) pre-activation. The
sensitivities are fractions in [0, 1], comparable across layers, so the allocation is global:
keep the B largest over all prunable layers. No reweighting of the kept weights.
"""

from __future__ import annotations

from ..datapass import check_reduce, collect_sensitivities, sample_count
from .allocation import keep_top_global
from .base import PruneContext, PruningMethod
from .registry import register_method


def weight_sensitivities(ctx: PruneContext, reduce: str = "mean"):
    """{layer name: sensitivity per weight} of the context's layers on its data S."""
    return collect_sensitivities(
        ctx.model,
        ctx.batches(),
        ctx.layers,
        kind="weight",
        reduce=reduce,
        progress=ctx.progress,
        total=sample_count(ctx.data),
    )


@register_method("sipp")
class SiPP(PruningMethod):
    data_informed = True
    description = "weight sensitivity on S (max over S of mean relative contribution), global (unstructured)"
    option_names = ("reduce",)

    def compute_masks(self, ctx: PruneContext):
        # "max": max over positions instead of the paper's mean; checked before S is read
        reduce = check_reduce(ctx.option("reduce", "mean"))
        scores = weight_sensitivities(ctx, reduce)
        return keep_top_global(scores, ctx.keep_budget(), ctx.current_masks)
