"""slice_model: a structurally masked model becomes a smaller dense model with the same function."""

import contextlib
import copy
import re
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from masks_made_elsewhere import filters_removed
from torch.nn.utils import prune as torch_prune

import lostprune
import lostprune.models as models
from lostprune.core.layers import prunable_layers
from lostprune.structure import FoldedConv2d, SlicingWarning, slice_model

CIFAR = ("resnet20", "resnet56", "vgg16_bn")
IMAGENET = ("resnet18", "resnet50", "resnet101", "mobilenet_v2", "densenet121", "deeplabv3_resnet50")
SLOW = {"resnet50", "resnet101", "densenet121", "deeplabv3_resnet50"}  # tens of millions of weights to prune


def with_nonzero_constants(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-like BN statistics: a removed filter then leaves a nonzero constant behind,
    which slicing must fold (a fresh model would leave exact zeros)."""
    return models.randomize_norm_statistics(model, seed)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with contextlib.suppress(NotImplementedError):  # an exported program's module: already in eval mode
        model.eval()
    with torch.no_grad():
        out = model(x)
    return out["out"] if isinstance(out, dict) else out


def assert_same_function(masked: nn.Module, sliced: nn.Module, x: torch.Tensor, rtol: float = 1e-5) -> None:
    expected, got = outputs(masked, x), outputs(sliced, x)
    assert got.shape == expected.shape
    error = float((got - expected).abs().max() / expected.abs().max())
    assert error <= rtol, f"relative error {error:.3g}"


def weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in prunable_layers(model).values())


# ----------------------------------------------------------------------------- real architectures
@pytest.mark.parametrize("method", ["ft", "pfp"])
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CIFAR + IMAGENET]
)
def test_sliced_model_equals_masked_model(name, method):
    """The group-aware variant (deployment): slicing drops exactly what the masks remove."""
    model = with_nonzero_constants(models.create(name))
    size = model.input_size if name in CIFAR else (3, 64, 64)
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1))
    data = {"data": x} if method == "pfp" else {}
    result = lostprune.prune(model, method, 0.5, example_input=x[:1], progress=False, coupled="sum", **data)
    state = {k: v.clone() for k, v in result.model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlicingWarning)  # every removed channel goes
        sliced = slice_model(result.model, x[:1])
    assert_same_function(result.model, sliced, x)
    report = sliced.slice_report
    # the masks drop a removed filter's constant too: nothing is left to fold, no zero stays
    assert report.channels_removed > 0 and report.channels_folded == 0 and not report.folded_layers
    assert not report.kept
    assert report.zeros_kept == 0
    # the accounting's achieved ratio is what really disappeared
    assert weight_count(sliced) == result.stats.prunable_params - round(
        result.stats.achieved_ratio * result.stats.prunable_params
    )
    assert report.params_after == sum(p.numel() for p in sliced.parameters())
    # a plain dense model of the same classes; the input model is untouched
    assert not torch_prune.is_pruned(sliced) and not any(hasattr(m, "weight_mask") for m in sliced.modules())
    for (name_a, a), (name_b, b) in zip(result.model.named_modules(), sliced.named_modules()):
        assert name_a == name_b and isinstance(b, type(a))
    assert all(torch.equal(v, state[k]) for k, v in result.model.state_dict().items())


@pytest.mark.parametrize("method", ["ft", "pfp"])
@pytest.mark.parametrize(
    "name", ["resnet20", "vgg16_bn", "mobilenet_v2", pytest.param("densenet121", marks=pytest.mark.slow)]
)
def test_paper_variant_slices_what_is_removable_and_says_what_stayed(name, method):
    """The paper's per-layer FT / PFP: slicing keeps the function, removes every channel no
    layer uses any more, and counts the masked weights that stay as zeros."""
    model = with_nonzero_constants(models.create(name))
    size = model.input_size if name in CIFAR else (3, 64, 64)
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1))
    data = {"data": x} if method == "pfp" else {}
    result = lostprune.prune(model, method, 0.5, example_input=x[:1], progress=False, **data)
    sliced = slice_model(result.model, x[:1])
    assert_same_function(result.model, sliced, x)
    report = sliced.slice_report
    assert report.channels_removed > 0
    kept = result.stats.prunable_params - round(result.stats.achieved_ratio * result.stats.prunable_params)
    # what stays is what the masks keep plus the zeros the report names
    assert weight_count(sliced) == kept + report.zeros_kept
    if report.zeros_kept:
        assert f"{report.zeros_kept:,} masked weights stay as zeros" in report.summary()


def test_sliced_model_runs_in_channels_last():
    """The layout README recommends for CPU inference: same function as NCHW."""
    model = with_nonzero_constants(models.create("resnet18")).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    result = lostprune.prune(model, "ft", 0.5, example_input=x[:1], progress=False)
    sliced = slice_model(result.model, x[:1]).eval()
    with torch.no_grad():
        expected = sliced(x)
        sliced = sliced.to(memory_format=torch.channels_last)
        got = sliced(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_border_term_and_bias_folds_on_resnet():
    model = filters_removed(with_nonzero_constants(models.create("resnet20")), 0.4)
    sliced = slice_model(model)
    assert_same_function(model, sliced, torch.randn(2, 3, 32, 32))
    kinds = sliced.slice_report.folded_layers
    # residual channels feed 3x3 zero-padded convs (border term) and the classifier (bias)
    assert kinds["layer1.0.conv1"] == "border" and isinstance(sliced.layer1[0].conv1, FoldedConv2d)
    assert kinds["fc"] == "bias"
    assert sliced.layer1[0].conv1.fold_weight.shape == (sliced.layer1[0].conv1.out_channels, 1, 3, 3)


def test_sliced_model_is_independent_of_the_input_model():
    result = lostprune.prune(with_nonzero_constants(models.create("small_cnn")), "ft", 0.5, progress=False)
    sliced = slice_model(result.model)
    ours = {p.data_ptr() for p in sliced.parameters()} | {b.data_ptr() for b in sliced.buffers()}
    theirs = {p.data_ptr() for p in result.model.parameters()} | {
        b.data_ptr() for b in result.model.buffers()
    }
    assert not ours & theirs
    assert all(hasattr(m, "weight_mask") for m in prunable_layers(result.model).values())


def test_slicing_in_place_matches_the_copy_and_returns_the_model_itself():
    """inplace=True (for a model prune has just copied): the same sliced model as a copy
    gives, without copying the module tree, and no mask or pruning hook left behind."""
    masked = filters_removed(with_nonzero_constants(models.create("resnet20")), 0.5)  # residual ones too
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = outputs(masked, x)
    copied = slice_model(copy.deepcopy(masked))
    sliced = slice_model(masked, inplace=True)
    assert sliced is masked
    assert isinstance(sliced.layer1[0].conv1, FoldedConv2d)  # a module replaced inside the model
    assert not any(name.endswith(("_orig", "_mask")) for name, _ in sliced.state_dict().items())
    assert not any(m._forward_pre_hooks for m in sliced.modules())
    theirs = copied.state_dict()
    assert {k: v.shape for k, v in sliced.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    assert all(torch.equal(v, theirs[k]) for k, v in sliced.state_dict().items())
    assert sliced.slice_report.params_after == copied.slice_report.params_after
    assert sliced.slice_report.params_after < sliced.slice_report.params_before
    assert torch.allclose(outputs(sliced, x), expected, rtol=1e-5, atol=1e-5)


def test_sliced_model_trains():
    sliced = slice_model(filters_removed(with_nonzero_constants(models.create("resnet20")), 0.5)).train()
    opt = torch.optim.SGD(sliced.parameters(), lr=0.1)
    before = sliced.layer1[0].conv1.weight.detach().clone()
    loss = F.cross_entropy(sliced(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert isinstance(sliced.layer1[0].conv1, FoldedConv2d)
    assert not torch.equal(sliced.layer1[0].conv1.weight, before)
    assert all(p.grad is not None for p in sliced.parameters())


def test_training_modes_are_kept():
    result = lostprune.prune(with_nonzero_constants(models.create("resnet20")), "ft", 0.5, progress=False)
    model = result.model.train()
    model.bn1.eval()  # a frozen BN stays frozen
    sliced = slice_model(model)
    assert sliced.training and not sliced.bn1.training and sliced.layer1[0].conv1.training


# ----------------------------------------------------------------------------- small graphs
def masked(
    model: nn.Module, rows: dict[str, list[int]], cols: dict[str, list[int]] | None = None
) -> nn.Module:
    """Mask the given weight rows (filters) and columns (input channels), nn.utils.prune format."""
    model = copy.deepcopy(model)
    for name, module in prunable_layers(model).items():
        mask = torch.ones_like(module.weight)
        mask[rows.get(name, [])] = 0
        mask[:, (cols or {}).get(name, [])] = 0
        torch_prune.custom_from_mask(module, "weight", mask)
    return model


class Residual(nn.Module):
    """A stem, a block whose conv2 adds onto the stem's channels, a zero-padded, strided and
    dilated consumer, and a flatten into a linear head."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 5, 3, stride=2, padding=2, dilation=2)
        self.head = nn.Linear(5 * 4 * 4, 4)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = F.gelu(x + y)
        return self.head(torch.flatten(F.max_pool2d(self.down(x), 1), 1))


def test_residual_channel_constant_folds_exactly_with_stride_padding_dilation():
    model = with_nonzero_constants(Residual())
    pruned = masked(model, {"stem": [1, 6], "conv2": [1, 6], "conv1": [2]})
    x = torch.randn(3, 3, 8, 8)
    sliced = slice_model(pruned, x[:1])
    assert_same_function(pruned, sliced, x)
    assert (sliced.stem.out_channels, sliced.conv2.out_channels, sliced.bn0.num_features) == (6, 6, 6)
    assert (sliced.conv1.in_channels, sliced.conv1.out_channels, sliced.down.in_channels) == (6, 5, 6)
    assert sliced.bn1.running_mean.shape == (5,) and sliced.conv2.in_channels == 5
    assert isinstance(sliced.down, FoldedConv2d) and isinstance(sliced.conv1, FoldedConv2d)
    assert sliced.slice_report.folded_layers["conv2"] == "bias"  # 1x1 without padding: a plain bias
    assert sliced.conv2.bias is not None  # created: the layer had none


def test_channel_nobody_reads_is_dropped_without_folding():
    model = with_nonzero_constants(Residual())
    pruned = masked(model, {}, {"conv2": [3]})  # conv1's filter 3 is computed but never read
    sliced = slice_model(pruned, torch.randn(1, 3, 8, 8))
    assert sliced.conv1.out_channels == 5 and sliced.conv2.in_channels == 5
    assert sliced.slice_report.channels_folded == 0
    assert_same_function(pruned, sliced, torch.randn(2, 3, 8, 8))


class PaddedBranch(nn.Module):
    def __init__(self, pad: nn.Module):
        super().__init__()
        self.conv, self.bn, self.pad, self.head = (
            nn.Conv2d(3, 6, 3),
            nn.BatchNorm2d(6),
            pad,
            nn.Conv2d(6, 2, 3),
        )

    def forward(self, x):
        return self.head(self.pad(torch.relu(self.bn(self.conv(x)))))


@pytest.mark.parametrize("pad", [nn.ZeroPad2d(1), nn.AvgPool2d(3, 1, padding=1)])
def test_constant_through_a_non_preserving_op_keeps_the_channel_and_says_so(pad):
    model = with_nonzero_constants(PaddedBranch(pad))
    pruned = masked(model, {"conv": [0, 4]})
    x = torch.randn(2, 3, 9, 9)
    with pytest.warns(SlicingWarning, match=r"kept 2 removed channels.*input of 'head' is not a constant"):
        sliced = slice_model(pruned, x[:1])
    assert sliced.conv.out_channels == 6 and "head" in sliced.slice_report.kept[0]
    assert_same_function(pruned, sliced, x)


@pytest.mark.parametrize(
    "pad", [nn.ReflectionPad2d(1), nn.AvgPool2d(3, 1, padding=1, count_include_pad=False)]
)
def test_constant_preserving_spatial_ops_fold(pad):
    model = with_nonzero_constants(PaddedBranch(pad))
    pruned = masked(model, {"conv": [0, 4]})
    x = torch.randn(2, 3, 9, 9)
    sliced = slice_model(pruned, x[:1])
    assert sliced.conv.out_channels == 4
    assert_same_function(pruned, sliced, x)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn_a, self.b = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Conv2d(10, 2, 3, padding=1)

    def forward(self, x):
        return self.head(torch.cat([self.bn_a(self.a(x)), torch.relu(self.b(x))], dim=1))


def test_concat_channels_slice_at_their_offsets():
    model = with_nonzero_constants(Concat())
    pruned = masked(model, {"a": [1], "b": [0, 5]})
    x = torch.randn(2, 3, 6, 6)
    sliced = slice_model(pruned, x[:1])
    assert sliced.head.in_channels == 7 and sliced.a.out_channels == 3 and sliced.b.out_channels == 4
    w = pruned.head.weight.detach()
    assert torch.equal(sliced.head.weight, w[:, [0, 2, 3, 5, 6, 7, 8]])
    assert_same_function(pruned, sliced, x)


def test_depthwise_conv_changes_groups():
    torch.manual_seed(0)
    model = with_nonzero_constants(
        nn.Sequential(
            nn.Conv2d(3, 8, 1),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.Conv2d(8, 4, 1),
        )
    )
    pruned = masked(model, {"0": [2, 3, 7], "3": [2, 3, 7]})
    x = torch.randn(2, 3, 7, 7)
    sliced = slice_model(pruned, x[:1])
    dw = sliced[3]
    assert (dw.in_channels, dw.out_channels, dw.groups, tuple(dw.weight.shape)) == (5, 5, 5, (5, 1, 3, 3))
    assert sliced[4].num_features == 5 and sliced[6].in_channels == 5
    assert_same_function(pruned, sliced, x)


class SharedTwice(nn.Module):
    """One conv applied to two different views of the same channels."""

    def __init__(self):
        super().__init__()
        self.stem, self.shared, self.head = (
            nn.Conv2d(3, 6, 1),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.Conv2d(6, 2, 1),
        )

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.shared(torch.relu(x)) + self.shared(torch.sigmoid(x)))


