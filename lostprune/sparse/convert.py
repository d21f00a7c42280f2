"""``convert()``: swap pruned Conv2d / Linear layers for SparseConv2d / SparseLinear where
that is faster (docs/architecture.md, Kernels).

Each candidate layer (sparsity >= ``min_sparsity``) is timed dense and sparse on an input of
the shape it sees in the model — one forward pass of ``example_input`` records the shapes —
and is converted only when the sparse kernel wins. Without an example input (and no
``model.input_size`` to make one) a cost model decides: convert at or above the sparsity
where the kernels break even on typical layers.

With ``fuse=True`` (the default) the model is also rewritten for inference (``fusion.py``):
eval-mode BatchNorms fold into the conv before them (sparse or dense), and the ReLU and
residual add after a sparse conv run in its kernel's epilogue; calibration then times each
layer with its epilogue on both sides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._progress import bar_disabled
from ..core.copying import copy_model
from ..core.masks import effective_weight
from ..core.shapes import check_input
from ..ops.sparse import pack_weight
from ..structure.folded_conv import FoldedConv2d
from ..timing import time_call
from . import autotune
from . import fusion as fx_fusion
from .modules import SparseConv2d, SparseLinear

# Sparsity from which the kernels beat oneDNN on typical layers at batch 1 (CPU, see
# benchmarks/results/sparse.md); the cost model used when no input shape is known.
BREAK_EVEN_SPARSITY = {"conv": 0.7, "linear": 0.7}


@dataclass
class LayerDecision:
    """What convert() did with one layer, and why."""

    name: str
    kind: str  # "conv" or "linear"
    shape: tuple[int, ...]
    sparsity: float
    converted: bool
    reason: str
    dense_ms: float | None = None
    sparse_ms: float | None = None
    fused: str = ""  # ops fused into the layer, e.g. "bn+add+relu" (sparse) or "bn" (dense)

    @property
    def speedup(self) -> float | None:
        if self.dense_ms is None or self.sparse_ms is None or self.sparse_ms == 0:
            return None
        return self.dense_ms / self.sparse_ms


@dataclass
class ConversionReport:
    """One decision per conv / linear layer that convert() considered."""

    layers: list[LayerDecision] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # model-wide, e.g. why nothing was fused

    @property
    def converted(self) -> list[str]:
        return [d.name for d in self.layers if d.converted]

    def summary(self) -> str:
        lines = [
            (
                f"{'layer':<32} {'kind':<6} {'sparsity':>8} {'dense ms':>9} {'sparse ms':>9} {'speedup':>7} "
                f"{'fused':<12} decision"
            )
        ]
        for d in self.layers:
            dense = f"{d.dense_ms:9.3f}" if d.dense_ms is not None else f"{'-':>9}"
            sparse = f"{d.sparse_ms:9.3f}" if d.sparse_ms is not None else f"{'-':>9}"
            speed = f"{d.speedup:6.2f}x" if d.speedup is not None else f"{'-':>7}"
            verdict = ("sparse" if d.converted else "dense") + f" ({d.reason})"
            lines.append(
                f"{d.name:<32} {d.kind:<6} {d.sparsity:8.1%} {dense} {sparse} {speed} {d.fused or '-':<12} "
                f"{verdict}"
            )
        lines.append(f"{len(self.converted)} of {len(self.layers)} layers sparse")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def _unsupported(module: nn.Module) -> str | None:
    if not effective_weight(module).is_floating_point():
        return "weight is not floating point"
    if isinstance(module, FoldedConv2d):
        return "FoldedConv2d (a sliced model's border term of folded constants; the sparse kernel has none)"
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
        if module.padding == "same" and any(
            (d * (k - 1)) % 2 or s != 1 for k, d, s in zip(module.kernel_size, module.dilation, module.stride)
        ):
            return "asymmetric 'same' padding"
    return None


def _record_input_shapes(model: nn.Module, names: Iterable[str], example_input) -> dict[str, torch.Size]:
    """Input shape of each named layer during one forward pass (eval mode, no grad)."""
    shapes: dict[str, torch.Size] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:

        def hook(module, args, name=name):
            if args and isinstance(args[0], Tensor):
                shapes.setdefault(name, args[0].shape)

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        with fx_fusion.eval_pass(model):
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _best_ms(
    fn: Callable[[], object],
    other: Callable[[], object],
    rounds: int,
    min_time: float,
    clock: Callable[[], float],
) -> tuple[float, float]:
    """Best ms per call of fn and other over alternating rounds: other processes only ever
    slow a call down, so the minimum is the fairest estimate of each."""
    fn(), other()
    a, b = [], []
    for _ in range(rounds):
        a.append(time_call(fn, repeat=1, warmup=0, min_time=min_time, clock=clock) * 1e3)
        b.append(time_call(other, repeat=1, warmup=0, min_time=min_time, clock=clock) * 1e3)
    return min(a), min(b)


def _time_layer(
    dense: Callable[..., Tensor],
    sparse: nn.Module,
    shape: torch.Size,
    rounds: int,
    min_time: float,
    residual: bool = False,
) -> tuple[float, float]:
    """(dense ms, sparse ms) on a random input of ``shape`` (and a random residual of the
    output's shape when the epilogue adds one), synchronizing CUDA."""
    weight = sparse.values
    x = torch.randn(shape, device=weight.device, dtype=weight.dtype)
    cuda = weight.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # One CPU thread: its CPU time (both sides run in this thread), immune to the scheduler
    # of a shared machine; otherwise wall time.
    clock = time.thread_time if not cuda and torch.get_num_threads() == 1 else time.perf_counter
    with torch.inference_mode():
        args = (x, torch.randn_like(dense(x))) if residual else (x,)
        return _best_ms(
            lambda: (dense(*args), sync()), lambda: (sparse(*args), sync()), rounds, min_time, clock
        )


def _dense_call(
    module: nn.Module, weight: Tensor, bias: Tensor | None, relu: bool = False
) -> Callable[..., Tensor]:
    """The layer run dense, then its epilogue as separate ops (what it costs left dense)."""
    if isinstance(module, nn.Linear):
        return lambda x: F.linear(x, weight, bias)

    def call(x, residual=None):
        out = F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
        if residual is not None:
            out = out + residual
        return F.relu(out) if relu else out

    return call


def _autotune_key(
    kind: str, module: nn.Module, weight: Tensor, nnz: int, shape: torch.Size, relu: bool, residual: bool
) -> str:
    conv = (
        {
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "groups": module.groups,
        }
        if kind == "conv"
        else {}
    )
    return autotune.layer_key(
        kind,
        weight.shape,
        nnz,
        shape,
        relu=relu,
        residual=residual,
        dtype=weight.dtype,
        device=weight.device.type,
        **conv,
    )


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


REPORT_ATTRIBUTE = "sparse_conversion"


def report(model: nn.Module) -> ConversionReport | None:
    """The decisions ``convert()`` made for ``model`` (None if it did not convert it);
    ``print(report(model))`` shows the table."""
    return getattr(model, REPORT_ATTRIBUTE, None)


def _prepare_fusion(
    model: nn.Module, example_input, inplace: bool
) -> tuple[torch.fx.GraphModule | None, str | None]:
    """The traced model with shapes recorded, or None and why fusion is skipped."""
    if inplace:
        return None, "not fused: fusion builds a new module (torch.fx), use inplace=False"
    if model.training:
        return (
            None,
            "not fused: model in training mode (BatchNorm uses batch statistics); call model.eval() first",
        )
    try:
        gm = fx_fusion.trace(model)
    except Exception as error:  # noqa: BLE001  (any tracing failure: the model stays unfused)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, f"not fused: torch.fx cannot trace the model ({type(error).__name__}: {first})"
    if example_input is not None:
        fx_fusion.propagate_shapes(gm, example_input)
    return gm, None


def convert(
    model: nn.Module,
    min_sparsity: float = 0.2,
    *,
    example_input=None,
    calibrate: bool = True,
    layers: Iterable[str] | None = None,
    inplace: bool = False,
    rounds: int = 3,
    min_time: float = 0.01,
    progress: bool | None = None,
    fuse: bool = True,
    cache: bool = True,
) -> nn.Module:
    """Replace sparse Conv2d / Linear layers of ``model`` by SparseConv2d / SparseLinear where
    that is faster; the others stay dense.

    - ``model``: any module; masks in ``torch.nn.utils.prune`` format (``weight_orig`` +
      ``weight_mask``) or plain zeros in the weights. Deep-copied unless ``inplace``.
    - ``min_sparsity``: layers with a smaller fraction of zero weights stay dense, untimed;
      above it the timing decides (lightly pruned 1x1 convs can win: oneDNN runs NCHW
      activations with reorders).
    - ``example_input``: a batch (or tuple of model arguments) like the ones the model will
      see; each candidate is timed dense and sparse at its input shape (batch size matters).
      Defaults to one random sample of ``model.input_size`` when the model has it.
    - ``calibrate=False``, or no input shape: convert where the sparsity reaches
      ``BREAK_EVEN_SPARSITY`` (and ``min_sparsity``).
    - ``cache``: reuse the timings of a layer timed before (same shapes, nonzeros, epilogue,
      dtype and threads, on these kernels) and record new ones, in the autotune cache beside
      the compiled kernels (``lostprune.sparse.autotune``); ``False`` always measures.
    - ``layers``: restrict to these layer names.
    - ``fuse``: fold eval-mode BatchNorms into the conv before them (sparse or dense) and run
      the ReLU / residual add after a sparse conv in its kernel's epilogue; CPU max-pooling
      runs vectorized (``FastMaxPool2d``). The result is then a ``torch.fx.GraphModule`` (the model's
      plain attributes such as ``input_size`` are kept). Skipped, with a note in the report,
      in training mode, with ``inplace=True`` or when torch.fx cannot trace the model.

    Returns the converted model; its outputs equal the dense model's up to float rounding.
    ``report(model)`` gives one ``LayerDecision`` per layer (``print`` shows the table).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    if (
        isinstance(min_sparsity, bool)
        or not isinstance(min_sparsity, (int, float))
        or not 0.0 <= min_sparsity <= 1.0
    ):
        raise ValueError(f"convert: min_sparsity must lie in [0, 1] (a number), got {min_sparsity!r}")
    if rounds < 1 or min_time <= 0:
        raise ValueError(f"convert: rounds must be >= 1 and min_time > 0, got {rounds} and {min_time}")
    if isinstance(example_input, Tensor):
        check_input(model, example_input, "example_input")
    model = model if inplace else copy_model(model)
    candidates = {name: m for name, m in model.named_modules() if _kind(m) is not None}
    if layers is not None:
        wanted = list(layers)
        missing = [n for n in wanted if n not in candidates]
        if missing:
            raise KeyError(f"convert: no Conv2d / Linear layer named {', '.join(map(repr, missing))}")
        candidates = {n: candidates[n] for n in wanted}

    decisions: list[LayerDecision] = []
    timed: dict[str, LayerDecision] = {}
    for name, module in candidates.items():
        weight = effective_weight(module).detach()
        sparsity = float((weight == 0).sum()) / max(1, weight.numel())
        decision = LayerDecision(name, _kind(module), tuple(weight.shape), sparsity, False, "")
        decisions.append(decision)
        problem = _unsupported(module)
        if problem is not None:
            decision.reason = f"unsupported: {problem}"
        elif sparsity < min_sparsity:
            decision.reason = f"sparsity below min_sparsity={min_sparsity:g}"
        else:
            timed[name] = decision

    if example_input is None and (calibrate or fuse) and hasattr(model, "input_size"):  # fusion: shapes
        parameter = next(model.parameters(), None)
        example_input = torch.randn(
            1,
            *model.input_size,
            device=parameter.device if parameter is not None else None,
            dtype=parameter.dtype if parameter is not None else None,
        )
    shapes = (
        _record_input_shapes(model, timed, example_input)
        if calibrate and example_input is not None and timed
        else {}
    )
    notes: list[str] = []
    gm, note = _prepare_fusion(model, example_input, inplace) if fuse else (None, None)
    notes += [note] if note else []
    fusions = fx_fusion.plan(gm) if gm is not None else {}
    replacements: dict[str, nn.Module] = {}
    for decision in decisions:
        fusion = fusions.get(decision.name)
        if fusion is None:
            continue
        decision.reason += "".join(f"; {n}" for n in fusion.notes) if decision.name not in timed else ""
        decision.fused = fusion.label(sparse=False)
        if fusion.bn is not None and decision.name not in timed:  # stays dense: fold its BN anyway
            replacements[decision.name] = fx_fusion.bn_folded_conv(candidates[decision.name], fusion.bn)

    from tqdm.auto import tqdm

    for name, decision in tqdm(
        timed.items(), desc="sparse convert", disable=bar_disabled(progress) or not timed
    ):
        module = candidates[name]
        fusion = fusions.get(name)
        weight = effective_weight(module).detach()
        bias = module.bias.detach() if module.bias is not None else None
        if fusion is not None and fusion.bn is not None:
            weight, bias = fx_fusion.fold_batchnorm(weight, bias, fusion.bn)
        relu = fusion is not None and fusion.relu
        if decision.kind == "conv":
            sparse = SparseConv2d(
                pack_weight(weight),
                bias,
                module.stride,
                module.padding,
                module.dilation,
                module.groups,
                relu=relu,
            )
        else:
            sparse = SparseLinear(pack_weight(weight), bias)
        shape = shapes.get(name)
        if shape is None:
            threshold = max(min_sparsity, BREAK_EVEN_SPARSITY[decision.kind])
            decision.converted = decision.sparsity >= threshold
            why = (
                ""
                if not calibrate
                else " (no example_input to calibrate)"
                if example_input is None
                else " (layer not reached by example_input)"
            )
            decision.reason = f"cost model: sparsity {'>=' if decision.converted else '<'} {threshold:g}{why}"
        else:
            residual = fusion is not None and fusion.residual is not None
            key = _autotune_key(decision.kind, module, weight, sparse.nnz, shape, relu, residual)
            cached = autotune.lookup(key) if cache else None
            if cached is None:
                decision.dense_ms, decision.sparse_ms = _time_layer(
                    _dense_call(module, weight, bias, relu), sparse, shape, rounds, min_time, residual
                )
                if cache:
                    autotune.record(key, decision.dense_ms, decision.sparse_ms)
            else:
                decision.dense_ms, decision.sparse_ms = cached
            decision.converted = decision.sparse_ms < decision.dense_ms
            decision.reason = ("cached: " if cached is not None else "calibrated: ") + (
                "sparse faster" if decision.converted else "dense faster"
            )
        if fusion is not None:
            decision.fused = fusion.label(sparse=decision.converted)
            decision.reason += "".join(f"; {n}" for n in fusion.notes)
        if decision.converted:
            replacements[name] = sparse.train(module.training)
        elif fusion is not None and fusion.bn is not None:
            replacements[name] = fx_fusion.dense_conv(module, weight, bias, fusion.bn)
    if gm is not None:
        model_out = fx_fusion.rewrite(gm, fusions, replacements)
        fx_fusion.keep_attributes(model, model_out)
        model = model_out
    else:
        for name, new in replacements.items():
            _set_module(model, name, new)
    setattr(
        model, REPORT_ATTRIBUTE, ConversionReport(decisions, notes)
    )  # a plain attribute: not in state_dict
    return model
