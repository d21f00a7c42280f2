"""Masked sparse convolution and linear (docs/architecture.md, Kernels): inference with unstructured-sparse
weights packed once per layer, work proportional to the nonzeros.

Packed format (``PackedWeight``): CSR over the weight viewed as ``[rows, cols]`` with
``rows = Cout`` and ``cols = Cin/groups * KH * KW`` (conv) or ``in_features`` (linear):

- ``values``    ``[nnz]``, the weight's dtype: the nonzeros, row by row, columns ascending;
- ``col_index`` ``[nnz]`` int32: the column of each nonzero, i.e. the *tap code*
  ``ci * KH * KW + kh * KW + kw`` (``ci`` local to the group) — for a linear, the input feature;
- ``row_ptr``   ``[rows + 1]`` int32: output channel ``o`` owns nonzeros ``row_ptr[o]:row_ptr[o+1]``.

The kernels turn each tap code into an input offset for the actual input size once per
call (a few microseconds per layer), so one packed weight serves every input size.
Wrappers, plain-PyTorch references, fake and autograd kernels live here.

Why one ~470-line file: one op family per file (docs/architecture.md, Kernels): the two ops'
wrappers, references, fake kernels and registration, which change together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._build import use_kernel
from ._conv_args import conv_out_hw, pair, same_padding

CONV_OP = "lostprune.sparse_conv2d"
LINEAR_OP = "lostprune.sparse_linear"
CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class PackedWeight:
    """An unstructured-sparse conv or linear weight in CSR form (see the module docstring)."""

    values: Tensor
    col_index: Tensor
    row_ptr: Tensor
    shape: tuple[int, ...]  # the dense weight's shape

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> PackedWeight:
        """A copy on ``device`` and/or with values of ``dtype`` (indices stay int32);
        ``packed.to(torch.float16)`` works like ``Tensor.to``."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        return PackedWeight(
            self.values.to(device=device, dtype=dtype),
            self.col_index.to(device),
            self.row_ptr.to(device),
            self.shape,
        )

    def to_dense(self) -> Tensor:
        """The dense weight, zeros where nothing is stored."""
        return dense_weight(self.values, self.col_index, self.row_ptr, self.shape)


def pack_weight(weight: Tensor, mask: Tensor | None = None) -> PackedWeight:
    """Pack a conv ``[Cout, Cin/g, KH, KW]`` or linear ``[out, in]`` weight: its nonzeros
    (where ``mask`` is nonzero too, when given) in CSR form. Done once per layer."""
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise TypeError(
            f"pack_weight: weight must be a floating-point tensor, got "
            f"{getattr(weight, 'dtype', type(weight).__name__)}"
        )
    if weight.dim() not in (2, 4):
        raise ValueError(
            f"pack_weight: weight must be 2-D (linear) or 4-D (conv), got shape {tuple(weight.shape)}"
        )
    weight = weight.detach()
    if mask is not None:
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(
                f"pack_weight: mask has shape {tuple(mask.shape)} but weight has shape {tuple(weight.shape)}"
            )
        weight = torch.where(
            mask.to(weight.device) != 0, weight, torch.zeros((), dtype=weight.dtype, device=weight.device)
        )
    matrix = weight.reshape(weight.shape[0], -1)
    nonzero = matrix != 0
    if matrix.numel() >= 2**31:
        raise ValueError(f"pack_weight: weight has {matrix.numel()} entries; at most 2^31 - 1 supported")
    counts = nonzero.sum(1)
    row_ptr = torch.zeros(matrix.shape[0] + 1, dtype=torch.int32, device=weight.device)
    torch.cumsum(counts, 0, out=row_ptr[1:])
    col_index = nonzero.nonzero()[:, 1].to(torch.int32)  # row-major: rows in order, columns ascending
    return PackedWeight(matrix[nonzero].contiguous(), col_index.contiguous(), row_ptr, tuple(weight.shape))


def dense_weight(values: Tensor, col_index: Tensor, row_ptr: Tensor, shape) -> Tensor:
    """Scatter CSR arrays back into a dense weight of ``shape``."""
    rows = shape[0]
    cols = math.prod(shape[1:])
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    row_of = torch.repeat_interleave(
        torch.arange(rows, device=values.device), counts, output_size=values.numel()
    )
    flat = values.new_zeros(rows * cols)
    flat = flat.index_put((row_of * cols + col_index.long(),), values)
    return flat.reshape(tuple(shape))


