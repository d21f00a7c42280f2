"""Reuse of a model's trace: ``prune`` builds the dependency graph, ``slice_model`` and the
accounting need the same one a moment later (on a copy of the model), and so does the next
pruning step of a cascade.

``structure_key`` summarizes everything the trace and the channel groups depend on — module
names and types, their plain attributes (conv strides, groups, flags a forward may branch
on), parameter and buffer shapes (pruned ``weight_orig`` counted as ``weight``), training
modes, the example input's shape, ``leaf_modules`` — so a stored trace is reused only while
the structure is unchanged. A model holding anything the key cannot summarize safely (an
arbitrary object attribute, a closure, a forward hook) gets no key and is always traced anew.
"""

from __future__ import annotations

import types
from collections import OrderedDict

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils import prune as torch_prune

from ..core.shapes import MODULE_INTERNALS

# the example input lostprune.prune remembers on a pruned model, for slice_model
EXAMPLE_INPUT = "lostprune_example_input"
_MODULE_INTERNALS = MODULE_INTERNALS | {EXAMPLE_INPUT}
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.memory_format)


class _Unkeyable(Exception):
    """A value the key cannot summarize safely."""


_PLAIN_TYPES = frozenset(_PLAIN)


def _summary(value):
    if type(value) in _PLAIN_TYPES or isinstance(value, _PLAIN):
        return value
    if type(value) is tuple and all(type(v) in _PLAIN_TYPES for v in value):  # conv sizes: common
        return "tuple", value
    if isinstance(value, (tuple, list, set, frozenset)):
        items = tuple(_summary(v) for v in value)
        return type(value).__name__, (
            tuple(sorted(items, key=repr)) if isinstance(value, (set, frozenset)) else items
        )
    if isinstance(value, dict):
        return "dict", tuple((_summary(k), _summary(v)) for k, v in value.items())
    if isinstance(value, Tensor):  # a plain tensor attribute: its shape
        return "tensor", tuple(value.shape), value.dtype
    if isinstance(value, types.MethodType):  # e.g. an instance-level forward: the function
        value = value.__func__
    if isinstance(value, types.FunctionType) and value.__closure__ is None:
        return value
    if isinstance(value, (type, types.BuiltinFunctionType)):
        return value
    raise _Unkeyable


def _masked(module: nn.Module) -> set[str]:
    """Names of pruning's masked tensors (``weight`` for ``weight_orig`` + ``weight_mask``)."""
    return {
        name[:-5]
        for name in module._parameters
        if name.endswith("_orig") and f"{name[:-5]}_mask" in module._buffers
    }


def _tensors(module: nn.Module, masked: set[str]) -> tuple:
    """(name, shape, dtype) of parameters and buffers, pruning's weight_orig/weight_mask
    (``masked``) counted as the plain weight."""
    entries = []
    for name, tensor in module._parameters.items():
        if tensor is not None:
            entries.append((name[:-5] if name[:-5] in masked else name, tuple(tensor.shape), tensor.dtype))
    for name, tensor in module._buffers.items():
        if tensor is not None and not (name.endswith("_mask") and name[:-5] in masked):
            entries.append((name, tuple(tensor.shape), tensor.dtype))
    return tuple(sorted(entries))


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks) or any(
        not isinstance(h, (torch_prune.BasePruningMethod, torch_prune.PruningContainer))
        for h in module._forward_pre_hooks.values()
    )


def structure_key(model: nn.Module, example_input: Tensor, leaf_modules=()) -> tuple | None:
    """What the trace of ``model`` on ``example_input`` depends on, or None where the model
    holds something this key cannot summarize."""
    parts: list = [tuple(example_input.shape), example_input.dtype, example_input.device.type]
    try:
        parts.append(_summary(tuple(leaf_modules)))
        for name, module in model.named_modules(remove_duplicate=False):
            if _has_hooks(module):
                return None
            # pruning's masked weight attribute is counted with the parameters (_tensors)
            masked = _masked(module)
            attributes = tuple(
                (k, v if type(v) in _PLAIN_TYPES else _summary(v))
                for k, v in module.__dict__.items()
                if k not in _MODULE_INTERNALS and k not in masked
            )
            parts.append((name, type(module), module.training, attributes, _tensors(module, masked)))
    except _Unkeyable:
        return None
    return tuple(parts)


class TraceCache:
    """The values stored under the last ``size`` structure keys, whatever model object they
    came from: a trace and its channel groups depend on the structure only, so a copy of a
    model (``prune``'s working copy, ``slice_model``'s, the next cycle of a cascade) or another
    instance of the same architecture reuses them. Holds no model."""

    def __init__(self, size: int = 16):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, key: tuple | None):
        """The value stored under ``key``, else None."""
        if key is None or key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: tuple | None, value) -> None:
        if key is None:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
