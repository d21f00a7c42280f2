"""The one definition of convolution arguments the ops share (lostprune/ops/_conv_args.py)."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lostprune.ops._conv_args import conv_out_hw, conv_out_size, pair, same_padding


@pytest.mark.parametrize(
    "size, kernel, stride, padding, dilation",
    list(itertools.product((1, 2, 3, 5, 8), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2), (1, 2))),
)
def test_conv_out_size_is_torchs(size, kernel, stride, padding, dilation):
    """Every small geometry, against what F.conv2d returns (0 where torch refuses the input)."""
    try:
        out = F.conv2d(
            torch.zeros(1, 1, size, 1),
            torch.zeros(1, 1, kernel, 1),
            stride=(stride, 1),
            padding=(padding, 0),
            dilation=(dilation, 1),
        ).shape[2]
    except RuntimeError:  # "Kernel size can't be greater than actual input size"
        out = 0
    assert conv_out_size(size, kernel, stride, padding, dilation) == out


def test_span_of_minus_one_gives_no_output():
    # (2 - 2 - 1) // 2 + 1 == 0 in floor division; truncating division (C's) gives 1.
    assert conv_out_size(2, 3, 2, 0, 1) == 0
    assert conv_out_hw((9, 7), (3, 2), (2, 1), (1, 2), (1, 2)) == (5, 9)


def test_pair_accepts_ints_of_any_kind():
    assert pair(3, "stride", "op", 1) == (3, 3)
    assert pair([2], "stride", "op", 1) == (2, 2)
    assert pair((np.int64(1), 2), "padding", "op", 0) == (1, 2)


@pytest.mark.parametrize("value", [(1, 2, 3), (), "ab", 1.5, (1.0, 2), (True, 1), None])
def test_pair_rejects_what_is_not_a_pair_of_ints(value):
    with pytest.raises(ValueError, match=r"myop: stride must be an int or a pair of ints \(height, width\)"):
        pair(value, "stride", "myop", 1)


def test_pair_names_the_minimum():
    with pytest.raises(ValueError, match=r"myop: dilation must be >= 1, got \(1, 0\)"):
        pair((1, 0), "dilation", "myop", 1)
    assert pair(0, "padding", "myop", 0) == (0, 0)


@pytest.mark.parametrize(
    "kernel, dilation", list(itertools.product(((1, 1), (2, 3), (3, 4), (5, 2)), ((1, 1), (2, 1), (1, 3))))
)
def test_same_padding_is_torchs(kernel, dilation):
    """Explicit (top, left) / (bottom, right) padding then a valid conv: F.conv2d(padding='same')."""
    g = torch.Generator().manual_seed(0)
    x, w = (
        torch.randn(1, 2, 9, 10, generator=g, dtype=torch.float64),
        torch.randn(3, 2, *kernel, generator=g, dtype=torch.float64),
    )
    (top, left), (bottom, right) = same_padding(kernel, dilation, (1, 1), "op")
    got = F.conv2d(F.pad(x, (left, right, top, bottom)), w, dilation=dilation)
    torch.testing.assert_close(got, F.conv2d(x, w, padding="same", dilation=dilation), rtol=0, atol=1e-12)


def test_same_padding_needs_stride_one():
    with pytest.raises(ValueError, match=r"op: padding='same' needs stride 1, got \(2, 1\)"):
        same_padding((3, 3), (1, 1), (2, 1), "op")
