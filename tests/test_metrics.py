"""Metrics beyond test accuracy on hand-made cases with known answers."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lostprune.metrics import (
    confusion_matrix,
    corruption_shift,
    evaluate_grid,
    excess_error,
    fit_excess_error,
    functional_similarity,
    informative_feature_matrix,
    informative_features,
    mean_iou,
    noise_shift,
    nominal,
    prune_potential,
    prune_potential_over_seeds,
    reduce_to,
    similarity_table,
)
from lostprune.metrics import evaluation as evaluation_module

# ---------------------------------------------------------------- prune potential

RATIOS = [0.2, 0.4, 0.6, 0.8]
ERRORS = [0.100, 0.104, 0.120, 0.105]  # the 0.6 network fails, the 0.8 one passes again
PARENT = 0.100


@pytest.mark.parametrize(
    "delta, any_, prefix",
    [
        (0.0, 0.2, 0.2),  # only the first network is no worse than the parent
        (0.004, 0.4, 0.4),
        (0.005, 0.8, 0.4),  # default δ: the 0.8 network qualifies, the prefix stops at 0.6
        (0.02, 0.8, 0.8),
    ],
)
def test_prune_potential_both_readings(delta, any_, prefix):
    assert prune_potential(RATIOS, ERRORS, PARENT, delta, "any") == any_
    assert prune_potential(RATIOS, ERRORS, PARENT, delta, "prefix") == prefix


def test_prune_potential_edge_cases():
    assert prune_potential(RATIOS, [0.2] * 4, PARENT) == 0.0  # nothing qualifies: the parent's 0
    # the first network fails: the prefix is empty even though later ones pass
    assert prune_potential(RATIOS, [0.2, 0.1, 0.1, 0.1], PARENT, 0.005, "prefix") == 0.0
    with pytest.raises(
        ValueError, match="ratios is empty: a prune potential needs at least one pruned network"
    ):
        prune_potential([], [], PARENT)  # nothing measured is not a potential of 0
    assert prune_potential(RATIOS[::-1], ERRORS[::-1], PARENT, 0.005, "prefix") == 0.4  # order-free
    assert prune_potential([0.5], [0.105], 0.1) == 0.5  # exactly parent + δ, despite float round-off


def test_strict_boundary_is_the_originals_test():
    # 10,000 test images: the parent errs on 860, the pruned network on 910 = parent + δ exactly
    parent, on_boundary = 860 / 10000, 910 / 10000
    assert prune_potential([0.5], [on_boundary], parent, 0.005) == 0.5
    assert prune_potential([0.5], [on_boundary], parent, 0.005, boundary="strict") == 0.0
    assert (
        prune_potential([0.5], [909 / 10000], parent, 0.005, boundary="strict") == 0.5
    )  # acc + δ > acc_parent
    with pytest.raises(ValueError, match="boundary must be one of"):
        prune_potential([0.5], [0.1], 0.1, boundary="loose")


def test_prune_potential_over_draws_averages_each_draws_potential():
    from lostprune.metrics import prune_potential_over_draws

    ratios = [0.3, 0.6]
    # draw 0: both within δ of the parent; draw 1: only the first
    errors = [[0.10, 0.12], [0.10, 0.20]]
    per_draw = prune_potential_over_draws(ratios, errors, [0.10, 0.12], delta=0.01)
    assert per_draw.values == (0.6, 0.3) and per_draw.mean == pytest.approx(0.45)
    # the mean-error reading differs: network 2 averages 0.16 against the parent's 0.11
    assert prune_potential(ratios, [0.11, 0.16], 0.11, delta=0.01) == 0.3
    with pytest.raises(ValueError, match="networks × draws with as many draws as parent_errors"):
        prune_potential_over_draws(ratios, errors, [0.1], delta=0.01)


def test_excess_error_bootstrap_band():
    rng = np.random.default_rng(0)
    ratios = np.linspace(0.1, 0.9, 40)
    excess = 0.02 * ratios + rng.normal(0, 0.002, 40)
    fit = fit_excess_error(ratios, excess, bootstrap=500)
    low, high = fit.band
    assert low < fit.slope < high and low < 0.02 < high and high - low < 0.004
    assert fit.resamples == 500 and fit.confidence == 0.95
    assert fit_excess_error(ratios, excess, bootstrap=500).band == fit.band  # seeded
    assert fit_excess_error(ratios, excess).band is None
    with pytest.raises(ValueError, match="bootstrap must be an integer >= 0"):
        fit_excess_error(ratios, excess, bootstrap=-1)


def test_prune_potential_over_seeds():
    s = prune_potential_over_seeds(RATIOS, [ERRORS, [0.1, 0.1, 0.1, 0.2]], [PARENT, PARENT])
    assert s.mean == pytest.approx(0.7) and s.std == pytest.approx(0.1) and s.values == (0.8, 0.6)
    s = prune_potential_over_seeds([[0.1, 0.5], [0.3, 0.9]], [[0.1, 0.1], [0.1, 0.1]], [0.1, 0.1])
    assert s.values == (0.5, 0.9)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: prune_potential([0.1, 0.2], [0.1], 0.1), "same length"),
        (lambda: prune_potential([1.0], [0.1], 0.1), r"prune ratios in \[0, 1\)"),
        (lambda: prune_potential([0.5], [1.5], 0.1), r"error rates in \[0, 1\]"),
        (lambda: prune_potential([0.5], [0.1], float("nan")), "parent_error"),
        (lambda: prune_potential([0.5], [0.1], 0.1, delta=-0.1), r"delta must be in \[0, 1\)"),
        (lambda: prune_potential([0.5], [0.1], 0.1, reading="max"), "reading must be one of"),
        (lambda: prune_potential_over_seeds(RATIOS, [ERRORS], [0.1, 0.1]), "one per seed"),
    ],
)
def test_prune_potential_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- excess error


def test_excess_error_of_constructed_errors():
    # pruned: 10 % → 30 % on D′ (gap 0.20); parent: 8 % → 20 % (gap 0.12)
    assert excess_error(0.10, 0.30, 0.08, 0.20) == pytest.approx(0.08)
    # a list of shifted sets: their means (0.25 and 0.15)
    assert excess_error(0.10, [0.2, 0.3], 0.08, [0.1, 0.2]) == pytest.approx(0.15 - 0.07)
    assert excess_error(0.1, 0.2, 0.1, 0.2) == 0.0
    with pytest.raises(ValueError, match="pruned_shifted is empty"):
        excess_error(0.1, [], 0.1, 0.2)


def test_excess_error_line_through_origin():
    ratios = [0.2, 0.5, 0.8]
    fit = fit_excess_error(ratios, [0.1 * r for r in ratios])
    assert fit.slope == pytest.approx(0.1) and fit.r_squared == pytest.approx(1.0)
    assert fit.predict(0.5) == pytest.approx(0.05)
    noisy = fit_excess_error([1.0, 2.0], [1.0, 3.0])  # slope = (1 + 6) / (1 + 4)
    assert noisy.slope == pytest.approx(1.4) and noisy.r_squared < 1
    with pytest.raises(ValueError, match="all ratios are 0"):
        fit_excess_error([0.0], [0.1])


# ---------------------------------------------------------------- hand-made models and data


class ChannelVote(nn.Module):
    """Predicts the channel with the largest mean: error rates are computable by hand."""

    def __init__(self, channels=(0, 1, 2)):
        super().__init__()
        self.channels = list(channels)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x[:, self.channels].mean(dim=(2, 3)) * 10 + self.dummy


def vote_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g) * 0.5
    labels = torch.randint(0, 3, (n,), generator=g)
    x[torch.arange(n), labels] += 0.4  # the labelled channel is brighter
    wrong = torch.arange(n) % 4 == 0  # every 4th label is wrong on purpose: 25 % error
    labels = torch.where(wrong, (labels + 1) % 3, labels)
    return x.clamp(0, 1), labels


def test_grid_errors_match_direct_computation():
    x, y = vote_data()
    models = {"parent": ChannelVote(), "swapped": ChannelVote((1, 0, 2))}
    grid = evaluate_grid(models, [nominal()], (x, y), batch_size=7, progress=False)
    assert grid.error("parent") == pytest.approx(0.25)
    direct = float((models["swapped"](x).argmax(1) != y).float().mean())
    assert grid.error("swapped") == pytest.approx(direct)
    assert grid.samples == 40 and len(grid.rows()) == 2


def test_grid_makes_each_shifted_set_once(monkeypatch):
    calls = []
    real = evaluation_module.corrupt

    def counting(images, name, severity, seed=None, **kw):
        calls.append((name, len(images)))
        return real(images, name, severity, seed=seed, **kw)

    monkeypatch.setattr(evaluation_module, "corrupt", counting)
    x, y = vote_data(30)
    models = {f"m{i}": ChannelVote() for i in range(4)}
    shifts = [nominal(), corruption_shift("contrast", 3), corruption_shift("gaussian_noise", 2)]
    grid = evaluate_grid(models, shifts, (x, y), batch_size=10, progress=False)
    assert len(calls) == 2 * 3  # two corruptions × three batches, whatever the number of models
    assert all(
        grid.error(m, "corruption:contrast:3") == grid.error("m0", "corruption:contrast:3") for m in models
    )


def test_grid_noise_draws_and_reproducibility():
    x, y = vote_data(60)
    models = {"parent": ChannelVote(), "other": ChannelVote((0, 2, 1))}
    shifts = [nominal(), noise_shift("gaussian", 20.0, draws=4), noise_shift("uniform", 30.0, draws=2)]
    g1 = evaluate_grid(models, shifts, (x, y), normalize=((0.5,) * 3, (0.25,) * 3), seed=3, progress=False)
    g2 = evaluate_grid(
        {"parent": models["parent"]},
        shifts[::-1],
        (x, y),
        normalize=((0.5,) * 3, (0.25,) * 3),
        seed=3,
        progress=False,
    )
    name = shifts[1].name
    assert g1.error("parent", name) == g2.error(
        "parent", name
    )  # independent of the shifts' order and the models
    assert g1.error_std["parent"][name] > 0 and g1.error_std["parent"]["nominal"] == 0
    assert g1.error("parent", name) > g1.error("parent")
    assert g1.prune_potential("parent", {"other": 0.5}, name, delta=0.99) == 0.5
    assert len(g1.error_draws["other"][name]) == 4
    per_draw = [
        0.5 if o <= p + 0.01 + 1e-12 else 0.0
        for o, p in zip(g1.error_draws["other"][name], g1.error_draws["parent"][name])
    ]
    assert g1.prune_potential("parent", {"other": 0.5}, name, delta=0.01, per_draw=True) == pytest.approx(
        sum(per_draw) / 4
    )
    assert g1.excess_error("other", "parent", [name]) == pytest.approx(
        (g1.error("other", name) - g1.error("other")) - (g1.error("parent", name) - g1.error("parent"))
    )


class Recorder(nn.Module):
    """Keeps every input it sees (to check what the grid fed it)."""

    def __init__(self, device="cpu"):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1, device=device))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().cpu().clone())
        return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1) + self.dummy


def test_grid_noise_is_made_once_on_the_cpu_for_every_device():
    x, y = vote_data(12)
    shift = noise_shift("gaussian", 0.3, draws=2)
    a, b = Recorder(), Recorder()
    evaluate_grid(
        {"a": a, "b": b},
        [shift],
        (x, y),
        normalize=((0.5,) * 3, (0.25,) * 3),
        batch_size=5,
        seed=7,
        progress=False,
    )
    assert len(a.seen) == 2 * 3 and all(torch.equal(u, v) for u, v in zip(a.seen, b.seen))
    # batch 1, draw 1: normalized pixels plus CPU noise from the stable per-(shift, batch, draw) seed
    generator = torch.Generator().manual_seed(evaluation_module._seed(7, shift.name, 1, 1))
    base = (x[5:10] - 0.5) / 0.25
    expected = base + torch.randn(base.shape, generator=generator) * 0.3
    assert torch.equal(a.seen[3], expected)


@pytest.mark.cuda
def test_grid_models_on_cpu_and_cuda_see_the_same_noisy_inputs():
    x, y = vote_data(12)
    on_cpu, on_gpu = Recorder(), Recorder("cuda")
    grid = evaluate_grid(
        {"cpu": on_cpu, "gpu": on_gpu},
        [noise_shift("uniform", 0.5, draws=3)],
        (x, y),
        normalize=((0.5,) * 3, (0.25,) * 3),
        reference="cpu",
        batch_size=5,
        progress=False,
    )
    assert all(torch.equal(u, v) for u, v in zip(on_cpu.seen, on_gpu.seen))
    name = grid.shifts[0].name
    assert grid.agreement["gpu"][name] == 1.0 and grid.errors["gpu"][name] == grid.errors["cpu"][name]


def test_grid_reuses_kept_reference_outputs():
    x, y = vote_data(30)
    shifts = [nominal(), noise_shift("gaussian", 20.0, draws=3)]
    parent, other = ChannelVote(), ChannelVote((0, 2, 1))
    joint = evaluate_grid(
        {"parent": parent, "other": other},
        shifts,
        (x, y),
        reference="parent",
        batch_size=7,
        normalize=((0.5,) * 3, (0.25,) * 3),
        progress=False,
    )
    kept = evaluate_grid(
        {"parent": parent},
        shifts,
        (x, y),
        batch_size=7,
        normalize=((0.5,) * 3, (0.25,) * 3),
        keep_outputs=["parent"],
        progress=False,
    )
    assert kept.outputs["parent"][shifts[1].name].shape == (3, 30, 3)
    reused = evaluate_grid(
        {"other": other},
        shifts,
        (x, y),
        reference="parent",
        batch_size=7,
        normalize=((0.5,) * 3, (0.25,) * 3),
        reference_outputs=kept.outputs["parent"],
        progress=False,
    )
    for field_name in ("errors", "error_std", "agreement", "agreement_std", "softmax_l2", "softmax_l2_std"):
        assert getattr(reused, field_name)["other"] == getattr(joint, field_name)["other"], field_name
    assert reused.error_draws["other"] == joint.error_draws["other"]
    with pytest.raises(ValueError, match="reference must name the model they came from"):
        evaluate_grid(
            {"other": other},
            shifts,
            (x, y),
            reference="other",
            reference_outputs=kept.outputs["parent"],
            progress=False,
        )
    with pytest.raises(ValueError, match=r"reference_outputs\['nominal'\] must hold the reference's outputs"):
        evaluate_grid(
            {"other": other}, shifts, (x, y), reference="parent", reference_outputs={}, progress=False
        )
    with pytest.raises(ValueError, match="hold more samples than data"):
        evaluate_grid(
            {"other": other},
            shifts,
            (x[:20], y[:20]),
            reference="parent",
            batch_size=7,
            reference_outputs=kept.outputs["parent"],
            progress=False,
        )
    with pytest.raises(ValueError, match="holds fewer samples than data"):
        evaluate_grid(
            {"other": other},
            shifts,
            (torch.cat([x, x]), torch.cat([y, y])),
            reference="parent",
            batch_size=7,
            reference_outputs=kept.outputs["parent"],
            progress=False,
        )
    with pytest.raises(ValueError, match=r"keep_outputs \['x'\] are not among the models"):
        evaluate_grid({"other": other}, shifts, (x, y), keep_outputs=["x"], progress=False)


def test_empty_test_data_is_an_error_not_a_zero_error():
    x, y = vote_data(8)
    with pytest.raises(ValueError, match="data: the test set is empty"):
        evaluate_grid({"a": ChannelVote()}, [nominal()], (x[:0], y[:0]), progress=False)
    with pytest.raises(ValueError, match="data: the test set is empty"):
        functional_similarity(ChannelVote(), ChannelVote(), (x[:0], y[:0]))
    with pytest.raises(ValueError, match="images is empty"):
        informative_features(ChannelVote(), x[:0], progress=False)


def test_grid_bad_input():
    x, y = vote_data(8)
    with pytest.raises(ValueError, match="shift names must be unique"):
        evaluate_grid({"a": ChannelVote()}, [nominal(), nominal()], (x, y), progress=False)
    with pytest.raises(ValueError, match="reference 'b' is not one of the models"):
        evaluate_grid({"a": ChannelVote()}, [nominal()], (x, y), reference="b", progress=False)
    with pytest.raises(ValueError, match="8 images but 3 labels"):
        evaluate_grid({"a": ChannelVote()}, [nominal()], (x, y[:3]), progress=False)
    with pytest.raises(ValueError, match="unknown corruption"):
        corruption_shift("fogg", 1)
    with pytest.raises(ValueError, match="draws must be an integer >= 1"):
        noise_shift("gaussian", 0.1, draws=0)


def test_gaussian_input_noise_and_the_gaussian_noise_corruption_have_distinct_names():
    """Both read 'gaussian_noise:1' once; the grid then refused them together (or a report
    mixed their rows). Default names are the store's: kind prefix, then parameters."""
    noise, corruption = noise_shift("gaussian", 1), corruption_shift("gaussian_noise", 1)
    assert (noise.name, corruption.name) == ("noise:gaussian:1", "corruption:gaussian_noise:1")
    x, y = vote_data(8)
    grid = evaluate_grid({"a": ChannelVote()}, [nominal(), noise, corruption], (x, y), progress=False)
    assert {"noise:gaussian:1", "corruption:gaussian_noise:1"} <= set(grid.errors["a"])


