"""A Conv2d that also adds what removed constant input channels contributed.

Slicing drops input channels that carry a constant c_j (a BN shift after a removed filter).
Their contribution, Σ_j c_j · W[:, j] convolved over the image, is a plain bias away from the
borders; under zero padding the border positions see fewer of the kernel taps. The exact
term is the convolution of a ones image with the 1-channel kernel K = Σ_j c_j · W[:, j],
using the layer's own stride, padding and dilation: about 1/C_in of the layer's work, and an
ordinary conv for torch.compile, tracing and export.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class FoldedConv2d(nn.Conv2d):
    """``nn.Conv2d`` plus ``conv2d(ones, fold_weight)`` (buffer ``fold_weight``: [out, 1, kh, kw])."""

    fold_weight: Tensor

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer(
            "fold_weight",
            torch.zeros(
                self.out_channels, 1, *self.kernel_size, dtype=self.weight.dtype, device=self.weight.device
            ),
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, fold_weight: Tensor) -> FoldedConv2d:
        """A FoldedConv2d sharing ``conv``'s parameters (no copy) with the given fold kernel."""
        if conv.groups != 1:
            raise ValueError(f"FoldedConv2d needs groups=1, got groups={conv.groups}")
        folded = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
        )
        folded.weight = conv.weight
        folded.bias = conv.bias
        folded.fold_weight = fold_weight.to(conv.weight.dtype).reshape(
            conv.out_channels, 1, *conv.kernel_size
        )
        folded.train(conv.training)
        return folded

    def forward(self, x: Tensor) -> Tensor:
        out = self._conv_forward(x, self.weight, self.bias)
        # One unbatched 1-channel ones image [1, H, W]: the term [out, H', W'] is the same for every
        # image and broadcasts over the batch (no branch on x.dim(), so torch.fx traces it).
        ones = x.new_ones(x.shape[-2:]).unsqueeze(0)
        # in place: conv's backward does not need its output, and inference saves a tensor
        return out.add_(F.conv2d(ones, self.fold_weight, None, self.stride, self.padding, self.dilation))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", folded constant inputs"
