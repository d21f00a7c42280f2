"""Bad inputs to the public API: each gets an error of the right type that names the argument,
raised before any expensive pass. One parametrized case per input; add a case with every new
argument. (``benchmarks/probe_bad_inputs.py`` is the wider survey, unusual inputs included.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import lostprune
from lostprune import io as lpio
from lostprune import models
from lostprune.datapass import sensitivity_pass
from lostprune.structure import slice_model
from lostprune.structure.trace_cache import EXAMPLE_INPUT


class Tiny(nn.Module):
    def __init__(self, channels: int = 3):
        super().__init__()
        torch.manual_seed(0)  # every Tiny the same: results can be compared
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.input_size = (channels, 8, 8)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


class TiedPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.input_size = (16,)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


S = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
LABELS = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(2))


def prune(model=None, method="wt", ratio=0.5, **kw):
    return lostprune.prune(Tiny() if model is None else model, method, ratio, progress=False, **kw)


def meta_model():
    with torch.device("meta"):
        return Tiny()


def tampered():
    model = prune().model
    model.conv1.weight_mask.fill_(0.5)
    return model


def no_input_size():
    model = Tiny()
    del model.input_size
    return model


def wrong_input_size():
    model = Tiny()
    model.input_size = (1, 8, 8)
    return model


def ft_pruned_without_input(channels: int) -> nn.Module:
    """An FT-pruned Tiny that no longer remembers its example input and claims ``channels`` inputs."""
    model = prune(method="ft").model
    delattr(model, EXAMPLE_INPUT)
    model.input_size = (channels, 8, 8)
    return model


def bad_state(kind: str) -> dict:
    state = prune().model.state_dict()
    if kind == "shape":
        state["conv1.weight_mask"] = torch.ones(2, 2)
    elif kind == "values":
        state["conv1.weight_mask"] = torch.full_like(state["conv1.weight_mask"], 0.5)
    else:
        state["conv9.weight_mask"] = torch.ones(2)
    return state


def write(tmp_path, kind: str):
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "state_dict":
        torch.save(Tiny().state_dict(), path)
    return path


def case(id_, call, error, *words):
    """``call(tmp_path)`` must raise ``error`` naming every word of ``words``."""
    return pytest.param(call, error, words, id=id_)


CASES = [
    # ratio
    case("ratio=1.0", lambda _: prune(ratio=1.0), ValueError, "ratio"),
    case("ratio=-0.1", lambda _: prune(ratio=-0.1), ValueError, "ratio"),
    case("ratio=nan", lambda _: prune(ratio=math.nan), ValueError, "ratio"),
    case("ratio=None", lambda _: prune(ratio=None), TypeError, "ratio"),
    case("ratio='half'", lambda _: prune(ratio="half"), TypeError, "ratio"),
    # method and its options
    case("method='nope'", lambda _: prune(method="nope"), ValueError, "method", "nope"),
    case("sipp without data", lambda _: prune(method="sipp"), ValueError, "data"),
    case("wt colour=", lambda _: prune(colour="red"), TypeError, "colour"),
    case("sipp reduce=", lambda _: prune(method="sipp", data=S, reduce="median"), ValueError, "reduce"),
    case("random seed='abc'", lambda _: prune(method="random", seed="abc"), TypeError, "seed"),
    case("ft coupled=", lambda _: prune(method="ft", coupled="bogus"), ValueError, "coupled"),
    case("pfp option typo", lambda _: prune(method="pfp", data=S, epsilon_typo=1), TypeError, "epsilon_typo"),
    # model
    case("model=None", lambda _: lostprune.prune(None, "wt", 0.5), TypeError, "model"),
    case(
        "model without conv/linear",
        lambda _: lostprune.prune(nn.Sequential(nn.ReLU()), "wt", 0.5),
        ValueError,
        "model",
    ),
    case("model on the meta device", lambda _: prune(meta_model()), ValueError, "model", "meta device"),
    case(
        "float64 model, float32 S",
        lambda _: prune(Tiny().double(), "sipp", data=S),
        TypeError,
        "data",
        "float64",
    ),
    case("mask changed to 0.5", lambda _: prune(tampered(), ratio=0.7), ValueError, "weight_mask", "conv1"),
    case(
        "tied weights, structured method",
        lambda _: prune(TiedPair(), "ft", example_input=torch.randn(1, 16)),
        ValueError,
        "'a'",
        "'b'",
    ),
    case(
        "tied weights, one use excluded", lambda _: prune(TiedPair(), exclude="b"), ValueError, "'a'", "'b'"
    ),
    # data S
    case("S empty tensor", lambda _: prune(method="sipp", data=torch.empty(0, 3, 8, 8)), ValueError, "data"),
    case("S empty list", lambda _: prune(method="sipp", data=[]), ValueError, "data"),
    case(
        "S empty DataLoader",
        lambda _: prune(method="sipp", data=DataLoader(TensorDataset(torch.empty(0, 3, 8, 8)))),
        ValueError,
        "data",
    ),
    case("S one sample", lambda _: prune(method="sipp", data=S[:1]), ValueError, "data"),
    case("S uint8", lambda _: prune(method="sipp", data=S.to(torch.uint8)), TypeError, "data"),
    case("S with NaN", lambda _: prune(method="sipp", data=torch.full_like(S, math.nan)), ValueError, "data"),
    case(
        "S wrong channels",
        lambda _: prune(method="sipp", data=torch.randn(8, 1, 8, 8)),
        ValueError,
        "data",
        "(1, 1, 8, 8)",
    ),
    case(
        "S wrong channels, example_input given",
        lambda _: prune(method="sipp", data=torch.randn(8, 1, 8, 8), example_input=S[:1]),
        ValueError,
        "data",
    ),
    case("S wrong rank", lambda _: prune(method="sipp", data=S[0]), ValueError, "data"),
    case("S float64", lambda _: prune(method="sipp", data=S.double()), TypeError, "data", "float64"),
    case(
        "S on the meta device", lambda _: prune(method="sipp", data=S.to("meta")), ValueError, "data", "meta"
    ),
    case("S numpy", lambda _: prune(method="sipp", data=S.numpy()), TypeError, "data"),
    case("S = 5", lambda _: prune(method="sipp", data=5), TypeError, "data", "int"),
    case(
        "snip labels out of range",
        lambda _: prune(method="snip", data=TensorDataset(S, LABELS + 10)),
        ValueError,
        "data",
        "labels",
    ),
    case(
        "pfp S wrong channels",
        lambda _: prune(method="pfp", data=torch.randn(8, 1, 8, 8)),
        ValueError,
        "data",
    ),
    # batch_size
    case("batch_size=0", lambda _: prune(method="sipp", data=S, batch_size=0), ValueError, "batch_size"),
    case("batch_size=-1", lambda _: prune(method="sipp", data=S, batch_size=-1), ValueError, "batch_size"),
    case("batch_size=2.5", lambda _: prune(method="sipp", data=S, batch_size=2.5), TypeError, "batch_size"),
    case("batch_size='8'", lambda _: prune(method="sipp", data=S, batch_size="8"), TypeError, "batch_size"),
    case(
        "sensitivity_pass batch_size=0",
        lambda _: sensitivity_pass(Tiny(), S, batch_size=0),
        ValueError,
        "batch_size",
    ),
    # example_input
    case(
        "example_input wrong channels",
        lambda _: prune(example_input=torch.randn(1, 1, 8, 8)),
        ValueError,
        "example_input",
        "(1, 1, 8, 8)",
    ),
    case(
        "example_input wrong channels, ft",
        lambda _: prune(method="ft", example_input=torch.randn(1, 1, 8, 8)),
        ValueError,
        "example_input",
    ),
    case("example_input a list", lambda _: prune(example_input=[1, 2]), ValueError, "example_input"),
    case("example_input 1-d", lambda _: prune(example_input=torch.randn(3)), ValueError, "example_input"),
    case(
        "example_input empty batch",
        lambda _: prune(example_input=torch.randn(0, 3, 8, 8)),
        ValueError,
        "example_input",
    ),
    case(
        "example_input int64",
        lambda _: prune(example_input=torch.zeros(1, 3, 8, 8, dtype=torch.long)),
        ValueError,
        "example_input",
    ),
    case(
        "example_input on the meta device",
        lambda _: prune(example_input=S[:1].to("meta")),
        ValueError,
        "example_input",
    ),
    case("model.input_size wrong", lambda _: prune(wrong_input_size()), ValueError, "model.input_size"),
    case("ft without any input", lambda _: prune(no_input_size(), "ft"), ValueError, "example_input"),
    # layers / exclude
    case("layers='nope'", lambda _: prune(layers="nope"), ValueError, "layers", "nope"),
    case("layers=['bn']", lambda _: prune(layers=["bn"]), ValueError, "layers", "bn"),
    case("layers=[123]", lambda _: prune(layers=[123]), TypeError, "layers"),
    case("layers=[int]", lambda _: prune(layers=[int]), TypeError, "layers"),
    case("layers=3.5", lambda _: prune(layers=3.5), TypeError, "layers"),
    case("predicate of one argument", lambda _: prune(layers=[lambda name: True]), TypeError, "layers"),
    case("exclude='nope'", lambda _: prune(exclude="nope"), ValueError, "exclude", "nope"),
    case("exclude everything", lambda _: prune(exclude=[nn.Conv2d, nn.Linear]), ValueError, "layers/exclude"),
    # load_pruned / remove_masks
    case("load_pruned(model, None)", lambda _: lostprune.load_pruned(Tiny(), None), TypeError, "state_dict"),
    case(
        "load_pruned(model, 'net.pt')",
        lambda _: lostprune.load_pruned(Tiny(), "net.pt"),
        TypeError,
        "state_dict",
        "torch.load",
    ),
    case("load_pruned(None, state)", lambda _: lostprune.load_pruned(None, {}), TypeError, "model"),
    case(
        "load_pruned mask shape",
        lambda _: lostprune.load_pruned(Tiny(), bad_state("shape")),
        ValueError,
        "mask",
        "conv1",
    ),
    case(
        "load_pruned mask 0.5",
        lambda _: lostprune.load_pruned(Tiny(), bad_state("values")),
        ValueError,
        "mask",
    ),
    case(
        "load_pruned mask of a missing layer",
        lambda _: lostprune.load_pruned(Tiny(), bad_state("name")),
        KeyError,
        "conv9",
    ),
    case("remove_masks(None)", lambda _: lostprune.remove_masks(None), TypeError, "model"),
    # sparse.convert
    case("convert(None)", lambda _: lostprune.sparse.convert(None), TypeError, "model"),
    case(
        "convert min_sparsity='high'",
        lambda _: lostprune.sparse.convert(Tiny(), "high"),
        ValueError,
        "min_sparsity",
    ),
    case(
        "convert example_input wrong channels",
        lambda _: lostprune.sparse.convert(Tiny(), example_input=torch.randn(1, 1, 8, 8)),
        ValueError,
        "example_input",
    ),
    # slice_model
    case(
        "slice_model example_input wrong channels",
        lambda _: slice_model(prune(method="ft").model, example_input=torch.randn(1, 1, 8, 8)),
        ValueError,
        "example_input",
        "(1, 1, 8, 8)",
    ),
    case(
        "slice_model empty example_input",
        lambda _: slice_model(prune(method="ft").model, example_input=torch.randn(0, 3, 8, 8)),
        ValueError,
        "example_input",
        "non-empty",
    ),
    case(
        "slice_model model.input_size wrong channels",
        lambda _: slice_model(ft_pruned_without_input(1)),
        ValueError,
        "model.input_size",
    ),
    case(
        "slice_model without any input",
        lambda _: slice_model(lostprune.load_pruned(no_input_size(), prune(method="ft").model.state_dict())),
        ValueError,
        "example_input",
    ),
    # network files
    case(
        "load_network missing",
        lambda tmp: lpio.load_network(tmp / "missing.pt"),
        FileNotFoundError,
        "missing.pt",
    ),
    case(
        "load_network text file",
        lambda tmp: lpio.load_network(write(tmp, "text")),
        ValueError,
        "text.pt",
        "not a torch checkpoint",
    ),
    case(
        "load_network empty file",
        lambda tmp: lpio.load_network(write(tmp, "empty")),
        ValueError,
        "empty.pt",
        "not a torch checkpoint",
    ),
    case(
        "load_network plain state_dict",
        lambda tmp: lpio.load_network(write(tmp, "state_dict")),
        ValueError,
        "state_dict.pt",
        "lostprune-network",
    ),
    case("load_network a directory", lpio.load_network, IsADirectoryError, "directory"),
    case(
        "save_network model=None",
        lambda tmp: lpio.save_network(tmp / "x.pt", None, "small_cnn"),
        TypeError,
        "model",
    ),
    case(
        "save_network unknown network",
        lambda tmp: lpio.save_network(tmp / "x.pt", Tiny(), "tiny"),
        ValueError,
        "network",
        "tiny",
    ),
]


@pytest.mark.parametrize("call, error, words", CASES)
def test_bad_input_is_named(call, error, words, tmp_path):
    with pytest.raises(error) as info:
        call(tmp_path)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize(
    "bad",
    [
        dict(data=torch.randn(8, 1, 8, 8)),
        dict(data=S, example_input=torch.randn(1, 1, 8, 8)),
        dict(data=S.double()),
        dict(data=S, batch_size=0),
        dict(data=S, reduce="median"),
    ],
    ids=["S channels", "example_input channels", "S dtype", "batch_size", "option"],
)
def test_errors_come_before_the_data_pass(bad, monkeypatch):
    def data_pass(*args, **kwargs):
        raise AssertionError("the sensitivity pass ran before the input was checked")

    monkeypatch.setattr("lostprune.methods.sipp.collect_sensitivities", data_pass)
    with pytest.raises((ValueError, TypeError)):
        prune(method="sipp", **bad)


# ----------------------------------------------------------------------------- unusual inputs handled right
def test_one_selector_need_not_be_a_list():
    assert set(prune(layers="conv1").masks) == {"conv1"}
    assert set(prune(exclude="fc").masks) == {"conv1", "conv2"}
    assert set(prune(layers=nn.Conv2d).masks) == {"conv1", "conv2"}


@pytest.mark.parametrize("form", ["generator", "pair", "pairs", "dataset"])
def test_every_form_of_S_scores_the_same(form):
    data = {
        "generator": (S[i : i + 4] for i in range(0, 16, 4)),
        "pair": (S, LABELS),
        "pairs": [(S[:8], LABELS[:8]), (S[8:], LABELS[8:])],
        "dataset": TensorDataset(S, LABELS),
    }[form]
    want = prune(method="sipp", data=S)
    got = prune(method="sipp", data=data)
    for name, mask in want.masks.items():
        assert torch.equal(mask, got.masks[name]), name


def test_snip_scores_frozen_weights():
    frozen = Tiny()
    for p in frozen.parameters():
        p.requires_grad_(False)
    want = prune(Tiny(), "snip", data=TensorDataset(S, LABELS))
    got = prune(frozen, "snip", data=TensorDataset(S, LABELS))
    for name, mask in want.masks.items():
        assert torch.equal(mask, got.masks[name]), name
    assert not any(p.requires_grad for p in frozen.parameters())


def test_network_round_trip_still_loads(tmp_path):
    model = lostprune.prune(models.create("small_cnn"), "wt", 0.5, progress=False).model
    loaded = lpio.load_network(lpio.save_network(tmp_path / "net.pt", model, network="small_cnn"))
    assert torch.equal(loaded.features[0].weight_mask, model.features[0].weight_mask)


def test_input_check_leaves_every_training_flag_as_it_was():
    from lostprune.core.shapes import input_problem

    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(), nn.Linear(3, 2)).train()
    model[1].eval()  # mixed flags: each must come back, not one for the whole model
    before = [m.training for m in model.modules()]
    assert input_problem(model, torch.randn(1, 4)) is None
    assert input_problem(model, torch.randn(1, 5)).startswith("RuntimeError")
    assert [m.training for m in model.modules()] == before
