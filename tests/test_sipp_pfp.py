"""SiPP and PFP (docs/methods.md §SiPP, docs/methods.md §PFP) through lostprune.prune."""

import itertools
import math

import pytest
import torch
import torch.nn as nn

import lostprune
import lostprune.models as models
from lostprune.core.layers import prunable_layers
from lostprune.datapass import sensitivity_pass
from lostprune.methods.pfp import LayerErrorModel, kept_channels
from lostprune.structure.graph import build_graph


def chain():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


S = torch.randn(12, 3, 10, 10, generator=torch.Generator().manual_seed(1))
CIFAR = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))


class TinyResNet(nn.Module):
    """Stem, two residual blocks sharing one channel group, a head: coupled channels."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 8, 3, padding=1))
            for _ in range(2)
        )
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return models.create("resnet20")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TinyResNet()


# --------------------------------------------------------------------------- SiPP
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.77])
def test_sipp_keeps_the_largest_sensitivities_globally(compiled, ratio):
    model = chain()
    result = lostprune.prune(model, "sipp", ratio, data=S, progress=False)
    assert result.stats.achieved_ratio == pytest.approx(ratio, abs=1e-3)  # one weight in 1448
    scores = sensitivity_pass(model, S, progress=False)
    kept = torch.cat([scores[n][result.masks[n] != 0] for n in scores])
    removed = torch.cat([scores[n][result.masks[n] == 0] for n in scores])
    if removed.numel() and kept.numel():
        assert removed.max() <= kept.min()


def test_sipp_reduce_max_option_and_unknown_options(compiled):
    model = chain()
    result = lostprune.prune(model, "sipp", 0.5, data=S, progress=False, reduce="max")
    scores = sensitivity_pass(model, S, reduce="max", progress=False)
    kept = torch.cat([scores[n][result.masks[n] != 0] for n in scores])
    removed = torch.cat([scores[n][result.masks[n] == 0] for n in scores])
    assert removed.max() <= kept.min()
    with pytest.raises(TypeError, match="unexpected options: colour"):
        lostprune.prune(model, "sipp", 0.5, data=S, progress=False, colour="red")
    with pytest.raises(ValueError, match="reduce must be one of"):
        lostprune.prune(model, "sipp", 0.5, data=S, progress=False, reduce="sum")


def test_sipp_never_revives_and_scores_the_pruned_network(compiled):
    first = lostprune.prune(chain(), "sipp", 0.4, data=S, progress=False)
    second = lostprune.prune(first.model, "sipp", 0.7, data=S, progress=False)
    assert second.stats.achieved_ratio == pytest.approx(0.7, abs=1e-3)
    for name, mask in first.masks.items():
        assert not (second.masks[name].bool() & ~mask.bool()).any()


def test_sipp_needs_data(compiled):
    with pytest.raises(ValueError, match="'sipp' is data-informed"):
        lostprune.prune(chain(), "sipp", 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        lostprune.prune(chain(), "sipp", 0.5, data=S[:1])


def test_sipp_prefers_the_edge_that_carries_the_signal(compiled):
    """A linear unit fed by one strong and one weak input keeps the strong edge."""
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
    data = torch.tensor([[10.0, 0.1], [9.0, 0.2], [11.0, 0.0]])
    result = lostprune.prune(model, "sipp", 0.5, data=data, progress=False)
    assert result.masks["0"].tolist() == [[1.0, 0.0]]


# --------------------------------------------------------------------------- PFP: the formulas
def test_error_model_formulas():
    model = LayerErrorModel(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64), positions=1024, kernel=9)
    assert model.alpha == pytest.approx(2 * 3 * math.log(8 * 1025 * 9 / 1e-16))
    eps = 50.0
    m = math.ceil(3 * (6 + 2 * eps) * model.alpha * 1.0 / eps**2)
    assert model.samples(eps) == m
    expect = math.ceil(sum(1 - (1 - p) ** m for p in (0.5, 0.25, 0.25)))
    assert kept_channels(model, eps) == min(3, expect)


def test_kept_channels_monotone_and_clamped():
    gen = torch.Generator().manual_seed(0)
    model = LayerErrorModel(torch.rand(40, generator=gen, dtype=torch.float64) ** 4, positions=64, kernel=9)
    counts = [kept_channels(model, 10.0**e) for e in torch.linspace(-3, 12, 60).tolist()]
    assert counts[0] == 40 and counts[-1] == 1
    assert all(a >= b for a, b in itertools.pairwise(counts))
    assert kept_channels(LayerErrorModel(torch.zeros(5, dtype=torch.float64), 4, 1), 1.0) == 1


def test_spread_sensitivities_keep_more_channels():
    """Hard-to-approximate layers (sensitivity spread over many channels) keep more."""
    concentrated = LayerErrorModel(torch.tensor([1.0] + [0.001] * 31, dtype=torch.float64), 64, 9)
    spread = LayerErrorModel(torch.full((32,), 1.0 / 32, dtype=torch.float64) * 1.031, 64, 9)
    eps = 20.0  # m = 97 samples: about 31 distinct spread channels, 4 concentrated ones
    assert kept_channels(spread, eps) > kept_channels(concentrated, eps) > 1


# --------------------------------------------------------------------------- PFP through prune()
def _kept_columns(mask):
    return (mask != 0).transpose(0, 1).flatten(1).any(1)


# The tiny network's residual channel is 12 % of its weights: whole groups cannot land within
# 0.5 % of every target there (they warn), single columns can.
TOLERANCE = {"sum": 0.02, "per_layer": 0.005}


def _kept_rows(mask):
    return (mask != 0).flatten(1).any(1)


@pytest.mark.parametrize("coupled", ["sum", "per_layer"])
def test_pfp_meets_the_budget_on_resnet20(compiled, resnet20, coupled):
    ratio = 0.5
    result = lostprune.prune(resnet20, "pfp", ratio, data=CIFAR, coupled=coupled, progress=False)
    assert abs(result.stats.achieved_ratio - ratio) <= 0.005 * ratio
    for mask in result.masks.values():  # structured: whole input channels (and, for groups, filters)
        m = mask != 0
        rows = _kept_rows(mask)  # filters go with their channel (groups) or once no layer reads them
        cols = _kept_columns(mask)
        shape = [1] * (m.dim() - 2)
        assert torch.equal(m, (rows.view(-1, 1, *shape) & cols.view(1, -1, *shape)).expand_as(m))
    # the first layer's input channels (the image) cannot be removed
    assert _kept_columns(result.masks["conv1"]).all()
    sliced = lostprune.slice_model(result.model)
    kept = sum(m.weight.numel() for m in prunable_layers(sliced).values())
    removed = round(result.stats.achieved_ratio * result.stats.prunable_params)
    if coupled == "sum":  # whole groups: slicing drops exactly what the masks remove
        assert kept == result.stats.prunable_params - removed
    else:  # per layer: a column dropped by one consumer of a residual channel stays in the sliced model
        assert kept > result.stats.prunable_params - removed


@pytest.mark.parametrize("coupled", ["sum", "per_layer"])
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_pfp_meets_the_budget_on_what_is_really_removed(compiled, tiny, ratio, coupled):
    result = lostprune.prune(tiny, "pfp", ratio, data=S, coupled=coupled, progress=False)
    assert abs(result.stats.achieved_ratio - ratio) <= TOLERANCE[coupled] * ratio
    kept = sum(int((m != 0).sum()) for m in result.masks.values())
    assert result.stats.prunable_params - kept == round(
        result.stats.achieved_ratio * result.stats.prunable_params
    )


@pytest.mark.parametrize("coupled", ["sum", "per_layer"])
def test_pfp_removes_the_producer_of_a_dropped_channel(compiled, tiny, coupled):
    result = lostprune.prune(tiny, "pfp", 0.6, data=S, coupled=coupled, progress=False)
    dropped = ~_kept_columns(result.masks["blocks.0.2"])  # read only by this layer
    assert dropped.any()
    assert torch.equal(_kept_rows(result.masks["blocks.0.0"]), ~dropped)


def test_pfp_per_layer_residual_channel_every_reader_dropped_loses_its_producers(compiled, tiny):
    result = lostprune.prune(tiny, "pfp", 0.85, data=S, coupled="per_layer", progress=False)
    graph = build_graph(result.model, S[:1])
    assert any(g.prunable and g.coupled for g in graph.groups)
    for group in graph.groups:
        if not (group.prunable and group.coupled):
            continue
        read = torch.zeros(group.size, dtype=torch.bool)
        for member in group.consumers:
            read |= _kept_columns(result.masks[member.module])[member.index].any(1)
        for (
            member
        ) in group.producers:  # a filter no reader reads is zeroed (the original's zero-gradient rule)
            assert not (_kept_rows(result.masks[member.module])[member.index].any(1) & ~read).any()


@pytest.mark.parametrize("coupled", ["sum", "per_layer"])
def test_pfp_iterative_never_revives(compiled, tiny, coupled):
    first = lostprune.prune(tiny, "pfp", 0.4, data=S, coupled=coupled, progress=False)
    second = lostprune.prune(first.model, "pfp", 0.7, data=S, coupled=coupled, progress=False)
    assert abs(second.stats.achieved_ratio - 0.7) <= TOLERANCE[coupled] * 0.7
    for name, mask in first.masks.items():
        assert not (second.masks[name].bool() & ~mask.bool()).any()


def test_pfp_ratio_zero_keeps_everything(compiled):
    result = lostprune.prune(chain(), "pfp", 0.0, data=S, progress=False)
    assert all(bool((m != 0).all()) for m in result.masks.values())


@pytest.mark.parametrize(
    "coupled, message",
    [
        ("sum", r"pfp removes .* instead of the target 99.00 %"),
        ("per_layer", r"pfp removes .* instead of the target 99.00 %"),
    ],
)
def test_pfp_budget_beyond_reach_warns_and_prunes_as_far_as_it_can(compiled, coupled, message):
    with pytest.warns(UserWarning, match=message) as caught:
        result = lostprune.prune(chain(), "pfp", 0.99, data=S, coupled=coupled, progress=False)
    assert [w.filename for w in caught] == [__file__]  # the warning names the caller's line, not lostprune's
    for mask in result.masks.values():
        assert int(_kept_columns(mask).sum()) >= 1


def test_pfp_needs_data(compiled):
    with pytest.raises(ValueError, match="'pfp' is data-informed"):
        lostprune.prune(chain(), "pfp", 0.5)