# ---------------------------------------------------------------- functional similarity


def test_similarity_of_a_model_with_itself_and_another():
    x, y = vote_data(50)
    model = ChannelVote()
    same = functional_similarity(model, model, (x, y), level=0.3, draws=3)
    assert same.agreement == 1.0 and same.softmax_l2 == 0.0 and same.agreement_std == 0.0
    other = functional_similarity(ChannelVote((1, 0, 2)), model, (x, y), level=0.3, draws=3)
    assert other.agreement < 0.8 and other.softmax_l2 > 0.1
    table = similarity_table(
        {"p": model, "q": ChannelVote((1, 0, 2))}, "p", (x, y), levels=(0.0, 0.3), draws=2, progress=False
    )
    assert table["p"][0.0].agreement == 1.0 and table["q"][0.3].draws == 2


# ---------------------------------------------------------------- informative features


class RegionModel(nn.Module):
    """Class 0's logit = sum of a fixed pixel region (positive inputs), class 1's = 0: only that
    region matters and every pixel in it raises the confidence in class 0."""

    def __init__(self, rows, cols):
        super().__init__()
        self.rows, self.cols = rows, cols
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        s = x[:, :, self.rows, self.cols].sum(dim=(1, 2, 3)) * self.scale
        return torch.stack([s, torch.zeros_like(s)], 1)


