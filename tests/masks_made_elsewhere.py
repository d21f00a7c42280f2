"""Masks as another tool may make them: only the removed filters zeroed, their channels'
constants (BN shifts) left alive in the consumers — what slicing must fold."""

import copy

import torch.nn as nn

import lostprune
from lostprune.core.layers import prunable_layers
from lostprune.core.masks import apply_masks


def filters_removed(model: nn.Module, ratio: float) -> nn.Module:
    """A copy of ``model`` whose masks zero only the filters group-aware FT removes
    (lostprune's own masks drop the consumer columns too)."""
    result = lostprune.prune(model, "ft", ratio, coupled="sum", progress=False)
    copy_ = copy.deepcopy(model)
    layers = prunable_layers(copy_)
    rows = {name: (mask != 0).flatten(1).any(1) for name, mask in result.masks.items()}
    apply_masks(
        layers,
        {
            name: rows[name].view(-1, *[1] * (layer.weight.dim() - 1)).expand_as(layer.weight).float()
            for name, layer in layers.items()
        },
    )
    return copy_
