"""Input noise in normalized space (docs/methods.md §Noise shifts): uniform U[−ε, ε] or Gaussian
N(0, ε²), added to the network's input after normalization, as in the paper's prune potential under
noise."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

KINDS = ("uniform", "gaussian")


def _check(kind: str, level: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"noise kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(level, (int, float)) or not math.isfinite(level) or level < 0:
        raise ValueError(f"noise level must be a finite number >= 0, got {level!r}")


def noise_like(x: Tensor, kind: str, level: float, generator: torch.Generator | None = None) -> Tensor:
    """A noise tensor shaped like ``x``: U[−level, level] or N(0, level²) per value."""
    _check(kind, level)
    if kind == "uniform":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * level
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * level


def add_noise(
    x: Tensor, kind: str, level: float, seed: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """x + noise, x already normalized. ``seed`` (or a ``generator``) makes it reproducible."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("add_noise: x must be a floating-point tensor of normalized inputs")
    if seed is not None and generator is None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
    return x + noise_like(x, kind, level, generator)


class InputNoise(nn.Module):
    """Transform (or model prefix) adding uniform or Gaussian noise of a given level.

    Works on a single C×H×W image in a torchvision pipeline (place it after ``Normalize``) or
    on a batch, e.g. ``nn.Sequential(InputNoise("gaussian", 0.1), model)``."""

    def __init__(self, kind: str, level: float, seed: int | None = None):
        super().__init__()
        _check(kind, level)
        self.kind, self.level = kind, float(level)
        self._generator = None if seed is None else torch.Generator().manual_seed(int(seed))

    def forward(self, x: Tensor) -> Tensor:
        gen = self._generator if self._generator is not None and x.device.type == "cpu" else None
        return add_noise(x, self.kind, self.level, generator=gen)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, level={self.level}"


def UniformNoise(level: float, seed: int | None = None) -> InputNoise:
    return InputNoise("uniform", level, seed)


def GaussianNoise(level: float, seed: int | None = None) -> InputNoise:
    return InputNoise("gaussian", level, seed)