def conv_padding(padding, shape, stride, dilation) -> list[int]:
    """Numeric symmetric (height, width) padding for an int, a pair, 'valid' or 'same'."""
    if padding == "valid":
        return [0, 0]
    if padding == "same":
        before, after = same_padding(
            shape[2:], pair(dilation, "dilation", CONV_OP, 1), pair(stride, "stride", CONV_OP, 1), CONV_OP
        )
        if before != after:
            raise ValueError(
                f"{CONV_OP}: padding='same' needs a symmetric padding, an odd dilated kernel extent "
                f"(kernel {tuple(shape[2:])}, dilation {tuple(dilation)})"
            )
        return list(before)
    return list(pair(padding, "padding", CONV_OP, 0))


# --------------------------------------------------------------------------- references
def _check_conv(
    x: Tensor,
    values: Tensor,
    col_index: Tensor,
    row_ptr: Tensor,
    weight_shape,
    bias: Tensor | None,
    groups: int,
    residual: Tensor | None = None,
) -> None:
    """The reference's checks; the compiled kernels make the same ones in C++."""
    if not x.is_floating_point():
        raise TypeError(f"{CONV_OP}: x must be a floating-point tensor, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{CONV_OP}: x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    for name, t in (
        ("values (packed weight)", values),
        ("col_index (packed weight)", col_index),
        ("row_ptr (packed weight)", row_ptr),
        ("bias", bias),
        ("residual", residual),
    ):
        if t is not None and t.device != x.device:
            raise ValueError(
                f"{CONV_OP}: {name} is on {t.device} but x is on {x.device}; move both to the same device"
            )
    if values.dtype != x.dtype:
        raise TypeError(f"{CONV_OP}: values has dtype {values.dtype} but x has dtype {x.dtype}")
    if residual is not None and residual.dtype != x.dtype:
        raise TypeError(f"{CONV_OP}: residual has dtype {residual.dtype} but x has dtype {x.dtype}")
    cin = weight_shape[1] * groups
    if x.shape[1] != cin:
        raise ValueError(
            f"{CONV_OP}: x has {x.shape[1]} channels but the packed weight expects {cin} "
            f"({weight_shape[1]} per group x {groups} groups)"
        )


