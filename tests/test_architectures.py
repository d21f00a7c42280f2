"""Structured pruning and slicing of torchvision's architecture families (small instances of
ConvNeXt, ViT, Swin v1/v2, Inception, ShuffleNet, RegNet, EfficientNet v1/v2, MobileNetV3,
DenseNet): the sliced model computes what the masked one does, loses what the statistics
say, exports and retrains."""

import contextlib
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from small_torchvision import FAMILIES, INPUT, create

import lostprune
from lostprune.core.layers import prunable_layers
from lostprune.structure import GraphError, MultiheadAttention, SlicingWarning, slice_model
from lostprune.structure.attention import SwinAttention

X = torch.randn(4, *INPUT, generator=torch.Generator().manual_seed(1))
S = torch.randn(16, *INPUT, generator=torch.Generator().manual_seed(2))


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with contextlib.suppress(NotImplementedError):  # an exported program's module
        model.eval()
    with torch.no_grad():
        return model(x)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


def weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in prunable_layers(model).values())


def prune(name: str, method: str, ratio: float, coupled: str):
    data = {"data": S} if method == "pfp" else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(instead of the target|score 0 on S|see no signal).*")
        return lostprune.prune(
            create(name), method, ratio, example_input=X[:1], coupled=coupled, progress=False, **data
        )


@pytest.mark.parametrize("method", ["ft", "pfp"])
@pytest.mark.parametrize("name", FAMILIES)
def test_group_aware_variant_slices_what_it_reports(name, method):
    dense = outputs(create(name), X)
    for ratio in (0.3, 0.5):
        result = prune(name, method, ratio, "sum")
        masked = outputs(result.model, X)
        if method == "ft":  # (PFP may remove only channels that are silent on data like X)
            assert relative_error(masked, dense) > 1e-3  # the test is not vacuous
        with warnings.catch_warnings():
            warnings.simplefilter("error", SlicingWarning)  # every removed channel goes
            sliced = slice_model(result.model)  # the example input prune was given is remembered
        assert relative_error(outputs(sliced, X), masked) <= 1e-5
        report, stats = sliced.slice_report, result.stats
        assert not report.kept and report.zeros_kept == 0
        # what the statistics say is removed is what disappears
        assert weight_count(sliced) == stats.prunable_params - round(
            stats.achieved_ratio * stats.prunable_params
        )
        assert report.param_reduction >= 0.95 * stats.paper_prune_ratio
        assert abs(stats.achieved_ratio - ratio) <= 0.03


@pytest.mark.parametrize("method", ["ft", "pfp"])
@pytest.mark.parametrize("name", FAMILIES)
def test_paper_variant_runs_and_counts_exactly_its_zeros(name, method):
    for ratio in (0.3, 0.5):
        result = prune(name, method, ratio, "per_layer")
        zeros = sum(int((mask == 0).sum()) for mask in result.masks.values())
        assert zeros == sum(layer.weights - layer.kept for layer in result.stats.layers)
        assert abs(result.stats.achieved_ratio - ratio) <= 0.005 * ratio
        sliced = slice_model(result.model)
        assert relative_error(outputs(sliced, X), outputs(result.model, X)) <= 1e-5
        kept = result.stats.prunable_params - zeros
        assert weight_count(sliced) == kept + sliced.slice_report.zeros_kept


@pytest.mark.parametrize("method", ["ft", "pfp"])
def test_inception_branches_slice_what_the_paper_variant_removes(method):
    """A removed filter read through Inception's zero-padded pool branch is dropped there too,
    so slicing removes it instead of keeping the channel."""
    for ratio in (0.3, 0.5):
        result = prune("inception", method, ratio, "per_layer")
        with warnings.catch_warnings():
            warnings.simplefilter("error", SlicingWarning)
            sliced = slice_model(result.model)
        assert sliced.slice_report.param_reduction >= 0.95 * result.stats.paper_prune_ratio


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_sliced_model_exports_and_retrains(name):
    result = prune(name, "ft", 0.5, "sum")
    sliced = slice_model(result.model).eval()
    expected = outputs(result.model, X)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(sliced, (X,), dynamic_shapes=({0: batch},))
    assert relative_error(outputs(program.module(), X), expected) <= 1e-5
    assert relative_error(outputs(program.module(), X[:3]), expected[:3]) <= 1e-5
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(sliced, (X,), dynamo=True, verbose=False)
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString())
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: X.numpy()})[0])
    assert relative_error(got, expected) <= 1e-5
    # one SGD step of the sliced model
    sliced.train()
    optimizer = torch.optim.SGD(sliced.parameters(), lr=0.1)
    before = [p.detach().clone() for p in sliced.parameters()]
    loss = F.cross_entropy(sliced(X), torch.arange(4))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert sum(not torch.equal(a, b) for a, b in zip(before, sliced.parameters())) >= len(before) // 2


