"""Prune–retrain cycles on the built-in digits: cascade, one-shot, rewind, resume, bad input."""

import dataclasses
import re

import pytest
import torch
from torch.utils.data import Subset

import lostprune
import lostprune.data as data
import lostprune.models as models
from lostprune.core.masks import load_pruned
from lostprune.train import PrunedNetwork, TrainConfig, evaluate, prune_retrain, train
from lostprune.train.cycles import _rewind

TINY = TrainConfig(epochs=1, lr=0.05, batch_size=32, schedule="cosine")
WIDTH = 16  # small_cnn at a quarter of its channels: a cycle takes well under a second
RATIOS = [0.5, 0.3, 0.15]


@pytest.fixture(scope="module")
def digits():
    splits = data.load("digits")
    splits.train = Subset(splits.train, range(384))
    return splits


@pytest.fixture(scope="module")
def parent(digits):
    torch.manual_seed(0)
    model = models.create("small_cnn", width=WIDTH)
    train(model, digits, dataclasses.replace(TINY, epochs=3, lr=0.1), progress=False)
    return model


def masks_of(model):
    return {name: m.weight_mask.clone() for name, m in model.named_modules() if hasattr(m, "weight_mask")}


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_three_cycle_cascade_on_the_builtin_data(digits, parent):
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    seen = []
    networks = list(
        prune_retrain(
            parent, "wt", RATIOS, digits, TINY, evaluate=lambda m: evaluate(m, digits.test), progress=False
        )
    )
    assert [(n.index, n.cycle, n.keep_ratio) for n in networks] == [(0, 1, 0.5), (1, 2, 0.3), (2, 3, 0.15)]
    previous = None
    for network in networks:
        stats = network.stats
        kept = round(network.keep_ratio * stats.prunable_params)
        assert (
            stats.prunable_params - round(stats.achieved_ratio * stats.prunable_params) == kept
        )  # exact budget
        masks = masks_of(network.model)
        for name, module in network.model.named_modules():
            if name in masks:  # retraining kept removed weights at exactly zero
                assert (module.weight[masks[name] == 0] == 0).all()
        if previous is not None:  # cascade: each network prunes the previous one further
            assert all(((masks[k] == 1) <= (previous[k] == 1)).all() for k in masks)
        previous = masks
        assert len(network.history) == 1 and 0 <= network.metrics["accuracy"] <= 1
        summary = network.summary()
        assert summary["cycle"] == network.cycle and summary["metric_accuracy"] == network.metrics["accuracy"]
        seen.append(network.metrics["accuracy"])
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())  # parent untouched
    assert not hasattr(parent.features[0], "weight_mask")
    assert min(seen) > 0.3  # retrained networks still classify (chance is 0.1)


def test_oneshot_prunes_the_parent_each_time(digits, parent):
    networks = list(prune_retrain(parent, "wt", [0.3, 0.6], digits, TINY, mode="oneshot", progress=False))
    assert [n.cycle for n in networks] == [1, 1]
    for network in networks:
        direct = lostprune.prune(parent, "wt", 1 - network.keep_ratio, progress=False)
        assert all(torch.equal(direct.masks[k], network.masks[k]) for k in direct.masks)


def test_rewind_resets_surviving_weights_to_the_rewind_point(digits):
    torch.manual_seed(0)
    model = models.create("small_cnn", width=WIDTH)
    config = dataclasses.replace(TINY, epochs=3)
    early = train(model, digits, config, snapshot_epochs=[1], progress=False).snapshots[1]
    pruned = lostprune.prune(model, "wt", 0.6, progress=False).model
    _rewind(pruned, early)
    for name, module in pruned.named_modules():
        if hasattr(module, "weight_mask"):
            assert torch.equal(module.weight_orig, early[f"{name}.weight"] * module.weight_mask)
            assert torch.equal(module.weight, module.weight_orig)
    assert torch.equal(pruned.features[1].running_mean, early["features.1.running_mean"])
    networks = list(
        prune_retrain(
            model,
            "wt",
            [0.5, 0.25],
            digits,
            config,
            mode="rewind",
            rewind_state=early,
            rewind_epoch=1,
            progress=False,
        )
    )
    assert [len(n.history) for n in networks] == [2, 2] and networks[0].history[0]["epoch"] == 2


def test_cascade_resumes_from_stored_networks(digits, parent):
    full = list(prune_retrain(parent, "wt", RATIOS, digits, TINY, progress=False))
    stored = {0: full[0].state_dict()}
    resumed = list(prune_retrain(parent, "wt", RATIOS, digits, TINY, completed=stored, progress=False))
    assert [n.index for n in resumed] == [1, 2]
    assert same_state(resumed[-1].model, full[-1].model)  # deterministic: same networks as one run
    oneshot = list(
        prune_retrain(
            parent, "wt", RATIOS, digits, TINY, mode="oneshot", completed={1: stored[0]}, progress=False
        )
    )
    assert [n.index for n in oneshot] == [0, 2]


