"""The control of a prune–retrain study: removes nothing, so a chain of it retrains the
unpruned parent on exactly the schedule the pruned networks get (the original's
``ReferenceNet``). Its networks separate what retraining alone changes from what pruning
costs (docs/methods.md §Control)."""

from __future__ import annotations

from .base import PruneContext, PruningMethod
from .registry import register_method


@register_method("unpruned")
class Unpruned(PruningMethod):
    description = "control: removes nothing; retrained on the same schedule as the pruned networks"
    option_names = ()
    control = True

    def compute_masks(self, ctx: PruneContext):
        return dict(ctx.current_masks)
