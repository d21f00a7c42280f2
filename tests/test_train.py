"""The training loop and schedules: learning, masks kept under momentum and weight decay,
exact resume, learning-rate and keep-ratio schedules, bad input."""

import dataclasses
import itertools
import math
import re
import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import lostprune
from lostprune.core.masks import load_pruned
from lostprune.train import (
    Geometric,
    Linear,
    LRSchedule,
    TrainConfig,
    evaluate,
    keep_ratio_schedule,
    paper_keep_ratios,
    train,
)


def tiny_cnn(classes=3):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def blobs(n=96, classes=3, seed=0):
    """Images whose class is which channel is brightest: learnable in a few epochs."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randn(n, 3, 8, 8, generator=gen) * 0.5
    images[torch.arange(n), labels] += 1.5
    return TensorDataset(images, labels)


FAST = TrainConfig(epochs=3, lr=0.05, batch_size=16, schedule="cosine", warmup_epochs=0.5)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- learning
def test_training_learns_a_separable_task():
    model = tiny_cnn()
    before = evaluate(model, blobs(seed=1))
    result = train(model, blobs(), FAST, val_data=blobs(seed=1), progress=False)
    after = evaluate(model, blobs(seed=1))
    assert after["accuracy"] > 0.9 > before["accuracy"]
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["val_accuracy"] == pytest.approx(after["accuracy"])
    assert not model.training


def test_training_accepts_data_splits_and_dataloaders():
    from lostprune.data.splits import DataSplits

    splits = DataSplits(
        "blobs",
        train=blobs(),
        test=blobs(seed=1),
        s=blobs(8),
        validation=blobs(12, seed=2),
        classes=["a", "b", "c"],
        input_size=(3, 8, 8),
        mean=(0,) * 3,
        std=(1,) * 3,
    )
    result = train(tiny_cnn(), splits, dataclasses.replace(FAST, epochs=1), val_data=splits, progress=False)
    assert result.final["val_accuracy"] == evaluate(result.model, splits.validation)["accuracy"]
    history = train(
        tiny_cnn(), DataLoader(blobs(), batch_size=32), dataclasses.replace(FAST, epochs=1), progress=False
    ).history
    assert len(history) == 1
    assert evaluate(tiny_cnn(), splits)["samples"] == 96


def test_training_leaves_the_callers_random_state_alone():
    model, data = tiny_cnn(), blobs()  # (tiny_cnn seeds the global generator itself)
    state = torch.get_rng_state()
    train(model, data, dataclasses.replace(FAST, epochs=1), progress=False)
    assert torch.equal(state, torch.get_rng_state())


def test_same_seed_same_result_other_seed_other_result():
    a, b, c = tiny_cnn(), tiny_cnn(), tiny_cnn()
    train(a, blobs(), FAST, progress=False)
    train(b, blobs(), FAST, progress=False)
    train(c, blobs(), dataclasses.replace(FAST, seed=1), progress=False)
    assert all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(b).values()))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_batch_transform_sees_every_batch_on_the_device():
    seen = []
    train(
        tiny_cnn(),
        blobs(),
        dataclasses.replace(FAST, epochs=1),
        batch_transform=lambda x: seen.append(x.shape[0]) or x * 0,
        progress=False,
    )
    assert sum(seen) == 96


def test_callbacks_stop_early_for_good(tmp_path):
    result = train(
        tiny_cnn(),
        blobs(),
        FAST,
        callbacks=[lambda record: record["epoch"] == 2],
        checkpoint=tmp_path / "c.pt",
        progress=False,
    )
    assert result.stopped_early and len(result.history) == 2
    again = train(tiny_cnn(), blobs(), FAST, checkpoint=tmp_path / "c.pt", progress=False)
    assert again.stopped_early and len(again.history) == 2


def test_snapshots_keep_the_rewind_points():
    model = tiny_cnn()
    initial = weights(model)
    result = train(model, blobs(), FAST, snapshot_epochs=[0, 1], progress=False)
    assert set(result.snapshots) == {0, 1}
    assert all(torch.equal(initial[k], v) for k, v in result.snapshots[0].items())
    assert not torch.equal(result.snapshots[1]["0.weight"], initial["0.weight"])


# ----------------------------------------------------------------------------- masks
def test_masks_survive_an_epoch_of_momentum_and_weight_decay():
    model = lostprune.prune(tiny_cnn(), "wt", 0.7, progress=False).model
    masks = {name: m.weight_mask.clone() for name, m in model.named_modules() if hasattr(m, "weight_mask")}
    before = {name: m.weight.detach().clone() for name, m in model.named_modules() if name in masks}
    config = TrainConfig(
        epochs=1, lr=0.1, momentum=0.9, weight_decay=0.05, batch_size=16, schedule="constant"
    )
    train(model, blobs(), config, progress=False)
    for name, module in model.named_modules():
        if name in masks:
            assert torch.equal(module.weight_mask, masks[name])
            removed = masks[name] == 0
            assert (module.weight[removed] == 0).all() and (module.weight_orig[removed] == 0).all()
            assert not torch.equal(module.weight[~removed], before[name][~removed])  # the rest trained
    # the masked attribute is current, not the value of the last forward
    assert torch.equal(model[0].weight, model[0].weight_orig * model[0].weight_mask)


def test_pruned_trained_model_round_trips_through_state_dict():
    model = lostprune.prune(tiny_cnn(), "wt", 0.6, progress=False).model
    train(model, blobs(), dataclasses.replace(FAST, epochs=1), progress=False)
    x = torch.randn(5, 3, 8, 8)
    restored = load_pruned(tiny_cnn(), model.state_dict()).eval()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), restored(x))


# ----------------------------------------------------------------------------- checkpoint and resume
def test_interrupted_run_resumes_exactly(tmp_path):
    config = dataclasses.replace(FAST, epochs=4)
    straight = lostprune.prune(tiny_cnn(), "wt", 0.5, progress=False).model
    reference = train(straight, blobs(), config, progress=False)

    def crash(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    first = lostprune.prune(tiny_cnn(), "wt", 0.5, progress=False).model
    with pytest.raises(KeyboardInterrupt):
        train(first, blobs(), config, checkpoint=tmp_path / "run.pt", callbacks=[crash], progress=False)
    fresh = tiny_cnn()  # a new process: no masks yet, they come from the checkpoint
    resumed = train(fresh, blobs(), config, checkpoint=tmp_path / "run.pt", progress=False)
    assert resumed.resumed_from == 1
    for key, value in straight.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in reference.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == strip
    done = train(fresh, blobs(), config, checkpoint=tmp_path / "run.pt", progress=False)
    assert done.resumed_from == 4 and len(done.history) == 4  # a finished run returns at once


def test_checkpoint_from_another_config_is_refused(tmp_path):
    train(
        tiny_cnn(), blobs(), dataclasses.replace(FAST, epochs=1), checkpoint=tmp_path / "c.pt", progress=False
    )
    with pytest.raises(ValueError, match=r"written with another config \(epochs: 1 -> 2\).*resume=False"):
        train(
            tiny_cnn(),
            blobs(),
            dataclasses.replace(FAST, epochs=2),
            checkpoint=tmp_path / "c.pt",
            progress=False,
        )
    train(
        tiny_cnn(),
        blobs(),
        dataclasses.replace(FAST, epochs=2),
        checkpoint=tmp_path / "c.pt",
        resume=False,
        progress=False,
    )
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a lostprune training checkpoint"):
        train(tiny_cnn(), blobs(), FAST, checkpoint=tmp_path / "other.pt", progress=False)


def test_start_epoch_runs_the_tail_of_the_schedule():
    result = train(tiny_cnn(), blobs(), FAST, start_epoch=2, progress=False)
    assert [r["epoch"] for r in result.history] == [3]
    assert result.history[0]["lr"] == pytest.approx(FAST.lr_schedule().lr_at(2 + 5.5 / 6))


def test_training_for_a_number_of_steps():
    calls = []

    def counting_loss(logits, targets):
        calls.append(len(targets))
        return nn.functional.cross_entropy(logits, targets)

    config = dataclasses.replace(FAST, steps=10, warmup_epochs=0.5)  # 6 batches an epoch: 6 + 4 steps
    result = train(tiny_cnn(), blobs(), config, loss_fn=counting_loss, progress=False)
    assert len(calls) == 10 and [r["epoch"] for r in result.history] == [1, 2]
    schedule = config.lr_schedule(steps_per_epoch=6)
    assert schedule.epochs == pytest.approx(10 / 6)
    assert result.history[-1]["lr"] == pytest.approx(schedule.lr_at(1 + 3.5 / 6))  # the 10th step's
    assert result.history[-1]["lr"] == pytest.approx(schedule.min_lr, abs=0.01)  # the cosine ends there
    with pytest.raises(ValueError, match=r"warmup_epochs=2 is not shorter than the 10 steps"):
        train(tiny_cnn(), blobs(), dataclasses.replace(FAST, steps=10, warmup_epochs=2), progress=False)
    with pytest.raises(ValueError, match="steps must be a positive integer or None, got 0"):
        TrainConfig(steps=0)
    assert dataclasses.replace(FAST, steps=10).scaled(2).steps is None


def test_channels_last_trains_the_same_and_leaves_weights_contiguous():
    runs, layouts = {}, {}
    for channels_last in (False, True, None):  # None: the default, channels-last on the CPU
        model = tiny_cnn()
        seen = layouts[channels_last] = set()

        def record(module, args, seen=seen):
            x, weight = args[0], module.weight
            seen.add(
                (
                    x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                    weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous(),
                )
            )

        hook = model[3].register_forward_pre_hook(record)
        train(model, blobs(), dataclasses.replace(FAST, channels_last=channels_last), progress=False)
        hook.remove()
        runs[channels_last] = model
        assert all(p.is_contiguous() for p in model.parameters())
    # the layout really changed while training: inputs and weights of the conv channels-last
    assert layouts == {False: {(False, False)}, True: {(True, True)}, None: {(True, True)}}
    for key, value in runs[False].state_dict().items():
        assert torch.allclose(value, runs[True].state_dict()[key], atol=1e-4), key


def test_checkpoint_written_before_new_fields_existed_resumes(tmp_path):
    config = dataclasses.replace(FAST, epochs=2)
    path = tmp_path / "old.pt"

    def stop(record):
        return record["epoch"] == 1

    train(tiny_cnn(), blobs(), config, checkpoint=path, callbacks=[stop], progress=False)
    state = torch.load(path, weights_only=True)
    for key in ("steps", "pct_start", "div_factor", "final_div_factor", "channels_last"):
        del state["config"][key]  # as an older lostprune wrote it
    torch.save(state, path)
    resumed = train(tiny_cnn(), blobs(), config, checkpoint=path, progress=False)
    assert resumed.resumed_from == 1 and resumed.stopped_early
    with pytest.raises(ValueError, match=r"written with another config .*pct_start: None -> 0.5"):
        train(
            tiny_cnn(), blobs(), dataclasses.replace(config, pct_start=0.5), checkpoint=path, progress=False
        )


# ----------------------------------------------------------------------------- evaluation
def test_evaluate_counts_top1_and_ignores_unlabelled_pixels():
    class Constant(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = nn.Parameter(logits)

        def forward(self, x):
            return self.logits.expand(x.shape[0], *self.logits.shape)

    labels = torch.tensor([0, 1, 1, 2, 1])
    result = evaluate(Constant(torch.tensor([0.0, 1.0, 0.0])), TensorDataset(torch.zeros(5, 2), labels))
    assert result["accuracy"] == pytest.approx(3 / 5) and result["samples"] == 5
    assert result["loss"] == pytest.approx(
        nn.functional.cross_entropy(torch.tensor([[0.0, 1, 0]] * 5), labels).item()
    )
    masks = torch.tensor([[[1, 255], [0, 1]]] * 2)  # 2 images, 3 labelled pixels each, 2 of them class 1
    seg = Constant(torch.tensor([0.0, 1.0]).view(2, 1, 1).expand(2, 2, 2).clone())
    assert evaluate(seg, TensorDataset(torch.zeros(2, 1), masks))["accuracy"] == pytest.approx(2 / 3)


def test_evaluate_reads_segmentation_dict_outputs():
    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return {"out": self.conv(x)}

    data = TensorDataset(torch.randn(6, 3, 5, 5), torch.randint(0, 4, (6, 5, 5)))
    train(Seg(), data, dataclasses.replace(FAST, epochs=1, batch_size=3), progress=False)
    assert 0 <= evaluate(Seg(), data)["accuracy"] <= 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_evaluate_runs_in_the_models_precision_unless_asked(device):
    """evaluate() autocasts only with amp=True, on CUDA as on the CPU: an accuracy a user reads
    is a float32 number unless they asked for less."""

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.autocast: list[bool] = []

        def forward(self, x):
            self.autocast.append(torch.is_autocast_enabled(x.device.type))
            return self.fc(x)

    model = Probe().to(device)
    data = TensorDataset(torch.randn(6, 4), torch.randint(0, 3, (6,)))
    evaluate(model, data, batch_size=3)
    evaluate(model, data, batch_size=3, amp=True)
    assert model.autocast == [False, False, True, True]


@pytest.mark.parametrize("native", [True, False])
def test_amp_on_cpu_runs_in_bfloat16_and_warns_where_it_is_emulated(native, monkeypatch):
    import lostprune.train.loop as loop

    monkeypatch.setattr(loop, "cpu_has_bfloat16", lambda: native)
    model = tiny_cnn()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(
            model,
            blobs(),
            dataclasses.replace(FAST, epochs=1, amp=True),
            val_data=blobs(seed=1),
            progress=False,
        )
    assert math.isfinite(result.final["train_loss"])
    # validation is float32 like the test-set numbers: exactly what evaluate() measures
    val = evaluate(model, blobs(seed=1), amp=False)
    assert (result.final["val_loss"], result.final["val_accuracy"]) == (val["loss"], val["accuracy"])
    emulated = [w for w in caught if "no instructions for (AVX512-BF16 or AMX)" in str(w.message)]
    assert len(emulated) == (0 if native else 1)


@pytest.mark.cuda
def test_amp_on_cuda_keeps_masks():
    model = lostprune.prune(tiny_cnn(), "wt", 0.7, progress=False).model.cuda()
    mask = model[0].weight_mask.clone()
    result = train(model, blobs(), FAST, progress=False)
    assert result.final["train_accuracy"] > 0.5
    assert (model[0].weight[mask == 0] == 0).all() and torch.equal(model[0].weight_mask, mask)


# ----------------------------------------------------------------------------- bad input
def test_bad_data_is_named():
    model = tiny_cnn()
    with pytest.raises(ValueError, match=re.escape("data yields torch.uint8 inputs")):
        train(
            model,
            TensorDataset(torch.zeros(8, 3, 8, 8, dtype=torch.uint8), torch.zeros(8).long()),
            FAST,
            progress=False,
        )
    nan = torch.randn(8, 3, 8, 8)
    nan[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="data contains NaN or inf inputs"):
        train(model, TensorDataset(nan, torch.zeros(8).long()), FAST, progress=False)
    with pytest.raises(ValueError, match="data has labels from 0 to 7, but the model outputs 3 classes"):
        train(model, TensorDataset(torch.randn(8, 3, 8, 8), torch.arange(8)), FAST, progress=False)
    with pytest.raises(ValueError, match=re.escape("data yields torch.float32 targets")):
        train(model, TensorDataset(torch.randn(8, 3, 8, 8), torch.zeros(8)), FAST, progress=False)
    with pytest.raises(ValueError, match="data is empty"):
        train(model, TensorDataset(torch.randn(0, 3, 8, 8), torch.zeros(0).long()), FAST, progress=False)
    with pytest.raises(TypeError, match="data must be a Dataset, a DataLoader or DataSplits, got list"):
        train(model, [1, 2], FAST, progress=False)
    import lostprune.models as models

    with pytest.raises(
        ValueError, match=r"samples of shape \(1, 32, 32\) but the model expects \(3, 32, 32\)"
    ):
        train(
            models.create("small_cnn", width=4),
            TensorDataset(torch.randn(4, 1, 32, 32), torch.zeros(4).long()),
            FAST,
            progress=False,
        )


def test_diverging_training_stops_with_a_clear_error():
    with pytest.raises(
        FloatingPointError, match=r"training loss became (nan|inf) in epoch 1 .*lower the learning rate"
    ):
        train(
            tiny_cnn(),
            blobs(),
            TrainConfig(epochs=1, lr=1e30, batch_size=16, schedule="constant"),
            progress=False,
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"epochs": 2.5}, "epochs must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"weight_decay": -1}, "weight_decay must be >= 0"),
        ({"lr": 0}, "lr must be a positive finite number"),
        ({"schedule": "step"}, "schedule must be one of multistep, cosine, constant"),
        ({"warmup_epochs": 30}, r"warmup_epochs must be in \[0, epochs=30\)"),
        ({"milestones": (20, 10)}, "milestones must be positive and increasing"),
        ({"amp_dtype": "float8"}, "amp_dtype must be 'float16' or 'bfloat16'"),
        ({"momentum": 0, "nesterov": True}, "nesterov needs momentum > 0"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_bad_train_arguments():
    with pytest.raises(ValueError, match=r"start_epoch must be an integer in \[0, epochs=3\)"):
        train(tiny_cnn(), blobs(), FAST, start_epoch=3, progress=False)
    with pytest.raises(
        ValueError, match=r"snapshot_epochs must lie in \[start_epoch=0, epochs=3\], got \[5\]"
    ):
        train(tiny_cnn(), blobs(), FAST, snapshot_epochs=[5], progress=False)
    with pytest.raises(ValueError, match="model has no trainable parameters"):
        train(nn.Flatten(), blobs(), FAST, progress=False)


# ----------------------------------------------------------------------------- learning-rate schedules
def test_warmup_then_multistep():
    s = LRSchedule(lr=0.1, epochs=10, kind="multistep", warmup_epochs=2, milestones=(5, 8), gamma=0.1)
    assert s.lr_at(0.5) == pytest.approx(0.025) and s.lr_at(1.0) == pytest.approx(0.05)
    assert s.lr_at(2.0) == pytest.approx(0.1) and s.lr_at(4.99) == pytest.approx(0.1)
    assert s.lr_at(5.0) == pytest.approx(0.01) and s.lr_at(8.5) == pytest.approx(0.001)


def test_multistep_defaults_to_the_papers_proportions():
    paper = TrainConfig.paper_cifar()
    assert (paper.epochs, paper.lr, paper.batch_size, paper.weight_decay, paper.warmup_epochs) == (
        182,
        0.1,
        128,
        1e-4,
        5,
    )
    schedule = paper.lr_schedule()
    assert schedule.lr_at(90.9) == pytest.approx(0.1) and schedule.lr_at(91.1) == pytest.approx(0.01)
    assert schedule.lr_at(136.1) == pytest.approx(0.001)
    assert LRSchedule(epochs=182).resolved_milestones == (91, 136)
    short = paper.scaled(18)
    assert short.milestones == pytest.approx((9.0, 13.45), abs=0.01) and short.warmup_epochs == pytest.approx(
        5 * 18 / 182
    )


def test_cosine_ends_at_min_lr():
    s = LRSchedule(lr=0.2, epochs=10, kind="cosine", warmup_epochs=2, min_lr=0.01)
    assert s.lr_at(2.0) == pytest.approx(0.2)
    assert s.lr_at(6.0) == pytest.approx(0.105)
    assert s.lr_at(10.0) == pytest.approx(0.01)
    values = [s.lr_at(2 + 8 * i / 50) for i in range(51)]
    assert all(b <= a for a, b in itertools.pairwise(values))


def test_onecycle_rises_to_lr_then_anneals_far_below_it():
    s = LRSchedule(lr=0.2, epochs=10, kind="onecycle", pct_start=0.25, div_factor=20, final_div_factor=100)
    assert s.lr_at(0) == pytest.approx(0.01) and s.lr_at(2.5) == pytest.approx(0.2)
    assert s.lr_at(10) == pytest.approx(0.01 / 100) and s.lr_at(1.25) == pytest.approx(0.105)
    rise = [s.lr_at(2.5 * i / 20) for i in range(21)]
    fall = [s.lr_at(2.5 + 7.5 * i / 40) for i in range(41)]
    assert all(b > a for a, b in itertools.pairwise(rise)) and all(b < a for a, b in itertools.pairwise(fall))
    # the same curve as torch's OneCycleLR (cosine annealing), sampled per step
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    torch_lr = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=0.2,
        total_steps=1001,
        pct_start=0.25,
        div_factor=20,
        final_div_factor=100,
        cycle_momentum=False,
    )
    values = []
    for _ in range(1001):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        torch_lr.step()
    ours = [s.lr_at(10 * i / 1000) for i in range(1001)]
    assert max(abs(a - b) for a, b in zip(values, ours)) < 2e-3
    with pytest.raises(ValueError, match=r"pct_start must be in \(0, 1\)"):
        LRSchedule(kind="onecycle", pct_start=1.0)
    with pytest.raises(ValueError, match="div_factor must be a finite number >= 1"):
        LRSchedule(kind="onecycle", div_factor=0.5)


# ----------------------------------------------------------------------------- keep-ratio schedules
def test_geometric_and_linear_segments():
    assert Geometric(0.8, 0.1, 4).points() == pytest.approx([0.8, 0.4, 0.2, 0.1])
    assert Linear(0.5, 0.2, 4).points() == pytest.approx([0.5, 0.4, 0.3, 0.2])
    assert keep_ratio_schedule(Geometric(0.8, 0.2, 3), Linear(0.2, 0.1, 3)) == pytest.approx(
        [0.8, 0.4, 0.2, 0.15, 0.1]
    )
    assert keep_ratio_schedule([Linear(0.9, 0.5, 2), Linear(0.4, 0.3, 2)]) == pytest.approx(
        [0.9, 0.5, 0.4, 0.3]
    )


def test_paper_keep_ratios():
    ratios = paper_keep_ratios()
    assert len(ratios) == 23 and ratios[0] == pytest.approx(0.85) and ratios[-1] == pytest.approx(0.02)
    assert 0.15 in [round(r, 10) for r in ratios]
    assert all(b < a for a, b in itertools.pairwise(ratios))
    head = ratios[: ratios.index(min(ratios, key=lambda r: abs(r - 0.15))) + 1]
    steps = [b / a for a, b in itertools.pairwise(head)]
    assert max(steps) - min(steps) < 1e-9  # geometric down to 0.15
    assert len(paper_keep_ratios(10)) == 10


@pytest.mark.parametrize(
    "segment, message",
    [
        (Geometric(0.0, 0.1, 3), r"Geometric.start is a keep ratio and must be in \(0, 1\]"),
        (Linear(0.5, 1.5, 3), r"Linear.stop is a keep ratio and must be in \(0, 1\]"),
        (Linear(0.5, 0.1, 0), "Linear.num must be a positive integer"),
    ],
)
def test_bad_segments(segment, message):
    with pytest.raises(ValueError, match=message):
        keep_ratio_schedule(segment)
