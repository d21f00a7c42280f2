"""Live rows and columns (docs/methods.md §Slicing): which rows (dim 0, output channels) and
columns (dim 1, input channels) of a weight or mask hold a nonzero, what slicing removes and
what the dependency graph reads off unstructured masks. The compiled kernels read each element
once, in one branch-free streaming pass (it vectorizes) without a temporary of the tensor's
size. Wrapper, plain-PyTorch reference and fake kernel; the outputs are bool and carry no
gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from ._build import kernels_loaded, use_kernel

OP = "lostprune.nonzero_rows_cols"

# What the compiled kernels take (as words of their size; complex as its real view); the
# reference takes any dtype ``!= 0`` works on.
KERNEL_DTYPES = (
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
)

# Elements up to which a full-size temporary (``|t|``) is cheap on CPU: the allocator reuses
# cached memory; past a few MB each temporary is fresh pages, and faulting them in costs more
# than the pass it saves (measured: |t| then max 2.6x slower than max and min at 16M elements).
CHEAP_TEMPORARY_NUMEL = 1 << 22


def _check(t: Tensor, kernel: bool = True) -> None:
    """The kernels' checks, with the same messages (``kernel=False``: the reference's, any dtype)."""
    if not isinstance(t, Tensor) or t.dim() < 2:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{OP}: t must have at least 2 dimensions (rows, columns, ...), got shape {shape}")
    if kernel and t.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"{OP}: t must be bool, an integer type up to int64, float16, bfloat16, float32, float64 or "
            f"complex, got {t.dtype}"
        )


def nonzero_rows_cols_reference(t: Tensor) -> tuple[Tensor, Tensor]:
    """Plain PyTorch: bool [d0] (rows holding a nonzero), bool [d1] (columns holding one), for
    any dtype. Floating point up to ``CHEAP_TEMPORARY_NUMEL`` elements: max reductions of
    ``|t|`` (on CPU a ``t != 0`` pass is slower, and so are max and min of ``t`` itself); NaN
    counts as nonzero, as with ``!= 0``. Integers (``|-128|`` overflows in int8) and larger
    tensors (no temporary): max and min. Other dtypes and empty tensors: ``t != 0``."""
    _check(t, kernel=False)
    t = t.detach()
    if (
        t.numel() == 0
        or t.dtype in (torch.bool, torch.complex64, torch.complex128)
        or t.dtype not in KERNEL_DTYPES
    ):
        nonzero = t != 0
        return nonzero.flatten(1).any(1), nonzero.transpose(0, 1).flatten(1).any(1)
    if t.is_floating_point() and t.numel() <= CHEAP_TEMPORARY_NUMEL:
        magnitude = t.abs()
        return magnitude.flatten(1).amax(1) != 0, magnitude.amax(0).reshape(t.shape[1], -1).amax(1) != 0
    flat = t.flatten(1)
    rows = (flat.amax(1) != 0) | (flat.amin(1) != 0)
    cols = ((t.amax(0) != 0) | (t.amin(0) != 0)).reshape(t.shape[1], -1).any(1)
    return rows, cols


def nonzero_rows_cols(t: Tensor, *, build: bool = True) -> tuple[Tensor, Tensor]:
    """Bool [d0]: rows of ``t`` (at least 2-D: a conv or linear weight, a mask) holding a
    nonzero; bool [d1]: columns holding one. On ``t``'s device. NaN and infinities count as
    nonzero, -0.0 does not. The compiled kernel for ``KERNEL_DTYPES`` on CPU and CUDA, else
    the reference. ``build=False``: the kernel only if the kernels are loaded already (this
    call never starts a build); the answer is the same either way."""
    _check(t, kernel=False)
    if (
        t.dtype in KERNEL_DTYPES
        and t.device.type in ("cpu", "cuda")
        and (build or kernels_loaded())
        and use_kernel("nonzero_rows_cols", t.device)
    ):
        rows, cols = torch.ops.lostprune.nonzero_rows_cols(t.detach())
        return rows, cols
    return nonzero_rows_cols_reference(t)


# --------------------------------------------------------------------------- registrations
OPS = {"nonzero_rows_cols": nonzero_rows_cols_reference}


def _fake(t):
    _check(t)
    flags = {"dtype": torch.bool, "device": t.device}
    return torch.empty(t.shape[0], **flags), torch.empty(t.shape[1], **flags)


def register() -> None:
    torch.library.register_fake("lostprune::nonzero_rows_cols")(_fake)
