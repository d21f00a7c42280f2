"""Tied weights: one Parameter used by several layers is one prunable tensor with one mask,
counted once, and stays tied through pruning, state_dict round trips and further pruning.
A module registered under two names is one layer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import lostprune
from lostprune.core.accounting import output_positions
from lostprune.datapass import sensitivity_pass
from lostprune.ops import sensitivity as sensitivity_ops


class TiedPair(nn.Module):
    """Two Linear layers sharing one weight (bias apart), then a head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.head = nn.Linear(16, 4)
        self.input_size = (16,)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


class TiedEmbedding(nn.Module):
    """A language-model tie: the output layer's weight is the embedding table."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(32, 16)
        self.hidden = nn.Linear(16, 16)
        self.out = nn.Linear(16, 32, bias=False)
        self.out.weight = self.emb.weight
        nn.init.normal_(self.emb.weight, std=0.1)  # the scale of the Linear weights: WT keeps some of each

    def forward(self, tokens):
        return self.out(torch.relu(self.hidden(self.emb(tokens))))


class Reused(nn.Module):
    """One Conv2d registered under two names, called twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.again = self.conv
        self.fc = nn.Linear(4, 2)
        self.input_size = (4, 6, 6)

    def forward(self, x):
        return self.fc(self.again(torch.relu(self.conv(x))).mean((2, 3)))


S = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
LABELED = torch.utils.data.TensorDataset(
    S, torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(2))
)
SHARED, HEAD = 16 * 16, 4 * 16


def assert_tied(model: nn.Module) -> None:
    assert model.a.weight_orig is model.b.weight_orig
    assert model.a.weight_mask is model.b.weight_mask
    assert torch.equal(model.a.weight, model.b.weight)


@pytest.mark.parametrize("method, data", [("wt", None), ("random", None), ("sipp", S), ("snip", LABELED)])
def test_a_tied_weight_is_one_tensor_with_one_mask(method, data):
    result = lostprune.prune(TiedPair(), method, 0.5, data=data, progress=False)
    model, stats = result.model, result.stats
    assert set(result.masks) == {"a", "head"}  # one mask for the shared tensor
    assert_tied(model)
    assert stats.prunable_params == SHARED + HEAD  # counted once
    assert stats.total_params == sum(p.numel() for p in model.parameters())
    zeros = int((model.a.weight == 0).sum()) + int((model.head.weight == 0).sum())
    assert stats.removed_params == zeros
    assert [(s.name, s.shared_with) for s in stats.layers] == [("a", ("b",)), ("head", ())]
    if method != "random":  # global methods hit the budget exactly (random: per layer, rounded)
        assert zeros == (SHARED + HEAD) - round(0.5 * (SHARED + HEAD))
    # both uses compute over the kept weights (one position each for a Linear on N x 16)
    kept_a = int(model.a.weight_mask.sum())
    assert stats.flops_pruned == 2 * kept_a + int(model.head.weight_mask.sum())
    assert stats.flops_dense == 2 * SHARED + HEAD


def test_tie_survives_copies_round_trips_and_further_pruning():
    first = lostprune.prune(TiedPair(), "wt", 0.5, progress=False).model
    assert_tied(copy.deepcopy(first))
    loaded = lostprune.load_pruned(TiedPair(), first.state_dict())
    assert_tied(loaded)
    assert torch.equal(loaded.a.weight_mask, first.a.weight_mask)
    second = lostprune.prune(first, "wt", 0.8, progress=False)
    assert_tied(second.model)
    assert not bool((second.model.a.weight_mask > first.a.weight_mask).any())  # nothing revived
    x = S[:4]
    with torch.no_grad():
        assert torch.allclose(second.model(x), lostprune.remove_masks(copy.deepcopy(second.model))(x))
    plain = lostprune.remove_masks(second.model)
    assert plain.a.weight is plain.b.weight


def test_tied_weight_scores_take_every_use():
    """SiPP: the max over S of each use's sensitivity, as if both uses were one layer's calls."""
    model = TiedPair().eval()
    inputs = {}
    hooks = [
        getattr(model, n).register_forward_hook(lambda m, args, out, n=n: inputs.__setitem__(n, args[0]))
        for n in ("a", "b")
    ]
    with torch.no_grad():
        model(S)
    for h in hooks:
        h.remove()
    want = torch.maximum(
        *(sensitivity_ops.weight_sensitivity_reference(inputs[n], model.a.weight) for n in ("a", "b"))
    )
    got = sensitivity_pass(model, S, layers=["a"], progress=False)["a"]
    torch.testing.assert_close(got, want)
    # both layers selected: one score, shared
    both = sensitivity_pass(model, S, layers=["a", "b"], progress=False)
    assert both["a"] is both["b"]


def test_tied_embedding_follows_the_pruned_classifier():
    result = lostprune.prune(
        TiedEmbedding(), "wt", 0.5, example_input=torch.zeros(1, 5, dtype=torch.long), progress=False
    )
    model, stats = result.model, result.stats
    assert torch.equal(model.emb(torch.arange(32)), model.out.weight)  # the embedding reads the pruned table
    assert stats.total_params == sum(p.numel() for p in model.parameters())
    zeros = int((model.out.weight == 0).sum()) + int((model.hidden.weight == 0).sum())
    assert stats.removed_params == zeros and zeros > 0


@pytest.mark.parametrize("method", ["ft", "pfp"])
def test_structured_methods_refuse_tied_weights_naming_both(method):
    with pytest.raises(ValueError, match=r"layers 'a' and 'b' share one weight Parameter"):
        lostprune.prune(TiedPair(), method, 0.5, data=S, example_input=S[:1], progress=False)


def test_selecting_one_use_of_a_tied_weight_is_refused():
    with pytest.raises(ValueError, match=r"'a' and 'b' share one weight Parameter .* only 'a' is selected"):
        lostprune.prune(TiedPair(), "wt", 0.5, exclude=["b"], progress=False)


def test_module_under_two_names_is_one_layer_and_shape_passes_leave_it_real():
    model = Reused()
    output_positions(model, torch.randn(1, 4, 6, 6))
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    result = lostprune.prune(model, "wt", 0.5, progress=False)
    assert result.model.conv is result.model.again
    assert not any(t.is_meta for t in result.model.parameters())
    assert result.stats.prunable_params == 4 * 4 * 9 + 2 * 4
    assert [s.name for s in result.stats.layers] == ["conv", "fc"]
    # called twice: both calls compute over the kept weights
    kept = int(result.masks["conv"].sum())
    assert result.stats.flops_pruned == 2 * 36 * kept + int(result.masks["fc"].sum())
