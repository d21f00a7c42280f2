"""Test distributions (``Shift``): the nominal test set, input noise, a corruption at a
severity; their names, one scheme everywhere (grids, the store, reports)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..robustness.corruptions import corruption_params
from ..robustness.noise import noise_like


@dataclass(frozen=True)
class Shift:
    """A test distribution: the nominal test set, optionally corrupted (pixels, before
    normalization) and/or with input noise (after normalization) averaged over ``draws``."""

    name: str
    corruption: str | None = None
    severity: int = 0
    noise: str | None = None
    level: float = 0.0
    draws: int = 1

    def __post_init__(self):
        if self.corruption is not None:
            corruption_params(self.corruption, self.severity, "cifar")  # validates name and severity
        if self.noise is not None:
            noise_like(torch.zeros(1), self.noise, self.level)  # validates kind and level
        if not isinstance(self.draws, int) or self.draws < 1:
            raise ValueError(f"Shift {self.name!r}: draws must be an integer >= 1, got {self.draws!r}")

    @property
    def random(self) -> bool:
        return self.noise is not None and self.level > 0


def nominal() -> Shift:
    return Shift("nominal")


def noise_name(kind: str, level: float) -> str:
    """Shift names, one scheme everywhere (grids, the store, reports): 'nominal',
    'noise:<kind>:<level>', 'corruption:<name>:<severity>'. The prefixes keep Gaussian input
    noise ('noise:gaussian:1') apart from the corruption of that name ('corruption:gaussian_noise:1')."""
    return f"noise:{kind}:{level:g}"


def corruption_name(corruption: str, severity: int) -> str:
    return f"corruption:{corruption}:{severity}"


def noise_shift(kind: str, level: float, draws: int = 5, name: str | None = None) -> Shift:
    """Input noise U[−level, level] ('uniform') or N(0, level²) ('gaussian'), normalized space."""
    return Shift(name or noise_name(kind, level), noise=kind, level=float(level), draws=draws)


def corruption_shift(corruption: str, severity: int, name: str | None = None) -> Shift:
    return Shift(name or corruption_name(corruption, severity), corruption=corruption, severity=severity)


def corruption_shifts(
    severities: Iterable[int] = (1, 2, 3, 4, 5), names: Iterable[str] | None = None
) -> list[Shift]:
    """Every corruption (default: all 19) at every given severity."""
    from ..robustness.corruptions import NAMES

    return [corruption_shift(n, s) for n in (names or NAMES) for s in severities]
