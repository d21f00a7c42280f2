"""FT — filter thresholding (Renda et al. 2020 with the criterion of Li et al. 2017; SPEC §2.2).

Score of output filter i: ‖W_i‖₁. FT prunes whole channel groups (SPEC §3): the channels a
residual add, a depthwise conv or a BN ties together go as one, scored by the sum of the
members' filter norms (``coupled="sum"``; ``"mean"``, ``"max"``, ``"min"`` or a callable; or
``coupled="skip"`` to leave coupled groups alone). Allocation: the same fraction of channels
removed in every group (at least one kept; the network's output layer and other frozen
channels keep all), with the fraction chosen so that the prunable weights *actually removed*
— a removed filter also removes the matching input channel of every consumer — meet the
ratio; ``round_to=8`` keeps a multiple of 8 channels per group (``"auto"``: the convolution
kernels' channel tile on the model's device, see ``structure.channel_multiple``). The shared
machinery (group scores, allocation, rounding, exact removal counts) is
``lostprune.structure.GroupPlan``.
"""

from __future__ import annotations

from torch import Tensor

from ..structure.group_plan import GroupPlan
from .base import PruneContext, PruningMethod
from .registry import register_method


def filter_masks(ctx: PruneContext, norm: int) -> dict[str, Tensor]:
    plan = GroupPlan(ctx.graph(), ctx.layers, ctx.current_masks, by="out",
                     coupled=ctx.option("coupled", "sum"), round_to=ctx.option("round_to", 1))
    if not plan.units:
        raise ValueError("no layer has filters that can be removed (every output channel is frozen: "
                         "network output, grouped convolution or unsupported op"
                         + (f"; {plan.skipped_note()}" if plan.skipped else "") + ")")
    # layer.weight is already the masked weight (orig * mask) of a pruned layer
    plan.rank({name: layer.weight.detach().flatten(1).norm(p=norm, dim=1)
               for name, layer in ctx.layers.items()})
    counts = plan.fit_uniform(ctx.remove_budget())
    ctx.warn_off_target("FT", plan.removed_weights(counts), plan.constraints())
    return plan.masks(counts)


@register_method("ft")
class FilterThresholding(PruningMethod):
    structured = True
    option_names = ("coupled", "round_to")
    description = "filter L1 norm, same fraction of every channel group (structured)"
    norm = 1

    def compute_masks(self, ctx: PruneContext):
        return filter_masks(ctx, self.norm)


@register_method("l2")
class FilterL2Thresholding(FilterThresholding):
    description = "filter L2 norm, same fraction of every channel group (structured)"
    norm = 2
