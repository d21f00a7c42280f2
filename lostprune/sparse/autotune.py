"""One-time autotune of ``convert()``'s per-layer choice (dense or sparse), cached beside the
compiled kernels.

A layer's timing depends on its shape, input shape, number of nonzeros, fused epilogue,
dtype, thread count and the machine; the kernel build directory is already specific to the
machine (``-march=native`` plus a CPU tag) and to the kernel sources, so a file there keeps
timings exactly as long as they describe the kernels that would run. Entries are written
once and reused by every later ``convert()`` of a layer with the same key.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from pathlib import Path

import torch

CACHE_NAME = "sparse_autotune.json"

_lock = threading.Lock()
_memory: dict[str, dict[str, dict[str, float]]] = {}  # path -> key -> timings


def cache_path() -> Path | None:
    """The cache file beside the loaded kernels (None: no compiled kernels, nothing to tune,
    or ``LOSTPRUNE_AUTOTUNE=0``)."""
    if os.environ.get("LOSTPRUNE_AUTOTUNE", "1").strip() == "0":
        return None
    from ..ops._build import ensure_loaded

    state = ensure_loaded()
    if state.backend != "compiled" or state.library is None:
        return None
    return state.library.parent / CACHE_NAME


def layer_key(
    kind: str,
    weight_shape,
    nnz: int,
    input_shape,
    *,
    stride=(),
    padding=(),
    dilation=(),
    groups: int = 1,
    relu: bool = False,
    residual: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> str:
    """A stable string naming everything the layer's timing depends on."""
    padding = padding if isinstance(padding, str) else list(padding)  # 'same' / 'valid' stay strings
    return json.dumps(
        [
            kind,
            list(weight_shape),
            int(nnz),
            list(input_shape),
            list(stride),
            padding,
            list(dilation),
            int(groups),
            bool(relu),
            bool(residual),
            str(dtype),
            device,
            torch.get_num_threads(),
        ],
        separators=(",", ":"),
    )


def _read(path: Path) -> dict[str, dict[str, float]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lookup(key: str) -> tuple[float, float] | None:
    """(dense ms, sparse ms) recorded for ``key``, or None."""
    path = cache_path()
    if path is None:
        return None
    with _lock:
        entries = _memory.get(str(path))
        if entries is None:
            entries = _memory[str(path)] = _read(path)
        entry = entries.get(key)
    if not isinstance(entry, dict) or "dense_ms" not in entry or "sparse_ms" not in entry:
        return None
    return float(entry["dense_ms"]), float(entry["sparse_ms"])


def record(key: str, dense_ms: float, sparse_ms: float) -> None:
    """Store one layer's timings (merged into the file under a lock: several processes may
    convert at once)."""
    path = cache_path()
    if path is None:
        return
    with _lock, open(path.with_suffix(".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            entries = _read(path)
            entries[key] = {"dense_ms": dense_ms, "sparse_ms": sparse_ms}
            scratch = path.with_suffix(f".tmp{os.getpid()}")
            scratch.write_text(json.dumps(entries, indent=0, sort_keys=True))
            os.replace(scratch, path)
            _memory[str(path)] = entries
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)


def clear() -> None:
    """Forget every cached timing (the file and this process's copy)."""
    path = cache_path()
    with _lock:
        _memory.clear()
        if path is not None:
            path.unlink(missing_ok=True)
