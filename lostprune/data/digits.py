"""The built-in data set: scikit-learn's handwritten digits (1,797 real 8 x 8 images of
0-9, shipped inside scikit-learn, no download), upsampled to CIFAR's 3 x 32 x 32.

Images are upsampled bilinearly, scaled to [0, 1], stored as uint8 and repeated over three
channels. The splits are fixed (stratified, seed 0): 1,129 train, 180 validation, 128 S
(held out of the training images for data-informed methods) and 360 test; a different
``s_size`` moves images between S and train only. The upsampled
tensor is cached on disk (``$LOSTPRUNE_CACHE/data``) and in memory, so a load after the
first takes milliseconds and does not import scikit-learn.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from .._files import data_cache_dir, save_atomic
from .splits import DataSplits, check_split_size, stratified_split
from .tensor_images import ImageTensorDataset

SIZE = 32
SPLIT_SIZES = {"test": 360, "validation": 180, "s": 128, "train": None}
S_SIZE = SPLIT_SIZES["s"]
# Per-channel statistics of the training split (the three channels are identical);
# tests/test_data.py recomputes them.
MEAN = (0.3057, 0.3057, 0.3057)
STD = (0.3240, 0.3240, 0.3240)
_CACHE_VERSION = 1


def _cache_file() -> Path:
    return data_cache_dir() / f"digits-{SIZE}px-v{_CACHE_VERSION}.pt"


def _upsample() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # N x 1 x 8 x 8, in [0, 1]
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = images.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return images, torch.from_numpy(digits.target).long()


@functools.cache
def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 1797 x 1 x 32 x 32, labels int64 1797), from the disk cache when present."""
    path = _cache_file()
    try:
        cached = torch.load(path, weights_only=True)
        return cached["images"], cached["labels"]
    except (OSError, KeyError, RuntimeError, EOFError):
        pass  # absent or unreadable: rebuild it
    images, labels = _upsample()
    with contextlib.suppress(OSError):  # a read-only cache only costs the upsampling next time
        save_atomic({"images": images, "labels": labels}, path)
    return images, labels


@functools.cache
def split_indices(s_size: int = S_SIZE) -> dict[str, torch.Tensor]:
    return stratified_split(digits_tensors()[1].numpy(), {**SPLIT_SIZES, "s": s_size}, seed=0)


def load_digits(*, s_size: int = S_SIZE, augment: bool = True, normalize: bool = True) -> DataSplits:
    """The built-in digits as ``DataSplits`` (train / validation / S / test, fixed; ``s_size``
    images of S, held out of the training images).

    ``augment`` adds a random 2-pixel shift to the training images (no flips: digits are not
    mirror-symmetric). ``normalize=False`` yields [0, 1] images instead of normalized ones.
    """
    check_split_size("s_size", s_size, minimum=2)
    images, labels = digits_tensors()
    available = len(labels) - SPLIT_SIZES["test"] - SPLIT_SIZES["validation"]
    if s_size >= available:
        raise ValueError(
            f"s_size={s_size} leaves no training images (the digits hold {available} images "
            "outside the test and validation splits)"
        )
    full = ImageTensorDataset(
        images,
        labels,
        mean=MEAN,
        std=STD,
        normalize=normalize,
        channels=3,
        classes=[str(d) for d in range(10)],
    )
    index = split_indices(s_size)
    return DataSplits(
        name="digits",
        train=full.subset(index["train"], crop_padding=2 if augment else 0),
        validation=full.subset(index["validation"]),
        s=full.subset(index["s"]),
        test=full.subset(index["test"]),
        classes=full.classes,
        input_size=(3, SIZE, SIZE),
        mean=MEAN,
        std=STD,
        normalized=normalize,
        info={
            "source": "sklearn.datasets.load_digits, bilinear 8x8 -> 32x32",
            "sizes": {k: len(v) for k, v in index.items()},
        },
    )
