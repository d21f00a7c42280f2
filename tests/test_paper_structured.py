"""The paper's FT and PFP (docs/methods.md §FT, §PFP, §Propagation): per-layer allocation,
masks that hold everything the statistics count, and the propagation rules on hand-computed
float64 cases (a chain and a residual block)."""

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lostprune
import lostprune.models as models
from lostprune.core.masks import nonzero_rows_and_columns
from lostprune.datapass import sensitivity_pass
from lostprune.train import TrainConfig, train


def zeros(result) -> int:
    return sum(int((m == 0).sum()) for m in result.masks.values())


def rows(mask) -> list[int]:
    """Indices of the live rows (filters) of a mask."""
    return nonzero_rows_and_columns(mask)[0].nonzero().flatten().tolist()


def cols(mask) -> list[int]:
    return nonzero_rows_and_columns(mask)[1].nonzero().flatten().tolist()


def set_filter_norms(conv: nn.Module, norms: list[float]) -> None:
    """Every weight of filter i equal to norms[i] / (weights per filter): L1 norm = norms[i]."""
    per_filter = conv.weight[0].numel()
    with torch.no_grad():
        for i, n in enumerate(norms):
            conv.weight[i].fill_(n / per_filter)


# ----------------------------------------------------------------------------- FT on a chain
class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.b, self.bn_b = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn_a(self.a(x)))
        x = F.relu(self.bn_b(self.b(x)))
        return self.fc(x.mean((2, 3)))


def test_ft_on_a_chain_keeps_the_same_fraction_per_layer_and_drops_constant_columns():
    model = Chain().double()
    set_filter_norms(model.a, [4.0, 1.0, 3.0, 2.0])  # a keeps its top 2: filters 0, 2
    set_filter_norms(model.b, [6.0, 1.0, 5.0, 2.0, 4.0, 3.0])  # b keeps 0, 2, 4
    # per layer half the filters: a loses 2 rows (2·27 weights); b keeps 3 rows × the 2 live
    # channels of a (the others carry only a BN shift: dropped) = 54 of 216; fc keeps 3 of 6 columns
    removed = 2 * 27 + (216 - 3 * 2 * 9) + (18 - 3 * 3)
    total = 108 + 216 + 18
    result = lostprune.prune(
        model, "ft", removed / total, example_input=torch.randn(1, 3, 8, 8).double(), progress=False
    )
    assert rows(result.masks["a"]) == [0, 2] and cols(result.masks["a"]) == [0, 1, 2]
    assert rows(result.masks["b"]) == [0, 2, 4] and cols(result.masks["b"]) == [0, 2]
    assert rows(result.masks["fc"]) == [0, 1, 2] and cols(result.masks["fc"]) == [
        0,
        2,
        4,
    ]  # output layer: all rows
    assert zeros(result) == removed == result.stats.removed_params
    # what is zero in a mask is zero in the weight the forward pass uses
    for name, mask in result.masks.items():
        assert torch.equal(result.model.get_submodule(name).weight == 0, mask == 0)


def test_l2_ranks_filters_by_their_l2_norm():
    """ "l2" is FT with ‖W_i‖₂: a filter with one large weight beats one spread thin, which
    L1 ranks the other way round (docs/methods.md §Baselines)."""
    model = Chain().double()
    with torch.no_grad():
        model.a.weight.zero_()
        model.a.weight[0].fill_(0.2)  # L1 5.4, L2 1.04
        model.a.weight[1, 0, 0, 0] = 3.0  # L1 3, L2 3
        model.a.weight[2].fill_(0.1)  # L1 2.7, L2 0.52
        model.a.weight[3, 0, 0, 0] = 2.0  # L1 2, L2 2
    set_filter_norms(model.b, [6.0, 1.0, 5.0, 2.0, 4.0, 3.0])  # uniform filters: L1 and L2 agree
    removed = 2 * 27 + (216 - 3 * 2 * 9) + (18 - 3 * 3)  # as for FT on the chain above
    ratio = removed / (108 + 216 + 18)
    kept = {}
    for method in ("ft", "l2"):
        result = lostprune.prune(
            model, method, ratio, example_input=torch.randn(1, 3, 8, 8).double(), progress=False
        )
        kept[method] = rows(result.masks["a"]), cols(result.masks["b"]), rows(result.masks["b"])
        assert zeros(result) == removed == result.stats.removed_params
    assert kept["ft"] == ([0, 1], [0, 1], [0, 2, 4])
    assert kept["l2"] == ([1, 3], [1, 3], [0, 2, 4])


