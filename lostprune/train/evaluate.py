"""Evaluation and the batch handling training shares with it: (inputs, targets) batches
checked against the model, logits out of any model output, accuracy counts, AMP settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .._progress import bar_disabled

SEGMENTATION_IGNORE_INDEX = 255


def _default_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    ignore = SEGMENTATION_IGNORE_INDEX if logits.dim() > 2 else -100
    return nn.functional.cross_entropy(
        logits.float(), targets, ignore_index=ignore, label_smoothing=label_smoothing
    )


def logits_of(output) -> torch.Tensor:
    """The prediction tensor of a model output (torchvision segmentation models return {"out": ...})."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "out" in output:
        return output["out"]
    raise TypeError(f"model output must be a tensor or a mapping with 'out', got {type(output).__name__}")


def _correct(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int | torch.Tensor]:
    """(number of correct predictions, number counted): top-1 per image, or per labelled pixel."""
    predicted = logits.argmax(1)
    if logits.dim() > 2:
        valid = targets != SEGMENTATION_IGNORE_INDEX
        return (predicted.eq(targets) & valid).sum(), valid.sum()
    return predicted.eq(targets).sum(), targets.numel()


def _split_batch(batch, argument: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f"{argument} must yield (inputs, targets) pairs, got {type(batch).__name__}")


def _check_inputs(model: nn.Module, inputs: torch.Tensor, argument: str) -> None:
    """Before the first forward: float, finite, and the channels the model declares."""
    if not inputs.is_floating_point():
        raise ValueError(
            f"{argument} yields {inputs.dtype} inputs; models need float inputs "
            f"(lostprune.data loaders convert and normalize images)"
        )
    if not torch.isfinite(inputs).all():
        raise ValueError(f"{argument} contains NaN or inf inputs")
    expected = getattr(model, "input_size", None)
    if expected is not None and (inputs.dim() - 1 != len(expected) or inputs.shape[1] != expected[0]):
        # Spatial sizes may differ (global pooling); rank and channels may not.
        raise ValueError(
            f"{argument} yields samples of shape {tuple(inputs.shape[1:])} but the model expects "
            f"{tuple(expected)} (channels first)"
        )


def _check_targets(targets: torch.Tensor, logits: torch.Tensor, argument: str) -> None:
    if targets.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise ValueError(f"{argument} yields {targets.dtype} targets; class indices (int64) are expected")
    labels = targets[targets != SEGMENTATION_IGNORE_INDEX] if logits.dim() > 2 else targets
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(
            f"{argument} has labels from {int(labels.min())} to {int(labels.max())}, but the model "
            f"outputs {logits.shape[1]} classes"
        )


def _as_dataset(data, argument: str, split: str):
    """``data`` as a Dataset or DataLoader; DataSplits stand for their ``split``."""
    from ..data.splits import DataSplits

    if isinstance(data, DataSplits):
        return data.split(split)
    if isinstance(data, (Dataset, DataLoader)):
        return data
    raise TypeError(f"{argument} must be a Dataset, a DataLoader or DataSplits, got {type(data).__name__}")


def _autocast(device: torch.device, amp: bool | None, amp_dtype: str = "float16") -> tuple[bool, torch.dtype]:
    """(enabled, dtype): AMP defaults to on for CUDA; the CPU autocasts to bfloat16."""
    enabled = (device.type == "cuda") if amp is None else bool(amp)
    return enabled, getattr(torch, amp_dtype) if device.type == "cuda" else torch.bfloat16


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX): there bfloat16
    autocast trains ResNet20 about 1.7x faster than float32 (benchmarks/RESULTS.md,
    training); elsewhere oneDNN emulates it, and it is slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def state_on_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model.state_dict()`` (masks included)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    amp: bool = False,
    loss_fn: Callable | None = None,
    progress: bool = False,
) -> dict:
    """Loss, accuracy and error of ``model`` on ``data`` (a Dataset, DataLoader or DataSplits,
    whose test split is used). Accuracy is top-1 per image, or per labelled pixel for
    segmentation outputs (N x K x H x W; label 255 ignored). The forward runs in the model's
    own precision unless ``amp=True`` (autocast: float16 on CUDA, bfloat16 on the CPU), so
    the numbers are those of every metric of the study and of training's validation."""
    from tqdm.auto import tqdm

    data = _as_dataset(data, "data", "test")
    device = torch.device(device) if device is not None else model_device(model)
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, shuffle=False)
    use_amp, amp_dtype = _autocast(device, amp)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    counted, samples = torch.zeros((), dtype=torch.int64, device=device), 0
    try:
        for batch in tqdm(loader, desc="evaluate", leave=False, disable=bar_disabled(progress)):
            inputs, targets = _split_batch(batch, "data")
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if samples == 0:
                _check_inputs(model, inputs, "data")
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = logits_of(model(inputs))
            if samples == 0:
                _check_targets(targets, logits, "data")
            loss = loss_fn(logits, targets) if loss_fn else _default_loss(logits, targets, 0.0)
            loss_sum += loss.double() * inputs.shape[0]
            c, n = _correct(logits, targets)
            correct += c
            counted += n
            samples += inputs.shape[0]
    finally:
        model.train(was_training)
    if samples == 0:
        raise ValueError("data is empty")
    accuracy = correct.item() / max(1, counted.item())
    return {
        "loss": loss_sum.item() / samples,
        "accuracy": accuracy,
        "error": 1.0 - accuracy,
        "samples": samples,
    }
