"""Masked sparse conv / linear: packing, kernels against references, every internal path
(plane layouts; band and direct reading, chunks, wrapped and lane-by-lane band gathers;
batch, tile and channel parallelism), bad input, op checks, autograd, torch.compile,
SparseConv2d / SparseLinear, convert() and its autotune cache."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lostprune
from lostprune import models
from lostprune.ops import (
    PackedWeight,
    pack_weight,
    sparse_conv2d,
    sparse_conv2d_reference,
    sparse_linear,
)
from lostprune.sparse import SparseConv2d, SparseLinear, convert, report


def _sparse_weight(shape, sparsity, gen, dtype=torch.float64):
    w = torch.randn(shape, generator=gen, dtype=dtype)
    return w.masked_fill(torch.rand(shape, generator=gen) < sparsity, 0.0)


def _assert_close(out, ref, rtol):
    """Max error relative to the output's scale (elementwise relative error is meaningless
    for outputs that cancel to ~0)."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    scale = ref.abs().max().clamp_min(1e-30)
    err = ((out.double() - ref.double()).abs().max() / scale).item()
    assert err <= rtol, f"relative error {err:.3g} > {rtol:.1g}"


# --------------------------------------------------------------------------- packing
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_pack_roundtrip_and_layout():
    gen = torch.Generator().manual_seed(0)
    w = _sparse_weight((6, 4, 3, 3), 0.7, gen, torch.float32)
    packed = pack_weight(w)
    assert isinstance(packed, PackedWeight)
    assert packed.col_index.dtype == torch.int32 and packed.row_ptr.dtype == torch.int32
    assert packed.nnz == int((w != 0).sum()) and packed.shape == (6, 4, 3, 3)
    assert packed.density == pytest.approx(packed.nnz / w.numel())
    assert torch.equal(packed.to_dense(), w)
    for o in range(6):  # canonical CSR: columns ascend within each row
        cols = packed.col_index[packed.row_ptr[o] : packed.row_ptr[o + 1]]
        assert torch.all(cols[1:] > cols[:-1])
    # the same structure as torch's CSR of the flattened weight
    csr = w.reshape(6, -1).to_sparse_csr()
    assert torch.equal(packed.row_ptr.long(), csr.crow_indices()) and torch.equal(
        packed.col_index.long(), csr.col_indices()
    )


