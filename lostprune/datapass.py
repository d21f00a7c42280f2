"""The data pass: stream a data set S through a model and collect, per prunable layer, the
sensitivities of docs/methods.md §Sensitivities.

Each scored layer's input reaches the fused sensitivity ops batch by batch (never image by
image) and folds into the layer's running maximum, so memory stays at one batch of activations
plus one weight-sized result per layer. A module called several times in one forward gets every
call's input as further data points, and so does every module sharing a scored layer's weight
Parameter (tied weights: one tensor, one score).

Scoring computes z+ and z- of every unit at every position, and the layer's output is z+ - z-.
So on the CPU, where the compiled ops return it (``with_output``), a plain Conv2d / Linear runs
*in* its scoring op for the pass: its forward is swapped for one that takes the output from the
op (plus bias) instead of convolving a second time, which saves about one convolution per layer
(docs/methods.md §Sensitivities). Elsewhere (CUDA, the references, float16 / bfloat16, autocast,
subclasses with their own forward) the layer runs its own forward and its input is scored after
it (by a forward hook, or by the swapped forward itself). With the compiled ops the pass's
``nn.MaxPool2d`` modules pool through lostprune's vectorized kernel (``ops.max_pool2d``; torch's
NCHW CPU pool is scalar): the same values, 6–9 % less of a ResNet18 pass on one thread.

    scores = sensitivity_pass(model, S, kind="weight")   # {layer name: tensor like its weight}
    scores = sensitivity_pass(model, S, kind="channel")  # {layer name: one value per input channel}
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from ._progress import bar_disabled
from .core.layers import prunable_layers, weight_parameter
from .data.batches import iter_inputs
from .ops import sensitivity as sensitivity_ops
from .ops._build import use_kernel
from .ops.pool import max_pool2d_module

KINDS = ("weight", "channel")
# Which implementation scores a layer: the compiled ops (falling back to the vectorized
# reference without a compiler), or one of the references (for cross-checks and benchmarks).
IMPLEMENTATIONS = {
    "kernel": (sensitivity_ops.weight_sensitivity, sensitivity_ops.channel_sensitivity),
    "reference": (
        sensitivity_ops.weight_sensitivity_reference,
        sensitivity_ops.channel_sensitivity_reference,
    ),
    "literal": (sensitivity_ops.weight_sensitivity_literal, sensitivity_ops.channel_sensitivity_literal),
}
SUPPORTED_LAYERS = (nn.Conv2d, nn.Linear)


def _check_layers(layers: dict[str, nn.Module]) -> None:
    bad = [
        f"{name!r} ({type(module).__name__})"
        for name, module in layers.items()
        if not isinstance(module, SUPPORTED_LAYERS)
    ]
    if bad:
        raise TypeError(
            "the sensitivity pass supports Conv2d and Linear layers; unsupported: " + ", ".join(bad)
        )


def check_reduce(reduce: str) -> str:
    if reduce not in sensitivity_ops.REDUCTIONS:
        raise ValueError(f"reduce must be one of {sensitivity_ops.REDUCTIONS}, got {reduce!r}")
    return reduce


def _layer_score(
    module: nn.Module,
    x: Tensor,
    kind: str,
    reduce: str,
    running: Tensor | None,
    implementation: str,
    with_output: bool = False,
):
    weight = module.weight  # the masked weight for pruned layers (set by their forward pre-hook)
    if isinstance(module, nn.Linear):
        conv = {}
    else:
        padding = module.padding
        if module.padding_mode != "zeros":  # reflect / replicate / circular: pad like the module does
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            padding = 0
        conv = dict(stride=module.stride, padding=padding, dilation=module.dilation, groups=module.groups)
    weight_op, channel_op = IMPLEMENTATIONS[implementation]
    extra = {"with_output": True} if with_output else {}
    if kind == "weight":
        return weight_op(x, weight, reduce=reduce, running=running, **conv, **extra)
    return channel_op(x, weight, running=running, **conv, **extra)


_FUSED_OPS = {"weight": "weight_sensitivity", "channel": "channel_sensitivity"}


def _may_run_in_op(module: nn.Module) -> bool:
    """A plain Conv2d / Linear forward (not a subclass's own) whose weight is on the CPU: the
    modules whose forward the pass swaps (never a CUDA module, which DataParallel may replicate)."""
    return (
        type(module).forward in (nn.Conv2d.forward, nn.Linear.forward)
        and "forward" not in module.__dict__
        and module.weight.device.type == "cpu"
    )


def _runs_in_op(module: nn.Module, x, kind: str, implementation: str) -> bool:
    """Whether this call of a swapped ``module`` can take its output from the scoring op: a
    float32 / float64 input of the weight's dtype on the CPU, no autocast, and the compiled CPU
    kernel (elsewhere the op would only run the conv itself)."""
    return (
        implementation == "kernel"
        and isinstance(x, Tensor)
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and module.weight.dtype == x.dtype
        and not torch.is_autocast_enabled("cpu")
        and use_kernel(_FUSED_OPS[kind], x.device)
    )


def _add_bias(module: nn.Module, y: Tensor) -> Tensor:
    bias = module.bias
    if bias is None:
        return y
    return y.add_(bias if isinstance(module, nn.Linear) else bias.view(-1, 1, 1))


def collect_sensitivities(
    model: nn.Module,
    batches: Iterable[Tensor],
    layers: dict[str, nn.Module],
    *,
    kind: str = "weight",
    reduce: str = "mean",
    progress: bool | None = None,
    total: int | None = None,
    implementation: str = "kernel",
    fused: bool = True,
) -> dict[str, Tensor]:
    """Run ``model`` (in eval mode, without gradients) on every batch and return the layers'
    sensitivities, max over all samples and all calls. ``batches`` must already sit on the
    model's device; ``total`` (samples) sizes the progress bar. ``implementation``:
    ``"kernel"`` (the compiled ops), ``"reference"`` or ``"literal"`` (see lostprune.ops.sensitivity).
    ``fused``: layers take their output from their scoring op where it can give it (see the
    module doc); False runs every layer's own forward (the same scores up to rounding)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    check_reduce(reduce)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {tuple(IMPLEMENTATIONS)}, got {implementation!r}")
    _check_layers(layers)
    scores: dict[str, Tensor] = {}
    batch_index = 0

    def score(name: str, module: nn.Module, x, with_output: bool = False):
        if not isinstance(x, Tensor):
            raise TypeError(f"layer {name!r} was called without a tensor input")
        try:
            result = _layer_score(module, x, kind, reduce, scores.get(name), implementation, with_output)
        except (RuntimeError, ValueError) as exc:
            if "NaN or inf" in str(exc):
                raise ValueError(
                    f"layer {name!r} received NaN or inf activations in batch {batch_index} "
                    "(the model's forward produced them: check the weights and the input "
                    "normalization)"
                ) from None
            raise
        if not with_output:
            scores[name] = result
            return None
        scores[name], y = result
        return _add_bias(module, y)

    def make_hook(name: str):
        def hook(module, args, output):
            score(name, module, args[0] if args else None)

        return hook

    def make_forward(name: str, module: nn.Module):
        """The swapped forward: the output from the scoring op where it can give it, else the
        module's own forward, then its input scored (as the hook does for the others)."""
        own = module.forward

        def forward(*args, **kwargs):
            if len(args) == 1 and not kwargs and _runs_in_op(module, args[0], kind, implementation):
                return score(name, module, args[0], with_output=True)
            y = own(*args, **kwargs)
            score(name, module, args[0] if args else None)
            return y

        return forward

    # every Conv2d / Linear using a scored weight Parameter feeds that weight's scores (tied
    # weights are scored over all their uses), under the first scored layer's name
    key_of: dict[int, str] = {}
    for name, module in layers.items():
        key_of.setdefault(id(weight_parameter(module)), name)
    users = {
        module: key_of[id(weight_parameter(module))]
        for module in [*layers.values(), *model.modules()]
        if isinstance(module, SUPPORTED_LAYERS) and id(weight_parameter(module)) in key_of
    }
    swapped = {module for module in users if fused and _may_run_in_op(module)}
    for module in swapped:
        module.forward = make_forward(users[module], module)
    # with the compiled ops only; exact type (a subclass may pool differently), and no forward
    # of the caller's own
    pools = (
        [m for m in model.modules() if type(m) is nn.MaxPool2d and "forward" not in m.__dict__]
        if implementation == "kernel"
        else []
    )
    for pool in pools:
        pool.forward = functools.partial(max_pool2d_module, pool)
    handles = [
        module.register_forward_hook(make_hook(key)) for module, key in users.items() if module not in swapped
    ]
    was_training = model.training
    model.eval()  # never update BatchNorm statistics while scoring
    seen = 0
    try:
        with (
            torch.no_grad(),
            tqdm(
                total=total,
                unit="img",
                desc=f"{kind} sensitivities",
                disable=bar_disabled(progress),
                leave=False,
            ) as bar,
        ):
            for batch_index, x in enumerate(batches):  # noqa: B007 - the hooks name the batch
                model(x)
                seen += x.shape[0]
                bar.update(x.shape[0])
    finally:
        for handle in handles:
            handle.remove()
        for module in swapped:
            del module.forward
        for pool in pools:
            del pool.forward
        model.train(was_training)
    if seen < 2:
        raise ValueError(
            f"data has {seen} input; sensitivities need at least 2 (a held-out set S, 256 images "
            "by default; docs/methods.md §Sensitivities)"
        )
    missing = [name for name in layers if key_of[id(weight_parameter(layers[name]))] not in scores]
    if missing:
        raise RuntimeError(
            f"layers {missing} were never called in the model's forward; they cannot be "
            "scored (exclude them with exclude=...)"
        )
    return {name: scores[key_of[id(weight_parameter(module))]] for name, module in layers.items()}


def sample_count(data) -> int | None:
    """Samples in ``data`` when known up front (a tensor, a map-style Dataset or a DataLoader over one)."""
    if isinstance(data, Tensor):
        return data.shape[0]
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, Dataset) and not isinstance(dataset, IterableDataset):
        try:
            return len(dataset)
        except TypeError:
            return None
    return None


