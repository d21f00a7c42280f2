"""What every task of one experiment shares inside a worker process: the config, the data
(loaded once), the clean test set as pixels, the test distributions, file locations."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..io import load_network
from .config import ExperimentConfig
from .store import Store


def noise_name(kind: str, level: float) -> str:
    """Distribution names in the store: 'nominal', 'noise:<kind>:<level>', 'corruption:<name>:<severity>'."""
    return f"noise:{kind}:{level:g}"


def corruption_name(name: str, severity: int) -> str:
    return f"corruption:{name}:{severity}"


class Environment:
    def __init__(self, config: ExperimentConfig, store: Store, device: str | None = None):
        self.config = config
        self.store = store
        self.root = store.root
        wanted = device or config.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(wanted)

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
        from .. import data

        cfg = self.config.data
        options = {"augment": cfg.augment}
        if cfg.name != "digits":
            options["s_size"] = cfg.s_size
        return data.load(cfg.name, cfg.root, **options)

    @functools.cached_property
    def test_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean test set as ([0, 1] pixels, labels), truncated to data.test_size."""
        loader = DataLoader(self.splits.test, batch_size=512, shuffle=False, num_workers=self.config.data.workers)
        xs, ys, seen = [], [], 0
        limit = self.config.data.test_size
        for x, y in loader:
            xs.append(x)
            ys.append(y)
            seen += len(x)
            if limit is not None and seen >= limit:
                break
        x, y = torch.cat(xs), torch.cat(ys)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        pixels = self.splits.denormalize(x) if self.splits.normalized else x
        return pixels.clamp_(0, 1), y

    @property
    def normalize(self):
        return (self.splits.mean, self.splits.std) if self.splits.normalized else None

    def similarity_shifts(self) -> list:
        """Nominal and input-noise test distributions (functional similarity is measured on these)."""
        from ..metrics import noise_shift, nominal

        shifts = [nominal()] if self.config.test.nominal else []
        noise = self.config.test.noise
        if noise is not None:
            shifts += [noise_shift(noise.kind, level, noise.draws, name=noise_name(noise.kind, level))
                       for level in noise.levels]
        return shifts

    def corruption_shifts(self) -> list:
        from ..metrics import corruption_shift

        corruptions = self.config.test.corruptions
        if corruptions is None:
            return []
        return [corruption_shift(name, sev, name=corruption_name(name, sev))
                for name in corruptions.names for sev in corruptions.severities]

    def corrupted(self, shift) -> tuple[torch.Tensor, torch.Tensor]:
        """The test set under one corruption, made once per experiment and kept on disk as
        uint8 pixels (seeded by the shift's name: every worker makes the same set)."""
        from .._files import save_atomic
        from ..robustness.corruptions import corrupt

        path = self.root / "shifts" / f"{shift.name.replace(':', '_')}.pt"
        pixels, labels = self.test_pixels
        if path.is_file():
            cached = torch.load(path, map_location="cpu")
            if cached.shape == pixels.shape:
                return cached.float().div_(255), labels
        seed = int.from_bytes(hashlib.blake2b(shift.name.encode(), digest_size=7).digest(), "little")
        parts = [corrupt(pixels[i:i + 256], shift.corruption, shift.severity, seed=seed + i)
                 for i in range(0, len(pixels), 256)]
        corrupted = torch.cat(parts).clamp(0, 1).mul(255).round().to(torch.uint8)
        save_atomic(corrupted, path)
        return corrupted.float().div_(255), labels

    def shift_names(self) -> list[str]:
        return [s.name for s in self.similarity_shifts() + self.corruption_shifts()]
