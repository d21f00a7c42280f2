"""gather_channels: compiled kernels against the PyTorch reference, errors, op checks."""

import pytest
import torch

from lostprune.ops import gather_channels, gather_channels_reference

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.uint8, torch.bool]


def _random_case(gen: torch.Generator, dtype: torch.dtype, device="cpu"):
    """A mixed batch like one slicing step: conv weights, BN vectors, linear weights."""
    tensors, rows, cols = [], [], []
    for _ in range(int(torch.randint(1, 7, (1,), generator=gen))):
        rank = int(torch.randint(1, 5, (1,), generator=gen))
        shape = [int(s) for s in torch.randint(1, 9, (rank,), generator=gen)]
        t = (torch.randn(shape, generator=gen) * 10).to(dtype)
        if rank >= 3 and bool(torch.randint(0, 2, (1,), generator=gen)):
            t = t.transpose(-1, -2)  # non-contiguous input
        row = col = None
        if bool(torch.randint(0, 3, (1,), generator=gen)):
            row = torch.randint(
                0, t.shape[0], (int(torch.randint(1, t.shape[0] + 2, (1,), generator=gen)),), generator=gen
            )
        if rank >= 2 and bool(torch.randint(0, 3, (1,), generator=gen)):
            col = torch.randperm(t.shape[1], generator=gen)[
                : int(torch.randint(1, t.shape[1] + 1, (1,), generator=gen))
            ]
        tensors.append(t.to(device))
        rows.append(None if row is None else row.to(device))
        cols.append(None if col is None else col.to(device))
    return tensors, rows, cols


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(6))
def test_kernel_matches_reference(compiled, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    tensors, rows, cols = _random_case(gen, dtype)
    out = gather_channels(tensors, rows, cols)
    ref = gather_channels_reference(tensors, rows, cols)
    assert len(out) == len(ref)
    for o, r, t in zip(out, ref, tensors):
        assert o.dtype == t.dtype and o.is_contiguous()
        assert torch.equal(o, r)


def test_conv_bn_linear_slice(compiled):
    conv = torch.randn(16, 8, 3, 3)
    bn = torch.randn(16)
    lin = torch.randn(10, 16)
    keep_out = torch.tensor([0, 3, 4, 15])
    keep_in = torch.tensor([7, 1])
    w, b, l = gather_channels([conv, bn, lin], [keep_out, keep_out, None], [keep_in, None, keep_out])
    assert torch.equal(w, conv[keep_out][:, keep_in])
    assert torch.equal(b, bn[keep_out])
    assert torch.equal(l, lin[:, keep_out])


def test_accepts_lists_and_int32(compiled):
    t = torch.arange(12.0).reshape(4, 3)
    (out,) = gather_channels([t], [[3, 0]], [torch.tensor([2], dtype=torch.int32)])
    assert torch.equal(out, torch.tensor([[11.0], [2.0]]))


def test_empty_list():
    assert gather_channels([]) == []


IMPLS = {
    "kernel": gather_channels,
    "reference": gather_channels_reference,
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "rows, cols, match",
    [
        ([torch.tensor([], dtype=torch.long)], [None], r"rows\[0\] is empty"),
        ([torch.tensor([0, 4])], [None], r"rows\[0\]\[1\] = 4 is out of range for dim 0 .*allowed 0..3"),
        ([None], [torch.tensor([-1])], r"cols\[0\]\[0\] = -1 is out of range for dim 1 .*allowed 0..2"),
        ([torch.tensor([[0]])], [None], r"rows\[0\] must be 1-D"),
    ],
)
def test_bad_indices(compiled, impl, rows, cols, match):
    t = torch.zeros(4, 3)
    with pytest.raises((RuntimeError, ValueError, IndexError), match=match):
        IMPLS[impl]([t], rows, cols)


def test_bad_arguments(compiled):
    with pytest.raises(ValueError, match="rows has 2 entries but tensors has 1"):
        gather_channels([torch.zeros(3)], [None, None])
    with pytest.raises(TypeError, match="boolean mask"):
        gather_channels([torch.zeros(3)], [torch.tensor([True, False, True])])
    with pytest.raises((RuntimeError, ValueError), match=r"cols\[0\] is given but tensors\[0\] has only"):
        gather_channels([torch.zeros(3)], None, [torch.tensor([0])])


def _opcheck_inputs(requires_grad: bool, device="cpu"):
    conv = torch.randn(6, 4, 3, 3, dtype=torch.float64, device=device, requires_grad=requires_grad)
    bias = torch.randn(6, dtype=torch.float64, device=device, requires_grad=requires_grad)
    rows = [torch.tensor([5, 1, 2], device=device), torch.tensor([5, 1, 2], device=device)]
    cols = [torch.tensor([3, 0], device=device), None]
    return [conv, bias], rows, cols


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(compiled, requires_grad):
    tensors, rows, cols = _opcheck_inputs(requires_grad)
    torch.library.opcheck(torch.ops.lostprune.gather_channels.default, (tensors, rows, cols))


def test_gradient(compiled):
    tensors, rows, cols = _opcheck_inputs(True)

    def f(conv, bias):
        a, b = torch.ops.lostprune.gather_channels([conv, bias], rows, cols)
        return a.sum() * 2 + (b * b).sum()

    assert torch.autograd.gradcheck(f, tuple(tensors))


def test_torch_compile_traces_the_op(compiled):
    tensors, rows, cols = _opcheck_inputs(False)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def f(conv, bias):
        a, b = gather_channels([conv, bias], rows, cols)
        return a.sum() + b.sum()

    expected = sum(t.sum() for t in gather_channels_reference(tensors, rows, cols))
    torch.testing.assert_close(f(*tensors), expected)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_reference(compiled, dtype):
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        tensors, rows, cols = _random_case(gen, dtype, device="cuda")
        for o, r in zip(gather_channels(tensors, rows, cols), gather_channels_reference(tensors, rows, cols)):
            assert o.device.type == "cuda" and torch.equal(o, r)


@pytest.mark.cuda
def test_cuda_opcheck(compiled):
    tensors, rows, cols = _opcheck_inputs(True, device="cuda")
    torch.library.opcheck(torch.ops.lostprune.gather_channels.default, (tensors, rows, cols))
