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
from torch.overrides import TorchFunctionMode

from ..ops._conv_args import conv_out_hw

# nn.Module's own attributes (_parameters, hooks, training …): never a plain tensor
MODULE_INTERNALS = frozenset(nn.Module().__dict__)


@contextmanager
def meta_parameters(module: nn.Module, modules: list[nn.Module] | None = None):
    """Inside, every parameter and buffer of ``module`` is a meta tensor of the same shape.
    ``modules``: ``list(module.modules())`` where the caller has it."""
    # Swapped in the modules' own dicts, as torch.func's reparametrization does, without its
    # per-tensor path lookups (they cost more than the meta pass's convolutions on small
    # models; this runs twice per prune + slice). modules() yields a module registered under
    # two names once, so it is swapped and restored once; one meta tensor per tensor keeps
    # ties tied.
    made: dict[int, Tensor] = {}
    swapped: list[tuple[dict, str, Tensor]] = []
    cached: list[tuple[nn.Module, str, Tensor]] = []
    try:
        for owner in module.modules() if modules is None else modules:
            both: tuple[dict[str, Any], dict[str, Any]] = (owner._parameters, owner._buffers)
            for tensors in both:
                for attr, t in tensors.items():
                    if t is not None:
                        if id(t) not in made:
                            made[id(t)] = torch.empty_like(t, device="meta")
                        swapped.append((tensors, attr, t))
                        tensors[attr] = made[id(t)]
            attributes = owner.__dict__
            cached += [  # (half the cost of testing every entry)
                (owner, k, v)
                for k in attributes.keys() - MODULE_INTERNALS
                if isinstance(v := attributes[k], Tensor)
            ]
        yield
    finally:
        for tensors, attr, t in reversed(swapped):
            tensors[attr] = t
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


def _conv2d_shape(module: nn.Conv2d, input: Tensor) -> Tensor:
    """The output of ``nn.Conv2d`` on ``input`` (its shape: torch's meta kernel is Python,
    several times the cost) where every size is plainly valid; anything else — a size torch
    rejects, other padding modes, dtypes or layouts — goes to the conv itself, to be computed
    or rejected by torch."""
    weight = module.weight
    if not (
        input.dim() == 4
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
        and input.dtype == weight.dtype
        and input.shape[1] == weight.shape[1] * module.groups
        and weight.shape[0] % module.groups == 0
        and (module.bias is None or module.bias.shape == (weight.shape[0],))
        and (_plainly_contiguous(input) or _one_pixel(input, weight))
        and weight.is_contiguous()
    ):
        return type(module).forward(module, input)
    sizes = conv_out_hw(input.shape[2:], weight.shape[2:], module.stride, module.padding, module.dilation)
    if min(sizes) <= 0:
        return type(module).forward(module, input)
    return input.new_empty((input.shape[0], weight.shape[0], *sizes))


def _linear_shape(module: nn.Linear, input: Tensor) -> Tensor:
    """The output of ``nn.Linear`` on ``input`` (its meta kernel with a bias decomposes into
    Python ops, about 200 µs); as ``_conv2d_shape``, anything not plainly valid goes to
    torch."""
    weight = module.weight
    if not (
        input.dim() >= 1
        and input.shape[-1] == weight.shape[1]
        and input.dtype == weight.dtype
        and (
            module.bias is None
            or (module.bias.shape == (weight.shape[0],) and module.bias.dtype == weight.dtype)
        )
    ):
        return type(module).forward(module, input)
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


LAYER_RULES: dict[type, Callable] = {nn.Conv2d: _conv2d_shape, nn.Linear: _linear_shape}


# Binary elementwise ops as they reach a torch-function mode (``x + y`` in a forward or a
# trace's node arrives as ``Tensor.add``; ``torch.add(x, y)`` as itself): on meta tensors torch
# runs each through its Python reference, about 90 µs (a squeeze-excitation's scale times its
# input: a quarter of a MobileNetV3 shape pass).
BINARY_ELEMENTWISE = frozenset(
    {torch.add, torch.sub, torch.mul, torch.div, Tensor.add, Tensor.sub, Tensor.mul, Tensor.div}
)
# ``x += y``: the result is ``x`` itself, which must have the broadcast shape.
INPLACE_BINARY_ELEMENTWISE = frozenset({Tensor.add_, Tensor.sub_, Tensor.mul_, Tensor.div_})


