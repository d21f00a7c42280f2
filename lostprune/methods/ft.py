"""FT — filter thresholding (Renda et al. 2020 with the criterion of Li et al. 2017;
docs/methods.md §FT).

Score of output filter i: ‖W_i‖₁ (``"l2"``: ‖W_i‖₂).

The paper's FT (default, ``coupled="per_layer"``): every layer keeps the same fraction ρ of
its output filters, max(1, round(f_ℓ·ρ)), its top ones by score; the network's output layer
keeps all of them, grouped and depthwise convs are never pruned directly. The masks then
drop what the removals imply (``structure.Propagation``): a consumer column that reads only
a constant (the BN shift of a removed filter) is zeroed, a residual channel kept live by
another producer keeps its columns. ρ is searched so that the weights the masks really
remove meet the ratio (single layers then move one filter where steps are coarse).

The group-aware variant, for deployment (``coupled="sum"``, ``"mean"``, ``"max"``, ``"min"``,
a callable, or ``"skip"``): channels a residual add, a depthwise conv or a BN ties together
go as one, scored by the reduce of the members' norms, the same fraction of every group;
``round_to=8`` (or ``"auto"``) keeps a multiple of 8 channels per group. Slicing then drops
everything the masks remove (``structure.GroupPlan``).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ..core.layers import weight_of
from ..ops.nonzero import CHEAP_TEMPORARY_NUMEL
from ..structure.group_plan import GroupPlan
from ..structure.layer_plan import LayerPlan
from .base import PER_LAYER, PruneContext, PruningMethod, structured_options
from .registry import register_method


def filter_scores(ctx: PruneContext, norm: int) -> dict[str, Tensor]:
    # layer.weight is already the masked weight (orig * mask) of a pruned layer
    return {
        name: _row_norms(weight_of(layer).detach().flatten(1), norm) for name, layer in ctx.layers.items()
    }


def _row_norms(rows: Tensor, norm: int) -> Tensor:
    # torch's CPU vector_norm is slow for p=1 on small tensors: |w| summed is 4-5x faster
    # while the |w| temporary is cheap
    if norm == 1 and rows.numel() <= CHEAP_TEMPORARY_NUMEL:
        return rows.abs().sum(1)
    return rows.norm(p=norm, dim=1)


def uniform_filter_masks(ctx: PruneContext, scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """The paper's FT allocation: the same fraction of every layer's filters kept."""
    plan = LayerPlan(ctx.graph(), ctx.layers, ctx.current_masks, by="out")
    if not plan.units:
        raise ValueError(
            "ft: no layer has filters that can be removed (every output channel is a network "
            "output or belongs to a grouped convolution)"
        )
    plan.rank(scores)
    extent = {name: plan.extent[name] for name in plan.units}

    def kept_of(fraction: float) -> dict[str, int]:
        return {name: max(1, int(np.floor(f * fraction + 0.5))) for name, f in extent.items()}

    # every fraction where some layer's rounded count steps, descending: removal grows
    points = np.unique(
        np.concatenate([[0.0, 1.0]] + [(np.arange(1, f + 1) - 0.5) / f for f in extent.values()])
    )
    kept = plan.fit(points[::-1].tolist(), kept_of, ctx.remove_budget())
    ctx.warn_off_target("ft", plan.removed_weights(kept))
    return plan.masks(kept)


def group_filter_masks(ctx: PruneContext, scores: dict[str, Tensor], coupled, round_to) -> dict[str, Tensor]:
    """The group-aware variant: the same fraction of every channel group."""
    plan = GroupPlan(ctx.graph(), ctx.layers, ctx.current_masks, by="out", coupled=coupled, round_to=round_to)
    if not plan.units:
        raise ValueError(
            "ft: no layer has filters that can be removed (every output channel is frozen: "
            "network output, grouped convolution or unsupported op"
            + (f"; {plan.skipped_note()}" if plan.skipped else "")
            + ")"
        )
    plan.rank(scores)
    counts = plan.fit_uniform(ctx.remove_budget())
    ctx.warn_off_target("ft", plan.removed_weights(counts), plan.constraints())
    return plan.masks(counts)


@register_method("ft")
class FilterThresholding(PruningMethod):
    structured = True
    version = 2  # 2: the paper's per-layer variant by default (1: whole channel groups)
    option_names = ("coupled", "round_to")
    description = "filter L1 norm, same fraction of every layer's filters (structured; paper)"
    norm = 1

    def compute_masks(self, ctx: PruneContext):
        coupled, round_to = structured_options(ctx, self.name)
        scores = filter_scores(ctx, self.norm)
        if coupled == PER_LAYER:
            return uniform_filter_masks(ctx, scores)
        return group_filter_masks(ctx, scores, coupled, round_to)


@register_method("l2")
class FilterL2Thresholding(FilterThresholding):
    description = "filter L2 norm, same fraction of every layer's filters (structured)"
    norm = 2
