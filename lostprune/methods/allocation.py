"""Allocation rules shared by the methods: how a budget is spread over layers."""

from __future__ import annotations

import torch
from torch import Tensor


def keep_top_global(
    scores: dict[str, Tensor], keep: int, current_masks: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Masks keeping exactly ``keep`` weights over all layers: the largest scores win.

    Weights already removed (mask 0) can never be kept again; if fewer than ``keep`` survive,
    all survivors are kept. Ties are broken by position (layer order, then flat index), so the
    result is deterministic. Scores must be finite for surviving weights.
    """
    names = list(scores)
    flat = []
    for name in names:
        score = scores[name].detach().flatten().float()
        alive = current_masks[name].flatten().to(score.device) != 0
        if not torch.isfinite(score[alive]).all():
            raise ValueError(f"scores for layer {name!r} contain NaN or inf")
        flat.append(torch.where(alive, score, torch.full_like(score, -torch.inf)))
    all_scores = torch.cat(flat)
    alive_total = int(torch.isfinite(all_scores).sum())
    keep = max(0, min(keep, alive_total))
    chosen = torch.isfinite(all_scores)
    if keep < alive_total:
        # The keep-th largest score, by selection (linear time, no full sort), then ties at
        # the threshold filled in position order so exactly `keep` survive.
        threshold = (
            torch.kthvalue(all_scores.cpu(), all_scores.numel() - keep + 1).values.to(all_scores.device)
            if keep > 0
            else torch.tensor(torch.inf, device=all_scores.device)
        )
        chosen = all_scores > threshold
        missing = keep - int(chosen.sum())
        if missing > 0:
            ties = (all_scores == threshold).nonzero().flatten()[:missing]
            chosen[ties] = True
    masks, offset = {}, 0
    for name in names:
        n = scores[name].numel()
        mask = chosen[offset : offset + n].view(scores[name].shape)
        masks[name] = mask.to(current_masks[name].dtype).to(current_masks[name].device)
        offset += n
    return masks
