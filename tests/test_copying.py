"""copy_model makes what copy.deepcopy makes: same types, values, hooks, and the same
sharing (submodules, tied tensors, views of one storage, entries of a given memo)."""

from __future__ import annotations

import copy
import functools
import types

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from small_torchvision import create as small_model
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

import lostprune
from lostprune.core.copying import copy_model
from lostprune.core.masks import is_pruned, settle_masks


def _same(a, b, pairs: dict[int, int], storages: dict[int, int], path: str = "model") -> None:
    """``a`` and ``b`` are equal object graphs: equal values and types, and an object reached
    twice in ``a`` is reached as one object in ``b`` (and tensor storages likewise)."""
    if id(a) in pairs:
        assert pairs[id(a)] == id(b), f"{path}: sharing differs"
        return
    pairs[id(a)] = id(b)
    assert type(a) is type(b), f"{path}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert (a.shape, a.stride(), a.dtype, a.requires_grad) == (
            b.shape,
            b.stride(),
            b.dtype,
            b.requires_grad,
        )
        assert a.storage_offset() == b.storage_offset(), path
        assert torch.equal(a, b), path
        key, value = a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()
        assert storages.setdefault(key, value) == value, f"{path}: storage sharing differs"
        _same(a.__dict__, b.__dict__, pairs, storages, f"{path}.__dict__")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} vs {list(b)}"
        for key in a:
            _same(a[key], b[key], pairs, storages, f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, pairs, storages, f"{path}[{i}]")
    elif isinstance(a, (set, frozenset)):
        assert a == b, path  # modules hold sets of names only
    elif isinstance(a, functools.partial):  # deepcopy rebuilds partials
        assert a.func is b.func, path
        _same((a.args, a.keywords), (b.args, b.keywords), pairs, storages, path)
    elif isinstance(a, types.MethodType):  # deepcopy binds the function to the copied object
        assert a.__func__ is b.__func__, path
        _same(a.__self__, b.__self__, pairs, storages, path)
    elif hasattr(a, "__dict__") and not isinstance(a, (type, types.FunctionType)):
        _same(vars(a), vars(b), pairs, storages, path)
    else:  # atoms, functions, classes: deepcopy returns them as they are
        assert a == b, path


def assert_like_deepcopy(model: nn.Module, memo_of=None) -> nn.Module:
    reference = copy.deepcopy(model, memo_of() if memo_of else None)
    ours = copy_model(model, memo_of() if memo_of else None)
    _same(reference, ours, {}, {})
    if memo_of is None:  # and it is a copy: no tensor of the original inside
        originals = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        copies = {t.untyped_storage().data_ptr() for t in [*ours.parameters(), *ours.buffers()]}
        assert not originals & copies
        for original, copied in zip(model.modules(), ours.modules()):  # no container shared either
            for key, value in vars(original).items():
                if isinstance(value, (dict, list, set, nn.Module, torch.Tensor)):
                    assert vars(copied)[key] is not value, key
    return ours


@pytest.mark.parametrize("name", ["regnet", "mobilenet_v3", "inception", "vit"])
def test_torchvision_models_copy_as_deepcopy(name):
    model = small_model(name)
    ours = assert_like_deepcopy(model)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), ours.eval()
    assert torch.equal(model(x), ours(x))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.head = nn.Linear(6, 4)
        self.head.weight = nn.Parameter(self.embed.weight.detach().t().contiguous())
        self.out = nn.Linear(4, 4)
        self.out.weight = self.head.weight  # tied Parameter
        self.again = self.embed  # one module under two names
        base = torch.arange(12.0).reshape(3, 4)
        self.register_buffer("row0", base[0])  # views of one storage: deepcopy keeps it one
        self.register_buffer("row2", base[2])
        self.extra = [self.embed.weight, {"scale": 2.0}, (1, "a")]  # a plain attribute aliasing a Parameter
        self.cache = self.head.cache = {}  # one empty container under two modules
        self.nothing = None

    def forward(self, x):
        return self.out(self.head(self.again(x)) + self.row0)


