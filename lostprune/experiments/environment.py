"""What every task of one experiment shares inside a worker process: the config, the data
(loaded once), the clean test set as pixels, the test distributions, the parent's outputs on
them (computed once, kept on disk), file locations."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..io import load_network
from .config import ConfigError, ExperimentConfig
from .store import Store

OUTPUTS_FORMAT = "lostprune.outputs/1"
SHIFTS_FORMAT = "lostprune.shift/2"  # /1 rounded corrupted pixels; CIFAR-10-C truncates


def load_splits(config: ExperimentConfig):
    """The experiment's data (``config.data``), checked: errors name the config key."""
    from .. import data

    cfg = config.data
    options = {
        "augment": cfg.augment,
        "train_size": cfg.train_size,
        "test_size": cfg.test_size,
        "seed": cfg.seed,
    }
    if cfg.s_size is not None:
        options["s_size"] = cfg.s_size
    try:
        return data.load(cfg.name, cfg.root, **options)
    except (OSError, ValueError, TypeError) as exc:
        message = str(exc)
        key = message.replace("=", ":").split(":", 1)[0]
        if key in {"root", "s_size", "train_size", "test_size"}:
            raise ConfigError(f"data.{message}") from None
        raise ConfigError(f"data ({cfg.name}{', ' + str(cfg.root) if cfg.root else ''}): {message}") from None


