"""``copy_model``: what ``copy.deepcopy`` makes of a module tree, three times faster.

``prune`` copies the model on every call (a study prunes hundreds of times), and deepcopy
spends most of a small network's copy in the generic pickling protocol: per module a
``__reduce_ex__``, a ``_reconstruct`` and a dozen empty hook dicts copied the same way. Here a
plain module (no custom copy or pickling protocol) is rebuilt from its ``__getstate__`` as
deepcopy does, atoms and empty containers are taken as they are, and everything else —
tensors (deepcopy keeps views of one storage sharing it), hooks, user attributes, any module
with its own protocol — goes to ``copy.deepcopy`` with the same ``memo``, so aliases stay
aliases across both paths."""

from __future__ import annotations

import collections
import copy
import copyreg
from typing import Any, TypeVar

import torch
import torch.nn as nn

M = TypeVar("M", bound=nn.Module)

# Values deepcopy returns as they are (its _deepcopy_atomic), plus torch's immutable atoms.
_ATOMS = frozenset(
    {int, float, bool, complex, str, bytes, type(None), torch.dtype, torch.device, torch.memory_format}
)
_EMPTIABLE = frozenset({dict, set, collections.OrderedDict})
_SUBMODULE_DICTS = frozenset({"_parameters", "_buffers", "_modules"})
_MISSING = object()
_PLAIN: dict[type, bool] = {}
_DEFAULT_PROTOCOL: tuple[Any, ...] = (object.__reduce_ex__, object.__reduce__)


def _plain(cls: type) -> bool:
    """Whether deepcopy copies instances of ``cls`` through the default object protocol (new
    object, state from ``__getstate__``, ``__setstate__``): nothing of its own on the way."""
    plain = _PLAIN.get(cls)
    if plain is None:
        protocol: tuple[Any, ...] = (cls.__reduce_ex__, cls.__reduce__)
        plain = _PLAIN[cls] = (
            all(mine is default for mine, default in zip(protocol, _DEFAULT_PROTOCOL))
            and getattr(cls, "__deepcopy__", None) is None
            and cls not in copyreg.dispatch_table
            and not copyreg._slotnames(cls)  # type: ignore[attr-defined]
            and not issubclass(cls, (list, dict))  # deepcopy also copies their items
        )
    return plain


def _copy_value(value: Any, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in _ATOMS or (kind is tuple and all(type(v) in _ATOMS for v in value)):
        return value
    if kind in _EMPTIABLE and not value:  # memoized too: one container shared stays shared
        new = memo.get(id(value), _MISSING)
        if new is _MISSING:
            new = memo[id(value)] = kind()
        return new
    if isinstance(value, nn.Module):
        return copy_model(value, memo)
    return copy.deepcopy(value, memo)


def copy_model(model: M, memo: dict[int, Any] | None = None) -> M:
    """``copy.deepcopy(model, memo)``: the same copy (types, attributes, tensors, hooks, shared
    submodules and tied tensors shared the same way; entries of ``memo`` used as deepcopy uses
    them), made faster."""
    memo = {} if memo is None else memo
    done = memo.get(id(model), _MISSING)
    if done is not _MISSING:
        return done
    cls = type(model)
    state = model.__getstate__() if _plain(cls) else None
    if type(state) is not dict:  # a protocol of its own, or a state that is not a plain dict
        return copy.deepcopy(model, memo)
    new = cls.__new__(cls)
    memo[id(model)] = new  # before the state: a module reachable from itself
    copied = {}
    for key, value in state.items():
        if key in _SUBMODULE_DICTS and type(value) is dict:
            copied[key] = {
                name: None if item is None else _copy_value(item, memo) for name, item in value.items()
            }
        else:
            copied[key] = _copy_value(value, memo)
    new.__setstate__(copied)
    return new
