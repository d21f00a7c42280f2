"""Segmentation quality: confusion matrices and mean intersection over union (docs/methods.md §Prune
potential: for segmentation, error = 1 − mIoU)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255
) -> Tensor:
    """(K, K) int64 counts, rows = true class, columns = predicted class; pixels whose target
    is ``ignore_index`` (or outside 0..K-1) are skipped."""
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid &= target != ignore_index
    if ((pred[valid] < 0) | (pred[valid] >= num_classes)).any():
        raise ValueError(f"pred holds class indices outside 0..{num_classes - 1}")
    index = target[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


def iou_from_confusion(confusion: Tensor) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN); NaN for classes absent from both target and pred."""
    cm = confusion.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    return iou.numpy()


def mean_iou(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255) -> float:
    """mIoU over the classes present in the target or the prediction. ``pred`` holds class
    indices (N×H×W) or logits (N×K×H×W)."""
    if pred.dim() == target.dim() + 1:
        pred = pred.argmax(1)
    iou = iou_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))
    if np.all(np.isnan(iou)):
        raise ValueError("mean_iou: no labeled pixels (every target is ignore_index)")
    return float(np.nanmean(iou))