def _on_device(batches: Iterator[Tensor], device: torch.device) -> Iterator[Tensor]:
    for index, x in enumerate(batches):
        if x.device != device:
            raise ValueError(
                f"data: batch {index} is on {x.device} but the model is on {device}; move the "
                "data (or the model) to one device"
            )
        yield x


def sensitivity_pass(
    model: nn.Module,
    data,
    *,
    kind: str = "weight",
    reduce: str = "mean",
    layers=None,
    exclude=None,
    batch_size: int = 64,
    progress: bool | None = None,
    implementation: str = "kernel",
    fused: bool = True,
) -> dict[str, Tensor]:
    """Sensitivities of ``model``'s prunable layers on ``data`` (S).

    Args:
        model: any ``nn.Module``; its Conv2d and Linear layers are scored (select with
            ``layers`` / ``exclude`` as in :func:`lostprune.prune`).
        data: S — a tensor, a Dataset, a DataLoader or an iterable of batches or (inputs, labels)
            pairs, on the model's device; at least 2 samples.
        kind: ``"weight"`` (SiPP: a tensor shaped like each weight) or ``"channel"`` (PFP: one
            value per input channel).
        reduce: for ``kind="weight"``, ``"mean"`` (the paper's) or ``"max"`` over positions.
        batch_size: batch size used when ``data`` is a tensor or a Dataset.
        implementation: ``"kernel"`` (default), or ``"reference"`` / ``"literal"`` to run the
            PyTorch references instead (slow; for cross-checks).
        fused: on the CPU, let each Conv2d / Linear take its output from its scoring op
            instead of convolving a second time (default); False for comparisons.

    Returns:
        {layer name: sensitivities}, on the model's device.
    """
    selected = prunable_layers(model, layers, exclude)
    device = next(iter(selected.values())).weight.device
    total = sample_count(data)
    if total is not None and total < 2:
        raise ValueError(f"data has {total} input; sensitivities need at least 2")
    batches = _on_device(iter_inputs(data, "data", batch_size=batch_size), device)
    return collect_sensitivities(
        model,
        batches,
        selected,
        kind=kind,
        reduce=reduce,
        progress=progress,
        total=total,
        implementation=implementation,
        fused=fused,
    )