# ----------------------------------------------------------------------------- FT on a residual block
class ResidualBlock(nn.Module):
    """x = stem(input); out = relu(bn2(conv2(relu(bn1(conv1(x))))) + x); logits = fc(out)."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)
        return self.fc(out.mean((2, 3)))


def test_ft_on_a_residual_block_follows_each_tensor():
    """The stem's removed filter 0 leaves a constant in x: conv1, which reads x, drops its
    column; but conv2's filter 0 keeps channel 0 of the add live, so fc keeps it."""
    model = ResidualBlock().double()
    set_filter_norms(model.stem, [1.0, 4.0, 3.0, 2.0])  # removes 0
    set_filter_norms(model.conv1, [4.0, 1.0, 3.0, 2.0])  # removes 1
    set_filter_norms(model.conv2, [4.0, 3.0, 1.0, 2.0])  # removes 2
    # stem: 1 row (27); conv1: 3 rows × 3 columns kept (144 − 81); conv2 reads conv1's
    # constant channel 1: 3 rows × 3 columns kept; fc: every channel of the add is live
    removed = 27 + (144 - 81) + (144 - 81)
    total = 108 + 144 + 144 + 8
    result = lostprune.prune(
        model, "ft", removed / total, example_input=torch.randn(1, 3, 8, 8).double(), progress=False
    )
    assert rows(result.masks["stem"]) == [1, 2, 3]
    assert rows(result.masks["conv1"]) == [0, 2, 3] and cols(result.masks["conv1"]) == [1, 2, 3]
    assert rows(result.masks["conv2"]) == [0, 1, 3] and cols(result.masks["conv2"]) == [0, 2, 3]
    assert cols(result.masks["fc"]) == [0, 1, 2, 3]
    assert zeros(result) == removed == result.stats.removed_params


def test_channel_dead_in_every_producer_of_a_residual_add_is_dropped_everywhere():
    model = ResidualBlock().double()
    set_filter_norms(model.stem, [1.0, 4.0, 3.0, 2.0])
    set_filter_norms(model.conv1, [4.0, 1.0, 3.0, 2.0])
    set_filter_norms(model.conv2, [1.0, 3.0, 4.0, 2.0])  # removes 0 too: channel 0 of the add is constant
    removed = 27 + (144 - 81) + (144 - 81) + 2  # ... and fc drops its column 0
    total = 108 + 144 + 144 + 8
    result = lostprune.prune(
        model, "ft", removed / total, example_input=torch.randn(1, 3, 8, 8).double(), progress=False
    )
    assert rows(result.masks["conv2"]) == [1, 2, 3]
    assert cols(result.masks["fc"]) == [1, 2, 3]
    assert zeros(result) == removed == result.stats.removed_params


# ----------------------------------------------------------------------------- PFP
class PFPChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(F.relu(self.b(F.relu(self.a(x)))).mean((2, 3)))


def expected_kept(scores: torch.Tensor, positions: int, kernel: int, eps: float) -> int:
    """c(ε) of the error analysis, written out in float64 (the oracle for kept_channels)."""
    alpha = 2 * 3.0 * math.log(8 * (positions + 1) * kernel / 1e-16)
    total = float(scores.sum())
    m = math.ceil(3.0 * (6 + 2 * eps) * alpha * total / eps**2)
    p = scores.double() / total
    return max(1, min(len(scores), math.ceil(float((1 - (1 - p) ** m).sum()) - 1e-9)))


