"""lostprune's torch ops: compiled C++/CUDA kernels with plain-PyTorch references.

Every op is a function here. The first call builds the kernels (see ``_build``); when that
is impossible the references run instead, after one warning. ``backend()`` tells which.
"""

from __future__ import annotations

from ._build import BuildState, LostpruneBuildWarning, ensure_loaded
from ._registry import all_ops
from .gather import gather_channels, gather_channels_reference
from .nonzero import nonzero_rows_cols, nonzero_rows_cols_reference
from .pool import max_pool2d, max_pool2d_reference
from .sensitivity import (
    channel_sensitivity,
    channel_sensitivity_literal,
    channel_sensitivity_reference,
    weight_sensitivity,
    weight_sensitivity_literal,
    weight_sensitivity_reference,
)
from .sparse import (
    PackedWeight,
    pack_weight,
    sparse_conv2d,
    sparse_conv2d_reference,
    sparse_linear,
    sparse_linear_reference,
)

__all__ = [
    "BuildState",
    "LostpruneBuildWarning",
    "PackedWeight",
    "all_ops",
    "backend",
    "build_info",
    "channel_sensitivity",
    "channel_sensitivity_literal",
    "channel_sensitivity_reference",
    "ensure_loaded",
    "gather_channels",
    "gather_channels_reference",
    "max_pool2d",
    "max_pool2d_reference",
    "nonzero_rows_cols",
    "nonzero_rows_cols_reference",
    "pack_weight",
    "sparse_conv2d",
    "sparse_conv2d_reference",
    "sparse_linear",
    "sparse_linear_reference",
    "weight_sensitivity",
    "weight_sensitivity_literal",
    "weight_sensitivity_reference",
]


def backend() -> str:
    """``"compiled"`` when the kernels are loaded, ``"reference"`` when PyTorch references run."""
    return ensure_loaded().backend


def build_info() -> BuildState:
    """Details of the active backend: library path, CUDA, build log, cache key, reason."""
    return ensure_loaded()
