"""IEEE float32 for the PyTorch computations an op's result depends on.

On Ampere and later GPUs torch lets cuDNN use TF32 (a 10-bit mantissa, ~1e-3 relative error)
for float32 convolutions by default, and cuBLAS for matmuls when asked
(``torch.set_float32_matmul_precision("high")``). The references of the ops (and the CUDA
glue, through ``csrc/common/exact_fp32.h``) compute in IEEE float32 instead, so every backend
gives the same scores. The setting is process-wide, as with ``torch.backends.cudnn.flags()``.
"""

from __future__ import annotations

import contextlib

import torch

# torch >= 2.9 keeps one precision per backend and operation; mixing it with the older
# ``allow_tf32`` flags makes torch refuse to read those, so the newer API is used where present.
_PER_OP = hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision")


def _settings() -> tuple:
    if _PER_OP:
        return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def _apply(settings: tuple) -> None:
    if _PER_OP:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = settings
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = settings


@contextlib.contextmanager
def exact_fp32(enabled: bool = True):
    """No TF32 in cuDNN convolutions and CUDA matmuls inside the block; the caller's settings
    are restored afterwards, also on error. ``enabled=False`` changes nothing (for callers
    whose tensors are not on a CUDA device)."""
    if not enabled:
        yield
        return
    saved = _settings()
    _apply(("ieee", "ieee") if _PER_OP else (False, False))
    try:
        yield
    finally:
        _apply(saved)