def test_module_reused_twice_is_sliced_once():
    model = with_nonzero_constants(SharedTwice())
    pruned = masked(model, {"shared": [4]})  # both calls output shared.bias[4]: head folds their sum
    x = torch.randn(2, 3, 6, 6)
    sliced = slice_model(pruned, x[:1])
    assert (sliced.shared.in_channels, sliced.shared.out_channels, sliced.head.in_channels) == (6, 5, 5)
    assert sliced.slice_report.folded_layers == {"head": "bias"}
    assert_same_function(pruned, sliced, x)


def test_module_reused_with_different_constants_keeps_the_channel():
    model = with_nonzero_constants(SharedTwice())
    pruned = masked(model, {"stem": [4]})  # `shared` sees relu(c) and sigmoid(c): one weight cannot fold both
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(SlicingWarning, match="different inputs"):
        sliced = slice_model(pruned, x[:1])
    assert sliced.stem.out_channels == 6 and sliced.shared.in_channels == 6
    assert_same_function(pruned, sliced, x)


# ----------------------------------------------------------------------------- cycles and input
def test_prune_slice_prune_slice():
    x = torch.randn(2, 3, 32, 32)
    first = filters_removed(with_nonzero_constants(models.create("resnet20")), 0.3)
    sliced = slice_model(first)
    second = lostprune.prune(sliced, "ft", 0.3, coupled="sum", progress=False)
    # A removed filter of a FoldedConv2d still carries its border term, but pruning drops
    # it with the channel's consumer columns: nothing to keep, nothing to fold.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlicingWarning)
        again = slice_model(second.model)
    assert weight_count(again) < weight_count(sliced) < weight_count(first)
    assert again.slice_report.channels_kept == 0
    assert_same_function(second.model, again, x)


