"""The data pass: hooks stream each layer's input batch by batch into the sensitivity ops."""

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import lostprune.models as models
from lostprune.datapass import collect_sensitivities, sensitivity_pass
from lostprune.ops import channel_sensitivity, weight_sensitivity


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class SharedConv(nn.Module):
    """One conv applied twice in a forward (weight sharing)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.shared(h))
        h = torch.relu(self.shared(h))
        return self.head(h.mean(dim=(2, 3)))


def _inputs(n=10, seed=0, size=8):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _layer_inputs(model, x):
    """Every call's input per module, recorded with plain hooks."""
    seen = {}
    handles = [
        m.register_forward_hook(lambda mod, args, out, n=n: seen.setdefault(n, []).append(args[0]))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


@pytest.mark.parametrize("kind", ["weight", "channel"])
def test_pass_equals_ops_on_whole_layer_inputs(compiled, kind):
    model = TwoLayer()
    x = _inputs(10)
    scores = sensitivity_pass(model, x, kind=kind, batch_size=3, progress=False)
    inputs = _layer_inputs(model, x)
    conv = model.conv
    if kind == "weight":
        expect_conv = weight_sensitivity(inputs["conv"], conv.weight, padding=1)
        expect_fc = weight_sensitivity(inputs["fc"], model.fc.weight)
    else:
        expect_conv = channel_sensitivity(inputs["conv"], conv.weight, padding=1)
        expect_fc = channel_sensitivity(inputs["fc"], model.fc.weight)
    torch.testing.assert_close(scores["conv"], expect_conv)
    torch.testing.assert_close(scores["fc"], expect_fc)


def test_batch_size_does_not_change_the_result(compiled):
    model = models.create("small_cnn")
    x = torch.randn(9, *model.input_size, generator=torch.Generator().manual_seed(1))
    a = sensitivity_pass(model, x, batch_size=2, progress=False)
    b = sensitivity_pass(model, x, batch_size=9, progress=False)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_data_forms_dataset_loader_pairs(compiled):
    model = TwoLayer()
    x = _inputs(8)
    y = torch.zeros(8, dtype=torch.long)
    reference = sensitivity_pass(model, x, progress=False)
    for data in (
        TensorDataset(x, y),
        DataLoader(TensorDataset(x, y), batch_size=3),
        [(x[:5], y[:5]), (x[5:], y[5:])],
    ):
        scores = sensitivity_pass(model, data, progress=False)
        for name in reference:
            torch.testing.assert_close(scores[name], reference[name])


def test_module_called_twice_sees_both_calls(compiled):
    model = SharedConv()
    x = _inputs(6, seed=2)
    scores = sensitivity_pass(model, x, kind="weight", reduce="max", batch_size=4, progress=False)
    # Both calls' inputs are data points: the result is the op over their union.
    calls = []
    handle = model.shared.register_forward_hook(lambda m, args, out: calls.append(args[0]))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    assert len(calls) == 2
    union = weight_sensitivity(torch.cat(calls), model.shared.weight, padding=1, reduce="max")
    first_only = weight_sensitivity(calls[0], model.shared.weight, padding=1, reduce="max")
    torch.testing.assert_close(scores["shared"], union)
    assert not torch.allclose(union, first_only)  # the second call matters


def test_masked_weights_are_used(compiled):
    import torch.nn.utils.prune as tprune

    model = TwoLayer()
    tprune.random_unstructured(model.conv, "weight", amount=0.5)
    scores = sensitivity_pass(model, _inputs(6), progress=False)
    removed = model.conv.weight_mask == 0
    assert torch.equal(scores["conv"][removed], torch.zeros(int(removed.sum())))
    assert (scores["conv"][~removed] > 0).any()


def test_reflect_padding_and_mode_restored(compiled):
    model = TwoLayer()
    model.conv.padding_mode = "reflect"
    model.train()
    x = _inputs(4)
    scores = sensitivity_pass(model, x, progress=False)
    assert model.training
    assert not any(m._forward_hooks for m in model.modules())
    padded = nn.functional.pad(_layer_inputs(model, x)["conv"], (1, 1, 1, 1), mode="reflect")
    torch.testing.assert_close(scores["conv"], weight_sensitivity(padded, model.conv.weight))


def test_layer_selection(compiled):
    model = TwoLayer()
    scores = sensitivity_pass(model, _inputs(4), layers=["fc"], progress=False)
    assert list(scores) == ["fc"]
    assert scores["fc"].shape == model.fc.weight.shape


def test_references_agree_through_the_pass(compiled):
    model = TwoLayer()
    x = _inputs(3, size=5)
    kernel = sensitivity_pass(model, x, kind="channel", progress=False)
    for implementation in ("reference", "literal"):
        other = sensitivity_pass(model, x, kind="channel", progress=False, implementation=implementation)
        for name in kernel:
            torch.testing.assert_close(other[name], kernel[name])


def test_progress_bar_counts_images(compiled, monkeypatch):
    import lostprune.datapass as datapass

    bars = []

    class Recorder(datapass.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(datapass, "tqdm", Recorder)
    sensitivity_pass(TwoLayer(), _inputs(5), batch_size=2, progress=True)
    assert len(bars) == 1 and bars[0].total == 5 and bars[0].n == 5 and bars[0].unit == "img"


# --------------------------------------------------------------------------- bad input
def test_fewer_than_two_samples(compiled):
    with pytest.raises(ValueError, match="at least 2"):
        sensitivity_pass(TwoLayer(), _inputs(1), progress=False)
    with pytest.raises(ValueError, match="at least 2"):  # length unknown up front
        sensitivity_pass(TwoLayer(), iter([_inputs(1)]), progress=False)


def test_data_on_another_device(compiled):
    with pytest.raises(ValueError, match="batch 0 is on cpu but the model is on meta"):
        sensitivity_pass(TwoLayer().to("meta"), _inputs(4), progress=False)


def test_nan_activations_name_the_layer(compiled):
    model = TwoLayer()
    with torch.no_grad():
        model.fc.weight[0, 0] = float("inf")
        model.conv.weight.mul_(1e30)  # overflows to inf inside the forward

    with pytest.raises(ValueError, match="layer 'fc' received NaN or inf activations in batch 0"):
        sensitivity_pass(model, _inputs(4), progress=False, layers=["fc"])


def test_nan_data_is_rejected_up_front(compiled):
    x = _inputs(4)
    x[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="data: batch 0 contains NaN or inf"):
        sensitivity_pass(TwoLayer(), x, progress=False)


def test_unsupported_layer_types_listed_by_name(compiled):
    layers = {"a": nn.Conv1d(2, 2, 3), "b": nn.Linear(2, 2), "c": nn.ConvTranspose2d(2, 2, 3)}
    with pytest.raises(TypeError, match=r"unsupported: 'a' \(Conv1d\), 'c' \(ConvTranspose2d\)"):
        collect_sensitivities(nn.Sequential(), [], layers, progress=False)


def test_bad_kind_reduce_implementation(compiled):
    with pytest.raises(ValueError, match="kind must be one of"):
        sensitivity_pass(TwoLayer(), _inputs(2), kind="filter", progress=False)
    with pytest.raises(ValueError, match="reduce must be one of"):
        sensitivity_pass(TwoLayer(), _inputs(2), reduce="sum", progress=False)
    with pytest.raises(ValueError, match="implementation must be one of"):
        sensitivity_pass(TwoLayer(), _inputs(2), implementation="fast", progress=False)


def test_layer_never_called(compiled):
    model = TwoLayer()
    model.unused = nn.Linear(3, 3)
    with pytest.raises(RuntimeError, match=r"layers \['unused'\] were never called"):
        sensitivity_pass(model, _inputs(2), progress=False)


# --------------------------------------------------------------------------- fused forward
class BiasedNet(nn.Module):
    """Conv (bias, stride), reflect-padded conv, a conv subclass with its own forward, linear on tokens."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
        self.reflect = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect", bias=False)
        self.scaled = ScaledConv(8, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.reflect(h))
        h = self.scaled(h)  # not rectified: fc takes the sign split
        return self.fc(h.flatten(2).transpose(1, 2)).mean(1)


class ScaledConv(nn.Conv2d):
    def forward(self, x):
        return 2 * super().forward(x)


def _convolutions_run(model, x, **kwargs) -> tuple[dict, int]:
    """(scores, how many times a Conv2d ran its own convolution) of a pass."""
    calls = []
    original = nn.Conv2d._conv_forward

    def counting(self, *args):
        calls.append(self)
        return original(self, *args)

    nn.Conv2d._conv_forward = counting
    try:
        scores = sensitivity_pass(model, x, progress=False, **kwargs)
    finally:
        nn.Conv2d._conv_forward = original
    return scores, len(calls)


@pytest.mark.parametrize("kind", ["weight", "channel"])
def test_fused_pass_equals_the_unfused_one(compiled, kind):
    """On the CPU each plain Conv2d / Linear takes its output from its scoring op: the scores
    match a pass that runs every layer's own forward (float64: to rounding), no plain conv runs
    its own convolution, and a subclass with its own forward keeps it."""
    torch.manual_seed(0)
    model = BiasedNet().double()
    x = torch.randn(6, 3, 9, 9, dtype=torch.float64)
    fused, ran = _convolutions_run(model, x, kind=kind, batch_size=4)
    unfused, ran_unfused = _convolutions_run(model, x, kind=kind, batch_size=4, fused=False)
    assert ran == 2 and ran_unfused == 6  # ScaledConv's two batches, against all three convs'
    assert fused.keys() == unfused.keys()
    for name in fused:
        torch.testing.assert_close(fused[name], unfused[name], rtol=1e-10, atol=1e-12)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_fused_forward_gives_the_models_output(compiled):
    model = models.create("resnet20")
    x = torch.randn(5, *model.input_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model.eval()(x)
    seen = []
    handle = model.register_forward_hook(lambda m, args, out: seen.append(out))
    sensitivity_pass(model, x, kind="channel", progress=False)
    handle.remove()
    torch.testing.assert_close(seen[0], want, rtol=1e-4, atol=1e-5)


def test_forward_restored_after_an_error(compiled):
    model = TwoLayer()
    x = _inputs(4)
    with torch.no_grad():
        model.conv.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        sensitivity_pass(model, x, progress=False)
    assert not any("forward" in m.__dict__ or m._forward_hooks for m in model.modules())


class PooledNet(nn.Module):
    """Max-pools the pass runs in lostprune's kernel (stem-like, stride 1 with padding) and ones
    it must leave alone: ceil mode (torch's own forward inside the helper), a subclass, and a
    pool whose forward the caller replaced."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.same = nn.MaxPool2d(3, 1, 1)
        self.ceil = nn.MaxPool2d(2, ceil_mode=True)
        self.sub = SubPool(2)
        self.own = nn.MaxPool2d(1)
        self.own.forward = lambda x: x  # the caller's own: kept
        self.conv = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = self.own(self.same(self.pool(h)))
        h = self.sub(self.ceil(torch.relu(self.conv(h))))
        return self.fc(h.mean(dim=(2, 3)))


class SubPool(nn.MaxPool2d):
    pass


@pytest.mark.parametrize("kind", ["weight", "channel"])
def test_max_pools_run_in_the_kernel_with_the_same_scores(compiled, monkeypatch, kind):
    """The pass pools plain nn.MaxPool2d modules through ops.pool.max_pool2d_module (exact: the
    scores are bit for bit those of torch's own pools), leaves subclasses and replaced forwards
    alone, and restores every forward afterwards; the references keep torch's pools."""
    import lostprune.datapass as datapass

    torch.manual_seed(0)
    model = PooledNet()
    own = model.own.forward
    x = torch.randn(6, 3, 11, 10)
    pooled, real = [], datapass.max_pool2d_module

    def counting(pool, inp):
        pooled.append(pool)
        return real(pool, inp)

    monkeypatch.setattr(datapass, "max_pool2d_module", counting)
    fast = sensitivity_pass(model, x, kind=kind, batch_size=4, progress=False)
    assert set(pooled) == {model.pool, model.same, model.ceil} and len(pooled) == 6  # 2 batches
    monkeypatch.setattr(datapass, "max_pool2d_module", nn.MaxPool2d.forward)  # torch's own pools
    plain = sensitivity_pass(model, x, kind=kind, batch_size=4, progress=False)
    assert fast.keys() == plain.keys() and all(torch.equal(fast[n], plain[n]) for n in fast)
    assert model.own.forward is own
    assert not any("forward" in m.__dict__ for m in model.modules() if m is not model.own)
    pooled.clear()
    monkeypatch.setattr(datapass, "max_pool2d_module", counting)
    sensitivity_pass(model, x, kind=kind, progress=False, implementation="reference")
    assert not pooled


def test_pools_restored_after_an_error(compiled):
    model = PooledNet()
    with torch.no_grad():
        model.conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        sensitivity_pass(model, torch.randn(4, 3, 8, 8), progress=False)
    assert not any("forward" in m.__dict__ for m in model.modules() if m is not model.own)


def test_no_fusion_where_it_would_not_run_the_layer_exactly(compiled):
    """float16 / bfloat16 layers and autocast keep the layer's own forward."""
    model = TwoLayer()
    x = _inputs(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, ran = _convolutions_run(model, x)
    assert ran == 1
    _, ran = _convolutions_run(model.bfloat16(), x.bfloat16())
    assert ran == 1


@pytest.mark.cuda
def test_cuda_layers_keep_their_own_forward(compiled):
    """Only CPU modules are swapped: a CUDA module (which DataParallel may replicate, copying
    its instance attributes) runs its own forward and is scored by the hook."""
    model = TwoLayer().cuda()
    swapped = []
    handle = model.conv.register_forward_pre_hook(lambda m, args: swapped.append("forward" in m.__dict__))
    scores = sensitivity_pass(model, _inputs(4).cuda(), progress=False)
    handle.remove()
    assert swapped == [False] and scores["conv"].is_cuda
