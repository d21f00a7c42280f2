"""Group-aware structured pruning: whole channel groups scored and removed (GroupPlan, FT options)."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import lostprune
import lostprune.models as models
from lostprune.core.layers import prunable_layers
from lostprune.core.masks import current_masks
from lostprune.structure import (
    GraphError,
    GroupPlan,
    allowed_kept,
    build_graph,
    channel_multiple,
    slice_model,
    snap,
)
from lostprune.structure.search import last_within


def plan_for(model, x, **options):
    layers = prunable_layers(model)
    return GroupPlan(build_graph(model, x), layers, current_masks(layers), **options), layers


def l1_scores(layers):
    return {name: layer.weight.detach().abs().flatten(1).sum(1) for name, layer in layers.items()}


def dead_rows(result, name):
    mask = result.model.get_submodule(name).weight_mask
    return set((mask.flatten(1).sum(1) == 0).nonzero().flatten().tolist())


# ----------------------------------------------------------------------------- FT on groups
def test_ft_removes_residual_channels_from_every_producer_at_once():
    result = lostprune.prune(models.create("resnet20"), "ft", 0.5, coupled="sum", progress=False)
    stage1 = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    removed = [dead_rows(result, name) for name in stage1]
    assert removed[0] and all(r == removed[0] for r in removed)


def test_achieved_ratio_is_what_slicing_really_removes():
    model = models.create("resnet20")
    for options in ({"coupled": "sum"}, {"coupled": "skip"}, {"coupled": "sum", "round_to": 4}):
        result = lostprune.prune(model, "ft", 0.45, progress=False, **options)
        sliced = slice_model(result.model)
        kept = sum(m.weight.numel() for m in prunable_layers(sliced).values())
        assert kept == result.stats.prunable_params - round(
            result.stats.achieved_ratio * result.stats.prunable_params
        )
        assert abs(result.stats.achieved_ratio - 0.45) <= 0.005 * 0.45 or options.get("round_to")


def test_coupled_skip_leaves_coupled_groups_alone():
    result = lostprune.prune(models.create("resnet20"), "ft", 0.4, coupled="skip", progress=False)
    for name in ["conv1", "layer1.0.conv2", "layer2.0.shortcut.0", "layer3.2.conv2"]:
        assert not dead_rows(result, name)
    assert dead_rows(result, "layer1.0.conv1")
    assert abs(result.stats.achieved_ratio - 0.4) <= 0.005 * 0.4


def test_coupled_skip_that_cannot_reach_the_ratio_warns():
    model = models.create("mobilenet_v2")  # every inner group is coupled through its depthwise conv
    with pytest.warns(
        UserWarning, match=r"ft removes .* instead of the target 90.00 % \(coupled='skip' leaves"
    ):
        lostprune.prune(
            model, "ft", 0.9, coupled="skip", progress=False, example_input=torch.randn(1, 3, 64, 64)
        )


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_keeps_multiples(round_to):
    model = models.create("resnet20")
    result = lostprune.prune(model, "ft", 0.5, coupled="sum", round_to=round_to, progress=False)
    sliced = slice_model(result.model)
    for name, layer in prunable_layers(sliced).items():
        if name != "fc":
            assert layer.out_channels % round_to == 0, (name, layer.out_channels)


@pytest.mark.parametrize(
    "capability, multiple", [("AVX512", 16), ("AVX512_BF16", 16), ("AVX2", 8), ("DEFAULT", 8)]
)
def test_channel_multiple_follows_the_cpu_vector_width(monkeypatch, capability, multiple):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert channel_multiple("cpu") == channel_multiple() == multiple
    assert channel_multiple("cuda") == 8


def test_round_to_auto_keeps_the_kernels_channel_multiple(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # any CPU: 8
    result = lostprune.prune(
        models.create("resnet20"), "ft", 0.5, coupled="sum", round_to="auto", progress=False
    )
    sliced = slice_model(result.model)
    assert {layer.out_channels % 8 for name, layer in prunable_layers(sliced).items() if name != "fc"} == {0}
    assert sliced.slice_report.channel_multiple == 8 and sliced.slice_report.padding_share == 0
    assert not sliced.slice_report.unaligned


def test_slice_report_counts_the_work_on_channel_padding(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 16, 3, stride=2, padding=1)
    )
    conv = model[0]
    prune = torch.nn.utils.prune
    prune.custom_from_mask(
        conv, "weight", (torch.arange(32) < 18).float().view(32, 1, 1, 1).expand_as(conv.weight)
    )
    report = slice_model(model, torch.randn(1, 3, 10, 10)).slice_report
    # conv 0: 18 of 32 filters kept, computed as 32 at 10x10; conv 2: 16 outputs at 5x5 over 18 inputs
    kept, padded_work = 18 * 27 * 100 + 16 * 18 * 9 * 25, 32 * 27 * 100 + 16 * 18 * 9 * 25
    assert (report.conv_macs, report.conv_macs_padded, report.unaligned) == (kept, padded_work, ["0"])
    assert report.padding_share == pytest.approx(1 - kept / padded_work)
    assert (
        "runs on channel padding: 1 convs keep output channel counts that are not a multiple of 16"
        in report.summary()
    )


def test_bad_options_are_named():
    with pytest.raises(
        ValueError,
        match="coupled must be one of 'sum', 'mean', 'max', 'min', 'skip', 'per_layer' or a callable",
    ):
        lostprune.prune(models.create("small_cnn"), "ft", 0.5, coupled="add", progress=False)
    for bad in (0, -8, 2.5, True):
        with pytest.raises(ValueError, match="round_to must be a positive integer"):
            lostprune.prune(
                models.create("small_cnn"), "ft", 0.5, coupled="sum", round_to=bad, progress=False
            )
    with pytest.raises(ValueError, match=r"round_to must be .* or 'auto'"):
        lostprune.prune(models.create("small_cnn"), "ft", 0.5, coupled="sum", round_to="fast", progress=False)
    with pytest.raises(
        ValueError,
        match=r"round_to=8 rounds the kept channels of whole channel groups.*"
        r"coupled='sum'",
    ):  # the paper's per-layer FT does not round
        lostprune.prune(models.create("small_cnn"), "ft", 0.5, round_to=8, progress=False)


class GatedResidual(nn.Module):
    """A residual stage whose channels pass an op the graph does not understand."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.head = (
            nn.Conv2d(3, 8, 1),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Conv2d(8, 2, 1),
        )
        self.inner, self.out = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.conv(y)
        y = torch.cumsum(y, dim=1)
        return self.head(y) + self.out(torch.relu(self.inner(x)))


