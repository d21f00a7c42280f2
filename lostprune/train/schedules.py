"""Schedules: the learning rate over training, and the keep ratios of prune–retrain cycles.

``LRSchedule`` is a pure function of the (fractional) epoch, so a resumed run continues on
exactly the same curve and learning-rate rewinding (docs/methods.md §Prune–retrain) is simply "start
again at 0". Keep-ratio schedules are concatenations of geometric and linear segments
(docs/methods.md §Prune–retrain).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

KINDS = ("multistep", "cosine", "constant", "onecycle")


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up from 0 to ``lr`` over ``warmup_epochs``, then

    - ``multistep``: ``lr * gamma ** (number of milestones passed)``; milestones in epochs
      (default: the paper's 91 and 136 of 182, scaled to ``epochs``);
    - ``cosine``: from ``lr`` down to ``min_lr`` over the epochs after warm-up;
    - ``constant``: ``lr``;
    - ``onecycle`` (Smith & Topin's 1cycle, as ``torch.optim.lr_scheduler.OneCycleLR`` with
      cosine annealing): from ``lr / div_factor`` up to ``lr`` over the first ``pct_start`` of
      the epochs, then down to ``lr / div_factor / final_div_factor``; it is its own warm-up.
    """

    lr: float = 0.1
    epochs: float = 30
    kind: str = "multistep"
    warmup_epochs: float = 0.0
    milestones: tuple[float, ...] | None = None
    gamma: float = 0.1
    min_lr: float = 0.0
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"schedule must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs!r}"
            )
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr!r}")
        if not 0 < self.pct_start < 1:
            raise ValueError(f"pct_start must be in (0, 1), got {self.pct_start!r}")
        for name in ("div_factor", "final_div_factor"):
            if not (getattr(self, name) >= 1 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a finite number >= 1, got {getattr(self, name)!r}")
        if self.kind == "onecycle" and self.warmup_epochs:
            raise ValueError(
                "warmup_epochs must be 0 with the onecycle schedule (its rise over pct_start "
                f"is the warm-up), got {self.warmup_epochs!r}"
            )
        if self.milestones is not None:
            ms = tuple(float(m) for m in self.milestones)
            if any(b <= a for a, b in itertools.pairwise(ms)) or any(m <= 0 for m in ms):
                raise ValueError(f"milestones must be positive and increasing, got {self.milestones!r}")
            object.__setattr__(self, "milestones", ms)

    @property
    def resolved_milestones(self) -> tuple[float, ...]:
        if self.milestones is not None:
            return self.milestones
        return (self.epochs * 91 / 182, self.epochs * 136 / 182)

    def lr_at(self, epoch: float) -> float:
        """Learning rate at fractional ``epoch``. The training loop asks at the middle of each
        step (epoch + (step + 0.5) / steps per epoch): warm-up never yields 0 and a milestone
        at epoch m takes effect with the first step of epoch m."""
        if epoch < self.warmup_epochs:
            return self.lr * max(epoch, 0.0) / self.warmup_epochs
        if self.kind == "constant":
            return self.lr
        if self.kind == "multistep":
            passed = sum(epoch >= m for m in self.resolved_milestones)
            return self.lr * self.gamma**passed
        if self.kind == "onecycle":
            start = self.lr / self.div_factor
            peak = self.pct_start * self.epochs
            if epoch < peak:
                return _cosine(start, self.lr, max(epoch, 0.0) / peak)
            return _cosine(
                self.lr, start / self.final_div_factor, min(1.0, (epoch - peak) / (self.epochs - peak))
            )
        span = self.epochs - self.warmup_epochs
        return _cosine(self.lr, self.min_lr, min(1.0, (epoch - self.warmup_epochs) / span))

    def scaled(self, epochs: float) -> LRSchedule:
        """The same curve compressed (or stretched) to ``epochs``: milestones and warm-up scale along."""
        factor = epochs / self.epochs
        milestones = None if self.milestones is None else tuple(m * factor for m in self.milestones)
        return replace(self, epochs=epochs, warmup_epochs=self.warmup_epochs * factor, milestones=milestones)


def _cosine(start: float, stop: float, progress: float) -> float:
    """Half a cosine from ``start`` (progress 0) to ``stop`` (progress 1)."""
    return stop + (start - stop) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class _Segment:
    start: float
    stop: float
    num: int

    def points(self) -> list[float]:
        _check_segment(self)
        if self.num == 1:
            return [self.start]
        return [self._at(i / (self.num - 1)) for i in range(self.num - 1)] + [self.stop]

    def _at(self, fraction: float) -> float:
        raise NotImplementedError


class Geometric(_Segment):
    """``num`` keep ratios from ``start`` to ``stop`` (both included), evenly spaced in log scale."""

    def _at(self, fraction: float) -> float:
        return self.start * (self.stop / self.start) ** fraction


class Linear(_Segment):
    """``num`` keep ratios from ``start`` to ``stop`` (both included), evenly spaced."""

    def _at(self, fraction: float) -> float:
        return self.start + (self.stop - self.start) * fraction


def _check_segment(segment) -> None:
    name = type(segment).__name__
    for field in ("start", "stop"):
        value = getattr(segment, field)
        if not 0 < value <= 1:
            raise ValueError(f"{name}.{field} is a keep ratio and must be in (0, 1], got {value!r}")
    if not isinstance(segment.num, int) or segment.num < 1:
        raise ValueError(f"{name}.num must be a positive integer, got {segment.num!r}")


def keep_ratio_schedule(*segments: Geometric | Linear | Iterable[Geometric | Linear]) -> list[float]:
    """Concatenate segments into one list of keep ratios; a segment that starts where the
    previous one stopped does not repeat that point.

    >>> keep_ratio_schedule(Geometric(0.8, 0.2, 3), Linear(0.2, 0.1, 3))
    [0.8, 0.4, 0.2, 0.15, 0.1]
    """
    flat = []
    for segment in segments:
        flat.extend(segment if isinstance(segment, (list, tuple)) else [segment])
    if not flat:
        raise ValueError("keep_ratio_schedule needs at least one segment")
    ratios: list[float] = []
    for segment in flat:
        if not isinstance(segment, _Segment):
            raise TypeError(f"segments must be Geometric or Linear, got {type(segment).__name__}")
        points = [round(p, 12) for p in segment.points()]
        if ratios and math.isclose(points[0], ratios[-1], rel_tol=1e-9):
            points = points[1:]
        ratios.extend(points)
    return ratios


def paper_keep_ratios(num: int = 23) -> list[float]:
    """docs/methods.md §Prune–retrain: geometric from 0.85 to 0.15, then linear to 0.02; ``num``
    networks in all.

    The split between the two segments is not given by the paper; this picks the one whose
    step size changes least at 0.15 (for 23 networks: 16 geometric, then 7 linear)."""
    if not isinstance(num, int) or num < 3:
        raise ValueError(f"num must be an integer >= 3, got {num!r}")

    def mismatch(n_geo: int) -> float:
        geo = Geometric(0.85, 0.15, n_geo).points()
        lin = Linear(0.15, 0.02, num - n_geo + 1).points()
        return abs((geo[-2] - geo[-1]) - (lin[0] - lin[1]))

    n_geo = min(range(2, num), key=mismatch)
    return keep_ratio_schedule(Geometric(0.85, 0.15, n_geo), Linear(0.15, 0.02, num - n_geo + 1))
