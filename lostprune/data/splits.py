"""Fixed, stratified splits and the ``DataSplits`` bundle every loader returns.

S (the data of the data-informed methods, SPEC §2.3) is always carved out of the training
split, never out of the test set; the loaders enforce that by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def check_split_size(name: str, value: int, *, minimum: int = 0) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        hint = " (data-informed methods need at least 2 images)" if name == "s_size" else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{hint}, got {value!r}")
    return int(value)


def stratified_split(labels, sizes: Mapping[str, int | None], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Disjoint index sets with the class proportions of ``labels``, deterministic in ``seed``.

    ``sizes`` maps split name -> number of samples, in order; at most one value may be None
    (it takes every remaining sample). Each split holds, per class, its proportional share
    within one sample. Indices come back sorted.
    """
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    rest = [name for name, size in sizes.items() if size is None]
    if len(rest) > 1:
        raise ValueError(f"sizes: at most one split may take the rest (None), got {rest}")
    for name, size in sizes.items():
        if size is not None:
            check_split_size(f"sizes[{name!r}]", size)
    fixed = sum(size for size in sizes.values() if size is not None)
    if fixed > n or (rest and fixed == n):
        raise ValueError(f"sizes: {dict(sizes)} ask for {fixed} samples{' plus a non-empty rest' if rest else ''}, "
                         f"but there are only {n}")
    rng = np.random.default_rng(seed)
    jitter = rng.permutation(n)
    # Rank every sample inside its class in random order; sorting by (rank + 0.5) / class size
    # interleaves the classes so that every consecutive chunk is stratified to within one sample.
    order = np.lexsort((jitter, labels))
    _, counts = np.unique(labels, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    class_index = np.repeat(np.arange(len(counts)), counts)
    rank = np.arange(n) - starts[class_index]
    position = (rank + 0.5) / counts[class_index]
    interleaved = order[np.lexsort((jitter[order], position))]
    out, start = {}, 0
    for name, size in sizes.items():
        take = n - fixed if size is None else size
        out[name] = torch.from_numpy(np.sort(interleaved[start:start + take])).long()
        start += take
    return out


def _collate_first_batch(dataset: Dataset) -> torch.Tensor:
    """Whole ``dataset`` as one input tensor (meant for S, a few hundred images)."""
    loader = DataLoader(dataset, batch_size=max(1, len(dataset)), shuffle=False)
    inputs = next(iter(loader))
    return inputs[0] if isinstance(inputs, (tuple, list)) else inputs


@dataclass
class DataSplits:
    """A data set cut into train / validation / S / test.

    ``train`` applies the training augmentation; ``validation``, ``s`` and ``test`` do not.
    ``s`` is held out of the training images (never the test set): pass it as ``data=`` to
    data-informed pruning methods. Inputs are normalized with ``mean`` / ``std`` unless the
    loader was asked for ``normalize=False`` (then they lie in [0, 1]).
    """

    name: str
    train: Dataset
    test: Dataset
    s: Dataset
    validation: Dataset | None
    classes: list[str]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    task: str = "classification"
    normalized: bool = True
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Dataset:
        options = {"train": self.train, "validation": self.validation, "s": self.s, "test": self.test}
        if name not in options:
            raise ValueError(f"split must be one of {', '.join(options)}, got {name!r}")
        if options[name] is None:
            raise ValueError(f"{self.name} has no {name} split (ask the loader for validation_size > 0)")
        return options[name]

    def loader(self, split: str, batch_size: int = 128, *, shuffle: bool | None = None, num_workers: int = 0,
               **kwargs) -> DataLoader:
        """A DataLoader over one split; shuffled for ``train`` unless told otherwise."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return DataLoader(self.split(split), batch_size=batch_size,
                          shuffle=(split == "train") if shuffle is None else shuffle,
                          num_workers=num_workers, **kwargs)

    def s_inputs(self) -> torch.Tensor:
        """All of S as one input tensor (N x C x H x W)."""
        return _collate_first_batch(self.s)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if like.dim() < 3:
            raise ValueError(f"images must be C x H x W or N x C x H x W, got shape {tuple(like.shape)}")
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(-1, 1, 1)
        return mean, std

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (C x H x W or N x C x H x W) -> the model's input space."""
        mean, std = self._stats(images)
        return (images - mean) / std

    def denormalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs -> [0, 1] images (for corruptions, plots)."""
        mean, std = self._stats(inputs)
        return inputs * std + mean

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in (("train", self.train), ("validation", self.validation),
                                                        ("s", self.s), ("test", self.test)) if v is not None)
        return (f"DataSplits({self.name!r}, {sizes}, classes={self.num_classes}, input_size={self.input_size}, "
                f"task={self.task!r})")