def test_unsupported_op_in_a_coupled_group_is_named_with_the_skip_way_out():
    model = GatedResidual()
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(
        GraphError,
        match=r"coupled channel group \(8 channels produced by (conv, stem|stem, conv)\) passes an unsupported op function 'cumsum' at "
        r"node 'cumsum'.*coupled='skip'",
    ):
        lostprune.prune(model, "ft", 0.3, example_input=x, coupled="sum", progress=False)
    with pytest.warns(UserWarning, match="instead of the target 30.00 %"):  # only `inner` can go
        result = lostprune.prune(model, "ft", 0.3, example_input=x, coupled="skip", progress=False)
    assert not dead_rows(result, "stem") and dead_rows(result, "inner")


def test_cascade_never_revives_and_removes_dead_channels_first():
    first = lostprune.prune(models.create("resnet20"), "ft", 0.3, coupled="sum", progress=False)
    second = lostprune.prune(first.model, "ft", 0.6, coupled="sum", progress=False)
    for name in first.masks:
        assert torch.all(second.masks[name] <= first.masks[name])
        assert dead_rows(first, name) <= dead_rows(second, name)
    assert abs(second.stats.achieved_ratio - 0.6) <= 0.005 * 0.6


# ----------------------------------------------------------------------------- PFP on groups
PFP_DATA = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    "options",
    [
        {"coupled": "sum"},
        {"coupled": "skip"},
        {"coupled": "sum", "round_to": 4},
        {"coupled": "sum", "round_to": "auto"},
    ],
)
def test_pfp_group_options_remove_what_slicing_removes(compiled, options):
    torch.manual_seed(0)
    model = models.create("resnet20")
    result = lostprune.prune(model, "pfp", 0.5, data=PFP_DATA, progress=False, **options)
    sliced = slice_model(result.model)
    kept = sum(m.weight.numel() for m in prunable_layers(sliced).values())
    assert kept == result.stats.prunable_params - round(
        result.stats.achieved_ratio * result.stats.prunable_params
    )
    assert abs(result.stats.achieved_ratio - 0.5) <= 0.005 * 0.5 or "round_to" in options
    if options.get("coupled") == "skip":
        for name in ["conv1", "layer1.0.conv2", "layer3.2.conv2"]:
            assert not dead_rows(result, name)
    if options.get("coupled") == "sum":  # a residual channel goes from every producer at once
        removed = [dead_rows(result, name) for name in ["conv1", "layer1.0.conv2", "layer1.2.conv2"]]
        assert all(r == removed[0] for r in removed)
    if "round_to" in options:
        multiple = channel_multiple() if options["round_to"] == "auto" else options["round_to"]
        for name, layer in prunable_layers(sliced).items():
            if name != "fc" and name != "conv1" and layer.in_channels != 3:
                assert layer.in_channels % multiple == 0, (name, layer.in_channels)


