"""Noise corruptions: gaussian_noise, shot_noise, impulse_noise, speckle_noise.

Each takes a float batch in [0, 1] (N×C×H×W), its severity's parameter and a generator,
and returns the corrupted batch, unclipped values clipped to [0, 1] as the scripts do."""

from __future__ import annotations

import torch
from torch import Tensor

PARAMS = {
    "gaussian_noise": {"cifar": [0.04, 0.06, 0.08, 0.09, 0.10], "imagenet": [0.08, 0.12, 0.18, 0.26, 0.38]},
    "shot_noise": {"cifar": [500, 250, 100, 75, 50], "imagenet": [60, 25, 12, 5, 3]},
    "impulse_noise": {"cifar": [0.01, 0.02, 0.03, 0.05, 0.07], "imagenet": [0.03, 0.06, 0.09, 0.17, 0.27]},
    "speckle_noise": {"cifar": [0.06, 0.1, 0.12, 0.16, 0.2], "imagenet": [0.15, 0.2, 0.35, 0.45, 0.6]},
}


def gaussian_noise(x: Tensor, scale: float, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """x + N(0, scale²) per value."""
    return (x + torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * scale).clamp_(0, 1)


def shot_noise(x: Tensor, photons: float, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """Poisson(x · photons) / photons per value."""
    return (torch.poisson(x * photons, generator=gen) / photons).clamp_(0, 1)


def impulse_noise(x: Tensor, amount: float, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """Salt and pepper per value (skimage random_noise 's&p'): a fraction ``amount`` of the
    values is replaced, half by 1 and half by 0."""
    flipped = torch.rand(x.shape, generator=gen, device=x.device) <= amount
    salted = torch.rand(x.shape, generator=gen, device=x.device) <= 0.5
    out = x.clone()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


def speckle_noise(x: Tensor, scale: float, gen: torch.Generator, table: str = "cifar") -> Tensor:
    """x + x · N(0, scale²) per value."""
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * scale
    return (x + x * noise).clamp_(0, 1)


FUNCTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
}
