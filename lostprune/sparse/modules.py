"""SparseConv2d / SparseLinear: drop-in inference replacements for pruned ``nn.Conv2d`` /
``nn.Linear`` whose forward runs the masked sparse kernels (docs/architecture.md, Kernels).

The packed weight is stored as module state (``values`` parameter, ``col_index`` and
``row_ptr`` buffers), so ``.to()``, ``state_dict()`` and ``torch.compile`` work as usual.
``values`` and ``bias`` are parameters: gradients flow to the surviving weights only, so
fine-tuning keeps the sparsity pattern.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.masks import effective_weight
from ..ops.sparse import (
    PackedWeight,
    conv_arguments,
    dense_weight,
    pack_weight,
    run_sparse_conv2d,
    run_sparse_linear,
)


class _SparseBase(nn.Module):
    """The packed weight as module state, shared by both layers."""

    weight_shape: tuple[int, ...]

    def _init_packed(self, packed: PackedWeight, bias: Tensor | None, requires_grad: bool) -> None:
        self.weight_shape = tuple(packed.shape)
        self._shape_list = list(packed.shape)
        self.values = nn.Parameter(packed.values.detach().clone(), requires_grad=requires_grad)
        self.register_buffer("col_index", packed.col_index.clone())
        self.register_buffer("row_ptr", packed.row_ptr.clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=requires_grad)

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.values, self.col_index, self.row_ptr, self.weight_shape)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def density(self) -> float:
        return self.packed.density

    def dense_weight(self) -> Tensor:
        """The equivalent dense weight (zeros where nothing is stored)."""
        return dense_weight(self.values, self.col_index, self.row_ptr, self.weight_shape)

    def _filled(self, module: nn.Module) -> nn.Module:
        """``module`` (a fresh dense layer of the same shape) with this layer's weight and bias."""
        with torch.no_grad():
            module.weight.copy_(self.dense_weight())
            if self.bias is not None:
                module.bias.copy_(self.bias)
        return module

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The number of nonzeros is data, not architecture: adopt the incoming sizes.
        for name in ("values", "col_index", "row_ptr"):
            incoming = state_dict.get(prefix + name)
            current = getattr(self, name)
            if incoming is not None and incoming.shape != current.shape:
                resized = torch.empty_like(current, memory_format=torch.contiguous_format).resize_(
                    incoming.shape
                )
                if isinstance(current, nn.Parameter):
                    setattr(self, name, nn.Parameter(resized, requires_grad=current.requires_grad))
                else:
                    setattr(self, name, resized)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SparseConv2d(_SparseBase):
    """``nn.Conv2d`` (zeros padding) computed from the nonzeros of its weight.

    With a fused epilogue (what ``convert(fuse=True)`` builds from conv → BatchNorm → [+ x] →
    ReLU): ``relu=True`` applies ReLU to the output and ``forward(x, residual)`` adds
    ``residual`` before it, inside the kernel."""

    def __init__(
        self,
        packed: PackedWeight,
        bias: Tensor | None = None,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        requires_grad: bool = False,
        relu: bool = False,
    ):
        super().__init__()
        if len(packed.shape) != 4:
            raise ValueError(
                f"SparseConv2d needs a conv weight [Cout, Cin/groups, KH, KW], got shape {packed.shape}"
            )
        self._init_packed(packed, bias, requires_grad)
        self.out_channels = packed.shape[0]
        self.in_channels = packed.shape[1] * groups
        self.kernel_size = tuple(packed.shape[2:])
        stride_, padding_, dilation_ = conv_arguments(packed.shape, stride, padding, dilation)
        self.stride, self.padding, self.dilation = tuple(stride_), tuple(padding_), tuple(dilation_)
        self._args = (stride_, padding_, dilation_)
        self.groups = int(groups)
        self.relu = bool(relu)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> SparseConv2d:
        """The sparse twin of ``conv`` (masks in nn.utils.prune format are applied)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"SparseConv2d.from_dense needs an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"SparseConv2d supports zeros padding only, got padding_mode={conv.padding_mode!r}"
            )
        weight = effective_weight(conv).detach()
        return cls(
            pack_weight(weight),
            conv.bias,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            requires_grad=conv.weight_orig.requires_grad
            if hasattr(conv, "weight_orig")
            else conv.weight.requires_grad,
        )

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same weight and bias (e.g. to export or to compare); the
        fused epilogue (``relu``, residual) is not part of it."""
        return self._filled(
            nn.Conv2d(
                self.in_channels,
                self.out_channels,
                self.kernel_size,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
                bias=self.bias is not None,
                device=self.values.device,
                dtype=self.values.dtype,
            )
        )

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        stride, padding, dilation = self._args
        return run_sparse_conv2d(
            x,
            self.values,
            self.col_index,
            self.row_ptr,
            self._shape_list,
            self.bias,
            stride,
            padding,
            dilation,
            self.groups,
            residual,
            self.relu,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"bias={self.bias is not None}, density={self.density:.3f}" + (", relu=True" if self.relu else "")
        )


class SparseLinear(_SparseBase):
    """``nn.Linear`` computed from the nonzeros of its weight."""

    def __init__(self, packed: PackedWeight, bias: Tensor | None = None, requires_grad: bool = False):
        super().__init__()
        if len(packed.shape) != 2:
            raise ValueError(f"SparseLinear needs a linear weight [out, in], got shape {packed.shape}")
        self._init_packed(packed, bias, requires_grad)
        self.out_features, self.in_features = packed.shape

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> SparseLinear:
        """The sparse twin of ``linear`` (masks in nn.utils.prune format are applied)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear.from_dense needs an nn.Linear, got {type(linear).__name__}")
        weight = effective_weight(linear).detach()
        return cls(
            pack_weight(weight),
            linear.bias,
            requires_grad=linear.weight_orig.requires_grad
            if hasattr(linear, "weight_orig")
            else linear.weight.requires_grad,
        )

    def to_dense(self) -> nn.Linear:
        return self._filled(
            nn.Linear(
                self.in_features,
                self.out_features,
                bias=self.bias is not None,
                device=self.values.device,
                dtype=self.values.dtype,
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return run_sparse_linear(x, self.values, self.col_index, self.row_ptr, self._shape_list, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, density={self.density:.3f}"
        )