def test_pfp_bad_group_option_is_named(compiled):
    with pytest.raises(
        ValueError, match=r"coupled must be one of 'sum', .*'skip', 'per_layer' or a callable"
    ):
        lostprune.prune(models.create("resnet20"), "pfp", 0.5, data=PFP_DATA, coupled="add", progress=False)
    with pytest.raises(
        ValueError,
        match=r"round_to=8 rounds the kept channels of whole channel groups, which "
        r"the paper's per-layer variant .* coupled='sum'",
    ):
        lostprune.prune(
            models.create("resnet20"),
            "pfp",
            0.5,
            data=PFP_DATA,
            coupled="".join(["per_", "layer"]),  # built at run time, as a YAML config's: compared by value
            round_to=8,
            progress=False,
        )


# ----------------------------------------------------------------------------- GroupPlan
class TwoProducers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = (
            nn.Conv2d(1, 3, 1, bias=False),
            nn.Conv2d(1, 3, 1, bias=False),
            nn.Conv2d(3, 1, 1),
        )

    def forward(self, x):
        return self.head(self.a(x) + self.b(x))


@pytest.mark.parametrize(
    "coupled, expected",
    [
        ("sum", [5.0, 5.0, 4.0]),
        ("mean", [2.5, 2.5, 2.0]),
        ("max", [4.0, 3.0, 2.0]),
        ("min", [1.0, 2.0, 2.0]),
        (lambda s: s.prod(0), [4.0, 6.0, 4.0]),
    ],
)
def test_group_score_reduces_the_members_scores(coupled, expected):
    model = TwoProducers()
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor([1.0, 2.0, 2.0]).view(3, 1, 1, 1))
        model.b.weight.copy_(torch.tensor([-4.0, 3.0, 2.0]).view(3, 1, 1, 1))
    plan, layers = plan_for(model, torch.randn(1, 1, 2, 2), coupled=coupled)
    (unit,) = [u for u in plan.units if u.group.coupled]
    plan.rank(l1_scores(layers))
    assert unit.score.tolist() == expected


def test_removed_weights_match_the_accounting_also_after_unstructured_pruning():
    model = models.create("resnet20")
    wt = lostprune.prune(model, "wt", 0.6, progress=False)  # arbitrary masks: the slow, exact path
    for source in (model, wt.model):
        layers = prunable_layers(source)
        masks = current_masks(layers)
        graph = build_graph(source, torch.randn(1, 3, 32, 32))
        plan = GroupPlan(graph, layers, masks)
        plan.rank(l1_scores(layers))
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            counts = [int(torch.randint(0, u.size, (1,), generator=gen)) for u in plan.units]
            masks = plan.masks(counts)
            expected = sum(int((masks[name] == 0).sum()) for name in layers)  # the zeros the masks hold
            assert plan.removed_weights(counts) == expected


def test_by_input_channels_and_counts_from_kept():
    """The PFP path: scores per input column, kept columns per layer → removal per group."""
    model = nn.Sequential(
        nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 2)
    )
    plan, _ = plan_for(model, torch.randn(1, 3, 3, 3), by="in")
    scores = {"2": torch.tensor([6.0, 1, 5, 2, 4, 3]), "5": torch.arange(36.0)}
    plan.rank(scores)
    counts = plan.counts_from_kept({"2": 3, "5": 9}, scores)  # "5": its top 9 columns are all of channel 3
    masks = plan.masks(counts)
    assert (masks["2"][:, [1, 3, 5]] == 0).all() and masks["2"][3, [0, 2, 4]].all()  # its 3 weakest columns
    assert (masks["2"][[0, 1, 2]] == 0).all()  # the filters whose outputs "5" no longer reads
    assert (masks["0"][[1, 3, 5]] == 0).all()  # and with them the producing filters
    assert (masks["5"].view(2, 4, 9)[:, :3] == 0).all() and masks["5"].view(2, 4, 9)[:, 3].all()


def test_allowed_kept_and_snap():
    assert allowed_kept(20, 8) == [8, 16, 20]
    assert allowed_kept(5, 8) == [5]
    assert allowed_kept(4, 1) == [1, 2, 3, 4]
    assert [snap(k, [8, 16, 20]) for k in (0, 11.9, 12, 13, 19, 30)] == [8, 8, 16, 16, 20, 20]


def test_last_within_answers_as_bisection_within_twice_its_evaluations():
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(1, 2000))
        steps = rng.integers(0, 5, n) * (rng.random(n) < rng.random())  # plateaus and jumps
        removal = np.cumsum(steps) + int(rng.integers(0, 3))
        if rng.random() < 0.3:  # far from linear in the index
            removal = (removal.astype(float) ** rng.uniform(0.2, 5)).astype(np.int64)
        target = int(rng.integers(-2, removal[-1] + 3))  # below and above the range too
        asked = []
        found = last_within(
            n, lambda i, asked=asked, removal=removal: asked.append(i) or int(removal[i]), target
        )
        below = np.flatnonzero(removal <= target)
        assert found == (int(below[-1]) if len(below) else 0)
        assert len(asked) <= 2 * max(1, int(np.ceil(np.log2(n))))