@pytest.mark.parametrize("mode", ["exact", "gradient"])
def test_informative_features_find_the_region(mode):
    model = RegionModel(slice(2, 4), slice(5, 8))  # 2 × 3 = 6 pixels of 8 × 8
    images = torch.rand(3, 3, 8, 8) + 0.1
    masks = informative_features(model, images, fraction=6 / 64, mode=mode, pixels_per_step=1, progress=False)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:4, 5:8] = True
    assert masks.shape == (3, 8, 8) and all(torch.equal(m, expected) for m in masks)


def test_exact_mode_is_the_greedy_selection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    images = torch.randn(2, 3, 4, 4)
    masks = informative_features(
        model, images, fraction=0.25, mode="exact", pixels_per_step=1, progress=False
    )
    for i in range(2):  # plain greedy, one forward pass at a time
        x = images[i : i + 1]
        target = int(model(x).argmax())
        kept = set(range(16))
        while len(kept) > 4:

            def conf_without(p, kept=kept, x=x, target=target):
                m = torch.zeros(16, dtype=torch.bool)
                m[list(kept - {p})] = True
                return float(model(x * m.view(1, 1, 4, 4)).softmax(1)[0, target].detach())

            kept.remove(max(sorted(kept), key=conf_without))
        assert set(masks[i].flatten().nonzero().flatten().tolist()) == kept


