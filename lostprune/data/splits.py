"""Fixed, stratified splits and the ``DataSplits`` bundle every loader returns.

S (the data of the data-informed methods, docs/methods.md §Sensitivities) is always carved out of the training
split, never out of the test set; the loaders enforce that by construction.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset


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
        raise ValueError(
            f"sizes: {dict(sizes)} ask for {fixed} samples{' plus a non-empty rest' if rest else ''}, "
            f"but there are only {n}"
        )
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
        out[name] = torch.from_numpy(np.sort(interleaved[start : start + take])).long()
        start += take
    return out


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """The class label of every item of ``dataset`` (int64), read from its metadata where it
    has some (in-memory images, ImageFolder ``targets``, Subsets of those), else item by item."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = [dataset[i][1] for i in range(len(dataset))]
    labels = torch.as_tensor(np.asarray(labels))
    if labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(
            "dataset: stratified subsets need one class label per item, got labels of shape "
            f"{tuple(labels.shape)} and type {labels.dtype}"
        )
    return labels.long()


def balanced_subset(labels, size: int, *, seed: int = 0, argument: str = "size") -> torch.Tensor:
    """``size`` indices with an equal share of every class (shares differ by at most one when
    ``size`` is not a multiple of the number of classes; which classes get the extra one is
    drawn from ``seed``), each class's share drawn at random from ``seed``. Sorted.

    Raises ValueError naming ``argument`` when ``size`` exceeds the split or a class holds
    fewer items than its share."""
    labels = np.asarray(labels).reshape(-1)
    check_split_size(argument, size, minimum=1)
    if size > len(labels):
        raise ValueError(f"{argument}={size} is larger than the split it is drawn from ({len(labels)} items)")
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    share = np.full(len(classes), size // len(classes))
    share[rng.permutation(len(classes))[: size % len(classes)]] += 1
    short = [(c, n, k) for c, n, k in zip(classes, counts, share) if n < k]
    if short:
        c, n, k = short[0]
        most = int(counts.min()) * len(classes)
        raise ValueError(
            f"{argument}={size} needs {k} items of class {c}, which has only {n} in this split; "
            f"an equal share of every class allows at most {most}"
        )
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, share)]
    return torch.from_numpy(np.sort(np.concatenate(chosen))).long()


def subset_of(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """The items of ``dataset`` at ``indices``, keeping in-memory sets in memory."""
    from .tensor_images import ImageTensorDataset

    if isinstance(dataset, ImageTensorDataset):
        return dataset.subset(indices)
    return Subset(dataset, indices.tolist())


def _item_files(dataset: Dataset) -> list[str] | None:
    """The file behind every item of a file-backed dataset (ImageFolder, Subsets of one)."""
    if isinstance(dataset, Subset):
        files = _item_files(dataset.dataset)
        return None if files is None else [files[i] for i in dataset.indices]
    samples = getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
    if samples and isinstance(samples[0], (tuple, list)):
        return [str(s[0]) for s in samples]
    return None


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def overlap(s: Dataset, test: Dataset) -> list[int]:
    """Indices into ``s`` of items that are also in ``test``: the same file (or a file with the
    same bytes) for file-backed sets, the same pixels for in-memory ones."""
    from .tensor_images import ImageTensorDataset

    if isinstance(s, ImageTensorDataset) and isinstance(test, ImageTensorDataset):
        seen = {_digest(image.numpy().tobytes()) for image in test.images.contiguous()}
        return [
            i for i, image in enumerate(s.images.contiguous()) if _digest(image.numpy().tobytes()) in seen
        ]
    s_files, test_files = _item_files(s), _item_files(test)
    if s_files is None or test_files is None:
        return []  # no cheap identity to compare (e.g. VOC pairs); their loaders split by list files
    resolved = {str(Path(f).resolve()) for f in test_files}
    same = {i for i, f in enumerate(s_files) if str(Path(f).resolve()) in resolved}
    # Copies: hash only the test files whose size matches an S file's.
    sizes: dict[int, list[int]] = {}
    for i, f in enumerate(s_files):
        if i not in same:
            sizes.setdefault(Path(f).stat().st_size, []).append(i)
    if sizes:
        digests = {_digest(Path(f).read_bytes()) for f in test_files if Path(f).stat().st_size in sizes}
        same |= {
            i for group in sizes.values() for i in group if _digest(Path(s_files[i]).read_bytes()) in digests
        }
    return sorted(same)


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

    def loader(
        self,
        split: str,
        batch_size: int = 128,
        *,
        shuffle: bool | None = None,
        num_workers: int = 0,
        **kwargs,
    ) -> DataLoader:
        """A DataLoader over one split; shuffled for ``train`` unless told otherwise."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return DataLoader(
            self.split(split),
            batch_size=batch_size,
            shuffle=(split == "train") if shuffle is None else shuffle,
            num_workers=num_workers,
            **kwargs,
        )

    def subset(
        self, *, train_size: int | None = None, test_size: int | None = None, seed: int = 0
    ) -> DataSplits:
        """These splits with the training and/or test split cut to a random subset of that
        many items, an equal share per class (``balanced_subset``; segmentation sets: a
        random subset), deterministic in ``seed``. S and validation stay as they are."""
        changes, info = {}, dict(self.info)
        for name, size in (("train", train_size), ("test", test_size)):
            if size is None:
                continue
            dataset = getattr(self, name)
            argument = f"{name}_size"
            if self.task == "classification":
                index = balanced_subset(dataset_labels(dataset), size, seed=seed, argument=argument)
            else:
                check_split_size(argument, size, minimum=1)
                if size > len(dataset):
                    raise ValueError(
                        f"{argument}={size} is larger than the {name} split ({len(dataset)} items)"
                    )
                index = torch.from_numpy(
                    np.sort(np.random.default_rng(seed).permutation(len(dataset))[:size])
                )
            changes[name] = subset_of(dataset, index)
            info[argument] = size
        return dataclasses.replace(self, **changes, info=info) if changes else self

    def check_s_held_out(self) -> None:
        """Raise ValueError when S shares items with the test set (docs/methods.md §Sensitivities: S
        is held out of the training images, never taken from the test set)."""
        if len(self.s) == 0:
            raise ValueError("s: S is empty; data-informed methods need at least 2 images")
        shared = overlap(self.s, self.test)
        if shared:
            raise ValueError(
                f"s: {len(shared)} of the {len(self.s)} images of S are also in the test set "
                f"(S items {shared[:5]}{'...' if len(shared) > 5 else ''}); S must come from the "
                "training images only. Check that the train and test folders differ"
            )

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
        sizes = ", ".join(
            f"{k}={len(v)}"
            for k, v in (
                ("train", self.train),
                ("validation", self.validation),
                ("s", self.s),
                ("test", self.test),
            )
            if v is not None
        )
        return (
            f"DataSplits({self.name!r}, {sizes}, classes={self.num_classes}, input_size={self.input_size}, "
            f"task={self.task!r})"
        )