def test_slicing_twice_without_new_pruning_changes_nothing():
    result = lostprune.prune(with_nonzero_constants(models.create("resnet20")), "ft", 0.5, progress=False)
    once = slice_model(result.model)
    with pytest.warns(SlicingWarning, match="no channel is structurally removed"):
        twice = slice_model(once)
    assert weight_count(twice) == weight_count(once)
    assert_same_function(once, twice, torch.randn(2, 3, 32, 32))


def test_model_without_structural_masks_returns_an_equal_copy_and_says_so():
    model = with_nonzero_constants(models.create("small_cnn"))
    wt = lostprune.prune(model, "wt", 0.5, progress=False)
    for candidate in (model, wt.model):
        with pytest.warns(SlicingWarning, match="no channel is structurally removed.*equal dense copy"):
            copy_ = slice_model(candidate)
        assert copy_ is not candidate and not torch_prune.is_pruned(copy_)
        assert weight_count(copy_) == weight_count(model)
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(outputs(candidate, x), outputs(copy_, x))


def test_zeroed_weights_slice_like_masks():
    result = lostprune.prune(with_nonzero_constants(models.create("resnet20")), "ft", 0.5, progress=False)
    baked = lostprune.remove_masks(copy.deepcopy(result.model))
    assert weight_count(slice_model(baked)) == weight_count(slice_model(result.model))


