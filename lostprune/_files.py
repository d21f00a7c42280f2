"""Small file helpers shared by the data cache and training checkpoints."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save_atomic(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then rename: readers never see a
    half-written file, even when the process dies mid-write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def data_cache_dir() -> Path:
    """Where decoded data sets are cached: ``$LOSTPRUNE_CACHE/data`` (default ~/.cache/lostprune/data)."""
    from .ops._build import cache_root

    return cache_root() / "data"
