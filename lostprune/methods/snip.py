"""SNIP baseline (Lee et al. 2019; SPEC §2.5): connection sensitivity |∂L/∂w ⊙ w|, summed
over S, kept globally. Uses S's labels when the batches carry them, else the model's own
predictions (so S may be unlabeled)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .allocation import keep_top_global
from .base import PruneContext, PruningMethod
from .registry import register_method


@register_method("snip")
class SNIP(PruningMethod):
    data_informed = True
    description = "connection sensitivity |grad * w| on S, global (baseline)"
    option_names = ()

    def compute_masks(self, ctx: PruneContext):
        model = ctx.model
        scores = {name: torch.zeros_like(layer.weight) for name, layer in ctx.layers.items()}
        was_training = model.training
        model.eval()
        try:
            for x, y in ctx.labeled_batches():
                model.zero_grad(set_to_none=True)
                logits = model(x)
                logits = logits["out"] if isinstance(logits, dict) else logits
                target = y if y is not None else logits.argmax(1).detach()
                F.cross_entropy(logits, target).backward()
                for name, layer in ctx.layers.items():
                    param = getattr(layer, "weight_orig", layer.weight)
                    if param.grad is not None:
                        scores[name] += (param.grad * param).abs().detach()
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        return keep_top_global(scores, ctx.keep_budget(), ctx.current_masks)
