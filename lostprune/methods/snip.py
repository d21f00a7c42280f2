"""SNIP baseline (Lee et al. 2019; docs/methods.md §Baselines): connection sensitivity |∂L/∂w ⊙ w|, summed
over S, kept globally. Uses S's labels when the batches carry them, else the model's own
predictions (so S may be unlabeled). Frozen weights (``requires_grad=False``) are scored too:
their gradients are turned on for the pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.layers import weight_of
from .allocation import keep_top_global
from .base import PruneContext, PruningMethod
from .registry import register_method


def check_labels(labels: Tensor, classes: int, name: str = "data") -> None:
    """Class labels lie in [0, classes) (or are cross_entropy's ignore index, -100)."""
    if labels.is_floating_point() or labels.numel() == 0:
        return  # class probabilities
    valid = ((labels >= 0) & (labels < classes)) | (labels == -100)
    if not bool(valid.all()):
        bad = labels[~valid]
        raise ValueError(
            f"{name}: labels must lie in [0, {classes}) (the model has {classes} outputs), got "
            f"{int(bad.min())}" + (f" .. {int(bad.max())}" if bad.numel() > 1 else "")
        )


@register_method("snip")
class SNIP(PruningMethod):
    data_informed = True
    description = "connection sensitivity |grad * w| on S, global (baseline)"
    option_names = ()

    def compute_masks(self, ctx: PruneContext):
        model = ctx.model
        scores = {name: torch.zeros_like(weight_of(layer)) for name, layer in ctx.layers.items()}
        params: dict[str, Tensor] = {
            name: getattr(layer, "weight_orig", weight_of(layer)) for name, layer in ctx.layers.items()
        }
        frozen = [p for p in params.values() if not p.requires_grad]
        was_training = model.training
        model.eval()
        try:
            for p in frozen:
                p.requires_grad_(True)
            for x, y in ctx.labeled_batches():
                model.zero_grad(set_to_none=True)
                logits = model(x)
                logits = logits["out"] if isinstance(logits, dict) else logits
                if y is not None:
                    check_labels(y, logits.shape[1])
                target = y if y is not None else logits.argmax(1).detach()
                F.cross_entropy(logits, target).backward()
                for name, param in params.items():
                    if param.grad is not None:
                        scores[name] += (param.grad * param).abs().detach()
        finally:
            model.zero_grad(set_to_none=True)
            for p in frozen:
                p.requires_grad_(False)
            model.train(was_training)
        return keep_top_global(scores, ctx.keep_budget(), ctx.current_masks)
