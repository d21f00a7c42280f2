"""The pruning core: API, WT/FT/baselines, masks, accounting, bad input."""

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import prune as torch_prune

import lostprune
import lostprune.models as models
from lostprune.core.layers import prunable_layers
from lostprune.core.masks import load_pruned, remove_masks


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


X = torch.randn(4, 3, 12, 12)


# ----------------------------------------------------------------------------- API and input
def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown pruning method 'magnitude'; valid methods: .*ft.*wt"):
        lostprune.prune(chain(), "magnitude", 0.5)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_outside_range(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        lostprune.prune(chain(), "wt", ratio)


def test_ratio_not_a_number():
    with pytest.raises(TypeError, match="ratio must be a number"):
        lostprune.prune(chain(), "wt", "half")


def test_model_with_nothing_prunable():
    with pytest.raises(ValueError, match="model has nothing to prune: no Conv2d or Linear layer found"):
        lostprune.prune(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)), "wt", 0.5)


def test_data_informed_method_needs_data():
    with pytest.raises(ValueError, match="'snip' is data-informed: pass data=S"):
        lostprune.prune(chain(), "snip", 0.5)


def test_data_with_nan_or_wrong_shape_or_too_small():
    bad = X.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="data: batch 0 contains NaN or inf"):
        lostprune.prune(chain(), "snip", 0.5, data=bad)
    with pytest.raises(
        ValueError, match=r"samples have shape \(1, 12, 12\) but the model expects \(3, 12, 12\)"
    ):
        lostprune.prune(chain(), "snip", 0.5, data=torch.randn(4, 1, 12, 12), example_input=X[:1])
    with pytest.raises(ValueError, match="needs at least 2"):
        lostprune.prune(chain(), "snip", 0.5, data=X[:1])


def test_unexpected_option_is_named():
    with pytest.raises(TypeError, match="unexpected options: colour"):
        lostprune.prune(chain(), "wt", 0.5, colour="red")


def test_layer_selection_by_name_type_and_exclude():
    model = models.create("resnet20")
    assert list(prunable_layers(model, layers=["layer1"])) == [
        f"layer1.{b}.conv{c}" for b in range(3) for c in (1, 2)
    ]
    assert list(prunable_layers(model, layers=[nn.Linear])) == ["fc"]
    assert "fc" not in prunable_layers(model, exclude=["fc"])
    with pytest.raises(ValueError, match="layers: no module named 'layer9'"):
        prunable_layers(model, layers=["layer9"])
    result = lostprune.prune(model, "wt", 0.5, layers=["layer2"])
    assert set(result.masks) == {n for n in prunable_layers(model) if n.startswith("layer2")}
    assert not hasattr(result.model.layer1[0].conv1, "weight_mask")


def test_prune_copies_unless_inplace():
    model = chain()
    lostprune.prune(model, "wt", 0.5)
    assert not hasattr(model[0], "weight_mask")
    result = lostprune.prune(model, "wt", 0.5, inplace=True)
    assert result.model is model and hasattr(model[0], "weight_mask")