def test_bad_input():
    with pytest.raises(TypeError, match=re.escape("model must be a torch.nn.Module")):
        slice_model("resnet20")
    with pytest.raises(ValueError, match="needs an example input: pass example_input"):
        slice_model(nn.Sequential(nn.Conv2d(3, 4, 1)))
    with pytest.raises(ValueError, match="example_input must be a non-empty batch tensor"):
        slice_model(nn.Sequential(nn.Conv2d(3, 4, 1)), torch.randn(3))


# ----------------------------------------------------------------------------- compile and export
@pytest.fixture(scope="module")
def sliced_resnet():
    model = filters_removed(with_nonzero_constants(models.create("resnet20")), 0.5)
    sliced = slice_model(model).eval()
    assert any(isinstance(m, FoldedConv2d) for m in sliced.modules())
    return model.eval(), sliced, torch.randn(2, 3, 32, 32)


def test_sliced_model_runs_under_torch_compile(sliced_resnet):
    masked_model, sliced, x = sliced_resnet
    compiled = torch.compile(sliced, backend="aot_eager")
    assert_same_function(masked_model, compiled, x)


def test_sliced_model_exports_with_jit_trace(sliced_resnet):
    masked_model, sliced, x = sliced_resnet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit.trace is deprecated upstream
        traced = torch.jit.trace(sliced, x)
    assert_same_function(masked_model, traced, x)
    assert_same_function(masked_model, traced, x[:1])  # batch size is not baked in


