"""Structured channel slicing (docs/methods.md §Slicing): gather kept rows and/or columns of many tensors
in one call. Wrapper, plain-PyTorch reference, fake and autograd kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._build import use_kernel

IndexLike = Tensor | Sequence[int] | None

OP = "lostprune.gather_channels"


def _as_index(index: IndexLike, tensor: Tensor, name: str) -> Tensor | None:
    if index is None:
        return None
    if not isinstance(index, Tensor):
        index = torch.as_tensor(list(index), dtype=torch.long)
    if index.dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
        index = index.long()
    if index.dtype == torch.bool:
        raise TypeError(
            f"{OP}: {name} must hold kept indices, not a boolean mask (use mask.nonzero().flatten())"
        )
    return index.to(tensor.device)


def _normalize(tensors: Sequence[Tensor], indices, name: str) -> list[Tensor | None]:
    n = len(tensors)
    if indices is None:
        return [None] * n
    indices = list(indices)
    if len(indices) != n:
        raise ValueError(
            f"{OP}: {name} has {len(indices)} entries but tensors has {n}; "
            "pass one index set (or None) per tensor"
        )
    return [_as_index(idx, t, f"{name}[{i}]") for i, (idx, t) in enumerate(zip(indices, tensors))]


def _check_index(index: Tensor | None, tensor: Tensor, t: int, dim: int) -> None:
    """The reference's checks; the compiled kernels make the same ones in C++."""
    if index is None:
        return
    which = "rows" if dim == 0 else "cols"
    if index.dtype != torch.long:
        raise TypeError(f"{OP}: {which}[{t}] must be an int64 tensor of kept indices, got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"{OP}: {which}[{t}] must be 1-D, got shape {tuple(index.shape)}")
    if index.numel() == 0:
        raise ValueError(
            f"{OP}: {which}[{t}] is empty; keep at least one index along dim {dim} of tensors[{t}]"
        )
    if tensor.dim() <= dim:
        raise ValueError(f"{OP}: {which}[{t}] is given but tensors[{t}] has only {tensor.dim()} dimension(s)")
    size = tensor.shape[dim]
    bad = ((index < 0) | (index >= size)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise IndexError(
            f"{OP}: {which}[{t}][{i}] = {int(index[i])} is out of range for dim {dim} "
            f"of tensors[{t}] (allowed 0..{size - 1})"
        )


def gather_channels_reference(
    tensors: Sequence[Tensor], rows: Sequence[Tensor | None], cols: Sequence[Tensor | None]
) -> list[Tensor]:
    """Plain PyTorch: ``t.index_select(0, rows).index_select(1, cols)`` per tensor."""
    out = []
    for t, (tensor, row, col) in enumerate(zip(tensors, rows, cols)):
        _check_index(row, tensor, t, 0)
        _check_index(col, tensor, t, 1)
        if tensor.dim() == 0:
            raise ValueError(f"{OP}: tensors[{t}] is a scalar; nothing to slice")
        result = tensor if row is None else tensor.index_select(0, row)
        result = result if col is None else result.index_select(1, col)
        if result is tensor:  # nothing selected: still return a new tensor, like the kernel
            result = tensor.clone(memory_format=torch.contiguous_format)
        out.append(result.contiguous())
    return out


def gather_channels(
    tensors: Sequence[Tensor],
    rows: Sequence[IndexLike] | None = None,
    cols: Sequence[IndexLike] | None = None,
) -> list[Tensor]:
    """Gather, for each tensor, the kept indices along dim 0 (``rows``) and dim 1 (``cols``).

    ``rows[i]`` / ``cols[i]`` are 1-D integer index sets (tensor or list) or ``None`` to
    keep the whole dimension. Every output is a new contiguous tensor. Conv weights
    ``[Cout, Cin/g, kh, kw]`` take output channels as rows and input channels as cols;
    BN parameters and biases take rows only.
    """
    tensors = list(tensors)
    if not tensors:
        return []
    rows_ = _normalize(tensors, rows, "rows")
    cols_ = _normalize(tensors, cols, "cols")
    if use_kernel("gather_channels", tensors[0].device):
        return list(torch.ops.lostprune.gather_channels(tensors, rows_, cols_))
    return gather_channels_reference(tensors, rows_, cols_)


# --------------------------------------------------------------------------- registrations
OPS = {"gather_channels": gather_channels_reference}


def _fake(tensors, rows, cols):
    out = []
    for tensor, row, col in zip(tensors, rows, cols):
        shape = list(tensor.shape)
        if row is not None:
            shape[0] = row.shape[0]
        if col is not None:
            shape[1] = col.shape[0]
        out.append(tensor.new_empty(shape))
    return out


def _setup_context(ctx, inputs, output):
    tensors, rows, cols = inputs
    ctx.shapes = [t.shape for t in tensors]
    ctx.save_for_backward(*[i for i in list(rows) + list(cols) if i is not None])
    ctx.has_row = [r is not None for r in rows]
    ctx.has_col = [c is not None for c in cols]


def _backward(ctx, grads):
    saved = iter(ctx.saved_tensors)
    rows = [next(saved) if has else None for has in ctx.has_row]
    cols = [next(saved) if has else None for has in ctx.has_col]
    grad_inputs = []
    for shape, row, col, grad in zip(ctx.shapes, rows, cols, grads):
        if grad is None:
            grad_inputs.append(None)
            continue
        full = grad.new_zeros(shape)
        if col is not None:
            full_cols = grad.new_zeros((grad.shape[0], *shape[1:]))
            full_cols.index_add_(1, col, grad)
            grad = full_cols
        full.index_add_(0, row, grad) if row is not None else full.add_(grad)
        grad_inputs.append(full)

    # torch.library flattens a list input into its tensors only when it holds no None.
    def no_grad(indices):
        return None if any(i is None for i in indices) else [None] * len(indices)

    return grad_inputs, no_grad(rows), no_grad(cols)


def register() -> None:
    torch.library.register_fake("lostprune::gather_channels")(_fake)
    torch.library.register_autograd("lostprune::gather_channels", _backward, setup_context=_setup_context)
