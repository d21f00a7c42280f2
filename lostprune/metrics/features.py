"""Informative features (docs/methods.md §Informative features): backward selection over pixels.

For an image, start from all pixels and repeatedly remove the pixels (all channels of a
pixel together, set to ``baseline``, 0 in normalized space) whose removal lowers the
model's confidence in its predicted class the least, until a fraction f remains. The
remaining pixels are the model's most informative features.

Candidates are ranked by the log-probability of the class (``log_confidence``), which orders
them as the probability does but does not saturate: a float32 softmax is exactly 1.0 for a
logit margin above about 17, so every candidate would tie and the gradient would vanish.

- ``mode="exact"`` scores every remaining pixel by the confidence after removing it (one
  forward pass per candidate, batched over candidates and images);
- ``mode="gradient"`` scores them by the first-order estimate ∇conf · (baseline − x) from one
  backward pass per round (the batched gradient variant of Carter et al.).

Each round removes ``pixels_per_step`` pixels (default 1 % of the image; 1 = the plain
greedy selection).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._progress import bar_disabled
from .evaluation import model_outputs

MODES = ("exact", "gradient")


def _check(images: Tensor, fraction: float, mode: str) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError("images must be a float N×C×H×W tensor of model inputs (normalized)")
    if images.shape[0] == 0:
        raise ValueError("images is empty (N = 0); informative features need at least one image")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def log_confidence(logits: Tensor, target: Tensor) -> Tensor:
    """log softmax(logits)[target] per row, as −softplus(logsumexp_{k≠t}(z_k − z_t)): exact
    (and with a nonzero gradient) where ``log_softmax`` rounds to 0, at logit margins beyond
    about 17 in float32 and 37 in float64. Computed in float32 or wider."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    index = target.view(-1, 1)
    others = (z - z.gather(1, index)).scatter(1, index, float("-inf"))
    return -nn.functional.softplus(others.logsumexp(1))


def _confidence(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    return log_confidence(model_outputs(model, x), target)


def informative_features(
    model: nn.Module,
    images: Tensor,
    fraction: float = 0.1,
    *,
    mode: str = "gradient",
    pixels_per_step: int | None = None,
    baseline: float = 0.0,
    target: Tensor | None = None,
    batch_size: int = 1024,
    progress: bool | None = None,
) -> Tensor:
    """Boolean N×H×W masks of the kept (most informative) pixels, round(f·H·W) per image.

    target: the class whose confidence is kept high (default: the model's prediction on the
    full image)."""
    _check(images, fraction, mode)
    n, _c, h, w = images.shape
    hw = h * w
    keep = max(1, round(fraction * hw))
    step = pixels_per_step or max(1, round(0.01 * hw))
    if step < 1:
        raise ValueError(f"pixels_per_step must be >= 1, got {step}")
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = images.to(device)
    try:
        if target is None:
            with torch.no_grad():
                target = model_outputs(model, x).argmax(1)
        target = target.to(device).long()
        kept = torch.ones(n, hw, dtype=torch.bool, device=device)
        rounds = math.ceil((hw - keep) / step)
        from tqdm.auto import trange

        for r in trange(
            rounds, desc=f"informative features ({mode})", disable=bar_disabled(progress), leave=False
        ):
            remove = min(step, hw - keep - r * step)
            scores = (_exact_scores if mode == "exact" else _gradient_scores)(
                model, x, kept, target, baseline, batch_size
            )
            scores = scores.masked_fill(~kept, float("-inf"))
            drop = scores.topk(remove, dim=1).indices  # highest confidence after removal = least loss
            kept.scatter_(1, drop, False)
    finally:
        model.train(was_training)
    return kept.view(n, h, w).cpu()


def reduce_to(images: Tensor, masks: Tensor, baseline: float = 0.0) -> Tensor:
    """Images with every pixel outside ``masks`` (N×H×W) set to ``baseline``."""
    m = masks.to(images.device).unsqueeze(1)
    return torch.where(m, images, torch.full_like(images, baseline))


def _exact_scores(model, x, kept, target, baseline, batch_size) -> Tensor:
    n, c, h, w = x.shape
    hw = h * w
    current = reduce_to(x, kept.view(n, h, w), baseline)
    scores = torch.full(
        (n, hw), float("-inf"), device=x.device, dtype=torch.promote_types(x.dtype, torch.float32)
    )
    candidates = kept.nonzero()  # (image, pixel) pairs still present
    with torch.no_grad():
        for start in range(0, len(candidates), batch_size):
            img, pix = candidates[start : start + batch_size].unbind(1)
            trial = current[img].clone().view(len(img), c, hw)
            trial[torch.arange(len(img), device=x.device), :, pix] = baseline
            scores[img, pix] = _confidence(model, trial.view(-1, c, h, w), target[img])
    return scores


def _gradient_scores(model, x, kept, target, baseline, batch_size) -> Tensor:
    n, _c, h, w = x.shape
    scores = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        current = reduce_to(x[sl], kept[sl].view(-1, h, w), baseline).detach().requires_grad_(True)
        with torch.enable_grad():
            conf = _confidence(model, current, target[sl])
            (grad,) = torch.autograd.grad(conf.sum(), current)
        # predicted log-confidence after removing a pixel: conf + Σ_channels grad · (baseline − x)
        delta = (grad * (baseline - current.detach())).sum(1).view(-1, h * w)
        scores.append(conf.detach().unsqueeze(1) + delta)
    return torch.cat(scores)


@dataclass(frozen=True)
class FeatureMatrix:
    """confidence[a][b], accuracy[a][b]: model b on the images reduced to model a's
    informative pixels. Confidence = b's softmax probability of the label (the true label
    when given, else b's prediction on the full image)."""

    names: list[str]
    confidence: dict[str, dict[str, float]]
    accuracy: dict[str, dict[str, float]]
    masks: dict[str, Tensor]

    def as_tensor(self, which: str = "confidence") -> Tensor:
        table = getattr(self, which)
        return torch.tensor([[table[a][b] for b in self.names] for a in self.names])


def informative_feature_matrix(
    models: Mapping[str, nn.Module],
    images: Tensor,
    labels: Tensor | None = None,
    *,
    fraction: float = 0.1,
    mode: str = "gradient",
    pixels_per_step: int | None = None,
    baseline: float = 0.0,
    batch_size: int = 1024,
    progress: bool | None = None,
) -> FeatureMatrix:
    """Informative pixels of every model (e.g. parent, pruned networks, a separately
    trained network), and every model evaluated on every other model's pixels."""
    names = list(models)
    masks = {
        a: informative_features(
            models[a],
            images,
            fraction,
            mode=mode,
            pixels_per_step=pixels_per_step,
            baseline=baseline,
            batch_size=batch_size,
            progress=progress,
        )
        for a in names
    }
    confidence: dict[str, dict[str, float]] = {a: {} for a in names}
    accuracy: dict[str, dict[str, float]] = {a: {} for a in names}
    for b in names:
        model = models[b]
        was_training = model.training
        model.eval()
        device = next(iter(model.parameters()), torch.empty(0)).device
        try:
            with torch.no_grad():
                x = images.to(device)
                label = labels.to(device).long() if labels is not None else model_outputs(model, x).argmax(1)
                for a in names:
                    probs = model_outputs(model, reduce_to(x, masks[a], baseline)).float().softmax(1)
                    confidence[a][b] = float(probs.gather(1, label.view(-1, 1)).mean())
                    accuracy[a][b] = float((probs.argmax(1) == label).float().mean())
        finally:
            model.train(was_training)
    return FeatureMatrix(names, confidence, accuracy, masks)