def test_pfp_keeps_the_top_c_channels_of_every_layer_for_one_eps(compiled):
    torch.manual_seed(0)
    model = PFPChain().double()
    S = torch.randn(16, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layers = {"a": model.a, "b": model.b, "fc": model.fc}
    scores = sensitivity_pass(model, S, kind="channel", progress=False)
    geometry = {"a": (64, 9), "b": (64, 9), "fc": (1, 1)}  # (output positions, kernel taps)

    def by_hand(kept: dict[str, int]) -> tuple[dict, int]:
        """Top-c columns per layer; a filter whose channel the next layer dropped is zeroed."""
        top = {
            n: torch.sort(scores[n].double(), descending=True, stable=True)
            .indices[: kept[n]]
            .sort()
            .values.tolist()
            for n in layers
        }
        rows_a = [j for j in range(6) if j in top["b"]]
        rows_b = [j for j in range(8) if j in top["fc"]]
        removed = (
            (162 - 9 * len(rows_a) * len(top["a"]))
            + (432 - 9 * len(rows_b) * len(top["b"]))
            + (32 - 4 * len(top["fc"]))
        )
        return {"top": top, "rows_a": rows_a, "rows_b": rows_b}, removed

    eps = 2000.0  # a relative error at which b and fc lose channels (m is tiny on 6 and 8 channels)
    _, removed = by_hand({n: expected_kept(scores[n], *geometry[n], eps) for n in layers})
    result = lostprune.prune(model, "pfp", removed / 626, data=S, progress=False)
    assert zeros(result) == removed == result.stats.removed_params
    kept = {n: len(cols(result.masks[n])) for n in layers}
    # one ε gives every layer's count (maybe another ε than ours with the same removal)
    grid = torch.logspace(0, 6, 6001, dtype=torch.float64).tolist()
    assert any(all(expected_kept(scores[n], *geometry[n], e) == kept[n] for n in layers) for e in grid)
    expected, removed_by_hand = by_hand(kept)
    assert removed_by_hand == removed
    assert cols(result.masks["a"]) == expected["top"]["a"] and rows(result.masks["a"]) == expected["rows_a"]
    assert cols(result.masks["b"]) == expected["top"]["b"] and rows(result.masks["b"]) == expected["rows_b"]
    assert cols(result.masks["fc"]) == expected["top"]["fc"]


def test_kept_channels_matches_the_error_analysis_written_out():
    from lostprune.methods.pfp import LayerErrorModel, kept_channels

    scores = torch.tensor([0.9, 0.5, 0.05, 0.3, 0.0, 0.01], dtype=torch.float64)
    for eps in (0.05, 0.5, 2.0, 30.0, 1e4):
        assert kept_channels(LayerErrorModel(scores, 49, 9), eps) == expected_kept(scores, 49, 9, eps)


def test_pfp_residual_channel_read_by_one_consumer_stays_dropped_by_all_goes(compiled):
    """A residual channel that one reader dropped and another keeps stays (the original's
    behaviour); one every reader dropped loses every producer."""
    model = models.create("resnet20")
    S = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    result = lostprune.prune(model, "pfp", 0.7, data=S, progress=False)
    stage3_producers = ["layer3.0.conv2", "layer3.0.shortcut.0", "layer3.1.conv2", "layer3.2.conv2"]
    stage3_readers = ["layer3.1.conv1", "layer3.2.conv1", "fc"]
    read = torch.zeros(64, dtype=torch.bool)
    for name in stage3_readers:
        read |= nonzero_rows_and_columns(result.masks[name])[1]
    for name in stage3_producers:
        produced = nonzero_rows_and_columns(result.masks[name])[0]
        assert not (produced & ~read).any(), f"{name} keeps a filter nobody reads"
    partially = [
        j
        for j in range(64)
        if read[j] and not all(nonzero_rows_and_columns(result.masks[n])[1][j] for n in stage3_readers)
    ]
    assert partially, "some residual channel is read by one layer and dropped by another"
    assert zeros(result) == result.stats.removed_params


# ----------------------------------------------------------------------------- masks are the truth
MODELS = {
    "resnet20": (3, 32, 32),
    "resnet18": (3, 64, 64),
    "mobilenet_v2": (3, 64, 64),
    "densenet121": (3, 64, 64),
}
SLOW = {"densenet121"}


@pytest.mark.parametrize(
    "method, options",
    [
        ("wt", {}),
        ("sipp", {}),
        ("ft", {}),
        ("ft", {"coupled": "sum"}),
        ("pfp", {}),
        ("pfp", {"coupled": "sum"}),
    ],
)
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS]
)
def test_reported_count_is_the_zeros_of_the_masks_at_three_ratios(compiled, name, method, options):
    torch.manual_seed(0)
    model = models.randomize_norm_statistics(models.create(name), 0)
    size = MODELS[name]
    S = torch.randn(4, *size, generator=torch.Generator().manual_seed(3))
    data = {"data": S} if method in ("sipp", "pfp") else {"example_input": S[:1]}
    for ratio in (0.3, 0.5, 0.7):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = lostprune.prune(model, method, ratio, progress=False, **data, **options)
        assert zeros(result) == result.stats.removed_params
        off = [w for w in caught if "instead of the target" in str(w.message)]
        # on budget, or one warning that names the achieved ratio
        assert abs(result.stats.achieved_ratio - ratio) <= 0.005 * ratio or (
            len(off) == 1 and f"{100 * result.stats.achieved_ratio:.2f} %" in str(off[0].message)
        )
        assert abs(result.stats.achieved_ratio - ratio) <= 0.01, "never far off the budget"


