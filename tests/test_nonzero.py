"""nonzero_rows_cols: the compiled kernels and the reference against the literal definition
(``t != 0``, any over each row and each column) on every dtype and odd shapes, special values
(-0.0, NaN, infinities, subnormals, int8 -128), row chunks across threads, errors, op checks.
core.masks.nonzero_rows_and_columns on every path: test_prune_pipeline.py."""

import pytest
import torch

import lostprune.ops.nonzero as nonzero_module
from lostprune.core.masks import nonzero_rows_and_columns
from lostprune.ops.nonzero import KERNEL_DTYPES, nonzero_rows_cols, nonzero_rows_cols_reference

SHAPES = [(5, 3, 3, 3), (7, 4), (6, 2, 1, 1), (3, 1, 5, 5), (1, 1), (13, 17, 2), (2, 33, 7), (40, 1)]


def literal(t):
    nonzero = t != 0
    return nonzero.flatten(1).any(1), nonzero.transpose(0, 1).flatten(1).any(1)


def _case(shape, dtype, seed):
    """Random values with whole rows and columns zeroed, a column live in one late row only,
    and the special values of the dtype at row / column edges."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=torch.float64) * 5
    keep = torch.rand(shape, generator=gen) < 0.5
    t = t * keep
    if shape[0] > 2:
        t[1] = 0
    if shape[1] > 2:
        t[:, 0] = 0
        t[:, -1] = 0
        t[-1, -1].view(-1)[-1] = 1.5  # the last column lives in the last row only
    if dtype.is_complex:
        t = torch.complex(t, torch.zeros_like(t)).to(dtype)
        if shape[0] > 2:
            t[1].view(-1)[0] = complex(0, 2)  # a nonzero imaginary part alone
    else:
        t = t.to(dtype)
    if dtype.is_floating_point and shape[0] > 2:
        flat = t[1].view(-1)
        flat[0] = -0.0  # not a nonzero
        if shape[0] > 3:
            t[2].view(-1)[-1] = float("nan")
            t[3].view(-1)[0] = -float("inf")
        t[0].view(-1)[-1] = torch.finfo(dtype).smallest_normal / 4  # a subnormal (bfloat16 / float16 too)
    if dtype == torch.int8 and shape[0] > 2:
        t[1].view(-1)[-1] = -128
    return t


def _same(got, expected):
    for g, e in zip(got, expected):
        assert g.dtype == torch.bool and g.device == e.device and torch.equal(g, e), (g, e)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_and_reference_are_the_literal_definition(compiled, dtype, shape):
    for seed in range(2):
        t = _case(shape, dtype, seed)
        expected = literal(t)
        _same(torch.ops.lostprune.nonzero_rows_cols(t), expected)
        _same(nonzero_rows_cols(t), expected)
        _same(nonzero_rows_cols_reference(t), expected)
        _same(nonzero_rows_cols(-t if dtype != torch.bool and not dtype.is_complex else t), literal(t))


@pytest.mark.parametrize("temporary", ["cheap", "costly"])  # |t| then max, or max and min
def test_reference_paths(temporary, monkeypatch):
    if temporary == "costly":
        monkeypatch.setattr(nonzero_module, "CHEAP_TEMPORARY_NUMEL", 0)
    for dtype in (torch.float32, torch.float64, torch.int32, torch.int8, torch.uint8, torch.bfloat16):
        for shape in SHAPES:
            t = _case(shape, dtype, 3)
            _same(nonzero_rows_cols_reference(t), literal(t))
    for dtype in (torch.int8, torch.uint8):  # |-128| overflows to -128 in int8: still nonzero
        t = torch.tensor([[0, 0, 0], [0, -128 if dtype == torch.int8 else 255, 0]], dtype=dtype)
        assert [x.tolist() for x in nonzero_rows_cols_reference(t)] == [[False, True], [False, True, False]]


def test_empty_and_non_contiguous(compiled):
    for shape in [(4, 0, 3), (0, 5), (3, 4, 0), (0, 0)]:
        t = torch.zeros(shape)
        rows, cols = nonzero_rows_cols(t)
        assert rows.shape == (shape[0],) and cols.shape == (shape[1],) and not rows.any() and not cols.any()
    t = _case((6, 5, 3, 3), torch.float32, 0)
    for view in (t.transpose(2, 3), t[:, 1:4], t[::2], t.contiguous(memory_format=torch.channels_last)):
        _same(nonzero_rows_cols(view), literal(view))
    c = _case((6, 5, 3), torch.complex64, 1)
    for view in (c.conj(), c.conj().transpose(0, 1), torch.view_as_real(c).select(-1, 0)._neg_view()):
        _same(nonzero_rows_cols(view), literal(view))


def test_row_chunks_across_threads(compiled):
    # Large enough for several chunks: a column live only in one chunk's last row, a row whose
    # only nonzero lies in a column every earlier row already showed live.
    t = torch.zeros(301, 257, 3, 3)
    t[:150, :200] = torch.randn(150, 200, 3, 3)
    t[299, 256, 2, 2] = 1.0
    t[300, 5, 0, 1] = -3.0
    t[170, 250, 1, 1] = float("nan")
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            _same(nonzero_rows_cols(t), literal(t))
    finally:
        torch.set_num_threads(before)


def test_errors_name_the_argument(compiled):
    op = torch.ops.lostprune.nonzero_rows_cols
    with pytest.raises(
        RuntimeError, match=r"lostprune\.nonzero_rows_cols: t must have at least 2 dimensions"
    ):
        op(torch.ones(3))
    with pytest.raises(ValueError, match=r"lostprune\.nonzero_rows_cols: t must have at least 2 dimensions"):
        nonzero_rows_cols(torch.ones(3))
    odd = torch.zeros(3, 4).to(torch.float8_e4m3fn)
    with pytest.raises(RuntimeError, match=r"t must be bool, an integer type .* got Float8_e4m3fn"):
        op(odd)
    odd[1, 2] = 1.0
    assert [x.tolist() for x in nonzero_rows_cols(odd)] == [[False, True, False], [False, False, True, False]]


def test_build_false_never_starts_a_build(monkeypatch):
    def no_build(*args):
        raise AssertionError("use_kernel asked although the kernels are not loaded")

    monkeypatch.setattr(nonzero_module, "kernels_loaded", lambda: False)
    monkeypatch.setattr(nonzero_module, "use_kernel", no_build)
    t = _case((5, 3, 3, 3), torch.float32, 1)
    _same(nonzero_rows_cols(t, build=False), literal(t))
    _same(nonzero_rows_and_columns(t), literal(t))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(compiled, requires_grad):
    t = _case((5, 3, 3, 3), torch.float64, 0).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.lostprune.nonzero_rows_cols.default, (t,))


def test_meta_shape(compiled):
    rows, cols = torch.ops.lostprune.nonzero_rows_cols(torch.empty(7, 3, 5, device="meta"))
    assert rows.shape == (7,) and cols.shape == (3,) and rows.dtype == cols.dtype == torch.bool


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_cuda_kernel_is_the_literal_definition(compiled, dtype):
    for shape in [*SHAPES, (301, 257, 3, 3)]:
        t = _case(shape, dtype, 0).cuda()
        _same(nonzero_rows_cols(t), literal(t))


@pytest.mark.cuda
def test_cuda_opcheck(compiled):
    t = _case((5, 3, 3, 3), torch.float64, 0).cuda().requires_grad_(True)
    torch.library.opcheck(torch.ops.lostprune.nonzero_rows_cols.default, (t,))
