"""The sparse conv epilogue (residual add + ReLU) against references, and convert(fuse=True):
BatchNorm folding, ReLU / residual fusion found with torch.fx, the cases it must refuse
(training mode, shared or multi-use layers, untraceable models), and FastMaxPool2d."""

import pytest
import torch
import torch.nn.functional as F
from masks_made_elsewhere import filters_removed
from torch import fx, nn

import lostprune
from lostprune import models
from lostprune.models import randomize_norm_statistics
from lostprune.ops import pack_weight, sparse_conv2d
from lostprune.ops.sparse import sparse_conv2d_reference
from lostprune.sparse import SparseConv2d, convert, fuse, report
from lostprune.sparse.fusion import FastMaxPool2d, fold_batchnorm
from lostprune.structure import FoldedConv2d


def _rel_err(out, ref):
    return ((out.double() - ref.double()).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _sparse_weight(shape, sparsity, gen, dtype=torch.float32):
    w = torch.randn(shape, generator=gen, dtype=dtype)
    return w.masked_fill(torch.rand(shape, generator=gen) < sparsity, 0.0)


# --------------------------------------------------------------------------- the op's epilogue
# (batch, Cin, Cout, H, W, kernel, stride, padding, dilation, groups); batch 17 runs the
# interleaved small-image path for 16 images plus one single image.
EPILOGUE_CASES = [
    (1, 8, 16, 13, 11, 3, 1, 1, 1, 1),
    (17, 6, 10, 7, 9, 3, 2, 1, 1, 2),
    (2, 4, 6, 31, 29, 5, 1, 2, 2, 1),
    (1, 64, 64, 56, 56, 3, 1, 1, 1, 1),
    (3, 16, 32, 15, 15, 1, 2, 0, 1, 1),
]


@pytest.mark.parametrize("case", EPILOGUE_CASES)
@pytest.mark.parametrize("with_residual,relu", [(False, True), (True, False), (True, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_epilogue_matches_reference(compiled, case, with_residual, relu, dtype):
    n, cin, cout, h, w, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    weight = _sparse_weight((cout, cin // g, k, k), 0.8, gen, dtype)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    dense = F.conv2d(x, weight, bias, s, p, d, g)
    residual = torch.randn(dense.shape, generator=gen, dtype=dtype) if with_residual else None
    expected = dense + residual if with_residual else dense
    expected = expected.relu() if relu else expected
    out = sparse_conv2d(x, pack_weight(weight), bias, s, p, d, g, residual=residual, relu=relu)
    assert _rel_err(out, expected) <= (1e-5 if dtype == torch.float32 else 1e-12)
    if relu:
        assert (out >= 0).all()


def test_epilogue_noncontiguous_residual_and_nan(compiled):
    gen = torch.Generator().manual_seed(1)
    weight = _sparse_weight((8, 4, 3, 3), 0.7, gen)
    x = torch.randn(2, 4, 10, 10, generator=gen)
    residual = torch.randn(2, 10, 10, 8, generator=gen).permute(0, 3, 1, 2)  # channels-last view
    residual[0, 0, 0, 0] = float("nan")
    out = sparse_conv2d(x, pack_weight(weight), None, 1, 1, residual=residual, relu=True)
    expected = (F.conv2d(x, weight, None, 1, 1) + residual).relu()
    assert torch.isnan(out[0, 0, 0, 0])  # ReLU keeps NaN, like torch.relu
    mask = ~torch.isnan(expected)
    assert torch.allclose(out[mask], expected[mask], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_epilogue_opcheck(compiled, requires_grad, relu):
    gen = torch.Generator().manual_seed(2)
    packed = pack_weight(_sparse_weight((6, 4, 3, 3), 0.6, gen, torch.float64))
    x = torch.randn(2, 4, 7, 7, generator=gen, dtype=torch.float64, requires_grad=requires_grad)
    values = packed.values.clone().requires_grad_(requires_grad)
    bias = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=requires_grad)
    residual = torch.randn(2, 6, 7, 7, generator=gen, dtype=torch.float64, requires_grad=requires_grad)
    args = (
        x,
        values,
        packed.col_index,
        packed.row_ptr,
        list(packed.shape),
        bias,
        [1, 1],
        [1, 1],
        [1, 1],
        1,
        residual,
        relu,
    )
    torch.library.opcheck(torch.ops.lostprune.sparse_conv2d.default, args)
    if requires_grad:
        assert torch.autograd.gradcheck(
            lambda *t: torch.ops.lostprune.sparse_conv2d(
                t[0],
                t[1],
                packed.col_index,
                packed.row_ptr,
                list(packed.shape),
                t[2],
                [1, 1],
                [1, 1],
                [1, 1],
                1,
                t[3],
                relu,
            ),
            (x, values, bias, residual),
        )


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_epilogue_bad_residual(compiled, impl):
    gen = torch.Generator().manual_seed(3)
    packed = pack_weight(_sparse_weight((6, 4, 3, 3), 0.6, gen))
    x = torch.randn(2, 4, 7, 7, generator=gen)

    def call(residual):
        if impl == "kernel":
            return sparse_conv2d(x, packed, None, 1, 1, residual=residual)
        return sparse_conv2d_reference(
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
            residual,
            False,
        )

    with pytest.raises((RuntimeError, ValueError), match=r"residual must have the output's shape"):
        call(torch.randn(2, 6, 1, 1))  # would broadcast: refused
    with pytest.raises((RuntimeError, TypeError), match="residual"):
        call(torch.randn(2, 6, 7, 7, dtype=torch.float64))


# --------------------------------------------------------------------------- convert(fuse=True)
def _pruned(name, ratio=0.9, seed=0):
    torch.manual_seed(seed)
    model = randomize_norm_statistics(models.create(name), seed=seed).eval()
    pruned = lostprune.prune(model, "wt", ratio, progress=False).model
    lostprune.remove_masks(pruned)
    return pruned


@pytest.mark.parametrize("name,size", [("resnet20", 32), ("resnet18", 64), ("small_cnn", 32)])
def test_fused_model_matches_dense(compiled, name, size):
    pruned = _pruned(name)
    x = torch.randn(2, 3, size, size)
    fused = convert(pruned, 0.5, example_input=x, calibrate=False, progress=False)
    decisions = report(fused).layers
    with torch.no_grad():
        assert _rel_err(fused(x), pruned(x)) <= 1e-5
        assert _rel_err(fused(x[:1]), pruned(x[:1])) <= 1e-5
    assert isinstance(fused, fx.GraphModule) and fused.input_size == pruned.input_size
    bns = [m for m in pruned.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())  # every BN here follows a conv
    assert sum("bn" in d.fused for d in decisions) == len(bns)
    sparse = [d for d in decisions if d.converted and d.kind == "conv"]
    assert sparse and all(d.fused.endswith("relu") or d.name.endswith("conv2") for d in sparse)
    if name.startswith("resnet"):
        assert any(d.fused == "bn+add+relu" for d in sparse)
    assert "fused" in str(report(fused))


def test_fuse_false_and_training_mode_keep_batchnorm(compiled):
    pruned = _pruned("resnet20")
    x = torch.randn(2, 3, 32, 32)
    plain = convert(pruned, 0.5, calibrate=False, fuse=False, progress=False)
    assert not isinstance(plain, fx.GraphModule) and any(
        isinstance(m, nn.BatchNorm2d) for m in plain.modules()
    )
    pruned.train()
    training = convert(pruned, 0.5, calibrate=False, progress=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in training.modules())
    assert any("training mode" in n for n in report(training).notes)
    assert all(d.fused == "" for d in report(training).layers)
    training.eval(), pruned.eval()
    with torch.no_grad():
        assert _rel_err(training(x), pruned(x)) <= 1e-5
        assert _rel_err(plain(x), pruned(x)) <= 1e-5


class _Odd(nn.Module):
    """BN before any conv, a BN shared by two convs, a conv whose output has two readers,
    a conv module called twice, a BN in training mode, a broadcast add and a max-pool."""

    def __init__(self):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_c = nn.BatchNorm2d(8)
        self.twice = nn.Conv2d(8, 8, 1)
        self.d = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_train = nn.BatchNorm2d(8)
        self.e = nn.Conv2d(8, 8, 3, padding=1)
        self.offset = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        x = self.bn_in(x)
        y = F.relu(self.shared(self.a(x))) + self.shared(self.b(x))  # shared BN, folded into both
        c = self.c(y)
        y = self.bn_c(c).relu() + c  # c has two readers: nothing folds into it
        y = self.twice(self.twice(y))
        y = torch.relu(self.bn_train(self.d(y)))
        y = self.e(y) + self.offset  # broadcast: not fused as a residual
        return self.pool(y)


def test_fusion_refuses_what_it_cannot_fold(compiled):
    torch.manual_seed(0)
    model = randomize_norm_statistics(_Odd()).eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            with torch.no_grad():
                m.weight.mul_(torch.rand_like(m.weight) > 0.8)
    model.bn_train.train()
    x = torch.randn(2, 3, 12, 12)
    fused = convert(model, 0.5, example_input=x, calibrate=False, progress=False)
    by = {d.name: d for d in report(fused).layers}
    assert by["a"].fused == "bn+relu" and by["b"].fused == "bn"
    assert by["c"].fused == "" and by["e"].fused == ""
    assert "called 2 times" in by["twice"].reason
    assert "training mode" in by["d"].reason and by["d"].fused == ""
    assert isinstance(fused.get_submodule("pool"), FastMaxPool2d)
    assert fused.get_submodule("bn_train").training  # modes survive the recording passes
    with torch.no_grad():  # bn_train uses batch statistics on both sides
        assert _rel_err(fused(x), model(x)) <= 1e-5
    assert {"bn_in", "bn_c", "bn_train"} <= {
        n for n, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)
    }


def test_fusion_outputs_with_untraceable_model(compiled):
    class Branchy(nn.Module):
        input_size = (3, 8, 8)

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
                return self.bn(self.conv(x))
            return self.conv(x)

    model = Branchy().eval()
    with torch.no_grad():
        model.conv.weight.mul_(torch.rand_like(model.conv.weight) > 0.9)
    out = convert(model, 0.5, calibrate=False, progress=False)
    assert any("torch.fx cannot trace" in n for n in report(out).notes)
    assert isinstance(out.conv, SparseConv2d) and isinstance(out.bn, nn.BatchNorm2d)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert _rel_err(out(x), model(x)) <= 1e-5


def test_fold_batchnorm_keeps_pattern_and_matches():
    gen = torch.Generator().manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(_sparse_weight(conv.weight.shape, 0.7, gen))
    bn = randomize_norm_statistics(nn.Sequential(nn.BatchNorm2d(6)))[0].eval()
    weight, bias = fold_batchnorm(conv.weight, conv.bias, bn)
    assert bool(((weight == 0) >= (conv.weight == 0)).all())  # pruned weights stay zero
    x = torch.randn(2, 4, 9, 9, generator=gen)
    with torch.no_grad():
        assert _rel_err(F.conv2d(x, weight, bias, 1, 1), bn(conv(x))) <= 1e-6


@pytest.fixture(scope="module")
def sliced_with_border_terms():
    torch.manual_seed(0)
    model = randomize_norm_statistics(models.create("resnet20"))  # removed filters leave BN shifts
    sliced = lostprune.slice_model(filters_removed(model, 0.5)).eval()
    assert any(isinstance(m, FoldedConv2d) for m in sliced.modules())
    return sliced


def test_fuse_folds_batchnorm_into_sliced_convs_and_their_border_terms(sliced_with_border_terms):
    sliced = sliced_with_border_terms
    fused = fuse(sliced)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    folded = [m for m in fused.modules() if isinstance(m, FoldedConv2d)]
    assert len(folded) == sum(isinstance(m, FoldedConv2d) for m in sliced.modules())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert _rel_err(fused(x), sliced(x)) <= 1e-5
    assert fused.input_size == sliced.input_size  # plain attributes kept
    with pytest.raises(ValueError, match="fuse: the model is in training mode"):
        fuse(sliced.train())
    sliced.eval()


def test_convert_keeps_border_folding_convs_dense(compiled, sliced_with_border_terms):
    sliced = lostprune.prune(
        sliced_with_border_terms, "wt", 0.9, progress=False
    ).model.eval()  # sparse enough
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    converted = convert(sliced, example_input=x, calibrate=False, progress=False)
    assert report(converted).converted  # the plain convs go sparse
    decisions = {d.name: d for d in report(converted).layers}
    for name, module in sliced.named_modules():
        if isinstance(module, FoldedConv2d):
            assert not decisions[name].converted and "FoldedConv2d" in decisions[name].reason
    with torch.no_grad():
        assert _rel_err(converted(x), sliced(x)) <= 1e-5


@pytest.mark.parametrize(
    "args", [(3, 2, 1), (2, 2, 0), (3, 1, 1), ((3, 2), (2, 1), (1, 0)), (5, 3, 2), (2, None, 0)]
)
@pytest.mark.parametrize("shape", [(1, 64, 112, 112), (3, 5, 17, 13), (2, 1, 4, 4)])
def test_fast_max_pool_is_exact(args, shape):
    kernel, stride, padding = args
    pool = nn.MaxPool2d(kernel, stride, padding)
    x = torch.randn(shape)
    x.view(-1)[7] = float("nan")
    torch.testing.assert_close(FastMaxPool2d.from_pool(pool)(x), pool(x), rtol=0, atol=0, equal_nan=True)
    assert FastMaxPool2d.from_pool(pool)(x).is_contiguous()
    # an input that needs its gradient takes torch's other 1-d path (with indices): same values
    xg = x.clone().requires_grad_()
    torch.testing.assert_close(FastMaxPool2d.from_pool(pool)(xg), pool(x), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_fast_max_pool_is_exact_in_every_float_dtype(dtype):
    x = torch.randn(2, 3, 17, 13, generator=torch.Generator().manual_seed(3)).to(dtype)
    torch.testing.assert_close(FastMaxPool2d(3, 2, 1)(x), nn.MaxPool2d(3, 2, 1)(x), rtol=0, atol=0)


def test_fast_max_pool_falls_back():
    x = torch.randn(2, 3, 9, 9)
    for pool in (nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d(3, 2, 1, dilation=2)):
        torch.testing.assert_close(FastMaxPool2d.from_pool(pool)(x), pool(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="pad should be"):
        FastMaxPool2d(2, 1, 2)(x)
    with pytest.raises(RuntimeError, match="Output size is too small"):  # torch's own message
        FastMaxPool2d(3, 2, 0)(torch.randn(1, 2, 8, 1))
    with pytest.raises(RuntimeError, match="stride should not be zero"):  # not the kernel's size
        FastMaxPool2d(3, stride=0)(x)
    for empty in ((), []):  # torch's default stride, the kernel's size
        torch.testing.assert_close(
            FastMaxPool2d(3, stride=empty)(x), nn.MaxPool2d(3, stride=empty)(x), rtol=0, atol=0
        )
    # channels_last stays channels_last (torch's kernel for that layout is vectorized already)
    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    out = FastMaxPool2d(3, 2, 1)(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, nn.MaxPool2d(3, 2, 1)(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize(
    "dtype, tol",
    [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)],
)
def test_cuda_epilogue_matches_reference(compiled, dtype, tol):
    for case in EPILOGUE_CASES:
        n, cin, cout, h, w, k, s, p, d, g = case
        gen = torch.Generator().manual_seed(sum(case))
        weight = _sparse_weight((cout, cin // g, k, k), 0.8, gen, torch.float64)
        x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64)
        bias = torch.randn(cout, generator=gen, dtype=torch.float64)
        dense = F.conv2d(x, weight, bias, s, p, d, g)
        residual = torch.randn(dense.shape, generator=gen, dtype=torch.float64)
        out = sparse_conv2d(
            x.to("cuda", dtype),
            pack_weight(weight).to("cuda", dtype),
            bias.to("cuda", dtype),
            s,
            p,
            d,
            g,
            residual=residual.to("cuda", dtype),
            relu=True,
        )
        assert _rel_err(out.double().cpu(), (dense + residual).relu()) <= tol
    gen = torch.Generator().manual_seed(5)
    packed = pack_weight(_sparse_weight((6, 4, 3, 3), 0.6, gen, torch.float64)).to("cuda")
    args = (
        torch.randn(2, 4, 7, 7, dtype=torch.float64, device="cuda", requires_grad=True),
        packed.values.clone().requires_grad_(),
        packed.col_index,
        packed.row_ptr,
        list(packed.shape),
        None,
        [1, 1],
        [1, 1],
        [1, 1],
        1,
        torch.randn(2, 6, 7, 7, dtype=torch.float64, device="cuda"),
        True,
    )
    torch.library.opcheck(torch.ops.lostprune.sparse_conv2d.default, args)