class Environment:
    def __init__(
        self, config: ExperimentConfig, store: Store | None = None, device: str | None = None, splits=None
    ):
        """``store`` None: the data part only (``check``), no files."""
        self.config = config
        self.store = store
        self.root = store.root if store is not None else None
        wanted = device or config.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(wanted)
        if splits is not None:
            self.splits = splits  # fills the cached property

    # ------------------------------------------------------------------ files
    def network_path(self, key: str) -> Path:
        return self.root / "networks" / (key.replace("/", "__") + ".pt")

    def checkpoint_path(self, key: str) -> Path:
        return self.root / "checkpoints" / key.replace("/", "__")

    def load(self, key: str) -> torch.nn.Module:
        return load_network(self.network_path(key), self.device)

    def store_has_network(self, key: str) -> bool:
        return self.store.network(key) is not None

    # ------------------------------------------------------------------ data
    @functools.cached_property
    def splits(self):
        return load_splits(self.config)

    def check(self) -> None:
        """Load and check the data and the test subsets now, so bad input fails before any
        training starts (each raises ConfigError naming the key)."""
        self.test_pixels  # noqa: B018 - loads the test set
        self.shift_pixels  # noqa: B018 - draws the subset of the shifted test sets
        if self.config.metrics.informative_features:
            self.feature_pixels  # noqa: B018 - draws the images of the informative-feature comparison

    @functools.cached_property
    def test_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean test set (``data.test_size`` of it when given) as ([0, 1] pixels, labels)."""
        loader = DataLoader(
            self.splits.test, batch_size=512, shuffle=False, num_workers=self.config.data.workers
        )
        xs, ys = [], []
        for x, y in loader:
            xs.append(x)
            ys.append(y)
        if not xs:
            raise ConfigError("data: the test set is empty; there is nothing to measure errors on")
        x, y = torch.cat(xs), torch.cat(ys)
        pixels = self.splits.denormalize(x) if self.splits.normalized else x
        return pixels.clamp_(0, 1), y

    @functools.cached_property
    def shift_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test images of the shifted test sets: ``eval.shift_test_size`` of the test set,
        an equal share per class (seeded by ``data.seed``), or all of it."""
        size = self.config.eval.shift_test_size
        return (
            self.test_pixels if size is None else self._subset(self.test_pixels, size, "eval.shift_test_size")
        )

    @functools.cached_property
    def feature_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``metrics.feature_images`` test images of the informative-feature comparison,
        an equal share per class (seeded by ``data.seed``; a class-sorted test set must not
        give images of one class)."""
        return self._subset(self.test_pixels, self.config.metrics.feature_images, "metrics.feature_images")

    def _subset(self, data, size: int, argument: str) -> tuple[torch.Tensor, torch.Tensor]:
        from ..data.splits import balanced_subset

        pixels, labels = data
        if self.splits.task == "classification":
            try:
                index = balanced_subset(labels, size, seed=self.config.data.seed, argument=argument)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        else:
            if size > len(labels):
                raise ConfigError(f"{argument}={size} is larger than the test set ({len(labels)} images)")
            index = torch.randperm(
                len(labels), generator=torch.Generator().manual_seed(self.config.data.seed)
            )[:size]
            index = index.sort().values
        return pixels[index], labels[index]

    @property
    def normalize(self):
        return (self.splits.mean, self.splits.std) if self.splits.normalized else None

    def nominal_shifts(self) -> list:
        from ..metrics import nominal

        return [nominal()] if self.config.test.nominal else []

    def noise_shifts(self) -> list:
        from ..metrics import noise_shift

        noise = self.config.test.noise
        if noise is None:
            return []
        return [noise_shift(noise.kind, level, noise.draws) for level in noise.levels]

    def similarity_shifts(self) -> list:
        """Nominal and input-noise test distributions (functional similarity is measured on these)."""
        return self.nominal_shifts() + self.noise_shifts()

    def corruption_shifts(self) -> list:
        from ..metrics import corruption_shift

        corruptions = self.config.test.corruptions
        if corruptions is None:
            return []
        return [corruption_shift(name, sev) for name in corruptions.names for sev in corruptions.severities]

    def similarity_groups(self) -> list[tuple[list, tuple[torch.Tensor, torch.Tensor]]]:
        """(shifts, test pixels) pairs: the nominal test set whole, noise on the shift subset."""
        groups = [(self.nominal_shifts(), self.test_pixels), (self.noise_shifts(), self.shift_pixels)]
        return [(shifts, pixels) for shifts, pixels in groups if shifts]

    def corrupted(self, shift) -> tuple[torch.Tensor, torch.Tensor]:
        """The shifted test images under one corruption, made once per experiment and kept on
        disk as uint8 pixels, truncated like CIFAR-10-C (seeded by the shift's name: every
        worker makes the same set)."""
        from .._files import save_atomic
        from ..robustness.corruptions import corrupt

        path = self.root / "shifts" / f"{shift.name.replace(':', '_')}.pt"
        pixels, labels = self.shift_pixels
        if path.is_file():
            cached = torch.load(path, map_location="cpu")
            if (
                isinstance(cached, dict)
                and cached.get("format") == SHIFTS_FORMAT
                and cached["pixels"].shape == pixels.shape
            ):
                return cached["pixels"].float().div_(255), labels
        seed = int.from_bytes(hashlib.blake2b(shift.name.encode(), digest_size=7).digest(), "little")
        # The test images are 8-bit: rounding recovers them exactly from the (de)normalized
        # floats; corrupt() on uint8 returns uint8 truncated as CIFAR-10-C's np.uint8 does.
        images = pixels.mul(255).round_().to(torch.uint8)
        corrupted = torch.cat(
            [
                corrupt(images[i : i + 256], shift.corruption, shift.severity, seed=seed + i)
                for i in range(0, len(images), 256)
            ]
        )
        save_atomic({"format": SHIFTS_FORMAT, "pixels": corrupted}, path)
        return corrupted.float().div_(255), labels

    # ------------------------------------------------------------------ the parent's outputs
    def parent_results(
        self, key: str, shifts: list, pixels
    ) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
        """(outputs, errors) of network ``key`` (a parent) on ``shifts`` of ``pixels``, per
        shift and draw: computed once per experiment and kept on disk, so the parent is not
        run again beside every network compared with it. Outputs are N × classes per draw
        (classification only)."""
        from .._files import save_atomic
        from ..metrics import evaluate_grid

        names = [(s.name, s.draws) for s in shifts]
        fingerprint = {"shifts": names, "samples": len(pixels[1]), "batch_size": self.eval_batch_size}
        path = self.root / "outputs" / f"{key.replace('/', '__')}--{_digest(names)}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu")
            except (OSError, RuntimeError, EOFError):
                cached = {}  # unreadable: computed again below
            if cached.get("format") == OUTPUTS_FORMAT and cached.get("fingerprint") == fingerprint:
                return cached["outputs"], cached["errors"]
        grid = evaluate_grid(
            {key: self.load(key)},
            shifts,
            pixels,
            normalize=self.normalize,
            batch_size=self.eval_batch_size,
            progress=False,
            keep_outputs=[key],
        )
        save_atomic(
            {
                "format": OUTPUTS_FORMAT,
                "fingerprint": fingerprint,
                "outputs": grid.outputs[key],
                "errors": grid.error_draws[key],
            },
            path,
        )
        return grid.outputs[key], grid.error_draws[key]

    @property
    def eval_batch_size(self) -> int:
        return self.config.data.batch_size * 2


def _digest(value) -> str:
    return hashlib.blake2b(repr(value).encode(), digest_size=6).hexdigest()
