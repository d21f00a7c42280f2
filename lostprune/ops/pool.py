"""Max-pooling of NCHW planes: ``F.max_pool2d`` (floor mode, no dilation) with a vectorized CPU
kernel, because torch's CPU max-pool is scalar in the NCHW layout (resnet18's stem pool:
about 6 ms at batch 1, one thread, against 0.2 ms here; benchmarks/results/pool.md). Same values
as torch: padding reads as -inf and NaN propagates. Wrapper, plain-PyTorch reference, fake
and autograd kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._build import use_kernel
from ._conv_args import IntPair, conv_out_size, pair

OP = "lostprune.max_pool2d"


def _check(
    x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[int, int]:
    """The kernels' checks, with the same messages (the reference makes them too); the output's
    height and width."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{OP}: x must have 4 dimensions [N, C, H, W], got shape {shape}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{OP}: x must be float32 or float64, got {x.dtype}")
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(
            f"{OP}: padding must be at most half the kernel size, got padding {list(padding)} "
            f"for kernel_size {list(kernel)}"
        )
    out = [conv_out_size(n, k, s, p, 1) for n, k, s, p in zip(x.shape[-2:], kernel, stride, padding)]
    if min(out) < 1:
        raise ValueError(
            f"{OP}: the output would be {out[0]} x {out[1]} for an input of {x.shape[-2]} x {x.shape[-1]} "
            f"(kernel_size {list(kernel)}, stride {list(stride)}, padding {list(padding)}); "
            "it must be at least 1 x 1"
        )
    return out[0], out[1]


def max_pool2d_reference(x: Tensor, kernel_size, stride, padding) -> Tensor:
    """Plain PyTorch: ``F.max_pool2d`` (contiguous NCHW result, like the kernels)."""
    kernel, stride_, padding_ = tuple(kernel_size), tuple(stride), tuple(padding)
    _check(x, kernel, stride_, padding_)
    return F.max_pool2d(x, kernel, stride_, padding_).contiguous()


def max_pool2d(
    x: Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0
) -> Tensor:
    """``F.max_pool2d(x, kernel_size, stride, padding)`` for a float32 / float64 ``[N, C, H, W]``
    (or unbatched ``[C, H, W]``) tensor: floor mode, no dilation, no indices; ``stride``
    defaults to ``kernel_size``. Differentiable. The result is contiguous NCHW."""
    kernel = pair(kernel_size, "kernel_size", OP, 1)
    stride_ = kernel if stride is None else pair(stride, "stride", OP, 1)
    padding_ = pair(padding, "padding", OP, 0)
    if isinstance(x, Tensor) and x.dim() == 3:
        return max_pool2d(x.unsqueeze(0), kernel, stride_, padding_).squeeze(0)
    _check(x, kernel, stride_, padding_)
    if use_kernel("max_pool2d", x.device):
        return torch.ops.lostprune.max_pool2d(x, list(kernel), list(stride_), list(padding_))
    return max_pool2d_reference(x, kernel, stride_, padding_)


def max_pool2d_module(pool: nn.MaxPool2d, x: Tensor) -> Tensor:
    """What ``pool`` computes on ``x``, through ``max_pool2d`` where it applies: a CPU float32 /
    float64 NCHW input, floor mode, no dilation, no indices. Channels-last inputs (torch's kernel
    for that layout is vectorized already), other devices and dtypes, and arguments torch
    rejects (its own error message) take ``nn.MaxPool2d``'s own forward. Same values either way."""
    name = type(pool).__name__
    stride = pool.stride
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = pool.kernel_size  # torch's default; a zero stride stays, for torch to reject
    k, s, p = (
        pair(v, arg, name, 0)
        for v, arg in ((pool.kernel_size, "kernel_size"), (stride, "stride"), (pool.padding, "padding"))
    )
    if (
        x.device.type != "cpu"
        or x.dim() != 4
        or pool.return_indices
        or pool.ceil_mode
        or pair(pool.dilation, "dilation", name, 1) != (1, 1)
        or x.dtype not in (torch.float32, torch.float64)
        or min(k + s) < 1
        or any(2 * pad > size for pad, size in zip(p, k))
        or any(conv_out_size(n, kk, ss, pp, 1) < 1 for n, kk, ss, pp in zip(x.shape[-2:], k, s, p))
        or _channels_last(x)
    ):
        return nn.MaxPool2d.forward(pool, x)
    return max_pool2d(x, k, s, p)


def _channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- registrations
OPS = {"max_pool2d": max_pool2d_reference}


def _fake(x, kernel_size, stride, padding):
    h, w = _check(x, tuple(kernel_size), tuple(stride), tuple(padding))
    return x.new_empty((x.shape[0], x.shape[1], h, w))


def _setup_context(ctx, inputs, output):
    x, ctx.kernel, ctx.stride, ctx.padding = inputs
    ctx.save_for_backward(x)


def _backward(ctx, grad):
    # torch's own backward: the gradient goes to the element torch's pool picks in each window.
    (x,) = ctx.saved_tensors
    _, indices = torch.ops.aten.max_pool2d_with_indices(x, ctx.kernel, ctx.stride, ctx.padding)
    grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
        grad, x, ctx.kernel, ctx.stride, ctx.padding, [1, 1], False, indices
    )
    return grad_x, None, None, None


def register() -> None:
    torch.library.register_fake("lostprune::max_pool2d")(_fake)
    torch.library.register_autograd("lostprune::max_pool2d", _backward, setup_context=_setup_context)