def test_interrupted_retraining_resumes_from_its_checkpoint(digits, parent, tmp_path):
    config = dataclasses.replace(TINY, epochs=2)
    reference = list(prune_retrain(parent, "wt", RATIOS[:2], digits, config, progress=False))

    calls = {"n": 0}

    def crash_once(record):
        calls["n"] += 1
        if calls["n"] == 4:  # cycle 1, epoch 2: epoch 1 of that cycle is checkpointed
            raise KeyboardInterrupt

    stored = {}
    with pytest.raises(KeyboardInterrupt):
        for network in prune_retrain(
            parent,
            "wt",
            RATIOS[:2],
            digits,
            config,
            checkpoint_dir=tmp_path,
            train_options={"callbacks": [crash_once]},
            progress=False,
        ):
            stored[network.index] = network.state_dict()
    assert list(stored) == [0] and not (tmp_path / "cycle-000.pt").exists()
    assert (tmp_path / "cycle-001.pt").exists()
    resumed = list(
        prune_retrain(
            parent,
            "wt",
            RATIOS[:2],
            digits,
            config,
            checkpoint_dir=tmp_path,
            completed=stored,
            progress=False,
        )
    )
    assert [n.index for n in resumed] == [1] and len(resumed[0].history) == 2
    assert same_state(resumed[0].model, reference[1].model)
    assert not any(tmp_path.iterdir())  # finished cycles leave no checkpoints behind


def test_retraining_reruns_the_onecycle_schedule_every_cycle(digits, parent):
    onecycle = TrainConfig(epochs=2, lr=0.05, batch_size=32, schedule="onecycle", nesterov=True)
    networks = list(prune_retrain(parent, "wt", [0.5, 0.3], digits, onecycle, progress=False))
    lrs = [[r["lr"] for r in n.history] for n in networks]
    expected = [onecycle.lr_schedule().lr_at(e + 11.5 / 12) for e in (0, 1)]  # 384 images: 12 steps an epoch
    assert lrs[0] == pytest.approx(expected) and lrs[1] == pytest.approx(expected)  # learning-rate rewinding
    assert lrs[0][0] > 10 * lrs[0][1]


def test_networks_restore_from_their_state_dict(digits, parent):
    network = next(prune_retrain(parent, "wt", [0.4], digits, TINY, progress=False))
    assert isinstance(network, PrunedNetwork)
    restored = load_pruned(models.create("small_cnn", width=WIDTH), network.state_dict()).eval()
    x = digits.s_inputs()[:8]
    with torch.no_grad():
        assert torch.equal(restored(x), network.model.eval()(x))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"keep_ratios": [0.5, 0.6]}, ValueError, "keep_ratios must decrease in cascade mode.* 0.5 then 0.6"),
        ({"keep_ratios": [0.5, 0.0]}, ValueError, r"keep_ratios must lie in \(0, 1\]"),
        ({"keep_ratios": []}, ValueError, "keep_ratios is empty"),
        ({"keep_ratios": "abc"}, TypeError, "keep_ratios must be a sequence of numbers"),
        ({"mode": "iterative"}, ValueError, "mode must be one of oneshot, cascade, rewind"),
        ({"method": "magnitude"}, ValueError, "unknown pruning method 'magnitude'; valid methods: .*wt"),
        ({"mode": "rewind"}, ValueError, "rewind mode needs rewind_state"),
        (
            {"mode": "rewind", "rewind_state": {}, "rewind_epoch": 1},
            ValueError,
            r"rewind_epoch must be an integer in \[0, ",
        ),
        ({"rewind_state": {}}, ValueError, "rewind_state is only used in rewind mode"),
        ({"completed": {5: {}}}, ValueError, r"completed has indices outside keep_ratios \(0..1\): \[5\]"),
        ({"retrain": {"epochs": 1}}, TypeError, "retrain must be a TrainConfig"),
    ],
)
def test_bad_cycle_arguments(digits, parent, kwargs, error, message):
    arguments = {"method": "wt", "keep_ratios": [0.5, 0.3], "retrain": TINY, **kwargs}
    with pytest.raises(error, match=message):
        next(
            prune_retrain(
                parent,
                arguments.pop("method"),
                arguments.pop("keep_ratios"),
                digits,
                arguments.pop("retrain"),
                progress=False,
                **arguments,
            )
        )


def test_rewind_state_must_fit_the_model(digits, parent):
    with pytest.raises(KeyError, match=re.escape("rewind_state has no entry 'features.0.weight'")):
        next(
            prune_retrain(
                parent,
                "wt",
                [0.5],
                digits,
                TINY,
                mode="rewind",
                rewind_state={"other": torch.zeros(1)},
                progress=False,
            )
        )
