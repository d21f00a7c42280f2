"""max_pool2d: the compiled kernels against F.max_pool2d (exact, NaN and infinities
included), the vectorized column paths at every row length around the vector width,
threads, errors, op checks and gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from lostprune.ops import max_pool2d, max_pool2d_reference
from lostprune.ops._conv_args import conv_out_size

ARGS = [(3, 2, 1), (2, 2, 0), (3, 1, 1), ((3, 2), (2, 1), (1, 0)), (5, 3, 2), (1, 1, 0), (4, 3, 2), (2, 1, 1)]


def _input(shape, dtype, seed=0, device="cpu"):
    """Random values with NaN, +inf and -inf at a plane's corners and edges (where the
    padding and the vectors' last lanes meet them)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    n, c, h, w = shape
    if n * c >= 2 and h * w >= 4:
        x[0, 0, 0, 0] = float("nan")
        x[0, 0, -1, -1] = float("inf")
        x[-1, -1, h // 2, -1] = float("-inf")
        x[-1, -1, -1, w // 2] = float("nan")
    return x.to(device)


def _exact(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)
    assert actual.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("args", ARGS)
@pytest.mark.parametrize("shape", [(2, 3, 17, 13), (1, 2, 9, 40), (3, 1, 5, 71), (1, 1, 1, 4)])
def test_kernel_is_exact(compiled, dtype, args, shape):
    kernel, stride, padding = (_pair(a) for a in args)
    if any(conv_out_size(n, k, st, p, 1) < 1 for n, k, st, p in zip(shape[-2:], kernel, stride, padding)):
        pytest.skip("no output for this input size")
    x = _input(shape, dtype)
    expected = F.max_pool2d(x, kernel, stride, padding)
    _exact(max_pool2d(x, kernel, stride, padding), expected)
    _exact(max_pool2d_reference(x, kernel, stride, padding), expected)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_row_length_around_the_vector_width(compiled, stride, dtype):
    # Output rows of 1..40 columns: scalar rows (shorter than a vector), one vector, and a last
    # vector overlapping the one before it, for AVX-512 (16 / 8 lanes), AVX2 (8 / 4) and SSE.
    for out_w in range(1, 41):
        in_w = (out_w - 1) * stride + 3 - 2
        x = _input((2, 3, 6, in_w), dtype, seed=out_w)
        x[1, 2, 3, -1] = float("nan")  # the last column: the last vector's last lane
        expected = F.max_pool2d(x, 3, stride, 1)
        assert expected.shape[-1] == out_w
        _exact(max_pool2d(x, 3, stride, 1), expected)


def test_unbatched_empty_batch_and_layouts(compiled):
    x = _input((4, 3, 11, 19), torch.float32)
    _exact(max_pool2d(x[0], 3, 2, 1), F.max_pool2d(x[0], 3, 2, 1))
    empty = torch.empty(0, 3, 11, 19)
    assert max_pool2d(empty, 3, 2, 1).shape == (0, 3, 6, 10)
    # channels-last and strided inputs: the same values, a contiguous NCHW result
    _exact(max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, 2, 1), F.max_pool2d(x, 3, 2, 1))
    _exact(max_pool2d(x[:, :, ::2, 1:], 2), F.max_pool2d(x[:, :, ::2, 1:], 2))
    # stride defaults to the kernel size, as in torch
    _exact(max_pool2d(x, 3), F.max_pool2d(x, 3))


def test_threads_give_the_same_result(compiled):
    x = _input((8, 16, 64, 64), torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = max_pool2d(x, 3, 2, 1)
        torch.set_num_threads(2)
        two = max_pool2d(x, 3, 2, 1)
    finally:
        torch.set_num_threads(before)
    _exact(two, one)
    _exact(one, F.max_pool2d(x, 3, 2, 1))


@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_bad_arguments_name_the_argument(compiled, backend):
    def pool(x, k, s, p):
        if backend == "kernel":
            return max_pool2d(x, k, s, p)
        return max_pool2d_reference(x, _pair(k), _pair(s), _pair(p))

    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"padding must be at most half the kernel size"):
        pool(x, 2, 1, 2)
    with pytest.raises(ValueError, match=r"the output would be 0 x 0 .* at least 1 x 1"):
        pool(torch.randn(1, 2, 2, 2), 5, 1, 1)
    with pytest.raises(TypeError, match=r"x must be float32 or float64, got torch\.float16"):
        pool(x.half(), 3, 2, 1)
    with pytest.raises(ValueError, match=r"x must have 4 dimensions \[N, C, H, W\], got shape \(8, 8\)"):
        pool(x[0, 0], 3, 2, 1)
    with pytest.raises(ValueError, match=r"kernel_size must be >= 1"):
        max_pool2d(x, 0)
    with pytest.raises(ValueError, match=r"stride must be >= 1"):
        max_pool2d(x, 2, 0)


def test_the_op_checks_its_arguments(compiled):
    op = torch.ops.lostprune.max_pool2d
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(
        RuntimeError, match=r"lostprune\.max_pool2d: padding must be at most half the kernel size"
    ):
        op(x, [2, 2], [1, 1], [2, 2])
    with pytest.raises(RuntimeError, match=r"lostprune\.max_pool2d: stride must be >= 1"):
        op(x, [2, 2], [0, 1], [0, 0])
    with pytest.raises(RuntimeError, match=r"lostprune\.max_pool2d: x must be float32 or float64"):
        op(x.to(torch.bfloat16), [2, 2], [2, 2], [0, 0])
    with pytest.raises(RuntimeError, match=r"lostprune\.max_pool2d: x must have 4 dimensions"):
        op(x[0], [2, 2], [2, 2], [0, 0])
    with pytest.raises(RuntimeError, match=r"lostprune\.max_pool2d: the output would be 0 x 0"):
        op(torch.randn(1, 1, 1, 1), [2, 2], [1, 1], [0, 0])


def _opcheck_inputs(requires_grad: bool, device="cpu"):
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64, device=device, requires_grad=requires_grad)
    return x, [3, 3], [2, 2], [1, 1]


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(compiled, requires_grad):
    torch.library.opcheck(torch.ops.lostprune.max_pool2d.default, _opcheck_inputs(requires_grad))


def test_meta_shape(compiled):
    out = torch.ops.lostprune.max_pool2d(torch.empty(2, 3, 17, 13, device="meta"), [3, 2], [2, 1], [1, 0])
    assert out.shape == F.max_pool2d(torch.empty(2, 3, 17, 13), (3, 2), (2, 1), (1, 0)).shape


def test_gradient_is_torchs(compiled):
    x, k, s, p = _opcheck_inputs(True)
    assert torch.autograd.gradcheck(lambda t: torch.ops.lostprune.max_pool2d(t, k, s, p), (x,))
    grad = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    (ours,) = torch.autograd.grad(max_pool2d(x, k, s, p), x, grad)
    (theirs,) = torch.autograd.grad(F.max_pool2d(x, k, s, p), x, grad)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("args", ARGS)
def test_cuda_kernel_is_exact(compiled, dtype, args):
    x = _input((2, 3, 17, 13), dtype, device="cuda")
    _exact(max_pool2d(x, *args), F.max_pool2d(x, *args))


@pytest.mark.cuda
def test_cuda_opcheck(compiled):
    torch.library.opcheck(torch.ops.lostprune.max_pool2d.default, _opcheck_inputs(True, "cuda"))