def test_sharing_is_kept_as_deepcopy_keeps_it():
    model = Tied()
    ours = assert_like_deepcopy(model)
    assert ours.out.weight is ours.head.weight and ours.again is ours.embed
    assert ours.extra[0] is ours.embed.weight
    assert ours.cache is ours.head.cache and ours.cache is not model.cache
    assert ours.row0.untyped_storage().data_ptr() == ours.row2.untyped_storage().data_ptr()
    with torch.no_grad():
        ours.embed.weight.zero_()
    assert model.embed.weight.abs().sum() > 0


def test_hooks_pruning_and_modes_are_copied():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    torch_prune.l1_unstructured(model[0], "weight", amount=0.5)
    calls = []
    model[2].register_forward_hook(functools.partial(lambda tag, *args: calls.append(tag), "hook"))
    model[1].eval()
    model[0].weight_orig.requires_grad_(False)
    ours = assert_like_deepcopy(settle_masks(model))  # as prune copies
    assert ours[1].training is False and ours[0].training is True
    hook = next(iter(ours[0]._forward_pre_hooks.values()))
    assert hook is not next(iter(model[0]._forward_pre_hooks.values()))
    ours(torch.randn(1, 3, 5, 5))
    assert calls == ["hook"]
    assert torch.equal(ours[0].weight, ours[0].weight_orig * ours[0].weight_mask)


def test_a_given_memo_is_used_as_deepcopy_uses_it():
    """slice_model's use: the user's tensors entered in the memo stay shared, a tensor mapped
    to None comes out None."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    model[1].cached = torch.ones(2)

    def memo():
        return {id(p): p for p in model.parameters()} | {id(model[1].cached): None}

    ours = assert_like_deepcopy(model, memo)
    assert all(a is b for a, b in zip(model.parameters(), ours.parameters()))
    assert ours[1].cached is None


class OwnCopy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def __deepcopy__(self, memo):
        new = OwnCopy()
        new.copied_by_own_protocol = True
        return new


class Slotted(nn.Linear):
    __slots__ = ("note",)


def test_modules_with_their_own_protocol_are_copied_by_deepcopy():
    parent = nn.Sequential(OwnCopy(), nn.Linear(2, 2))
    ours = copy_model(parent)
    assert ours[0].copied_by_own_protocol

    slotted = Slotted(2, 2)
    slotted.note = "kept"
    assert hasattr(copy_model(slotted), "note") == hasattr(copy.deepcopy(slotted), "note")

    traced = fx.symbolic_trace(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    ours = copy_model(traced)  # a GraphModule copies itself (a class of its own per copy)
    assert (
        isinstance(ours, fx.GraphModule)
        and ours.code == traced.code
        and getattr(ours, "0") is not getattr(traced, "0")
    )

    weighted = nn.Linear(3, 3)
    parametrize.register_parametrization(weighted, "weight", nn.Identity())
    ours = copy_model(weighted)  # a parametrized class copies itself
    assert torch.equal(ours.weight, weighted.weight) and parametrize.is_parametrized(ours)


def test_a_module_reaching_itself():
    model = nn.Sequential(nn.Linear(2, 2))
    object.__setattr__(model[0], "owner", model)  # not registered: a plain back reference
    ours = assert_like_deepcopy(model)
    assert ours[0].owner is ours


def test_prune_leaves_the_users_model_alone():
    model = small_model("regnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lostprune.prune(model, "wt", 0.5)
    assert not any(is_pruned(m, "weight") for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.model is not model


class TupleState(nn.Linear):
    """A module whose state is not a dict (deepcopy passes it to __setstate__ as it is)."""

    def __getstate__(self):
        return ("packed", self.__dict__.copy())

    def __setstate__(self, state):
        self.__dict__.update(state[1])
        self.unpacked = True


def test_a_state_that_is_not_a_dict_goes_to_deepcopy():
    ours = copy_model(nn.Sequential(TupleState(2, 3)))
    assert ours[0].unpacked and ours[0].weight.shape == (3, 2)