def test_masks_survive_retraining_save_load_and_further_pruning(compiled):
    torch.manual_seed(0)
    model = models.create("resnet20")
    result = lostprune.prune(model, "ft", 0.5, progress=False)
    x = torch.randn(32, 3, 32, 32)
    y = torch.randint(0, 10, (32,))
    train(
        result.model,
        torch.utils.data.TensorDataset(x, y),
        TrainConfig(epochs=1, batch_size=16, lr=0.1, momentum=0.9, weight_decay=1e-3),
        progress=False,
    )
    for name, mask in result.masks.items():
        module = result.model.get_submodule(name)
        assert torch.equal(module.weight_mask, mask)
        assert not module.weight[mask == 0].any()
    state = result.model.state_dict()
    loaded = lostprune.load_pruned(models.create("resnet20"), state)
    for name, mask in result.masks.items():
        assert torch.equal(loaded.get_submodule(name).weight_mask, mask)
    again = lostprune.prune(loaded, "pfp", 0.7, data=x[:8], progress=False)
    for name, mask in result.masks.items():
        assert not (again.masks[name].bool() & ~mask.bool()).any()
    assert zeros(again) == again.stats.removed_params


def test_round_to_needs_a_group_aware_variant():
    with pytest.raises(ValueError, match="coupled='sum'"):
        lostprune.prune(models.create("resnet20"), "ft", 0.5, round_to=8, progress=False)


def test_unknown_option_is_refused_before_any_pass():
    with pytest.raises(TypeError, match=r"unexpected options: copuled \(it takes: coupled, round_to\)"):
        lostprune.prune(models.create("resnet20"), "pfp", 0.5, data=torch.randn(4, 3, 32, 32), copuled="sum")


@pytest.mark.parametrize(
    "method, coupled, message",
    [
        (
            "ft",
            "per_layer",
            r"ft: no layer has filters that can be removed \(every output channel is a network output",
        ),
        ("ft", "sum", r"ft: no layer has filters that can be removed \(every output channel is frozen"),
        ("pfp", "sum", r"pfp: no input channel group can be removed \(every group is frozen"),
    ],
)
def test_a_network_with_nothing_to_remove_is_refused_with_the_reason(compiled, method, coupled, message):
    """One linear layer: its outputs are the network's outputs, its inputs the network's input."""
    inputs = {"data": torch.randn(8, 6)} if method == "pfp" else {"example_input": torch.randn(1, 6)}
    with pytest.raises(ValueError, match=message):
        lostprune.prune(
            nn.Sequential(nn.Linear(6, 3)), method, 0.5, coupled=coupled, progress=False, **inputs
        )