class SaturatedLinear(nn.Module):
    """float64; class 0's logit = margin + Σ wᵢ xᵢ over 16 pixels, class 1's = 0: removing pixel
    i lowers the margin by wᵢ xᵢ. At margin 60 even a float64 softmax (and log_softmax) is
    exactly 1 (0) for every candidate."""

    def __init__(self, margin=60.0):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 2.0, 16, dtype=torch.float64)[torch.randperm(16)])
        self.margin = margin

    def forward(self, x):
        s = self.margin + (x.flatten(1) * self.w).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


@pytest.mark.parametrize("mode", ["exact", "gradient"])
def test_informative_features_rank_saturated_confidence_by_log_probability(mode):
    from lostprune.metrics.features import log_confidence

    torch.manual_seed(0)
    model = SaturatedLinear()
    images = torch.rand(2, 1, 4, 4, dtype=torch.float64) + 0.1
    logits = model(images)
    assert (logits.softmax(1)[:, 0] == 1.0).all() and (logits.log_softmax(1)[:, 0] == 0.0).all()  # saturated
    assert (log_confidence(logits, torch.zeros(2, dtype=torch.long)) < 0).all()  # not here
    masks = informative_features(model, images, fraction=4 / 16, mode=mode, pixels_per_step=1, progress=False)
    for i in range(2):  # the 4 largest contributions wᵢ xᵢ survive backward selection
        contribution = (images[i].flatten() * model.w).detach()
        assert set(masks[i].flatten().nonzero().flatten().tolist()) == set(
            contribution.topk(4).indices.tolist()
        )