# ----------------------------------------------------------------------------- attention
def test_pruned_heads_leave_runnable_attention_with_fewer_heads():
    result = prune("vit", "ft", 0.5, "sum")
    sliced = slice_model(result.model)
    blocks = [m for m in sliced.modules() if isinstance(m, MultiheadAttention)]
    assert len(blocks) == 2 and all(1 <= m.num_heads < 4 for m in blocks)  # of 4 heads
    for m in blocks:
        assert m.in_proj.weight.shape == (3 * m.num_heads * m.head_dim, 64)
        assert m.out_proj.weight.shape == (64, m.num_heads * m.head_dim)
    swin = slice_model(prune("swin", "pfp", 0.5, "sum").model)
    for m in (m for m in swin.modules() if isinstance(m, SwinAttention)):
        assert m.relative_position_bias_table.shape[1] == m.num_heads
        assert m.qkv.out_features == 3 * m.num_heads * m.head_dim


@pytest.mark.parametrize("batch_first", [False, True])
def test_converted_multihead_attention_computes_the_same(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    ours = MultiheadAttention.from_torch(mha).eval()
    shape = (2, 5, 16) if batch_first else (5, 2, 16)
    x, y = torch.randn(shape), torch.randn(shape)
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    for args, kwargs in [
        ((x, x, x), {"need_weights": False}),
        ((x, y, y), {}),
        ((x, x, x), {"key_padding_mask": padding, "attn_mask": causal}),
        ((x, x, x), {"average_attn_weights": False}),
    ]:
        with torch.no_grad():
            expected, expected_weights = mha(*args, **kwargs)
            got, weights = ours(*args, **kwargs)
        assert torch.allclose(got, expected, atol=1e-6)
        assert (weights is None) == (expected_weights is None)
        if weights is not None:
            assert torch.allclose(weights, expected_weights, atol=1e-6)
    fresh = MultiheadAttention(16, 4, batch_first=batch_first)
    fresh.load_state_dict(mha.state_dict())  # nn.MultiheadAttention's parameter names load too
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x, x, x)[0], mha(x, x, x)[0], atol=1e-6)


# ----------------------------------------------------------------------------- errors and defaults
class CoupledCumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.head = (
            nn.Conv2d(3, 8, 1),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Conv2d(8, 2, 1),
        )

    def forward(self, x):
        y = self.stem(x)
        return self.head(torch.cumsum(y + self.conv(y), dim=1))


def test_a_model_that_cannot_be_sliced_is_named_before_the_data_pass(monkeypatch):
    import lostprune.methods.pfp as pfp

    def no_pass(*args, **kwargs):
        raise AssertionError("the sensitivity pass ran before the model was refused")

    monkeypatch.setattr(pfp, "channel_sensitivities", no_pass)
    with pytest.raises(GraphError, match=r"unsupported op function 'cumsum' at node 'cumsum'"):
        lostprune.prune(
            CoupledCumsum(), "pfp", 0.5, data=torch.randn(4, 3, 6, 6), coupled="sum", progress=False
        )


def test_slice_model_remembers_the_example_input_of_prune():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 2),
    )
    x = torch.randn(2, 3, 7, 7)
    result = lostprune.prune(model, "ft", 0.5, example_input=x[:1], coupled="sum", progress=False)
    sliced = slice_model(result.model)  # no example_input, no input_size: prune's is used
    assert relative_error(outputs(sliced, x), outputs(result.model, x)) <= 1e-5