def test_silent_layers_are_named(compiled):
    model = PFPChain()
    with torch.no_grad():
        model.a.bias.fill_(-100.0)  # a dead ReLU: b sees nothing
    S = torch.randn(8, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"1 layer\(s\) see no signal on S .*: b"):
        result = lostprune.prune(model, "pfp", 0.3, data=S, progress=False)
    assert zeros(result) == result.stats.removed_params


# ----------------------------------------------------------------------------- propagation on real graphs
def _zero_constants(model: nn.Module) -> nn.Module:
    """Biases, BN shifts and means zero: a channel without producers then carries exactly 0,
    so dropping it (and zeroing what no one reads) must not change the output at all."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.zeros_(m.bias)
            m.running_mean.zero_()
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "mobilenet_v2",
        "googlenet",
        "shufflenet_v2_x0_5",
        "efficientnet_b0",
        pytest.param("densenet121", marks=pytest.mark.slow),
    ],
)
def test_propagation_removes_only_what_cannot_change_the_output(name):
    """Random rows and columns removed; what propagation adds on top is exactly output-neutral
    when constants are zero, on graphs with residual adds, concats, depthwise convs, channel
    shuffles (opaque) and squeeze-excitation multiplies."""
    import copy

    import numpy as np
    import torchvision

    from lostprune.core.layers import prunable_layers
    from lostprune.core.masks import apply_masks, current_masks
    from lostprune.structure import build_graph
    from lostprune.structure.propagation import Propagation

    torch.manual_seed(0)
    options = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = _zero_constants(getattr(torchvision.models, name)(**options)).eval()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    layers = prunable_layers(model)
    masks = current_masks(layers)
    prop = Propagation(build_graph(model, x[:1]), layers, masks)
    rng = np.random.default_rng(0)
    rows, cols = prop.fresh()
    rows &= rng.random(len(rows)) > 0.1
    cols &= rng.random(len(cols)) > 0.1
    final_rows, final_cols = prop.propagate(rows, cols)
    before, after = prop.masks(rows, cols, masks), prop.masks(final_rows, final_cols, masks)
    assert sum(int((before[n] != 0).sum() - (after[n] != 0).sum()) for n in before) > 0  # it did something
    assert prop.kept_weights(final_rows, final_cols) == sum(int((m != 0).sum()) for m in after.values())
    outputs = []
    for chosen in (before, after):
        copy_ = copy.deepcopy(model)
        apply_masks(prunable_layers(copy_), chosen)
        with torch.no_grad():
            outputs.append(copy_(x))
    assert outputs[0].abs().max() > 0  # some signal survives the random removal
    assert torch.equal(outputs[0], outputs[1])  # adding exact zeros changes no float sum
    again = prop.propagate(final_rows, final_cols)  # a fixpoint
    assert np.array_equal(again[0], final_rows) and np.array_equal(again[1], final_cols)


@pytest.mark.parametrize(
    "method, options", [("ft", {}), ("ft", {"coupled": "sum"}), ("pfp", {}), ("pfp", {"coupled": "sum"})]
)
def test_inception_style_branches_meet_the_budget(compiled, method, options):
    """GoogLeNet: four parallel branches concatenated, max-pool branches, 1x1 reductions."""
    import torchvision

    torch.manual_seed(0)
    model = models.randomize_norm_statistics(
        torchvision.models.googlenet(aux_logits=False, init_weights=True), 0
    )
    S = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    data = {"data": S} if method == "pfp" else {"example_input": S[:1]}
    for ratio in (0.3, 0.5):
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # zero-score channels of a random network (PFP) are named, not errors
            result = lostprune.prune(model.eval(), method, ratio, progress=False, **data, **options)
        assert zeros(result) == result.stats.removed_params
        assert abs(result.stats.achieved_ratio - ratio) <= 0.005 * ratio