def test_pack_with_mask_and_prune_format():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(5, 7, generator=gen)
    mask = (torch.rand(5, 7, generator=gen) > 0.5).float()
    assert torch.equal(pack_weight(w, mask).to_dense(), w * mask)
    half = pack_weight(w).to(torch.float16)
    assert half.dtype == torch.float16 and half.col_index.dtype == torch.int32
    empty = pack_weight(torch.zeros(3, 2, 1, 1))
    assert empty.nnz == 0 and torch.equal(empty.row_ptr, torch.zeros(4, dtype=torch.int32))


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda: pack_weight(torch.ones(3, 3, dtype=torch.int64)), "floating-point"),
        (lambda: pack_weight(torch.ones(3, 3, 3)), "2-D .linear. or 4-D .conv."),
        (lambda: pack_weight(torch.ones(3, 3), torch.ones(3, 4)), "mask has shape"),
    ],
)
def test_pack_errors(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        bad()


# --------------------------------------------------------------------------- conv kernel
# (N, Cin, Cout, H, W, kernel, stride, padding, dilation, groups)
CONV_CASES = [
    (1, 3, 8, 9, 11, 3, 1, 1, 1, 1),
    (2, 4, 6, 10, 7, 3, 2, 1, 1, 2),
    (1, 8, 8, 15, 15, 1, 2, 0, 1, 1),  # 1x1 stride 2: one phase plane of four
    (3, 6, 9, 12, 13, 5, 3, 2, 2, 3),
    (4, 5, 5, 9, 9, 3, 1, 4, 3, 5),  # depthwise, padding wider than the kernel reach
    (1, 2, 3, 4, 5, (1, 3), (1, 2), (0, 1), (2, 1), 1),
    (1, 3, 16, 33, 31, 7, 2, 3, 1, 1),  # resnet stem shape, odd sizes
    (1, 300, 20, 9, 9, 3, 1, 1, 1, 1),  # many input channels: several L1 chunks
    (2, 64, 32, 40, 40, 3, 1, 1, 1, 1),  # many vectors per nonzero: sorted aligned path
    (5, 32, 16, 20, 20, 3, 2, 1, 1, 1),  # batch > threads: one image per task
    (1, 7, 5, 1, 1, 1, 1, 0, 1, 1),  # single output position
    (2, 4, 4, 6, 6, 3, 1, 0, 1, 1),  # no padding
    (16, 6, 9, 7, 7, 3, 1, 1, 1, 3),  # small planes, batch 16: images interleaved
    (17, 8, 8, 9, 9, 3, 2, 1, 1, 1),  # one interleaved group + one image on its own
    (33, 24, 16, 5, 6, 3, 1, 1, 2, 1),  # two groups + one, dilation
    # single images read through the band (im2col of a tile) when enough output channels
    # share its rows (nnz / codes >= 4), else the planes in place ("direct"):
    (1, 64, 48, 19, 23, 3, 1, 1, 1, 1),  # band: several tiles and chunks
    (1, 96, 128, 9, 9, 3, 1, 1, 1, 1),  # band; at 95 %: a larger chunk budget (3 chunks)
    (1, 16, 32, 40, 3, 3, 1, 1, 1, 1),  # band, 3 columns: rows gathered lane by lane
    (1, 64, 64, 9, 9, 1, 1, 0, 1, 1),  # band, 1x1: plane rows without a gap
    (2, 32, 2, 15, 15, 3, 1, 1, 1, 1),  # direct: 2 channels never repay a band
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"case{i}" for i in range(len(CONV_CASES))])
@pytest.mark.parametrize("sparsity", [0.0, 0.6, 0.95])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_matches_reference(compiled, case, sparsity, dtype):
    n, cin, cout, h, w, k, s, p, d, g = case
    kh, kw = (k, k) if isinstance(k, int) else k
    gen = torch.Generator().manual_seed(hash((case, sparsity)) % 2**31)
    weight = _sparse_weight((cout, cin // g, kh, kw), sparsity, gen).to(dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=dtype)
    packed = pack_weight(weight)
    out = sparse_conv2d(x, packed, bias, s, p, d, g)
    ref = F.conv2d(x, weight, bias, s, p, d, g)
    _assert_close(out, ref, 1e-5 if dtype == torch.float32 else 1e-12)
    assert out.is_contiguous()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "cout, size", [(24, (23, 19)), (64, (7, 7)), (2, (23, 19))], ids=["band-tiles", "band-one-tile", "direct"]
)
def test_conv_thread_counts(compiled, threads, cout, size):
    """Batch 1 split by tiles (several tiles) or by output-channel blocks (one tile), batch 3
    by images, at 1 and 2 threads, band and direct layouts; with the fused epilogue."""
    gen = torch.Generator().manual_seed(2)
    weight = _sparse_weight((cout, 16, 3, 3), 0.8, gen, torch.float32)
    bias = torch.randn(cout, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n in (1, 3):
            x = torch.randn(n, 16, *size, generator=gen)
            ref = F.conv2d(x, weight, bias, 1, 1)
            residual = torch.randn_like(ref)
            _assert_close(sparse_conv2d(x, pack_weight(weight), bias, 1, 1), ref, 1e-5)
            _assert_close(
                sparse_conv2d(x, pack_weight(weight), bias, 1, 1, residual=residual, relu=True),
                torch.relu(ref + residual),
                1e-5,
            )
    finally:
        torch.set_num_threads(before)


def test_conv_noncontiguous_input_and_empty_rows(compiled):
    gen = torch.Generator().manual_seed(3)
    weight = _sparse_weight((8, 6, 3, 3), 0.5, gen, torch.float32)
    weight[[1, 5]] = 0  # output channels with no nonzeros: bias only
    bias = torch.randn(8, generator=gen)
    x = torch.randn(2, 6, 12, 10, generator=gen).to(memory_format=torch.channels_last)
    out = sparse_conv2d(x, pack_weight(weight), bias, 1, "same")
    _assert_close(out, F.conv2d(x, weight, bias, 1, 1), 1e-5)
    assert torch.equal(out[:, 1], bias[1].expand(2, 12, 10))
    zero = sparse_conv2d(x, pack_weight(torch.zeros_like(weight)), bias, 1, 1)
    assert torch.equal(zero, bias.view(1, 8, 1, 1).expand_as(zero))


def test_conv_empty_batch(compiled):
    weight = torch.randn(4, 3, 3, 3)
    out = sparse_conv2d(torch.zeros(0, 3, 8, 8), pack_weight(weight), None, 1, 1)
    assert out.shape == (0, 4, 8, 8)


# --------------------------------------------------------------------------- linear kernel
@pytest.mark.parametrize("rows", [1, 3, 15, 16, 17, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_matches_reference(compiled, rows, dtype):
    gen = torch.Generator().manual_seed(rows)
    weight = _sparse_weight((30, 53), 0.8, gen).to(dtype)
    bias = torch.randn(30, generator=gen, dtype=dtype)
    x = torch.randn(rows, 53, generator=gen, dtype=dtype)
    out = sparse_linear(x, pack_weight(weight), bias)
    _assert_close(out, F.linear(x, weight, bias), 1e-5 if dtype == torch.float32 else 1e-12)


def test_linear_shapes(compiled):
    gen = torch.Generator().manual_seed(4)
    weight = _sparse_weight((7, 5), 0.5, gen, torch.float32)
    packed = pack_weight(weight)
    for shape in [(5,), (2, 3, 5), (4, 1, 6, 5)]:
        x = torch.randn(shape, generator=gen)
        _assert_close(sparse_linear(x, packed), F.linear(x, weight), 1e-5)
    x = torch.randn(20, 10, generator=gen)[:, ::2]  # non-contiguous
    _assert_close(sparse_linear(x, packed), F.linear(x, weight), 1e-5)


# --------------------------------------------------------------------------- bad input
def _conv_args(**change):
    weight = torch.randn(4, 3, 3, 3)
    packed = pack_weight(weight)
    args = dict(
        x=torch.randn(1, 3, 8, 8),
        values=packed.values,
        col_index=packed.col_index,
        row_ptr=packed.row_ptr,
        weight_shape=[4, 3, 3, 3],
        bias=None,
        stride=[1, 1],
        padding=[1, 1],
        dilation=[1, 1],
        groups=1,
    )
    args.update(change)
    return args


def _call_op(args):
    return torch.ops.lostprune.sparse_conv2d(*args.values())


CONV_OP_ERRORS = [
    (dict(x=torch.ones(1, 3, 8, 8, dtype=torch.int32)), "x must be a floating-point tensor"),
    (
        dict(x=torch.randn(1, 5, 8, 8)),
        r"x has 5 channels but the packed weight expects 3 \(3 per group x 1 groups\)",
    ),
    (dict(x=torch.randn(1, 3, 8, 8).half()), "CPU kernel supports float32 and float64"),
    (dict(x=torch.randn(3, 8, 8)), r"x must be 4-D \[N, C, H, W\]"),
    (dict(values=torch.randn(4)), "col_index has 108 entries but values has 4"),
    (dict(values=torch.randn(108).double()), "values has dtype Double but x has dtype Float"),
    (dict(col_index=torch.arange(108)), "col_index must be int32"),
    (dict(row_ptr=torch.zeros(3, dtype=torch.int32)), "row_ptr has 3 entries but weight_shape.0. = 4"),
    (
        dict(row_ptr=torch.tensor([0, 50, 20, 80, 108], dtype=torch.int32)),
        "row_ptr is not a valid CSR row pointer at output channel 1",
    ),
    (
        dict(row_ptr=torch.tensor([0, 27, 54, 81, 100], dtype=torch.int32)),
        "row_ptr is not a valid CSR row pointer at output channel 4",
    ),
    (
        dict(col_index=torch.zeros(108, dtype=torch.int32)),
        r"col_index must increase strictly within each row",
    ),
    (
        dict(col_index=(torch.arange(108, dtype=torch.int32) % 27).index_fill_(0, torch.tensor([26]), 27)),
        r"col_index\[26\] = 27 is out of range .*allowed 0..26",
    ),
    (dict(bias=torch.randn(5)), r"bias must have shape \[4\]"),
    (dict(weight_shape=[4, 3, 3]), "weight_shape must be"),
    (dict(groups=2), "output channels are not divisible by groups = 2|x has 3 channels"),
    (dict(stride=[0, 1]), "stride entries must be >= 1"),
    (dict(padding=[-1, 0]), "padding entries must be >= 0"),
    (dict(x=torch.randn(1, 3, 2, 2), padding=[0, 0]), "too small for a 3x3 kernel"),
]


@pytest.mark.parametrize("change, match", CONV_OP_ERRORS, ids=[m[:30] for _, m in CONV_OP_ERRORS])
def test_conv_op_errors(compiled, change, match):
    with pytest.raises(RuntimeError, match=match):
        _call_op(_conv_args(**change))


IMPLS = {
    "kernel": sparse_conv2d,
    "reference": lambda x, packed, *a: sparse_conv2d_reference(
        x,
        packed.values,
        packed.col_index,
        packed.row_ptr,
        list(packed.shape),
        None,
        [1, 1],
        [1, 1],
        [1, 1],
        1,
    ),
}


@pytest.mark.parametrize("impl", IMPLS)
def test_issue_bad_inputs(compiled, impl):
    """The bad inputs the issue names, through the wrapper and through the reference."""
    packed = pack_weight(torch.randn(4, 3, 3, 3))
    with pytest.raises((TypeError, RuntimeError), match="x must be a floating-point tensor"):
        IMPLS[impl](torch.ones(1, 3, 8, 8, dtype=torch.int64), packed)
    with pytest.raises((ValueError, RuntimeError), match="x has 5 channels but the packed weight expects 3"):
        IMPLS[impl](torch.randn(1, 5, 8, 8), packed)
    with pytest.raises((ValueError, RuntimeError), match="is on meta but x is on cpu"):
        IMPLS[impl](torch.randn(1, 3, 8, 8), packed.to("meta"))


def test_wrapper_errors(compiled):
    conv = pack_weight(torch.randn(4, 3, 3, 3))
    linear = pack_weight(torch.randn(4, 3))
    with pytest.raises(ValueError, match="use sparse_linear for linear weights"):
        sparse_conv2d(torch.randn(1, 3, 4, 4), linear)
    with pytest.raises(ValueError, match="expected a linear weight"):
        sparse_linear(torch.randn(2, 3), conv)
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        sparse_conv2d(torch.randn(1, 3, 8, 8), conv, None, 2, "same")
    even = pack_weight(torch.randn(4, 3, 2, 2))  # torch pads one more at the bottom / right
    with pytest.raises(ValueError, match="padding='same' needs a symmetric padding"):
        sparse_conv2d(torch.randn(1, 3, 8, 8), even, None, 1, "same")
    with pytest.raises(ValueError, match="stride must be an int or a pair"):
        sparse_conv2d(torch.randn(1, 3, 8, 8), conv, None, (1, 1, 1))
    with pytest.raises(
        (ValueError, RuntimeError),
        match="x has 4 features in its last dimension but the packed weight expects 3",
    ):
        sparse_linear(torch.randn(2, 4), linear)
    with pytest.raises((TypeError, RuntimeError), match="x must be a floating-point tensor"):
        sparse_linear(torch.ones(2, 3, dtype=torch.int64), linear)
    with pytest.raises(ValueError, match="is on meta but x is on cpu"):
        sparse_linear(torch.randn(2, 3), linear.to("meta"))
    with pytest.raises(RuntimeError, match=r"col_index\[0\] = 9 is out of range .*allowed 0..2"):
        torch.ops.lostprune.sparse_linear(
            torch.randn(1, 3),
            torch.ones(1),
            torch.tensor([9], dtype=torch.int32),
            torch.tensor([0, 1, 1, 1, 1], dtype=torch.int32),
            [4, 3],
            None,
        )


def test_other_float_dtypes_fall_back_on_cpu(compiled):
    """float16 / bfloat16 have no CPU kernel: the wrapper runs the reference."""
    weight = torch.randn(4, 3, 3, 3).bfloat16()
    x = torch.randn(1, 3, 6, 6).bfloat16()
    out = sparse_conv2d(x, pack_weight(weight), None, 1, 1)
    assert out.dtype == torch.bfloat16
    _assert_close(out.float(), F.conv2d(x.float(), weight.float(), None, 1, 1), 2e-2)


# --------------------------------------------------------------------------- op checks, autograd, compile
def _opcheck_conv(requires_grad, device="cpu"):
    gen = torch.Generator().manual_seed(5)
    packed = pack_weight(_sparse_weight((4, 3, 3, 3), 0.6, gen))
    x = torch.randn(2, 3, 7, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_(requires_grad)
    values = packed.values.to(device).requires_grad_(requires_grad)
    bias = torch.randn(4, dtype=torch.float64, device=device).requires_grad_(requires_grad)
    return (
        x,
        values,
        packed.col_index.to(device),
        packed.row_ptr.to(device),
        [4, 3, 3, 3],
        bias,
        [2, 1],
        [1, 0],
        [1, 2],
        1,
    )


def _opcheck_linear(requires_grad, device="cpu"):
    gen = torch.Generator().manual_seed(6)
    packed = pack_weight(_sparse_weight((5, 20), 0.6, gen))
    x = torch.randn(3, 20, generator=gen, dtype=torch.float64).to(device).requires_grad_(requires_grad)
    values = packed.values.to(device).requires_grad_(requires_grad)
    bias = torch.randn(5, dtype=torch.float64, device=device).requires_grad_(requires_grad)
    return (x, values, packed.col_index.to(device), packed.row_ptr.to(device), [5, 20], bias)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(compiled, requires_grad):
    torch.library.opcheck(torch.ops.lostprune.sparse_conv2d.default, _opcheck_conv(requires_grad))
    torch.library.opcheck(torch.ops.lostprune.sparse_linear.default, _opcheck_linear(requires_grad))


def test_gradients(compiled):
    conv_args = _opcheck_conv(True)
    x, values, col, row, shape, bias, *rest = conv_args
    assert torch.autograd.gradcheck(
        lambda x, v, b: torch.ops.lostprune.sparse_conv2d(x, v, col, row, shape, b, *rest), (x, values, bias)
    )
    x, values, col, row, shape, bias = _opcheck_linear(True)
    assert torch.autograd.gradcheck(
        lambda x, v, b: torch.ops.lostprune.sparse_linear(x, v, col, row, shape, b), (x, values, bias)
    )


def test_gradient_of_values_matches_dense(compiled):
    """d/dvalues equals the dense weight gradient at the stored positions."""
    gen = torch.Generator().manual_seed(7)
    weight = _sparse_weight((6, 4, 3, 3), 0.7, gen)
    packed = pack_weight(weight)
    x = torch.randn(2, 4, 9, 9, generator=gen, dtype=torch.float64)
    values = packed.values.clone().requires_grad_()
    sparse_conv2d(
        x, PackedWeight(values, packed.col_index, packed.row_ptr, packed.shape), None, 1, 1
    ).square().sum().backward()
    dense = weight.clone().requires_grad_()
    F.conv2d(x, dense, None, 1, 1).square().sum().backward()
    assert torch.allclose(values.grad, dense.grad[weight != 0], rtol=1e-10)


def test_torch_compile_traces_the_ops(compiled):
    gen = torch.Generator().manual_seed(8)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5))
    with torch.no_grad():
        for m in model:
            if hasattr(m, "weight"):
                m.weight.mul_((torch.rand(m.weight.shape, generator=gen) > 0.85).float())
    sparse = convert(model, 0.0, calibrate=False, progress=False)
    assert sum(isinstance(m, (SparseConv2d, SparseLinear)) for m in sparse.modules()) == 2
    x = torch.randn(2, 3, 6, 6, generator=gen)
    compiled_model = torch.compile(sparse, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        _assert_close(compiled_model(x), model(x), 1e-5)


# --------------------------------------------------------------------------- modules
def test_modules_from_dense_roundtrip_and_state_dict(compiled):
    gen = torch.Generator().manual_seed(9)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    linear = nn.Linear(10, 3)
    with torch.no_grad():
        conv.weight.mul_((torch.rand(conv.weight.shape, generator=gen) > 0.6).float())
        linear.weight.mul_((torch.rand(linear.weight.shape, generator=gen) > 0.6).float())
    sconv, slin = SparseConv2d.from_dense(conv), SparseLinear.from_dense(linear)
    x, v = torch.randn(2, 4, 9, 9, generator=gen), torch.randn(5, 10, generator=gen)
    with torch.no_grad():
        _assert_close(sconv(x), conv(x), 1e-5)
        _assert_close(slin(v), linear(v), 1e-5)
    assert torch.equal(sconv.to_dense().weight, conv.weight) and torch.equal(
        slin.to_dense().weight, linear.weight
    )
    assert "density=" in repr(sconv) and sconv.in_channels == 4 and sconv.stride == (2, 2)
    # a state dict of another sparsity pattern loads into a module of a different nnz
    other = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    target = SparseConv2d.from_dense(other)
    target.load_state_dict(sconv.state_dict())
    with torch.no_grad():
        _assert_close(target(x), conv(x), 1e-5)
    assert target.values.requires_grad == sconv.values.requires_grad


def test_module_trainable_values_keep_the_pattern(compiled):
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight[:, :, 0] = 0
    sparse = SparseConv2d.from_dense(conv)
    assert sparse.values.requires_grad
    opt = torch.optim.SGD(sparse.parameters(), lr=0.1)
    sparse(torch.randn(2, 3, 5, 5)).sum().backward()
    opt.step()
    assert torch.all(sparse.dense_weight()[:, :, 0] == 0)


def test_module_errors():
    with pytest.raises(ValueError, match="zeros padding only"):
        SparseConv2d.from_dense(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TypeError, match=re.escape("needs an nn.Conv2d")):
        SparseConv2d.from_dense(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="needs a linear weight"):
        SparseLinear(pack_weight(torch.randn(3, 3, 1, 1)))


# --------------------------------------------------------------------------- convert


@pytest.fixture(scope="module")
def pruned_resnet20():
    torch.manual_seed(0)
    return lostprune.prune(models.create("resnet20").eval(), "wt", 0.9, progress=False).model


def test_convert_pruned_model_matches_dense(compiled, pruned_resnet20):
    x = torch.randn(2, 3, 32, 32)
    sparse = convert(pruned_resnet20, min_sparsity=0.5, calibrate=False, progress=False)
    assert sparse is not pruned_resnet20  # deep copy by default
    assert SparseConv2d in {type(m) for m in sparse.modules()}
    decisions = report(sparse).layers
    assert len(decisions) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in pruned_resnet20.modules())
    for d in decisions:
        assert isinstance(sparse.get_submodule(d.name), (SparseConv2d, SparseLinear)) == d.converted
        if d.sparsity < 0.5:
            assert not d.converted and "min_sparsity" in d.reason
    with torch.no_grad():
        _assert_close(sparse(x), pruned_resnet20(x), 1e-5)
    assert "layers sparse" in str(report(sparse)) and report(pruned_resnet20) is None
    assert "sparse_conversion" not in str(sparse.state_dict().keys())


def test_convert_calibrates_on_example_input(compiled, pruned_resnet20):
    x = torch.randn(1, 3, 32, 32)
    sparse = convert(
        pruned_resnet20, min_sparsity=0.8, example_input=x, rounds=1, min_time=1e-3, progress=False
    )
    timed = [d for d in report(sparse).layers if d.dense_ms is not None]
    assert timed and all(d.sparse_ms > 0 and d.sparsity >= 0.8 for d in timed)
    for d in timed:  # the decision follows the measurement
        assert d.converted == (d.sparse_ms < d.dense_ms)
    with torch.no_grad():
        _assert_close(sparse(x), pruned_resnet20(x), 1e-5)
    assert pruned_resnet20.training is False and sparse.training is False


def test_convert_autotune_cache(compiled, pruned_resnet20, tmp_path, monkeypatch):
    """Timings are recorded once beside the kernels and reused by later conversions of the
    same layers; cache=False always measures."""
    from lostprune.sparse import autotune

    path = tmp_path / autotune.CACHE_NAME
    monkeypatch.setattr(autotune, "cache_path", lambda: path)
    monkeypatch.setattr(autotune, "_memory", {})
    x = torch.randn(1, 3, 32, 32)
    args = dict(min_sparsity=0.8, example_input=x, rounds=1, min_time=1e-3, progress=False)
    first = report(convert(pruned_resnet20, **args)).layers
    timed = [d for d in first if d.dense_ms is not None]
    assert timed and all(d.reason.startswith("calibrated:") for d in timed)
    assert path.is_file() and len(__import__("json").loads(path.read_text())) == len(timed)
    second = report(convert(pruned_resnet20, **args)).layers
    for a, b in zip(first, second):
        assert (a.dense_ms, a.sparse_ms, a.converted) == (b.dense_ms, b.sparse_ms, b.converted)
        if a.dense_ms is not None:
            assert b.reason.startswith("cached:")
    fresh = report(convert(pruned_resnet20, cache=False, **args)).layers
    assert all(d.reason.startswith("calibrated:") for d in fresh if d.dense_ms is not None)
    # another batch size is another key
    third = report(convert(pruned_resnet20, **{**args, "example_input": torch.randn(2, 3, 32, 32)})).layers
    assert all(d.reason.startswith("calibrated:") for d in third if d.dense_ms is not None)


def test_convert_plain_zeros_inplace_and_layer_selection(compiled):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 36, 4)
    )
    with torch.no_grad():
        model[0].weight[:, :, :2] = 0  # 8 of 9 taps zero: above the cost model's break-even
        model[0].weight[:, :, 2, :2] = 0
        model[4].weight[:, 20:] = 0
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    assert convert(model, 0.5, calibrate=False, inplace=True, layers=["0", "2"], progress=False) is model
    decisions = report(model).layers
    assert [d.name for d in decisions] == ["0", "2"]
    assert isinstance(model[0], SparseConv2d) and decisions[0].sparsity == pytest.approx(8 / 9)
    assert "cost model" in decisions[0].reason
    assert isinstance(model[2], nn.Conv2d) and "min_sparsity" in decisions[1].reason
    assert isinstance(model[4], nn.Linear)  # sparse, but not selected
    with torch.no_grad():
        _assert_close(model(x), expected, 1e-5)
    with pytest.raises(KeyError, match="no Conv2d / Linear layer named 'nope'"):
        convert(model, layers=["nope"], progress=False)
    with pytest.raises(ValueError, match="min_sparsity must lie in"):
        convert(model, min_sparsity=1.5, progress=False)


def test_convert_leaves_unsupported_layers_dense(compiled):
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"))
    with torch.no_grad():
        model[0].weight.zero_()
    decision = report(convert(model, 0.0, calibrate=False, progress=False)).layers[0]
    assert not decision.converted and "padding_mode" in decision.reason


@pytest.mark.filterwarnings("ignore:slice_model")
def test_bench_network_variants_include_sparse(compiled):
    """`lostprune bench` runs the converted model (calibrated at model.input_size) as its
    'sparse' variant."""
    from lostprune.bench import _variants

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    model.input_size = (3, 16, 16)
    pruned = lostprune.prune(model, "wt", 0.97, progress=False).model
    sparse = _variants(pruned)["sparse"]
    assert [d.name for d in report(sparse).layers] == ["0", "2"]
    assert all(d.dense_ms is not None for d in report(sparse).layers)  # calibrated


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize(
    "dtype, tol",
    [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)],
)
def test_cuda_matches_reference(compiled, dtype, tol):
    for i, case in enumerate(CONV_CASES):
        n, cin, cout, h, w, k, s, p, d, g = case
        kh, kw = (k, k) if isinstance(k, int) else k
        gen = torch.Generator().manual_seed(i)
        weight = _sparse_weight((cout, cin // g, kh, kw), 0.7, gen)
        x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64)
        bias = torch.randn(cout, generator=gen, dtype=torch.float64)
        ref = F.conv2d(x, weight, bias, s, p, d, g)
        packed = pack_weight(weight).to("cuda", dtype)
        out = sparse_conv2d(x.to("cuda", dtype), packed, bias.to("cuda", dtype), s, p, d, g)
        _assert_close(out.double().cpu(), ref, tol)
    weight = _sparse_weight((30, 53), 0.8, torch.Generator().manual_seed(0))
    x = torch.randn(17, 53, dtype=torch.float64)
    out = sparse_linear(x.to("cuda", dtype), pack_weight(weight).to("cuda", dtype))
    _assert_close(out.double().cpu(), F.linear(x, weight), tol)


# The CUDA kernel's tile plans (csrc/sparse_conv/sparse_conv.h, make_cuda_tiling): small and
# odd maps whose lanes split the nonzeros, several images per tile, column tiles, several
# channel chunks, two channel blocks, depthwise, and the unstaged path of huge dilations.
CUDA_TILE_CASES = [
    (1, 3, 5, 7, 7, 3, 1, 1, 1, 1),  # 49 positions: two 16-lane groups
    (1, 5, 3, 1, 1, 1, 1, 0, 1, 1),  # one position: 32 groups of one lane
    (3, 4, 6, 4, 4, 3, 1, 1, 1, 1),  # 16 positions, 3 images in one tile
    (7, 6, 10, 5, 3, 3, 2, 1, 1, 2),  # odd map, stride 2, groups, images spread over tiles
    (1, 2, 3, 5, 300, 3, 1, 1, 1, 1),  # wider than a tile: column tiles
    (2, 600, 2, 6, 6, 3, 1, 1, 1, 1),  # many input channels: several staged chunks
    (5, 3, 40, 3, 5, 1, 1, 0, 1, 1),  # 40 output channels: two blocks of channels
    (2, 48, 48, 9, 9, 3, 1, 1, 1, 48),  # depthwise
    (2, 2, 2, 40, 40, 3, 1, 0, 12, 1),  # dilation 12: small tiles
    (1, 2, 3, 120, 120, 3, 1, 0, 50, 1),  # dilation 50: nothing fits shared memory
    (32, 64, 64, 14, 14, 3, 1, 1, 1, 1),  # batch 32, 14x14 maps
    (800, 4, 80, 4, 4, 3, 1, 1, 1, 1),  # 100 tiles x 3 channel blocks: four channels per warp
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.float16, 5e-3)])
@pytest.mark.parametrize("case", CUDA_TILE_CASES, ids=[f"tile{i}" for i in range(len(CUDA_TILE_CASES))])
def test_cuda_tiles_match_reference(compiled, case, dtype, tol):
    n, cin, cout, h, w, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(7)
    weight = _sparse_weight((cout, cin // g, k, k), 0.8, gen)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64)
    ref = F.conv2d(x, weight, bias, s, p, d, g)
    residual = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    packed = pack_weight(weight).to("cuda", dtype)
    out = sparse_conv2d(x.to("cuda", dtype), packed, bias.to("cuda", dtype), s, p, d, g)
    _assert_close(out.double().cpu(), ref, tol)
    fused = sparse_conv2d(
        x.to("cuda", dtype),
        packed,
        bias.to("cuda", dtype),
        s,
        p,
        d,
        g,
        residual=residual.to("cuda", dtype),
        relu=True,
    )
    _assert_close(fused.double().cpu(), torch.relu(ref + residual), tol)


@pytest.mark.cuda
def test_cuda_opcheck_and_device_errors(compiled):
    torch.library.opcheck(torch.ops.lostprune.sparse_conv2d.default, _opcheck_conv(True, "cuda"))
    torch.library.opcheck(torch.ops.lostprune.sparse_linear.default, _opcheck_linear(True, "cuda"))
    packed = pack_weight(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="is on cpu but x is on cuda"):
        sparse_conv2d(torch.randn(1, 3, 8, 8, device="cuda"), packed)
    with pytest.raises(RuntimeError, match=r"values \(packed weight\) is on cpu but x is on cuda"):
        torch.ops.lostprune.sparse_conv2d(
            torch.randn(1, 3, 8, 8, device="cuda"),
            packed.values,
            packed.col_index,
            packed.row_ptr,
            [4, 3, 3, 3],
            None,
            [1, 1],
            [1, 1],
            [1, 1],
            1,
        )