def test_sliced_model_exports_with_torch_export(sliced_resnet):
    masked_model, sliced, x = sliced_resnet
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(sliced, (x,), dynamic_shapes=({0: batch},))
    assert_same_function(masked_model, program.module(), x)
    assert_same_function(masked_model, program.module(), torch.randn(3, 3, 32, 32))


def test_sliced_model_exports_to_onnx(sliced_resnet):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    masked_model, sliced, x = sliced_resnet
    program = torch.onnx.export(sliced, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    expected = outputs(masked_model, x).numpy()
    assert abs(got - expected).max() <= 1e-5 * abs(expected).max()


@pytest.mark.cuda
def test_slicing_on_cuda():
    model = with_nonzero_constants(models.create("resnet20")).cuda()
    result = lostprune.prune(model, "ft", 0.5, progress=False)
    sliced = slice_model(result.model)
    assert next(sliced.parameters()).is_cuda
    assert_same_function(result.model, sliced, torch.randn(2, 3, 32, 32, device="cuda"))


class _MadeInForward(nn.Module):
    """A tensor made inside forward: fx's tracer stores it as ``_tensor_constant0`` on the one
    instance it traced (maxvit_t does this)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.a(x)) * torch.tensor(0.5)
        return self.fc(torch.relu(self.b(y)).mean((2, 3)))


def test_a_tensor_made_in_forward_survives_a_reused_trace():
    """The second instance reuses the first one's trace (same structure), where the constant
    is not an attribute: pruning and slicing it once failed with AttributeError."""
    x = torch.randn(2, 3, 8, 8)
    lostprune.prune(_MadeInForward().eval(), "ft", 0.5, example_input=x, coupled="sum", progress=False)
    other = _MadeInForward().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the target is not reachable exactly on so small a model
        pruned = lostprune.prune(other, "ft", 0.5, example_input=x, coupled="sum", progress=False)
    sliced = slice_model(pruned.model)
    assert sliced.b.out_channels < 8
    torch.testing.assert_close(sliced(x), pruned.model(x), rtol=0, atol=1e-6)
