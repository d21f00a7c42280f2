"""Shift-aware (robust) training augmentation (docs/methods.md §Guidelines, 2–4).

``ShiftAugmentation`` is a ``batch_transform`` for ``lostprune.train.train`` (and, through
``train_options``, for ``prune_retrain``): every sample of a batch independently draws

- one corruption from ``corruptions`` and a severity from ``severities`` (0 = left clean),
  applied to its pixels (inputs are denormalized, corrupted, normalized again), and
- one input-noise level from ``noise_levels`` (0 = none), U[−ε, ε] or N(0, ε²) added in
  normalized space like the test-time noise of docs/methods.md §Noise shifts.

Samples that drew the same (corruption, severity) are corrupted together in one batched
call, on the batch's device. The per-sample draws come from a CPU generator, so the same
seed makes the same choices on a CPU and a GPU. Targets are left alone: for segmentation,
train on photometric corruptions (noise, blur, weather, brightness/contrast), not on the
ones that move pixels (elastic_transform, zoom_blur, glass_blur).

Seeding: with ``seed=None`` every batch draws its randomness from torch's global generator,
which ``train`` seeds per epoch inside a forked RNG — so a training run with this transform
is reproducible from its ``TrainConfig.seed`` and retraces itself when resumed from a
checkpoint. With an integer ``seed`` the transform owns a generator and produces the same
sequence of batches from that seed wherever it is called.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..robustness.corruptions import NAMES, corrupt, table_for
from ..robustness.noise import KINDS, noise_like
from . import distributed

# Hendrycks & Dietterich's four extra corruptions, kept out of the 15 of the CIFAR-10-C /
# ImageNet-C benchmark: train on these, and the 15 remain held-out test shifts.
DEFAULT_TRAINING_CORRUPTIONS = NAMES[15:]
DEFAULT_SEVERITIES = (0, 1, 2, 3, 4, 5)
DEFAULT_NOISE_LEVELS = (0.0, 0.1, 0.2, 0.3)
MAX_SEVERITY = 5
_SEED_SPACE = 2**62


@dataclass(frozen=True)
class ShiftDraw:
    """What each sample of one batch drew: ``corruption[i]`` indexes the transform's
    corruption list (meaningless where ``severity[i]`` is 0), ``level[i]`` is its noise level;
    ``seed`` seeds the corruptions' and the noise's own randomness."""

    corruption: Tensor  # int64 (N,), CPU
    severity: Tensor  # int64 (N,), CPU
    level: Tensor  # float32 (N,), CPU
    seed: int


class ShiftAugmentation:
    """A per-sample mix of corruptions × severities and input noise, for training batches.

    Args:
        corruptions: names of the training corruptions (``lostprune.robustness.CORRUPTIONS``);
            empty for noise only. Each sample draws one uniformly (repeat a name to draw it
            more often).
        severities: the severities a sample draws from uniformly, each in 0..5 (0 = clean).
        noise: ``"gaussian"``, ``"uniform"`` or None (no noise).
        noise_levels: the noise levels ε a sample draws from uniformly (0 = no noise).
        mean, std: the normalization of the inputs (per channel), to corrupt pixels in
            [0, 1]; None when the inputs are [0, 1] pixels already.
        seed: None (use torch's global generator, as seeded by ``train`` per epoch) or an
            integer (own generator).
        table: corruption parameters, ``"cifar"`` or ``"imagenet"`` (default by image size).
    """

    def __init__(
        self,
        corruptions: Sequence[str] = DEFAULT_TRAINING_CORRUPTIONS,
        severities: Sequence[int] = DEFAULT_SEVERITIES,
        noise: str | None = "gaussian",
        noise_levels: Sequence[float] = DEFAULT_NOISE_LEVELS,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int | None = None,
        table: str | None = None,
    ):
        self.corruptions = tuple(_check_corruptions(corruptions))
        self.severities = tuple(_check_severities(severities))
        if noise is not None and noise not in KINDS:
            raise ValueError(f"noise must be one of {', '.join(KINDS)} or None, got {noise!r}")
        self.noise = noise
        self.noise_levels = tuple(_check_levels(noise_levels)) if noise is not None else (0.0,)
        if (mean is None) != (std is None):
            raise ValueError("mean and std: give both (normalized inputs) or neither ([0, 1] pixels)")
        if std is not None and any(not s > 0 for s in std):
            raise ValueError(f"std must be positive per channel, got {tuple(std)}")
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        if table is not None and table not in ("cifar", "imagenet"):
            raise ValueError(f"table must be 'cifar', 'imagenet' or None, got {table!r}")
        self.table = table
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.seed = seed
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)
        if not self.corrupts and not self.adds_noise:
            raise ValueError(
                "ShiftAugmentation augments nothing: give corruptions with a severity > 0, "
                "or noise with a level > 0"
            )

    # ------------------------------------------------------------------ properties
    @property
    def corrupts(self) -> bool:
        return bool(self.corruptions) and max(self.severities) > 0

    @property
    def adds_noise(self) -> bool:
        return self.noise is not None and max(self.noise_levels) > 0

    def __repr__(self) -> str:
        noise = f"{self.noise} {list(self.noise_levels)}" if self.adds_noise else "none"
        return (
            f"ShiftAugmentation(corruptions={list(self.corruptions)}, severities={list(self.severities)}, "
            f"noise={noise}, seed={self.seed})"
        )

    def with_seed(self, seed: int) -> ShiftAugmentation:
        """The same mix drawing from its own generator, seeded by ``seed``."""
        other = copy.copy(self)
        other.seed, other._generator = seed, torch.Generator().manual_seed(seed)
        return other

    # ------------------------------------------------------------------ draws
    def draw(self, n: int) -> ShiftDraw:
        """The next batch's per-sample choices (advances the generator in use)."""
        if self._generator is not None:
            seed = int(torch.randint(0, _SEED_SPACE, (1,), generator=self._generator))
        else:
            seed = int(torch.randint(0, _SEED_SPACE, (1,)))
            # Under torchrun every process seeds its epoch alike: give each its own draws.
            seed = (seed + distributed.rank() * 0x9E3779B97F4A7C15) % _SEED_SPACE
        gen = torch.Generator().manual_seed(seed)
        corruption = torch.randint(max(1, len(self.corruptions)), (n,), generator=gen)
        severity = torch.tensor(self.severities)[torch.randint(len(self.severities), (n,), generator=gen)]
        if not self.corruptions:
            severity = torch.zeros(n, dtype=torch.long)
        level = torch.tensor(self.noise_levels, dtype=torch.float32)[
            torch.randint(len(self.noise_levels), (n,), generator=gen)
        ]
        return ShiftDraw(corruption, severity, level, seed)

    def __call__(self, inputs: Tensor) -> Tensor:
        _check_inputs(inputs)
        return self.apply(inputs, self.draw(inputs.shape[0]))

    def apply(self, inputs: Tensor, draw: ShiftDraw) -> Tensor:
        """Apply the given draws to a batch (N×C×H×W, normalized unless mean/std are None)."""
        _check_inputs(inputs)
        if draw.severity.shape != (inputs.shape[0],):
            raise ValueError(f"draw is for {draw.severity.shape[0]} samples, the batch has {inputs.shape[0]}")
        out = inputs
        if self.corrupts and bool((draw.severity > 0).any()):
            out = self._corrupt(inputs, draw)
        if self.adds_noise and bool((draw.level > 0).any()):
            gen = torch.Generator(device=inputs.device).manual_seed(draw.seed ^ 0x5DEECE66D)
            unit = noise_like(out, self.noise, 1.0, gen)
            out = out + unit * draw.level.to(device=out.device, dtype=out.dtype).view(-1, 1, 1, 1)
        return out

    def _corrupt(self, inputs: Tensor, draw: ShiftDraw) -> Tensor:
        pixels = self._to_pixels(inputs)
        table = self.table or table_for(*inputs.shape[-2:])
        out = inputs.clone()
        # One batched call per (corruption, severity) that some sample drew.
        code = draw.corruption * (MAX_SEVERITY + 1) + draw.severity
        for value in torch.unique(code[draw.severity > 0]).tolist():
            rows = torch.nonzero(code == value).flatten().to(inputs.device)
            name, severity = self.corruptions[value // (MAX_SEVERITY + 1)], value % (MAX_SEVERITY + 1)
            corrupted = corrupt(
                pixels.index_select(0, rows), name, severity, seed=draw.seed + value, table=table
            )
            out.index_copy_(0, rows, self._to_inputs(corrupted).to(out.dtype))
        return out

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)
        if mean.shape[1] != like.shape[1]:
            raise ValueError(f"mean/std have {mean.shape[1]} channels, the inputs {like.shape[1]}")
        return mean, std

    def _to_pixels(self, inputs: Tensor) -> Tensor:
        x = inputs.float()
        if self.mean is not None:
            mean, std = self._stats(x)
            x = x * std + mean
        # Rounding (and zero padding of random crops) may leave values a hair outside [0, 1].
        return x.clamp(0, 1)

    def _to_inputs(self, pixels: Tensor) -> Tensor:
        if self.mean is None:
            return pixels
        mean, std = self._stats(pixels)
        return (pixels - mean) / std


class ShiftedSample(Dataset):
    """S drawn from the shift-aware training distribution, for data-informed methods of a
    robust arm: every sample of ``data`` once as it is (``clean=True``) and ``copies`` times
    shifted by ``augment`` — so SiPP and PFP score the channels and weights the network
    uses on the inputs it was (re)trained on, not only on clean ones.

    Map-style and deterministic: shifted samples are made in chunks of ``chunk`` consecutive
    samples, each chunk from its own seed, so any pass over it (PFP iterates S more than
    once) sees the same images; one chunk is kept at a time."""

    def __init__(
        self,
        data: Dataset,
        augment: ShiftAugmentation,
        *,
        copies: int = 1,
        clean: bool = True,
        seed: int = 0,
        chunk: int = 64,
    ):
        if not isinstance(augment, ShiftAugmentation):
            raise TypeError(f"augment must be a ShiftAugmentation, got {type(augment).__name__}")
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise ValueError(f"copies must be an integer >= 1, got {copies!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
        if len(data) == 0:
            raise ValueError("data is an empty dataset")
        self.data, self.augment, self.copies, self.clean = data, augment, copies, clean
        self.seed, self.chunk = int(seed), chunk
        self._cached: tuple[int, Tensor, list] | None = None

    def __len__(self) -> int:
        return len(self.data) * (self.copies + int(self.clean))

    def __getitem__(self, index: int):
        n = len(self.data)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        if self.clean:
            if index < n:
                return self.data[index]
            index -= n
        copy, i = divmod(index, n)
        start = i - i % self.chunk
        key = copy * n + start
        if self._cached is None or self._cached[0] != key:
            items = [self.data[j] for j in range(start, min(start + self.chunk, n))]
            x = torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])
            # own draws per (copy, chunk): reproducible whatever order the chunks are read in
            augment = self.augment.with_seed(self.seed * 1_000_003 + key)
            self._cached = (key, augment(x), items)
        _, shifted, items = self._cached
        item = items[i - start]
        if isinstance(item, (tuple, list)):
            return (shifted[i - start], *item[1:])
        return shifted[i - start]


def _check_inputs(inputs: Tensor) -> None:
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.dim() != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a floating-point N×C×H×W batch, got {shape}")


def _check_corruptions(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        raise TypeError(f"corruptions must be a list of names, got the string {names!r}")
    names = list(names)
    for i, name in enumerate(names):
        if name not in NAMES:
            raise ValueError(f"corruptions[{i}] must be one of {', '.join(NAMES)}; got {name!r}")
    return names


def _check_each(values: Sequence, name: str, valid, allowed: str) -> list:
    values = list(values)
    if not values:
        raise ValueError(f"{name} must list at least one value: {allowed}")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not valid(value):
            raise ValueError(f"{name}[{i}] must be {allowed}, got {value!r}")
    return values


def _check_severities(severities: Sequence[int]) -> list[int]:
    return _check_each(
        severities,
        "severities",
        lambda s: isinstance(s, int) and 0 <= s <= MAX_SEVERITY,
        "an integer in 0..5 (0 = clean)",
    )


def _check_levels(levels: Sequence[float]) -> list[float]:
    levels = _check_each(
        levels,
        "noise_levels",
        lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= 0,
        "a finite number >= 0 (0 = no noise)",
    )
    return [float(level) for level in levels]
