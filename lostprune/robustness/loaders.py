"""Readers for the published shifted test sets, when a user has them on disk (lostprune never
downloads them):

- CIFAR-10-C: ``<root>/<corruption>.npy`` (50,000 × 32 × 32 × 3 uint8: severities 1..5, 10,000
  images each) and ``<root>/labels.npy``;
- CIFAR-10.1: ``<root>/cifar10.1_<version>_data.npy`` and ``..._labels.npy`` (v4 or v6);
- ImageNet-C: ``<root>/<corruption>/<severity>/<wnid>/*.JPEG`` (ImageFolder layout).

The array datasets return (C×H×W float image in [0, 1], label) pairs, the input
``lostprune.robustness.corrupt`` takes; ``transform`` is applied to that tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .corruptions import NAMES

CIFAR10C_PER_SEVERITY = 10_000


class ArrayImageDataset(Dataset):
    """Images from an N×H×W×C uint8 array (memory-mapped .npy is fine) with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
            raise ValueError(
                f"images must be an N×H×W×C uint8 array with C in (1, 3), got shape "
                f"{images.shape} and dtype {images.dtype}"
            )
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, np.asarray(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1).float() / 255
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images as one N×C×H×W uint8 tensor, and the labels as int64."""
        images = torch.from_numpy(np.array(self.images)).permute(0, 3, 1, 2)  # a copy: memmaps are read-only
        return images, torch.from_numpy(np.array(self.labels, dtype=np.int64))


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        found = sorted(p.name for p in path.parent.glob("*.npy")) if path.parent.is_dir() else []
        raise FileNotFoundError(
            f"{what}: {path} not found"
            + (
                f"; the folder has {', '.join(found)}"
                if found
                else f"; {path.parent} has no .npy files"
                if path.parent.is_dir()
                else f"; {path.parent} does not exist"
            )
        )
    return path


def _check_corruption(name: str, available: list[str] | tuple[str, ...] = NAMES) -> None:
    if name not in available:
        raise ValueError(f"unknown corruption {name!r}; available: {', '.join(available)}")


def _check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")


def cifar10c(
    root: str | Path, corruption: str, severity: int, transform: Callable | None = None
) -> ArrayImageDataset:
    """One corruption at one severity of the official CIFAR-10-C arrays (10,000 images)."""
    root = Path(root)
    _check_corruption(corruption)
    _check_severity(severity)
    images = np.load(_need(root / f"{corruption}.npy", "CIFAR-10-C"), mmap_mode="r")
    labels = np.load(_need(root / "labels.npy", "CIFAR-10-C"), mmap_mode="r")
    per = len(images) // 5
    if len(images) % 5 or len(labels) != len(images):
        raise ValueError(
            f"CIFAR-10-C: {corruption}.npy holds {len(images)} images and labels.npy "
            f"{len(labels)}; expected 5 equal severity blocks with one label each"
        )
    block = slice((severity - 1) * per, severity * per)
    return ArrayImageDataset(images[block], labels[block], transform)


def cifar10_1(root: str | Path, version: str = "v6", transform: Callable | None = None) -> ArrayImageDataset:
    """CIFAR-10.1 (Recht et al. 2018), a new test set drawn like CIFAR-10's."""
    if version not in ("v4", "v6"):
        raise ValueError(f"CIFAR-10.1 version must be 'v4' or 'v6', got {version!r}")
    root = Path(root)
    images = np.load(_need(root / f"cifar10.1_{version}_data.npy", "CIFAR-10.1"), mmap_mode="r")
    labels = np.load(_need(root / f"cifar10.1_{version}_labels.npy", "CIFAR-10.1"))
    return ArrayImageDataset(images, labels, transform)


def imagenet_c(root: str | Path, corruption: str, severity: int, transform: Callable | None = None):
    """One corruption at one severity of ImageNet-C, as a torchvision ImageFolder."""
    from torchvision.datasets import ImageFolder

    root = Path(root)
    _check_severity(severity)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet-C: {root} does not exist")
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    _check_corruption(corruption, present or NAMES)
    folder = root / corruption / str(severity)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet-C: {folder} not found (expected <root>/<corruption>/<1..5>/<class>/)"
        )
    return ImageFolder(str(folder), transform=transform)