def binary_elementwise_shape(fn: Callable, args: tuple, kwargs: dict) -> Tensor | None:
    """``fn(*args, **kwargs)`` for a ``BINARY_ELEMENTWISE`` function on two meta tensors of
    one floating dtype, where one of them has the broadcast shape and is plainly contiguous:
    an empty meta tensor of the result's shape, dtype and layout; for an
    ``INPLACE_BINARY_ELEMENTWISE`` one, where the first (contiguous) has the broadcast shape:
    that tensor. None for anything else (scalars, other dtypes or layouts, shapes that do not
    broadcast): torch decides."""
    inplace = fn in INPLACE_BINARY_ELEMENTWISE
    if not (inplace or fn in BINARY_ELEMENTWISE) or kwargs or len(args) != 2:
        return None
    a, b = args
    if not (type(a) is Tensor and type(b) is Tensor and a.is_meta and b.is_meta):
        return None
    if a.dtype != b.dtype or not a.dtype.is_floating_point:
        return None
    big: Tensor | None = a
    if a.shape != b.shape:
        try:
            shape = torch.broadcast_shapes(a.shape, b.shape)
        except RuntimeError:  # shapes that do not broadcast: torch's own error
            return None
        big = a if a.shape == shape else None if inplace else b if b.shape == shape else None
    if big is None or not (_plainly_contiguous(big) and a.is_contiguous() and b.is_contiguous()):
        return None
    return a if inplace else big.new_empty(big.shape)


class _BinaryShapes(TorchFunctionMode):
    """Binary elementwise ops called inside a forward on meta tensors: their shape by
    ``binary_elementwise_shape``, everything else as torch does it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = binary_elementwise_shape(func, args, kwargs)
        return func(*args, **kwargs) if result is None else result


def _one_pixel(input: Tensor, weight: Tensor) -> bool:
    """One image of 1x1 pixels (a squeeze-excitation's pooled input), it and the weight
    strided as contiguous tensors: contiguous and channels-last alike by their sizes, but
    their strides tell torch's kernels to keep the contiguous layout."""
    return (
        input.shape[0] == 1
        and input.shape[2:] == (1, 1)
        and input.stride() == _contiguous_strides(input.shape)
        and weight.stride() == _contiguous_strides(weight.shape)
    )


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


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
        return functools.partial(_unintercepted, _adaptive_pool_shape, m)
    if type(m) in LAYER_RULES:
        return functools.partial(_unintercepted, LAYER_RULES[type(m)], m)
    return None


def _unintercepted(rule: Callable, module: nn.Module, input: Tensor) -> Tensor:
    """``rule(module, input)`` outside ``_BinaryShapes``: a rule's own queries of sizes and
    layouts need no interception, and each would cost a Python call (a tensor subclass keeps
    its torch function)."""
    if type(input) is not Tensor:
        return rule(module, input)
    with torch._C.DisableTorchFunction():
        return rule(module, input)


@contextmanager
def shape_rules(module: nn.Module, modules: list[nn.Module] | None = None):
    """Inside, the shape-keeping submodules of ``module`` return their input and its adaptive
    pools, ``nn.Conv2d`` and ``nn.Linear`` layers an empty tensor of their output's shape,
    computing nothing (hooks still run): for meta tensors only, where only shapes are wanted.
    ``modules`` as in ``meta_parameters``."""
    every = module.modules() if modules is None else modules
    ruled = [(m, rule) for m in every if (rule := _shape_rule(m)) is not None]
    for m, rule in ruled:
        m.forward = rule
    try:
        yield
    finally:
        for m, _ in ruled:
            m.__dict__.pop("forward", None)


@contextmanager
def eval_mode(modules: list[nn.Module]):
    """Inside, every module of ``modules`` (a model's ``modules()``) is in eval mode; after,
    each is back in its own mode (a frozen BN stays frozen)."""
    training = [m.training for m in modules]
    plain = all(type(m).train is nn.Module.train for m in modules)
    if plain:  # what train(False) does, without its recursion and per-module __setattr__
        for m in modules:
            m.__dict__["training"] = False
    else:  # a train() of its own decides what eval mode means
        modules[0].eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, training):
            if plain:
                m.__dict__["training"] = mode
            else:
                m.training = mode


def shape_only_forward(module: nn.Module, x: Tensor, call: Callable | None = None) -> None:
    """Run ``call(x)`` (default ``module(x)``) for its shapes, in eval mode and without
    gradients: on meta tensors when every op supports them (``shape_rules``: shape-keeping
    modules and adaptive pools compute nothing), else for real."""
    call = call or module
    modules = list(module.modules())
    with eval_mode(modules), torch.no_grad():  # eval: never update BN statistics
        try:
            with meta_parameters(module, modules), shape_rules(module, modules), _BinaryShapes():
                call(x.to("meta"))
        except Exception:  # noqa: BLE001 - an op without a meta kernel: pay for one real pass
            call(x)


def input_problem(module: nn.Module, x: Tensor, call: Callable | None = None) -> str | None:
    """Why ``module`` cannot run on ``x`` — one real pass in eval mode without gradients (the
    batch as given: pass one sample to keep it cheap) — or None when it can."""
    call = call or module
    try:
        with eval_mode(list(module.modules())), torch.no_grad():
            call(x)
    except Exception as exc:  # noqa: BLE001 — any failure is the answer
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0] if lines else ''}"
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