def test_a_layer_pruned_to_nothing_is_named():
    """WT is global: a layer of small weights can lose all of them. Say so — a warning and
    the statistics — instead of a silent dead layer."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 4),
    )
    with torch.no_grad():
        model[5].weight.mul_(1e-4)
    with pytest.warns(UserWarning, match=r"removed every weight of 1 layer\(s\): 5 \(emptied"):
        result = lostprune.prune(model, "wt", 0.9, example_input=X[:1])
    assert result.stats.emptied_layers == ["5"]
    assert int(result.masks["5"].sum()) == 0
    assert "emptied (every weight removed): 5" in result.stats.summary()
    with torch.no_grad():
        model[5].weight.mul_(1e4)
    kept = lostprune.prune(model, "wt", 0.9, example_input=X[:1])
    assert kept.stats.emptied_layers == [] and "emptied" not in kept.stats.summary()


# ----------------------------------------------------------------------------- WT
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.8, 0.97])
def test_wt_hits_the_global_budget_exactly(ratio):
    model = models.create("resnet20")
    result = lostprune.prune(model, "wt", ratio)
    n = sum(m.numel() for m in result.masks.values())
    assert sum(int(m.sum()) for m in result.masks.values()) == round((1 - ratio) * n)
    assert result.stats.prunable_params == n
    assert abs(result.stats.achieved_ratio - ratio) <= 1 / n
    # global: the smallest kept magnitude is >= the largest removed one
    weights = {
        k: v.weight_orig.detach().abs() if hasattr(v, "weight_orig") else v.weight.detach().abs()
        for k, v in prunable_layers(model).items()
    }
    kept = torch.cat([weights[k][m.bool()] for k, m in result.masks.items()])
    gone = torch.cat([weights[k][~m.bool()] for k, m in result.masks.items()])
    if gone.numel() and kept.numel():
        assert kept.min() >= gone.max()


def test_wt_budget_exact_with_ties():
    model = nn.Sequential(nn.Linear(10, 10, bias=False), nn.Linear(10, 10, bias=False))
    with torch.no_grad():
        for layer in model:
            layer.weight.fill_(1.0)
    result = lostprune.prune(model, "wt", 0.37)
    assert sum(int(m.sum()) for m in result.masks.values()) == 126


def test_cascade_never_revives():
    first = lostprune.prune(models.create("small_cnn"), "wt", 0.5)
    with torch.no_grad():  # make removed weights' raw values large: they must stay removed
        for layer in prunable_layers(first.model).values():
            layer.weight_orig.add_((1 - layer.weight_mask) * 100)
    second = lostprune.prune(first.model, "wt", 0.8)
    for name in first.masks:
        assert torch.all(second.model.get_submodule(name).weight_mask <= first.masks[name])
    assert abs(second.stats.achieved_ratio - 0.8) < 1e-4


# ----------------------------------------------------------------------------- FT
def _filters_removed(result, name):
    mask = result.model.get_submodule(name).weight_mask
    return int((mask.flatten(1).sum(1) == 0).sum()), mask.shape[0]


@pytest.mark.parametrize("model_name, ratio", [("resnet20", 0.5), ("small_cnn", 0.3), ("vgg16_bn", 0.6)])
def test_ft_same_fraction_per_layer_and_ratio_within_half_percent(model_name, ratio):
    result = lostprune.prune(models.create(model_name), "ft", ratio)
    assert abs(result.stats.achieved_ratio - ratio) <= 0.005 * ratio
    fractions = []
    for name in result.masks:
        removed, total = _filters_removed(result, name)
        if name in ("fc", "classifier", "classifier.4"):
            assert removed == 0  # the output layer keeps all its outputs
            continue
        assert removed < total
        fractions.append((removed, total))
    common = sum(r for r, _ in fractions) / sum(t for _, t in fractions)
    for removed, total in fractions:  # the same fraction, up to one filter of rounding/top-up
        assert abs(removed - common * total) <= 1.5


def test_ft_counts_the_consumers_input_channels():
    model = chain()
    result = lostprune.prune(model, "ft", 0.4, example_input=X[:1])
    filters, _ = _filters_removed(result, "0")
    # removing k filters of conv 0 removes k·3·9 weights there and k·16·9 columns of conv 3
    layer3 = next(s for s in result.stats.layers if s.name == "3")
    removed3 = layer3.weights - layer3.kept
    rows3, _ = _filters_removed(result, "3")
    assert removed3 == rows3 * 8 * 9 + filters * (16 - rows3) * 9
    assert result.stats.layers[0].weights - result.stats.layers[0].kept == filters * 27


def test_ft_on_resnet_couples_residual_channels():
    result = lostprune.prune(models.create("resnet20"), "ft", 0.5)
    # conv1 of a block feeds only conv2: a removed filter removes conv2's input columns too
    layer = next(s for s in result.stats.layers if s.name == "layer1.0.conv2")
    _rows, _ = _filters_removed(result, "layer1.0.conv2")
    cols_removed, _ = _filters_removed(result, "layer1.0.conv1")
    assert layer.weights - layer.kept >= cols_removed * 16 * 9


# ----------------------------------------------------------------------------- masks
def test_masks_survive_sgd_with_momentum_and_weight_decay():
    result = lostprune.prune(models.create("small_cnn"), "wt", 0.8)
    model = result.model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
        opt.step()
    model(torch.randn(2, 3, 32, 32))  # the pre-hook recomputes the masked weights
    for name, mask in result.masks.items():
        layer = model.get_submodule(name)
        assert torch.all(layer.weight[mask == 0] == 0)


def test_state_dict_round_trip_restores_outputs():
    result = lostprune.prune(models.create("resnet20"), "ft", 0.5)
    model = result.model.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    fresh = load_pruned(models.create("resnet20"), model.state_dict()).eval()
    torch.testing.assert_close(fresh(x), expected)
    assert torch.equal(fresh.layer1[0].conv1.weight_mask, model.layer1[0].conv1.weight_mask)


def test_saved_mask_that_does_not_fit():
    state = lostprune.prune(chain(), "wt", 0.5).model.state_dict()
    state["0.weight_mask"] = torch.ones(4, 3, 3, 3)
    with pytest.raises(
        ValueError,
        match=r"mask for 0.weight has shape \(4, 3, 3, 3\) but the parameter has shape "
        r"\(8, 3, 3, 3\)",
    ):
        load_pruned(chain(), state)


def test_remove_masks_makes_pruning_permanent():
    result = lostprune.prune(chain(), "wt", 0.6)
    model = remove_masks(result.model)
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
    zeros = sum(int((m.weight == 0).sum()) for m in prunable_layers(model).values())
    assert zeros >= round(0.6 * result.stats.prunable_params)
    assert torch_prune.is_pruned(model) is False


# ----------------------------------------------------------------------------- accounting
def test_stats_count_parameters_and_flops():
    model = chain()
    result = lostprune.prune(model, "wt", 0.5, example_input=X[:1])
    stats = result.stats
    assert stats.total_params == sum(p.numel() for p in model.parameters())
    assert stats.prunable_params == 3 * 8 * 9 + 8 * 16 * 9 + 16 * 5
    assert stats.flops_dense == (3 * 8 * 9 + 8 * 16 * 9) * 144 + 16 * 5
    kept_macs = sum(s.macs_kept for s in stats.layers)
    assert stats.flops_pruned == kept_macs < stats.flops_dense
    assert stats.nonzero_params == stats.total_params - stats.removed_params
    assert "achieved 50.00 %" in stats.summary()


def test_random_and_snip_baselines():
    rand = lostprune.prune(models.create("small_cnn"), "random", 0.6, seed=3)
    for stats in rand.stats.layers:  # uniform per layer
        assert abs(stats.ratio - 0.6) < 0.01
    assert all(
        set(m.unique().tolist()) == {0.0, 1.0} for m in rand.masks.values()
    )  # a mask holds 0 and 1 only
    assert "random: target 60.00 %, achieved" in rand.stats.summary()
    data = torch.utils.data.TensorDataset(torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,)))
    snip = lostprune.prune(models.create("small_cnn"), "snip", 0.6, data=data)
    assert abs(snip.stats.achieved_ratio - 0.6) < 1e-4
