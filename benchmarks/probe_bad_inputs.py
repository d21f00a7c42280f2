"""Try bad or unusual inputs on the public API and classify what each one gets.

    PYTHONPATH=$PWD python benchmarks/probe_bad_inputs.py [-v]

Each case expects an error (naming the argument), a warning, or a correct result. Outcomes:
- clear: the expected error / warning names the argument, or an unusual input is handled right;
- acceptable: an error raised on purpose by lostprune that does not name the argument, or a
  clear refusal of an input that could have been handled;
- obscure: an error from deep inside torch or Python;
- silently wrong: no error where one was due, or a result that is wrong.
Tiny models and data only: the whole probe runs in seconds. The permanent regression tests
are tests/test_bad_inputs.py; this script is the survey (re-run it after changing the API).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lostprune
from lostprune import io as lpio
from lostprune import models

# the models and data of the tests (run from the repository root: PYTHONPATH=$PWD)
from tests.test_bad_inputs import (
    LABELS,
    S,
    Tiny,
    bad_state,
    meta_model,
    no_input_size,
    prune,
    tampered,
    wrong_input_size,
)
from tests.test_shared_weights import Reused, TiedEmbedding, TiedPair

PACKAGE = str(Path(lostprune.__file__).resolve().parent)


@dataclass
class Case:
    id: str
    call: Callable[[], object]
    expect: str  # "error", "warn" or "ok"
    names: tuple[str, ...] = ()  # words a clear message contains (the argument, the layer)
    check: Callable[[object], str | None] | None = None  # for "ok": what is wrong, or None


# ----------------------------------------------------------------------------- fixtures


class TinyFc(nn.Module):
    """A net whose classifier weights are tiny: WT 0.9 removes all of them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 4)
        with torch.no_grad():
            self.fc.weight.mul_(1e-4)
        self.input_size = (3, 8, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


S16 = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------------------- checks
def achieved(target: float, tolerance: float = 0.02):
    def check(result):
        got = result.stats.achieved_ratio
        return None if abs(got - target) <= tolerance else f"achieved {got:.3f} for target {target}"

    return check


def tied_ok(result) -> str | None:
    """One tensor, one mask, counted once, still tied after pruning."""
    m = result.model
    if no_meta(m):
        return no_meta(m)
    wa, wb = m.a.weight, m.b.weight
    if not torch.equal(wa, wb):
        return "the two uses of the shared weight differ after pruning (untied)"
    orig_a = getattr(m.a, "weight_orig", m.a.weight)
    orig_b = getattr(m.b, "weight_orig", m.b.weight)
    if orig_a is not orig_b:
        return "the shared Parameter was split in two"
    prunable = 16 * 16 + 4 * 16  # a's (= b's) weight once, plus the head
    if result.stats.prunable_params != prunable:
        return f"prunable_params {result.stats.prunable_params}, expected {prunable} (shared weight counted twice)"
    total = sum(p.numel() for p in m.parameters())
    if result.stats.total_params != total:
        return f"total_params {result.stats.total_params}, expected {total}"
    zeros = int((m.a.weight == 0).sum()) + int((m.head.weight == 0).sum())
    if result.stats.removed_params != zeros:
        return f"removed_params {result.stats.removed_params}, but {zeros} weights are zero"
    masks = [k for k in result.masks if k in ("a", "b")]
    if len(masks) == 2 and not torch.equal(result.masks["a"], result.masks["b"]):
        return "two different masks for one tensor"
    if abs(result.stats.achieved_ratio - 0.5) > 0.02:
        return f"achieved {result.stats.achieved_ratio:.3f} for 0.5"
    return None


def tied_embedding_ok(result) -> str | None:
    m = result.model
    w = m.out.weight
    if not torch.equal(m.emb(torch.arange(32)), w):
        return "the embedding no longer reads the (pruned) classifier weight"
    total = sum(p.numel() for p in m.parameters())
    if result.stats.total_params != total:
        return f"total_params {result.stats.total_params}, expected {total}"
    zeros = sum(int((mod.weight == 0).sum()) for mod in (m.hidden, m.out))
    if result.stats.removed_params != zeros:
        return f"removed_params {result.stats.removed_params}, but {zeros} weights are zero"
    return None


def no_meta(model) -> str | None:
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    return f"{meta[0]} is left on the meta device" if meta else None


def reused_ok(result) -> str | None:
    m = result.model
    if no_meta(m):
        return no_meta(m)
    if result.stats.prunable_params != 4 * 4 * 9 + 2 * 4:
        return f"prunable_params {result.stats.prunable_params} (reused module counted twice?)"
    if m.conv is not m.again:
        return "the reused module was split"
    return None


def emptied_in_stats(result) -> str | None:
    emptied = getattr(result.stats, "emptied_layers", None)
    if emptied is None:
        return "PruneStats has no record of emptied layers"
    if "fc" not in emptied:
        return f"fc was pruned to nothing but emptied_layers is {emptied}"
    if "fc" not in result.stats.summary():
        return "summary() does not name the emptied layer"
    return None


def same_masks_as(reference: Callable[[], object]):
    def check(result):
        want = reference()
        for name, mask in want.masks.items():
            if not torch.equal(mask, result.masks[name]):
                return f"masks differ from the same S given as a tensor (layer {name})"
        return None

    return check


def only_layers(expected: set[str]):
    def check(result):
        return (
            None
            if set(result.masks) == expected
            else f"pruned {sorted(result.masks)}, expected {sorted(expected)}"
        )

    return check


def training_kept(result) -> str | None:
    return None if result.model.training else "the model came back in eval mode"


def frozen_snip(result) -> str | None:
    ref = lostprune.prune(Tiny(), "snip", 0.5, data=S, progress=False)
    for name, mask in ref.masks.items():
        if not torch.equal(mask, result.masks[name]):
            return f"frozen parameters changed SNIP's masks (layer {name}: no gradients, scores of nothing)"
    return None


def pruned_further(result) -> str | None:
    first = prune(ratio=0.5)
    for name, mask in result.masks.items():
        if bool((mask > first.masks[name]).any()):
            return f"{name}: a removed weight came back"
    return None


def nothing_removed(result) -> str | None:
    return None if result.stats.removed_params == 0 else f"removed {result.stats.removed_params}"


def sliced_equal(model) -> str | None:
    pruned = prune(method="ft", ratio=0.5).model.eval()
    x = S[:2]
    return None if torch.allclose(model.eval()(x), pruned(x), atol=1e-5) else "sliced output differs"


def tied_state_loaded(model) -> str | None:
    if model.a.weight_orig is not model.b.weight_orig:
        return "load_pruned split the shared Parameter"
    if model.a.weight_mask is not model.b.weight_mask:
        return "load_pruned gave the shared weight two masks"
    return None if torch.equal(model.a.weight, model.b.weight) else "the two uses differ"


def tied_removed(model) -> str | None:
    return None if model.a.weight is model.b.weight else "remove_masks untied the weights"


def masks_restored(model) -> str | None:
    return None if hasattr(model.features[0], "weight_mask") else "masks lost in the round trip"


# ----------------------------------------------------------------------------- helpers for io cases
TMP = Path(tempfile.mkdtemp(prefix="lostprune-probe-"))


def text_file() -> Path:
    p = TMP / "notes.pt"
    p.write_text("this is not a checkpoint\n")
    return p


def empty_file() -> Path:
    p = TMP / "empty.pt"
    p.write_bytes(b"")
    return p


def state_dict_file() -> Path:
    p = TMP / "sd.pt"
    torch.save(Tiny().state_dict(), p)
    return p


def unknown_network_file() -> Path:
    p = TMP / "unknown.pt"
    torch.save(
        {
            "format": lpio.FORMAT,
            "network": "no_such_net",
            "num_classes": 4,
            "options": {},
            "state_dict": {},
            "meta": {},
        },
        p,
    )
    return p


def round_trip():
    model = models.create("small_cnn")
    pruned = lostprune.prune(model, "wt", 0.5, progress=False).model
    path = lpio.save_network(TMP / "net.pt", pruned, network="small_cnn")
    return lpio.load_network(path)


def pruned_tied():
    return lostprune.prune(TiedPair(), "wt", 0.5, progress=False).model


def tied_load():
    state = pruned_tied().state_dict()
    return lostprune.load_pruned(TiedPair(), state)


def data_generator():
    return (S[i : i + 4] for i in range(0, 16, 4))


def frozen():
    model = Tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def training_mode_sipp():
    model = Tiny().train()
    return lostprune.prune(model, "sipp", 0.5, data=S, progress=False)


def convert(model=None, **kw):
    return lostprune.sparse.convert(prune(ratio=0.8).model if model is None else model, progress=False, **kw)


# ----------------------------------------------------------------------------- the cases
def cases() -> list[Case]:
    C = Case
    return [
        # ratio
        C("ratio=1.0", lambda: prune(ratio=1.0), "error", ("ratio",)),
        C("ratio=-0.1", lambda: prune(ratio=-0.1), "error", ("ratio",)),
        C("ratio=nan", lambda: prune(ratio=math.nan), "error", ("ratio",)),
        C("ratio=inf", lambda: prune(ratio=math.inf), "error", ("ratio",)),
        C("ratio=None", lambda: prune(ratio=None), "error", ("ratio",)),
        C("ratio='half'", lambda: prune(ratio="half"), "error", ("ratio",)),
        C("ratio=[0.5]", lambda: prune(ratio=[0.5]), "error", ("ratio",)),
        C("ratio=True", lambda: prune(ratio=True), "error", ("ratio",)),
        C("ratio=0.0", lambda: prune(ratio=0.0), "ok", check=nothing_removed),
        C("ratio=tensor(0.5)", lambda: prune(ratio=torch.tensor(0.5)), "ok", check=achieved(0.5)),
        C("ratio=0.999 empties layers", lambda: prune(ratio=0.999), "warn", ("emptied",)),
        # method and options
        C("method='nope'", lambda: prune(method="nope"), "error", ("method",)),
        C("method=None", lambda: prune(method=None), "error", ("method",)),
        C("method=3", lambda: prune(method=3), "error", ("method",)),
        C("method='WT'", lambda: prune(method="WT"), "ok", check=achieved(0.5)),
        C("sipp without data", lambda: prune(method="sipp"), "error", ("data",)),
        C("pfp without data", lambda: prune(method="pfp"), "error", ("data",)),
        C("snip without data", lambda: prune(method="snip"), "error", ("data",)),
        C("wt colour='red'", lambda: prune(colour="red"), "error", ("colour",)),
        C(
            "sipp reduce='median'",
            lambda: prune(method="sipp", data=S, reduce="median"),
            "error",
            ("reduce",),
        ),
        C("random seed='abc'", lambda: prune(method="random", seed="abc"), "error", ("seed",)),
        C("random seed=-1", lambda: prune(method="random", seed=-1), "ok", check=achieved(0.5)),
        C("ft coupled='bogus'", lambda: prune(method="ft", coupled="bogus"), "error", ("coupled",)),
        C("ft round_to=0", lambda: prune(method="ft", coupled="sum", round_to=0), "error", ("round_to",)),
        C(
            "pfp epsilon_typo=1",
            lambda: prune(method="pfp", data=S, epsilon_typo=1),
            "error",
            ("epsilon_typo",),
        ),
        # models
        C("model=None", lambda: lostprune.prune(None, "wt", 0.5), "error", ("model",)),
        C("model='resnet20' (a name)", lambda: lostprune.prune("resnet20", "wt", 0.5), "error", ("model",)),
        C(
            "model without conv/linear",
            lambda: lostprune.prune(nn.Sequential(nn.ReLU()), "wt", 0.5),
            "error",
            ("model",),
        ),
        C("model on meta device", lambda: prune(meta_model()), "error", ("meta device",)),
        C("model with NaN weights", lambda: prune(_nan_model()), "error", ("nan",)),
        C(
            "float64 model, float32 S (sipp)",
            lambda: prune(Tiny().double(), "sipp", data=S),
            "error",
            ("float64",),
        ),
        C("training-mode model (sipp)", training_mode_sipp, "ok", check=training_kept),
        C("frozen parameters (snip)", lambda: prune(frozen(), "snip", data=S), "ok", check=frozen_snip),
        C("frozen parameters (wt)", lambda: prune(frozen()), "ok", check=achieved(0.5)),
        C("already pruned model", lambda: prune(prune().model, ratio=0.7), "ok", check=pruned_further),
        C("pruned model with a tampered 0.5 mask", lambda: prune(tampered(), ratio=0.7), "error", ("mask",)),
        # tied / reused weights
        C("tied Linear pair (wt)", lambda: prune(TiedPair()), "ok", check=tied_ok),
        C("tied Linear pair (random)", lambda: prune(TiedPair(), "random"), "ok", check=tied_ok),
        C("tied Linear pair (sipp)", lambda: prune(TiedPair(), "sipp", data=S16), "ok", check=tied_ok),
        C("tied Linear pair (snip)", lambda: prune(TiedPair(), "snip", data=S16), "ok", check=tied_ok),
        C(
            "tied Linear pair (ft)",
            lambda: prune(TiedPair(), "ft", example_input=S16[:1]),
            "error",
            ("a", "b"),
        ),
        C("tied pair, one use excluded", lambda: prune(TiedPair(), exclude=["b"]), "error", ("'b'",)),
        C(
            "tied embedding/classifier (wt)",
            lambda: prune(TiedEmbedding(), example_input=torch.zeros(1, 5).long()),
            "ok",
            check=tied_embedding_ok,
        ),
        C("module reused under two names (wt)", lambda: prune(Reused()), "ok", check=reused_ok),
        C("module reused under two names: shape pass", lambda: _shape_pass(Reused()), "ok", check=no_meta),
        C("load_pruned of a pruned tied model", tied_load, "ok", check=tied_state_loaded),
        C(
            "remove_masks on a pruned tied model",
            lambda: lostprune.remove_masks(pruned_tied()),
            "ok",
            check=tied_removed,
        ),
        # a layer pruned to nothing
        C("wt 0.9 empties fc: warning", lambda: prune(TinyFc(), ratio=0.9), "warn", ("fc",)),
        C("wt 0.9 empties fc: statistics", lambda: prune(TinyFc(), ratio=0.9), "ok", check=emptied_in_stats),
        # data S
        C("S empty tensor", lambda: prune(method="sipp", data=torch.empty(0, 3, 8, 8)), "error", ("data",)),
        C("S empty list", lambda: prune(method="sipp", data=[]), "error", ("data",)),
        C(
            "S empty DataLoader",
            lambda: prune(method="sipp", data=DataLoader(TensorDataset(torch.empty(0, 3, 8, 8)))),
            "error",
            ("data",),
        ),
        C("S one sample", lambda: prune(method="sipp", data=S[:1]), "error", ("data",)),
        C("S uint8", lambda: prune(method="sipp", data=(S * 50).to(torch.uint8)), "error", ("data",)),
        C("S with NaN", lambda: prune(method="sipp", data=S.clone().fill_(math.nan)), "error", ("data",)),
        C("S wrong channels", lambda: prune(method="sipp", data=torch.randn(8, 1, 8, 8)), "error", ("data",)),
        C(
            "S wrong channels, example_input given",
            lambda: prune(method="sipp", data=torch.randn(8, 1, 8, 8), example_input=S[:1]),
            "error",
            ("data",),
        ),
        C("S wrong rank (one C x H x W image)", lambda: prune(method="sipp", data=S[0]), "error", ("data",)),
        C("S float64", lambda: prune(method="sipp", data=S.double()), "error", ("data",)),
        C("S on meta", lambda: prune(method="sipp", data=S.to("meta")), "error", ("data",)),
        C("S numpy array", lambda: prune(method="sipp", data=S.numpy()), "error", ("data",)),
        C("S = 5", lambda: prune(method="sipp", data=5), "error", ("data",)),
        C("S = a path string", lambda: prune(method="sipp", data="images/"), "error", ("data",)),
        C(
            "S as (x, y) batches",
            lambda: prune(method="sipp", data=[(S[:8], LABELS[:8]), (S[8:], LABELS[8:])]),
            "ok",
            check=same_masks_as(lambda: prune(method="sipp", data=S)),
        ),
        C(
            "S as dict batches",
            lambda: prune(method="sipp", data=[{"image": S}]),
            "ok",
            check=same_masks_as(lambda: prune(method="sipp", data=S)),
        ),
        C(
            "S as a generator",
            lambda: prune(method="sipp", data=data_generator()),
            "ok",
            check=same_masks_as(lambda: prune(method="sipp", data=S)),
        ),
        C(
            "S as TensorDataset",
            lambda: prune(method="sipp", data=TensorDataset(S, LABELS)),
            "ok",
            check=same_masks_as(lambda: prune(method="sipp", data=S)),
        ),
        C(
            "S as the pair (inputs, labels)",
            lambda: prune(method="sipp", data=(S, LABELS)),
            "ok",
            check=same_masks_as(lambda: prune(method="sipp", data=S)),
        ),
        C(
            "snip S labels out of range",
            lambda: prune(method="snip", data=TensorDataset(S, LABELS + 10)),
            "error",
            ("label",),
        ),
        C(
            "pfp S wrong channels",
            lambda: prune(method="pfp", data=torch.randn(8, 1, 8, 8)),
            "error",
            ("data",),
        ),
        C("batch_size=0", lambda: prune(method="sipp", data=S, batch_size=0), "error", ("batch_size",)),
        C("batch_size=-1", lambda: prune(method="sipp", data=S, batch_size=-1), "error", ("batch_size",)),
        C("batch_size=2.5", lambda: prune(method="sipp", data=S, batch_size=2.5), "error", ("batch_size",)),
        C("batch_size='8'", lambda: prune(method="sipp", data=S, batch_size="8"), "error", ("batch_size",)),
        # example_input
        C(
            "example_input wrong channels",
            lambda: prune(example_input=torch.randn(1, 1, 8, 8)),
            "error",
            ("example_input",),
        ),
        C(
            "example_input wrong channels (ft)",
            lambda: prune(method="ft", example_input=torch.randn(1, 1, 8, 8)),
            "error",
            ("example_input",),
        ),
        C("example_input a list", lambda: prune(example_input=[1, 2, 3]), "error", ("example_input",)),
        C("example_input 1-d", lambda: prune(example_input=torch.randn(3)), "error", ("example_input",)),
        C(
            "example_input empty batch",
            lambda: prune(example_input=torch.randn(0, 3, 8, 8)),
            "error",
            ("example_input",),
        ),
        C(
            "example_input int64",
            lambda: prune(example_input=torch.zeros(1, 3, 8, 8, dtype=torch.long)),
            "error",
            ("example_input",),
        ),
        C("example_input numpy", lambda: prune(example_input=S[:1].numpy()), "error", ("example_input",)),
        C("model.input_size wrong", lambda: prune(wrong_input_size()), "error", ("input_size",)),
        C("no input at all (wt)", lambda: prune(no_input_size()), "ok", check=achieved(0.5)),
        C("no input at all (ft)", lambda: prune(no_input_size(), "ft"), "error", ("example_input",)),
        # layers / exclude
        C("layers='conv1' (one name)", lambda: prune(layers="conv1"), "ok", check=only_layers({"conv1"})),
        C(
            "exclude='fc' (one name)",
            lambda: prune(exclude="fc"),
            "ok",
            check=only_layers({"conv1", "conv2"}),
        ),
        C(
            "layers=nn.Conv2d (one type)",
            lambda: prune(layers=nn.Conv2d),
            "ok",
            check=only_layers({"conv1", "conv2"}),
        ),
        C("layers=['nope']", lambda: prune(layers=["nope"]), "error", ("layers",)),
        C("layers=['bn']", lambda: prune(layers=["bn"]), "error", ("layers",)),
        C("layers=[]", lambda: prune(layers=[]), "error", ("layers",)),
        C("layers=[123]", lambda: prune(layers=[123]), "error", ("layers",)),
        C(
            "layers=[lambda name: True] (one argument)",
            lambda: prune(layers=[lambda name: True]),
            "error",
            ("layers",),
        ),
        C("layers=[nn.BatchNorm2d]", lambda: prune(layers=[nn.BatchNorm2d]), "error", ("layers",)),
        C("exclude every layer", lambda: prune(exclude=[nn.Conv2d, nn.Linear]), "error", ("exclude",)),
        C("exclude=['nope'] (typo)", lambda: prune(exclude=["nope"]), "error", ("exclude",)),
        # masks, load_pruned, remove_masks
        C("load_pruned(model, None)", lambda: lostprune.load_pruned(Tiny(), None), "error", ("state_dict",)),
        C(
            "load_pruned(model, 'file.pt')",
            lambda: lostprune.load_pruned(Tiny(), "net.pt"),
            "error",
            ("state_dict",),
        ),
        C(
            "load_pruned(None, state)",
            lambda: lostprune.load_pruned(None, prune().model.state_dict()),
            "error",
            ("model",),
        ),
        C(
            "load_pruned mask of wrong shape",
            lambda: lostprune.load_pruned(Tiny(), bad_state("shape")),
            "error",
            ("mask",),
        ),
        C(
            "load_pruned mask with 0.5",
            lambda: lostprune.load_pruned(Tiny(), bad_state("values")),
            "error",
            ("mask",),
        ),
        C(
            "load_pruned mask for a missing layer",
            lambda: lostprune.load_pruned(Tiny(), bad_state("name")),
            "error",
            ("conv9",),
        ),
        C(
            "load_pruned other architecture",
            lambda: lostprune.load_pruned(Tiny(channels=1), prune().model.state_dict()),
            "error",
            ("state_dict", "shape"),
        ),
        C("remove_masks(None)", lambda: lostprune.remove_masks(None), "error", ("model",)),
        C(
            "remove_masks on an unpruned model",
            lambda: lostprune.remove_masks(Tiny()),
            "ok",
            check=lambda m: None,
        ),
        # slice_model
        C("slice_model(None)", lambda: lostprune.slice_model(None), "error", ("model",)),
        C("slice_model of an unpruned model", lambda: lostprune.slice_model(Tiny()), "warn", ("no channel",)),
        C(
            "slice_model example_input wrong channels",
            lambda: lostprune.slice_model(prune(method="ft").model, torch.randn(1, 1, 8, 8)),
            "error",
            ("example_input",),
        ),
        C(
            "slice_model remembers prune's example_input",
            lambda: lostprune.slice_model(prune(no_input_size(), example_input=S[:1], method="ft").model),
            "ok",
        ),
        C(
            "slice_model without any input (reloaded into a fresh model)",
            lambda: lostprune.slice_model(
                lostprune.load_pruned(
                    no_input_size(),
                    prune(no_input_size(), example_input=S[:1], method="ft").model.state_dict(),
                )
            ),
            "error",
            ("example_input",),
        ),
        C(
            "slice_model example_input a list",
            lambda: lostprune.slice_model(prune(method="ft").model, [1]),
            "error",
            ("example_input",),
        ),
        C(
            "slice_model of an ft model",
            lambda: lostprune.slice_model(prune(method="ft").model),
            "ok",
            check=sliced_equal,
        ),
        # sparse.convert
        C("convert(None)", lambda: lostprune.sparse.convert(None), "error", ("model",)),
        C("convert min_sparsity=2", lambda: convert(min_sparsity=2), "error", ("min_sparsity",)),
        C("convert min_sparsity='high'", lambda: convert(min_sparsity="high"), "error", ("min_sparsity",)),
        C("convert rounds=0", lambda: convert(rounds=0), "error", ("rounds",)),
        C("convert layers=['nope']", lambda: convert(layers=["nope"]), "error", ("nope",)),
        C(
            "convert example_input wrong channels",
            lambda: convert(example_input=torch.randn(1, 1, 8, 8)),
            "error",
            ("example_input",),
        ),
        C("convert an unpruned model", lambda: convert(Tiny()), "ok", check=lambda m: None),
        # io
        C(
            "load_network missing file",
            lambda: lpio.load_network(TMP / "missing.pt"),
            "error",
            ("missing.pt",),
        ),
        C("load_network text file", lambda: lpio.load_network(text_file()), "error", ("notes.pt",)),
        C("load_network empty file", lambda: lpio.load_network(empty_file()), "error", ("empty.pt",)),
        C("load_network plain state_dict", lambda: lpio.load_network(state_dict_file()), "error", ("sd.pt",)),
        C("load_network a directory", lambda: lpio.load_network(TMP), "error", ("directory",)),
        C(
            "load_network unknown network",
            lambda: lpio.load_network(unknown_network_file()),
            "error",
            ("no_such_net",),
        ),
        C(
            "load_network device='nope'",
            lambda: lpio.load_network(
                lpio.save_network(TMP / "n2.pt", models.create("small_cnn"), network="small_cnn"),
                device="nope",
            ),
            "error",
            ("device", "nope"),
        ),
        C(
            "save_network(model=None)",
            lambda: lpio.save_network(TMP / "x.pt", None, network="small_cnn"),
            "error",
            ("model",),
        ),
        C(
            "save_network unknown network name",
            lambda: lpio.save_network(TMP / "y.pt", Tiny(), network="tiny"),
            "error",
            ("network",),
        ),
        C("save/load round trip of a pruned net", round_trip, "ok", check=masks_restored),
    ]


def _shape_pass(model):
    from lostprune.core.accounting import output_positions

    output_positions(model, torch.randn(1, *model.input_size))
    return model


def _nan_model():
    model = Tiny()
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = math.nan
    return model


# ----------------------------------------------------------------------------- running
def _raised_by_lostprune(exc: BaseException) -> bool:
    """A deliberate error: the innermost frame is a ``raise`` statement in lostprune."""
    frames = traceback.extract_tb(exc.__traceback__)
    return (
        bool(frames)
        and frames[-1].filename.startswith(PACKAGE)
        and (frames[-1].line or "").startswith("raise")
    )


def classify(case: Case) -> tuple[str, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = case.call()
        except Exception as exc:  # noqa: BLE001 — the survey's point
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            named = any(n.lower() in str(exc).lower() for n in case.names)
            if case.expect == "ok":
                return ("acceptable" if named or _raised_by_lostprune(exc) else "obscure"), message
            if named:
                return "clear", message
            return ("acceptable" if _raised_by_lostprune(exc) else "obscure"), message
    texts = [str(w.message) for w in caught]
    if case.expect == "error":
        return "silently wrong", "no error" + (f" (warned: {texts[0][:80]})" if texts else "")
    if case.expect == "warn":
        hit = next((t for t in texts if any(n.lower() in t.lower() for n in case.names)), None)
        return ("clear", f"warned: {hit[:100]}") if hit else ("silently wrong", "no warning")
    problem = case.check(result) if case.check else None
    return ("silently wrong", problem) if problem else ("clear", "correct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print every case, not only the bad ones"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    counts: Counter = Counter()
    all_cases = cases()
    for case in all_cases:
        outcome, message = classify(case)
        counts[outcome] += 1
        if args.verbose or outcome in ("obscure", "silently wrong"):
            print(f"{outcome:<15} {case.id:<45} {message[:150]}")
    print(
        f"\n{len(all_cases)} inputs: "
        + ", ".join(f"{counts[k]} {k}" for k in ("clear", "acceptable", "obscure", "silently wrong"))
    )


if __name__ == "__main__":
    sys.exit(main())
