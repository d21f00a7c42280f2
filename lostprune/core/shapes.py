"""Forward passes that only need shapes: parameters swapped for meta tensors (no arithmetic,
no copy of the model), with the plain tensor attributes that forward hooks rewrite (the
masked weights of nn.utils.prune) restored afterwards."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

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


# Adaptive pools (number of pooled dimensions): the output's shape follows from output_size
# alone, and their meta kernels are Python references too (a fifth of a meta pass of a
# squeeze-excitation network such as MobileNetV3). Exact types only, as above.
ADAPTIVE_POOLS = {
    nn.AdaptiveAvgPool1d: 1,
    nn.AdaptiveAvgPool2d: 2,
    nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2,
    nn.AdaptiveMaxPool3d: 3,
}


def _same(input: Tensor) -> Tensor:
    return input


def _adaptive_pool_shape(module: nn.Module, input: Tensor) -> Tensor:
    """The output of an adaptive pool on ``input`` (its shape, nothing computed) where input
    and output_size are plainly valid and the input plainly contiguous; anything else (a rank,
    an output_size, an empty input or a layout that torch treats specially) goes to torch's
    own meta kernel, as without the rule."""
    dims = ADAPTIVE_POOLS[type(module)]
    given: Any = module.output_size  # an int, or a tuple / list of ints and None
    size = tuple(given) if isinstance(given, (tuple, list)) else (given,) * dims
    plain = (
        input.dim() in (dims + 1, dims + 2)
        and input.numel() > 0
        and len(size) == dims
        and all(isinstance(s, int) and s > 0 for s in size if s is not None)
        # None ("the input's size") only inside a tuple, and not for 1-d pools
        and (None not in size or (isinstance(given, (tuple, list)) and dims > 1))
    )
    if not (plain and _plainly_contiguous(input)):
        return type(module).forward(module, input)
    pooled = [input.shape[input.dim() - dims + i] if s is None else s for i, s in enumerate(size)]
    shape = (*input.shape[: input.dim() - dims], *pooled)
    return input.new_empty(shape)


def _plainly_contiguous(t: Tensor) -> bool:
    """Contiguous and not also channels-last (one channel, 1x1 maps): the layout every pooling
    kernel keeps. Other layouts differ between kernels; their meta kernels decide."""
    channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())
    return t.is_contiguous() and not (
        channels_last is not None and t.is_contiguous(memory_format=channels_last)
    )


def _shape_rule(m: nn.Module) -> Callable | None:
    if "forward" in m.__dict__:  # someone replaced it already
        return None
    if type(m) in SHAPE_KEEPING_MODULES:
        return _same
    if type(m) in ADAPTIVE_POOLS and not getattr(m, "return_indices", False):
        return functools.partial(_adaptive_pool_shape, m)
    return None


@contextmanager
def shape_rules(module: nn.Module):
    """Inside, the shape-keeping submodules of ``module`` return their input and its adaptive
    pools an empty tensor of their output's shape, computing nothing (hooks still run): for
    meta tensors only, where only shapes are wanted."""
    ruled = [(m, rule) for m in module.modules() if (rule := _shape_rule(m)) is not None]
    for m, rule in ruled:
        m.forward = rule
    try:
        yield
    finally:
        for m, _ in ruled:
            m.__dict__.pop("forward", None)


def shape_only_forward(module: nn.Module, x: Tensor, call: Callable | None = None) -> None:
    """Run ``call(x)`` (default ``module(x)``) for its shapes, in eval mode and without
    gradients: on meta tensors when every op supports them (``shape_rules``: shape-keeping
    modules and adaptive pools compute nothing), else for real."""
    call = call or module
    training = {m: m.training for m in module.modules()}
    module.eval()  # never update BN statistics
    try:
        with torch.no_grad():
            try:
                with meta_parameters(module), shape_rules(module):
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
