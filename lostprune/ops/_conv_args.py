"""Convolution arguments as every op reads them: (height, width) pairs, padding='same' and the
output extent.

One definition for the Python side; the kernels' twin is ``conv_out_size`` in
csrc/common/conv_geometry.h (the same floor semantics)."""

from __future__ import annotations

import operator
from collections.abc import Sequence

IntPair = int | Sequence[int]


def pair(value: IntPair, name: str, op: str, minimum: int) -> tuple[int, int]:
    """``value`` as (height, width): an int, or 1 or 2 ints, each >= ``minimum``."""
    items = [value] * 2 if not isinstance(value, (Sequence, str)) else list(value)
    if len(items) == 1:
        items *= 2
    try:  # operator.index: ints of any kind (numpy, torch), not floats or bools-as-strings
        if len(items) != 2 or isinstance(value, str) or any(isinstance(v, bool) for v in items):
            raise TypeError
        value = tuple(operator.index(v) for v in items)
    except TypeError:
        raise ValueError(
            f"{op}: {name} must be an int or a pair of ints (height, width), got {value!r}"
        ) from None
    if min(value) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return value


def same_padding(
    kernel: Sequence[int], dilation: Sequence[int], stride: Sequence[int], op: str
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``padding='same'`` as torch reads it: ((top, left), (bottom, right)) padding, the odd
    one more at the bottom / right where a dilated kernel's extent is even; stride 1 only."""
    if tuple(stride) != (1, 1):
        raise ValueError(f"{op}: padding='same' needs stride 1, got {tuple(stride)}")
    total = [d * (k - 1) for k, d in zip(kernel, dilation)]
    return (total[0] // 2, total[1] // 2), (total[0] - total[0] // 2, total[1] - total[1] // 2)


def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """PyTorch's output extent of a convolution along one axis; 0 when the dilated kernel does
    not fit (floor division: C's truncating division would give 1 for a span of -1)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    return span // stride + 1 if span >= 0 else 0


def conv_out_hw(
    hw: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, int]:
    """``conv_out_size`` along height and width."""
    return tuple(conv_out_size(*a) for a in zip(hw, kernel, stride, padding, dilation))