def test_log_confidence_is_the_log_probability():
    logits = torch.randn(5, 4, dtype=torch.float64) * 3
    target = torch.tensor([0, 1, 2, 3, 1])
    expected = logits.log_softmax(1).gather(1, target.view(-1, 1)).squeeze(1)
    from lostprune.metrics.features import log_confidence

    assert torch.allclose(log_confidence(logits, target), expected, atol=1e-12)
    assert log_confidence(logits.float(), target).dtype == torch.float32


def test_informative_feature_matrix():
    top = RegionModel(slice(0, 2), slice(0, 8))
    bottom = RegionModel(slice(6, 8), slice(0, 8))
    images = torch.rand(4, 3, 8, 8) + 0.1
    labels = torch.zeros(4, dtype=torch.long)
    fm = informative_feature_matrix(
        {"top": top, "bottom": bottom},
        images,
        labels,
        fraction=0.25,
        mode="gradient",
        pixels_per_step=2,
        progress=False,
    )
    assert fm.masks["top"][:, :2].all() and not fm.masks["top"][:, 2:].any()
    assert fm.accuracy["top"]["top"] == 1.0 and fm.confidence["top"]["top"] > 0.9
    # bottom sees only zeros on top's pixels: logits (0, 0), confidence 1/2
    assert fm.confidence["top"]["bottom"] == pytest.approx(0.5)
    assert fm.as_tensor("accuracy").shape == (2, 2)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        informative_features(top, images, fraction=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        informative_features(top, images, mode="fast")


# ---------------------------------------------------------------- segmentation


def test_mean_iou_known_value():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    # class 0: TP 1, FP 1, FN 1 → 1/3; class 1: TP 3, FP 1 → 3/4; class 2: TP 1, FN 1 → 1/2
    assert mean_iou(pred, target, 3) == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    cm = confusion_matrix(pred, target, 3)
    assert int(cm.sum()) == 7 and int(cm[1, 1]) == 3
    assert mean_iou(torch.tensor([0, 0]), torch.tensor([0, 0]), 5) == 1.0  # absent classes ignored
    with pytest.raises(ValueError, match="same shape"):
        mean_iou(pred, target[0], 3)


def test_mean_iou_bad_input_names_the_valid_range():
    with pytest.raises(ValueError, match=r"pred holds class indices outside 0\.\.3$"):
        mean_iou(torch.tensor([0, 4]), torch.tensor([0, 1]), 4)
    with pytest.raises(ValueError, match=r"outside 0\.\.3$"):
        mean_iou(torch.tensor([-1, 0]), torch.tensor([0, 1]), 4)
    assert mean_iou(torch.tensor([0, 9]), torch.tensor([0, 255]), 4) == 1.0  # ignored pixels: any prediction
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        confusion_matrix(torch.tensor([0]), torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="no labeled pixels"):
        mean_iou(torch.tensor([1]), torch.tensor([255]), 4)


class ThresholdSegmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        m = x.mean(1, keepdim=True) * self.w
        return {"out": torch.cat([0.5 - m, m - 0.5], 1)}


def test_grid_scores_segmentation_by_miou():
    x = torch.rand(6, 3, 8, 8)
    y = (x.mean(1) > 0.5).long()
    y[:, 0, 0] = 255
    grid = evaluate_grid({"seg": ThresholdSegmenter()}, [nominal()], (x, y), progress=False)
    assert grid.error("seg") == pytest.approx(0.0)
    flipped = 1 - y.clamp(max=1)
    flipped[:, 0, 0] = 255
    grid = evaluate_grid({"seg": ThresholdSegmenter()}, [nominal()], (x, flipped), progress=False)
    assert grid.error("seg") == pytest.approx(1.0)
    assert not math.isnan(grid.error("seg"))
    assert np.isfinite(grid.rows()[0]["error"])


# ---------------------------------------------------------------- end to end with the pruning core


def quadrant_data(n, seed):
    """Class = the bright quadrant of a noisy 3×16×16 image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g) * 0.4
    y = torch.randint(0, 4, (n,), generator=g)
    for q in range(4):
        r, c = divmod(q, 2)
        x[y == q, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] += 0.5
    return x.clamp(0, 1), y


def test_end_to_end_pruned_networks_under_shift():
    import lostprune

    # a hand-set network: box-filtered brightness, ReLU, quadrant means, linear vote (no training)
    g = torch.Generator().manual_seed(0)
    parent = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 4)
    )
    with torch.no_grad():
        parent[0].weight.copy_(0.3 + 0.2 * torch.rand(4, 3, 3, 3, generator=g))
        parent[0].bias.zero_()
        vote = torch.zeros(4, 4, 4)  # class, channel, quadrant
        vote[torch.arange(4), :, torch.arange(4)] = 1.0
        parent[4].weight.copy_(vote.flatten(1) + 0.1 * torch.randn(4, 16, generator=g))
        parent[4].bias.zero_()
    mean, std = (0.45,) * 3, (0.25,) * 3
    norm = lambda t: (t - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)  # noqa: E731
    ratios = {"wt50": 0.5, "wt80": 0.8, "wt95": 0.95}
    models = {
        "parent": parent,
        **{k: lostprune.prune(parent, "wt", r, progress=False).model for k, r in ratios.items()},
    }
    shifts = [
        nominal(),
        noise_shift("gaussian", 1.0, draws=2),
        corruption_shift("contrast", 3),
        corruption_shift("gaussian_blur", 3),
    ]
    xte, yte = quadrant_data(200, 1)
    grid = evaluate_grid(
        models, shifts, (xte, yte), normalize=(mean, std), reference="parent", progress=False
    )
    assert grid.error("parent") < 0.1
    assert grid.agreement["parent"]["nominal"] == 1.0 and grid.softmax_l2["parent"]["nominal"] == 0.0
    errors = {k: grid.error(k) for k in ratios}
    expected = prune_potential(list(ratios.values()), list(errors.values()), grid.error("parent"))
    assert grid.prune_potential("parent", ratios) == expected
    assert grid.agreement["wt50"]["nominal"] > grid.agreement["wt95"]["nominal"]
    fit = grid.excess_error_fit("parent", ratios, ["corruption:contrast:3", "corruption:gaussian_blur:3"])
    assert len(fit.values) == 3 and math.isfinite(fit.slope)
    # on its own informative 10 % of the pixels the parent stays far more confident than on random 10 %
    fm = informative_feature_matrix(
        {"parent": parent, "wt50": models["wt50"]}, norm(xte[:16]), yte[:16], fraction=0.1, progress=False
    )
    random_masks = torch.rand(16, 16, 16).flatten(1).argsort(1).argsort(1).view(16, 16, 16) < 26
    with torch.no_grad():
        random_conf = parent(reduce_to(norm(xte[:16]), random_masks)).softmax(1)[torch.arange(16), yte[:16]]
    assert fm.confidence["parent"]["parent"] > float(random_conf.mean()) + 0.1
    assert fm.accuracy["parent"]["parent"] >= 0.9
