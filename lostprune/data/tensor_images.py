"""In-memory image sets (CIFAR-10, the built-in digits): uint8 tensors, augmented and
normalized a whole batch at a time.

``DataLoader`` calls ``__getitems__`` with a batch of indices, so one pad-and-crop, one flip
and one normalization run per batch instead of per image (docs/methods.md §Prune–retrain: the
paper's pad-4 random crop + flip).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad each image of an N x C x H x W batch by ``padding`` and crop it back at a random offset."""
    if padding <= 0:
        return images
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror a random half of an N x C x H x W batch left to right."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class ImageTensorDataset(Dataset):
    """Labelled images held as a uint8 N x C x H x W tensor.

    Items are float C x H x W in [0, 1], augmented (``crop_padding``, ``flip``) and then
    normalized with ``mean`` / ``std`` unless ``normalize=False``. A 1-channel tensor can be
    presented as ``channels`` identical channels without copying it.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 0,
        flip: bool = False,
        normalize: bool = True,
        channels: int | None = None,
        classes: Sequence[str] | None = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 N x C x H x W tensor, got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must hold one label per image ({images.shape[0]}), got {tuple(labels.shape)}"
            )
        if channels is not None and channels != images.shape[1]:
            if images.shape[1] != 1:
                raise ValueError(
                    f"channels: only a 1-channel tensor can be repeated, got {images.shape[1]} channels"
                )
            images = images.expand(-1, channels, -1, -1)
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(
                f"mean and std need one value per channel ({images.shape[1]}), got {len(mean)}, {len(std)}"
            )
        self.images, self.labels = images, labels.long()
        self.crop_padding, self.flip, self.normalize = int(crop_padding), bool(flip), bool(normalize)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (N x C x H x W float) and labels for ``indices``, augmented and normalized."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[index].float().div_(255)
        images = random_crop(images, self.crop_padding)
        if self.flip:
            images = random_flip(images)
        if self.normalize:
            images = (images - self.mean) / self.std
        return images, self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.batch(indices)
        return list(zip(images.unbind(0), labels.unbind(0)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.batch([index])
        return images[0], labels[0]

    def subset(self, indices: torch.Tensor, **overrides) -> ImageTensorDataset:
        """The images at ``indices`` as a new dataset; keyword arguments replace settings
        (e.g. ``crop_padding=0, flip=False`` for held-out data)."""
        settings = dict(
            mean=self.mean.flatten().tolist(),
            std=self.std.flatten().tolist(),
            crop_padding=self.crop_padding,
            flip=self.flip,
            normalize=self.normalize,
            classes=self.classes,
        )
        settings.update(overrides)
        images = self.images[indices]
        return ImageTensorDataset(images, self.labels[indices], **settings)

    def __repr__(self) -> str:
        return (
            f"ImageTensorDataset({len(self)} images {tuple(self.images.shape[1:])}, crop_padding="
            f"{self.crop_padding}, flip={self.flip}, normalize={self.normalize})"
        )