def sparse_conv2d_reference(
    x: Tensor,
    values: Tensor,
    col_index: Tensor,
    row_ptr: Tensor,
    weight_shape,
    bias: Tensor | None,
    stride,
    padding,
    dilation,
    groups: int,
    residual: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """Plain PyTorch: the dense weight rebuilt from the CSR arrays, then ``F.conv2d``, then
    the epilogue: ``+ residual`` (same shape as the output), then ReLU when ``relu``."""
    _check_conv(x, values, col_index, row_ptr, weight_shape, bias, groups, residual)
    weight = dense_weight(values, col_index, row_ptr, weight_shape)
    out = F.conv2d(x, weight, bias, list(stride), list(padding), list(dilation), groups)
    if residual is not None:
        if residual.shape != out.shape:
            raise ValueError(
                f"{CONV_OP}: residual must have the output's shape {list(out.shape)} (it is added "
                f"before the ReLU, without broadcasting), got {list(residual.shape)}"
            )
        out = out + residual
    return torch.relu(out) if relu else out


def sparse_linear_reference(
    x: Tensor, values: Tensor, col_index: Tensor, row_ptr: Tensor, weight_shape, bias: Tensor | None
) -> Tensor:
    """Plain PyTorch: the dense weight rebuilt from the CSR arrays, then ``F.linear``."""
    if not x.is_floating_point():
        raise TypeError(f"{LINEAR_OP}: x must be a floating-point tensor, got {x.dtype}")
    for name, t in (("values (packed weight)", values), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(
                f"{LINEAR_OP}: {name} is on {t.device} but x is on {x.device}; move both to the same device"
            )
    if x.shape[-1] != weight_shape[1]:
        raise ValueError(
            f"{LINEAR_OP}: x has {x.shape[-1]} features in its last dimension but the "
            f"packed weight expects {weight_shape[1]}"
        )
    return F.linear(x, dense_weight(values, col_index, row_ptr, weight_shape), bias)


# --------------------------------------------------------------------------- wrappers
def _check_device(
    op: str, x: Tensor, packed_values: Tensor, bias: Tensor | None, residual: Tensor | None = None
) -> None:
    # Before dispatch: torch would route mixed devices to one backend with a vaguer error.
    if packed_values.device != x.device:
        raise ValueError(
            f"{op}: the packed weight is on {packed_values.device} but x is on {x.device}; "
            "move it with packed.to(x.device) (or module.to(device))"
        )
    if bias is not None and bias.device != x.device:
        raise ValueError(f"{op}: bias is on {bias.device} but x is on {x.device}")
    if residual is not None and residual.device != x.device:
        raise ValueError(f"{op}: residual is on {residual.device} but x is on {x.device}")


def _kernel_ok(op: str, x: Tensor) -> bool:
    supported = CUDA_DTYPES if x.device.type == "cuda" else CPU_DTYPES
    return x.dtype in supported and use_kernel(op, x.device)


def _call_kernel(op, args: tuple, *tensors: Tensor | None) -> Tensor:
    """The compiled kernel. With no gradient to record (inference, frozen weights) it is
    called below the Autograd key: the Python-registered autograd formula otherwise costs
    about 4 µs a call, a third of a small sparse layer's time at batch 1."""
    if torch.compiler.is_compiling() or (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    ):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def run_sparse_conv2d(
    x: Tensor,
    values: Tensor,
    col_index: Tensor,
    row_ptr: Tensor,
    weight_shape: list[int],
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    residual: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """The op on normalized arguments (pairs as lists): the kernel when one is compiled for
    x's device and dtype, else the reference. Modules call this with arguments prepared once."""
    _check_device(CONV_OP, x, values, bias, residual)
    args = (x, values, col_index, row_ptr, weight_shape, bias, stride, padding, dilation, groups)
    if residual is not None or relu:  # the defaults cost argument parsing on every call
        args += (residual, relu)
    if _kernel_ok("sparse_conv2d", x):
        return _call_kernel(torch.ops.lostprune.sparse_conv2d.default, args, x, values, bias, residual)
    return sparse_conv2d_reference(*args)


def run_sparse_linear(
    x: Tensor,
    values: Tensor,
    col_index: Tensor,
    row_ptr: Tensor,
    weight_shape: list[int],
    bias: Tensor | None,
) -> Tensor:
    """``sparse_linear`` on normalized arguments (see ``run_sparse_conv2d``)."""
    _check_device(LINEAR_OP, x, values, bias)
    args = (x, values, col_index, row_ptr, weight_shape, bias)
    if _kernel_ok("sparse_linear", x):
        return _call_kernel(torch.ops.lostprune.sparse_linear.default, args, x, values, bias)
    return sparse_linear_reference(*args)


def conv_arguments(shape, stride, padding, dilation) -> tuple[list[int], list[int], list[int]]:
    """(stride, padding, dilation) as pairs; padding may be an int, a pair, 'valid' or 'same'."""
    stride_ = list(pair(stride, "stride", CONV_OP, 1))
    dilation_ = list(pair(dilation, "dilation", CONV_OP, 1))
    return stride_, conv_padding(padding, shape, stride_, dilation_), dilation_


def sparse_conv2d(
    x: Tensor,
    packed: PackedWeight,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    residual: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """``F.conv2d(x, packed.to_dense(), bias, stride, padding, dilation, groups)``, computed
    from the nonzeros only. ``padding`` may be an int, a pair, ``'valid'`` or ``'same'``.

    Fused epilogue (one pass over the output, inside the kernel): ``residual`` (a tensor of
    the output's shape) is added, then ReLU when ``relu`` — a BasicBlock's
    ``relu(bn(conv(x)) + identity)`` once BatchNorm is folded into the weights and bias.

    Kernels: CPU float32/float64, CUDA float32/float64/float16/bfloat16; other dtypes (and
    builds without kernels) run the reference.
    """
    if len(packed.shape) != 4:
        raise ValueError(
            f"{CONV_OP}: packed weight has shape {packed.shape}; expected a conv weight "
            "[Cout, Cin/groups, KH, KW] (use sparse_linear for linear weights)"
        )
    stride_, padding_, dilation_ = conv_arguments(packed.shape, stride, padding, dilation)
    return run_sparse_conv2d(
        x,
        packed.values,
        packed.col_index,
        packed.row_ptr,
        list(packed.shape),
        bias,
        stride_,
        padding_,
        dilation_,
        int(groups),
        residual,
        bool(relu),
    )


def sparse_linear(x: Tensor, packed: PackedWeight, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, packed.to_dense(), bias)`` computed from the nonzeros only; ``x`` is
    ``[..., in_features]``. Same dtype coverage as ``sparse_conv2d``."""
    if len(packed.shape) != 2:
        raise ValueError(
            f"{LINEAR_OP}: packed weight has shape {packed.shape}; expected a linear "
            "weight [out_features, in_features]"
        )
    return run_sparse_linear(x, packed.values, packed.col_index, packed.row_ptr, list(packed.shape), bias)


# --------------------------------------------------------------------------- registrations
OPS = {"sparse_conv2d": sparse_conv2d_reference, "sparse_linear": sparse_linear_reference}


def _conv_fake(
    x,
    values,
    col_index,
    row_ptr,
    weight_shape,
    bias,
    stride,
    padding,
    dilation,
    groups,
    residual=None,
    relu=False,
):
    out = conv_out_hw(x.shape[2:], weight_shape[2:], stride, padding, dilation)
    return x.new_empty((x.shape[0], weight_shape[0], *out))


def _linear_fake(x, values, col_index, row_ptr, weight_shape, bias):
    return x.new_empty((*x.shape[:-1], weight_shape[0]))


def _conv_setup(ctx, inputs, output):
    # The epilogue arguments have defaults: tracers may pass only the first ten.
    x, values, col_index, row_ptr, weight_shape, bias, stride, padding, dilation, groups, *epilogue = inputs
    relu = len(epilogue) > 1 and bool(epilogue[1])
    # ReLU's gradient mask comes from the output (zero where the ReLU clamped).
    ctx.save_for_backward(x, values, col_index, row_ptr, output if relu else None)
    ctx.conf = (list(weight_shape), list(stride), list(padding), list(dilation), groups, bias is not None)


def _grad_values(grad_weight: Tensor, col_index: Tensor, row_ptr: Tensor, rows: int) -> Tensor:
    """The entries of a dense weight gradient at the packed nonzeros."""
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    row_of = torch.repeat_interleave(
        torch.arange(rows, device=grad_weight.device), counts, output_size=col_index.numel()
    )
    return grad_weight.reshape(rows, -1)[row_of, col_index.long()]


def _conv_backward(ctx, grad):
    x, values, col_index, row_ptr, output = ctx.saved_tensors
    weight_shape, stride, padding, dilation, groups, has_bias = ctx.conf
    need_x, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_x = grad_values = grad_bias = None
    if output is not None:  # fused ReLU
        grad = grad * (output > 0).to(grad.dtype)
    inputs = len(ctx.needs_input_grad)
    grad_residual = grad if inputs > 10 and ctx.needs_input_grad[10] else None
    if need_x:
        weight = dense_weight(values, col_index, row_ptr, weight_shape)
        grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad, stride, padding, dilation, groups)
    if need_values:
        grad_w = torch.nn.grad.conv2d_weight(x, weight_shape, grad, stride, padding, dilation, groups)
        grad_values = _grad_values(grad_w, col_index, row_ptr, weight_shape[0])
    if has_bias and ctx.needs_input_grad[5]:
        grad_bias = grad.sum((0, 2, 3))
    return (grad_x, grad_values, None, None, None, grad_bias, None, None, None, None, grad_residual, None)[
        :inputs
    ]


def _linear_setup(ctx, inputs, output):
    x, values, col_index, row_ptr, weight_shape, bias = inputs
    ctx.save_for_backward(x, values, col_index, row_ptr)
    ctx.conf = (list(weight_shape), bias is not None)


def _linear_backward(ctx, grad):
    x, values, col_index, row_ptr = ctx.saved_tensors
    weight_shape, has_bias = ctx.conf
    grad_x = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = grad @ dense_weight(values, col_index, row_ptr, weight_shape)
    flat_grad = grad.reshape(-1, weight_shape[0])
    if ctx.needs_input_grad[1]:
        grad_w = flat_grad.t() @ x.reshape(-1, weight_shape[1])
        grad_values = _grad_values(grad_w, col_index, row_ptr, weight_shape[0])
    if has_bias and ctx.needs_input_grad[5]:
        grad_bias = flat_grad.sum(0)
    return grad_x, grad_values, None, None, None, grad_bias


def register() -> None:
    torch.library.register_fake("lostprune::sparse_conv2d")(_conv_fake)
    torch.library.register_fake("lostprune::sparse_linear")(_linear_fake)
    torch.library.register_autograd("lostprune::sparse_conv2d", _conv_backward, setup_context=_conv_setup)
    torch.library.register_autograd("lostprune::sparse_linear", _linear_backward, setup_context=_linear_setup)
