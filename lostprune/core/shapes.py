"""Forward passes that only need shapes: parameters swapped for meta tensors (no arithmetic,
no copy of the model), with the plain tensor attributes that forward hooks rewrite (the
masked weights of nn.utils.prune) restored afterwards."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch import Tensor


@contextmanager
def meta_parameters(module: nn.Module):
    """Inside, every parameter and buffer of ``module`` is a meta tensor of the same shape."""
    from torch.nn.utils.stateless import _reparametrize_module

    # One entry per (owning module, attribute): a module registered under two names is
    # swapped (and restored) once — under its first name — or its second swap saves the first's
    # meta tensor as the "original" and the module keeps meta weights. One meta tensor per
    # tensor (ties stay tied). One walk over the modules: this runs twice per prune + slice, and
    # per-tensor path lookups cost more than the meta pass's convolutions on small models.
    meta: dict[str, Tensor] = {}
    made: dict[int, Tensor] = {}
    cached = []
    for path, owner in module.named_modules():
        prefix = f"{path}." if path else ""
        for tensors in (owner._parameters, owner._buffers):
            for attr, t in tensors.items():
                if t is not None:
                    if id(t) not in made:
                        made[id(t)] = torch.empty_like(t, device="meta")
                    meta[prefix + attr] = made[id(t)]
        cached += [(owner, k, v) for k, v in owner.__dict__.items() if isinstance(v, Tensor)]
    try:
        with _reparametrize_module(module, meta):
            yield
    finally:
        for owner, key, value in cached:
            owner.__dict__[key] = value


# Modules that act per element (channel dropout: per channel): the output has the input's
# shape and dtype, and channel c of the output reads channel c of the input only. The
# dependency graph passes channels through them (structure/op_tables.py).
ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)

# Modules whose output has their input's shape and dtype. A shape-only pass on meta tensors
# passes their input through: BN's meta kernel alone decomposes into dozens of Python-level
# ops, most of the time of a ResNet's meta pass. Exact types only (a subclass may reshape).
SHAPE_KEEPING_MODULES = frozenset(
    {
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.GroupNorm,
        nn.LayerNorm,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
        *ELEMENTWISE_MODULES,
    }
)


def _same(input: Tensor) -> Tensor:
    return input


@contextmanager
def shape_keeping_skipped(module: nn.Module):
    """Inside, the shape-keeping submodules of ``module`` return their input (hooks still run)."""
    skipped = [
        m for m in module.modules() if type(m) in SHAPE_KEEPING_MODULES and "forward" not in m.__dict__
    ]
    for m in skipped:
        m.forward = _same
    try:
        yield
    finally:
        for m in skipped:
            m.__dict__.pop("forward", None)


def shape_only_forward(module: nn.Module, x: Tensor, call: Callable | None = None) -> None:
    """Run ``call(x)`` (default ``module(x)``) for its shapes, in eval mode and without
    gradients: on meta tensors when every op supports them (shape-keeping modules skipped),
    else for real."""
    call = call or module
    training = {m: m.training for m in module.modules()}
    module.eval()  # never update BN statistics
    try:
        with torch.no_grad():
            try:
                with meta_parameters(module), shape_keeping_skipped(module):
                    call(x.to("meta"))
            except Exception:  # noqa: BLE001 - an op without a meta kernel: pay for one real pass
                call(x)
    finally:
        for m, mode in training.items():  # per module: a frozen BN stays frozen
            m.training = mode


def input_problem(module: nn.Module, x: Tensor, call: Callable | None = None) -> str | None:
    """Why ``module`` cannot run on ``x`` — one real pass in eval mode without gradients (the
    batch as given: pass one sample to keep it cheap) — or None when it can."""
    call = call or module
    training = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            call(x)
    except Exception as exc:  # noqa: BLE001 — any failure is the answer
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0] if lines else ''}"
    finally:
        for m, mode in training.items():
            m.training = mode
    return None


@contextmanager
def blame_input(module: nn.Module, x: Tensor, name: str):
    """Inside: work that runs ``module`` on ``x`` (a shape pass, a trace). When it fails and
    the module cannot run on ``x`` at all, the error is re-raised as a ValueError naming the
    argument ``name`` and the shapes; any other failure passes through unchanged."""
    try:
        yield
    except Exception as exc:
        problem = input_problem(module, x)
        if problem is None:
            raise
        raise ValueError(
            f"the model cannot run on {name} (shape {tuple(x.shape)}, {x.dtype}): {problem}"
        ) from exc


def check_input(module: nn.Module, x: Tensor, name: str = "example_input") -> None:
    """Raise a ValueError naming ``name`` when ``module`` cannot run on one sample of ``x``
    (a shape-only pass: cheap)."""
    with blame_input(module, x[:1], name):
        shape_only_forward(module, x[:1])
