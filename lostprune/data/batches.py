"""Input batches from whatever a user passes as data: a tensor, a Dataset, a DataLoader or
any iterable of batches / (inputs, labels) pairs — validated, with errors naming the argument."""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset


def _split_batch(batch, name: str, index: int) -> tuple[Tensor, Tensor | None]:
    """(inputs, labels or None) of one batch."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], labels
    if isinstance(batch, dict):
        labels = next(
            (
                batch[k]
                for k in ("label", "labels", "target", "targets", "y")
                if isinstance(batch.get(k), Tensor)
            ),
            None,
        )
        for key in ("input", "inputs", "image", "images", "x"):
            if isinstance(batch.get(key), Tensor):
                return batch[key], labels
    raise TypeError(
        f"{name}: batch {index} is a {type(batch).__name__}; expected a tensor of inputs "
        "or an (inputs, labels) pair"
    )


def check_batch_size(batch_size, name: str = "batch_size") -> int:
    """``batch_size`` as an int >= 1, or a TypeError / ValueError naming it."""
    try:
        if isinstance(batch_size, bool):
            raise TypeError
        value = operator.index(batch_size)
    except TypeError:
        raise TypeError(f"{name} must be a positive integer, got {batch_size!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def as_pair_dataset(data):
    """``data`` itself, or a TensorDataset when it is one (inputs, labels) pair of tensors
    (labels of lower rank than the inputs, as many of them) rather than a sequence of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        inputs, labels = data
        if 1 <= labels.dim() < inputs.dim() and labels.shape[:1] == inputs.shape[:1]:
            return TensorDataset(inputs, labels)
    return data


def iter_inputs_and_labels(
    data,
    name: str = "data",
    batch_size: int = 128,
    expected_shape: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    limit: int | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (inputs, labels or None) batches from ``data``.

    ``data`` may be a tensor (split into ``batch_size`` chunks), a Dataset (batched), a
    DataLoader, an (inputs, labels) pair of tensors, or an iterable of batches or (inputs,
    labels) pairs. ``expected_shape`` is the per-sample shape the model takes, e.g. (3, 32, 32);
    ``dtype`` the floating type of its weights. ``limit`` stops after that many samples.
    Raises on empty data, non-float inputs or another dtype, inputs on the meta device, NaN/inf,
    or a wrong sample shape.
    """
    if data is None:
        raise ValueError(f"{name} is None; pass a tensor, Dataset or DataLoader of inputs")
    batch_size = check_batch_size(batch_size)
    data = as_pair_dataset(data)
    if isinstance(data, Tensor):
        if data.dim() == 0 or data.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(data.shape)}); pass at least one input")
        source = data.split(batch_size)
    elif isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        if len(data) == 0:
            raise ValueError(f"{name} is an empty dataset")
        source = DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        source = data
    try:
        batches = iter(source)
    except TypeError:
        raise TypeError(
            f"{name} must be a tensor, a Dataset, a DataLoader or an iterable of batches, got "
            f"{type(data).__name__}"
        ) from None
    seen = 0
    for index, batch in enumerate(batches):
        x, y = _split_batch(batch, name, index)
        if not x.is_floating_point():
            raise TypeError(
                f"{name}: inputs must be floating point (normalized images), got {x.dtype} in batch {index}"
            )
        if dtype is not None and x.dtype != dtype:
            raise TypeError(
                f"{name}: inputs are {x.dtype} in batch {index} but the model's weights are {dtype}; "
                f"convert them (inputs.to({dtype}))"
            )
        if x.is_meta:
            raise ValueError(
                f"{name}: batch {index} is on the meta device (shapes without values); pass real inputs"
            )
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(
                f"{name}: batch {index} has shape {tuple(x.shape)}; expected N x ... with N >= 1"
            )
        if expected_shape is not None and (
            x.dim() - 1 != len(expected_shape) or x.shape[1] != expected_shape[0]
        ):
            # Spatial sizes may differ (fully convolutional nets); rank and channels may not.
            raise ValueError(
                f"{name}: samples have shape {tuple(x.shape[1:])} but the model expects "
                f"{tuple(expected_shape)} (channels first)"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: batch {index} contains NaN or inf values")
        if limit is not None and seen + x.shape[0] > limit:
            x, y = x[: limit - seen], (None if y is None else y[: limit - seen])
        seen += x.shape[0]
        if device is not None:
            x, y = x.to(device), (None if y is None else y.to(device))
        yield x, y
        if limit is not None and seen >= limit:
            return
    if seen == 0:
        raise ValueError(f"{name} yielded no batches; pass at least one input")


def iter_inputs(data, name: str = "data", **kwargs) -> Iterator[Tensor]:
    """Input batches (N x ...) of ``data``; see :func:`iter_inputs_and_labels`."""
    for x, _ in iter_inputs_and_labels(data, name, **kwargs):
        yield x


def first_batch(data, name: str = "data", **kwargs) -> Tensor:
    return next(iter_inputs(data, name, **kwargs))
