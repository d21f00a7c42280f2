"""Physical channel slicing (docs/methods.md §Slicing): a structurally masked model → a smaller dense model
with the same function.

    sliced = lostprune.slice_model(result.model)       # result = lostprune.prune(model, "ft", 0.5)
    print(sliced.slice_report.summary())

What goes: every channel the dependency graph counts as structurally removed
(``DependencyGraph.removed_channels``) — from producer rows, depthwise filters, BN entries and
consumer columns alike. A removed channel nobody reads is simply dropped. A removed channel
whose producers are all zero still carries a constant (its bias, then BN shift, activation…);
it is folded into each consumer: a bias where the consumer sees it uniformly, an exact
border-aware term (``FoldedConv2d``) under zero padding. Where the constant cannot be
determined (an op that does not preserve constants, a module reused with different inputs)
the channel is kept and a ``SlicingWarning`` says so.

All tensors of the new model — sliced or not — come out of one ``gather_channels`` call. The
model is copied (the user's model is never modified); modules keep their classes and are
resized in place, except zero-padded convs that need the border term (``FoldedConv2d``).
Folding uses eval-mode BN statistics: the sliced model equals the masked one in eval mode.
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils import prune as torch_prune

from ..core.accounting import output_positions
from ..core.masks import mask_factors, masked_parameters, nonzero_rows_and_columns
from ..ops import gather_channels
from .constants import input_constants
from .folded_conv import FoldedConv2d
from .granularity import channel_multiple, padded
from .graph import DEPTHWISE, IN, NORM, OUT, ChannelGroup, build_graph


class SlicingWarning(UserWarning):
    """Slicing kept something it was asked to remove, or had nothing to remove."""


@dataclass
class SliceReport:
    """What ``slice_model`` did. ``shapes``: parameter name → shape in the sliced model."""

    params_before: int
    params_after: int
    channels_removed: int = 0  # group channels dropped
    channels_folded: int = 0  # of those, constants folded into consumers
    channels_kept: int = 0  # removed channels slicing had to keep (see ``kept``)
    folded_layers: dict[str, str] = field(default_factory=dict)  # consumer -> "bias" / "border"
    kept: list[str] = field(default_factory=list)  # removed channels kept, with the reason
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Convolution work per sample (MACs of the sliced dense convs), and what the kernels really
    # compute with output channels padded to ``channel_multiple`` (``granularity.py``)
    conv_macs: int = 0
    conv_macs_padded: int = 0
    channel_multiple: int = 1
    unaligned: list[str] = field(default_factory=list)  # convs whose output channels are not a multiple
    # masked weights that stay, as zeros, in sliced conv / linear layers: a channel that one
    # layer dropped and another still reads or produces (the paper's per-layer FT / PFP)
    zeros_kept: int = 0

    @property
    def param_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def padding_share(self) -> float:
        """Fraction of the convolution kernels' work that falls on channel padding."""
        return 1.0 - self.conv_macs / self.conv_macs_padded if self.conv_macs_padded else 0.0

    def summary(self) -> str:
        borders = sum(kind == "border" for kind in self.folded_layers.values())
        text = (f"sliced: {self.params_before:,} → {self.params_after:,} parameters "
                f"(−{100 * self.param_reduction:.2f} %), {self.channels_removed:,} channels removed, "
                f"{self.channels_folded:,} constant channels folded into {len(self.folded_layers)} layers "
                f"({borders} with a border term)")
        if self.padding_share >= 0.05:
            text += (f"\n  {self.padding_share:.0%} of the convolution work runs on channel padding: "
                     f"{len(self.unaligned)} convs keep output channel counts that are not a multiple of "
                     f"{self.channel_multiple}, the kernels' channel tile on this device; prune with "
                     f"round_to='auto' to keep multiples of it")
        if self.zeros_kept:
            text += (f"\n  {self.zeros_kept:,} masked weights stay as zeros: their channels are still read or "
                     f"produced by another layer (per-layer pruning, the paper's FT / PFP); a group-aware "
                     f"variant (coupled='sum') removes whole channels")
        if self.kept:
            text += "\n  kept: " + "\n  kept: ".join(self.kept)
        return text


# --------------------------------------------------------------------------- the copy
def _dense_copy(model: nn.Module) -> tuple[nn.Module, set[int], dict[nn.Module, tuple[Tensor, Tensor]]]:
    """A copy of the module tree whose parameters and buffers are, for now, the user's own
    tensors (copying them here would copy every weight twice: the single gather at the end
    writes all new tensors). Pruning hooks are replaced by plain parameters holding
    ``orig * mask`` (see ``_masked_weight``). Returns the copy, the ids of the tensors shared
    with the user's model, and the live rows and columns of weights already known."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    memo = dict(shared)
    for module in model.modules():  # pruning's cached masked weights and hooks: replaced below
        for name in masked_parameters(module):
            cached = module.__dict__.get(name)
            if isinstance(cached, Tensor):
                memo[id(cached)] = None
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, (torch_prune.PruningContainer, torch_prune.BasePruningMethod)):
                memo[id(hook)] = hook  # dropped from the copy, never copied
    dense = copy.deepcopy(model, memo)
    shared_ids, live = set(shared), {}
    for module in dense.modules():
        names = masked_parameters(module)
        if not names:
            continue
        for name in names:
            weight, live_rows_and_columns = _masked_weight(module, name)
            orig = module._parameters.pop(f"{name}_orig")
            module._buffers.pop(f"{name}_mask")
            module.__dict__.pop(name, None)
            module.register_parameter(name, nn.Parameter(weight, requires_grad=orig.requires_grad))
            if live_rows_and_columns is not None:  # the user's raw weight itself: still shared
                shared_ids.add(id(module._parameters[name]))
                if name == "weight":
                    live[module] = live_rows_and_columns
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, (torch_prune.PruningContainer, torch_prune.BasePruningMethod)):
                del module._forward_pre_hooks[key]
    return dense, shared_ids, live


def _masked_weight(module: nn.Module, name: str) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """``orig * mask`` of a masked parameter — or ``orig`` itself, not a product, where the
    mask is a known 0/1 outer product (``outer_mask``) and ``orig`` is zero outside it
    already (no live row or column of ``orig`` outside the mask's): then with the live rows
    and columns found on the way."""
    orig, mask = getattr(module, f"{name}_orig"), getattr(module, f"{name}_mask")
    factors = mask_factors(mask) if orig.dim() >= 2 else None
    if factors is not None:
        rows, cols = (t.cpu() for t in nonzero_rows_and_columns(orig))
        if not (rows & ~factors[0]).any() and not (cols & ~factors[1]).any():
            return orig.detach(), (rows, cols)
    with torch.no_grad():
        return orig * mask, None


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if not name.endswith("_mask"))


# --------------------------------------------------------------------------- decisions
def _live_rows_and_columns(modules: dict[str, nn.Module], known: dict[nn.Module, tuple[Tensor, Tensor]]
                           ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per conv/linear layer: which weight rows and input columns hold a nonzero (one pass
    over the weights; a zero weight is a removed weight, masked or not). ``known``: those
    already found, per module."""
    rows, cols = {}, {}
    for name, module in modules.items():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            live_rows, live_cols = known.get(module) or nonzero_rows_and_columns(module.weight)
            rows[name], cols[name] = live_rows.cpu(), live_cols.cpu()
    return rows, cols


def _zero_padded(conv: nn.Conv2d) -> bool:
    """Whether the conv sees zeros at the borders (so a constant input is not uniform there)."""
    if conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(d * (k - 1) > 0 for d, k in zip(conv.dilation, conv.kernel_size))
    return any(p > 0 for p in conv.padding)


def _border_capable(conv: nn.Module) -> bool:
    return type(conv) in (nn.Conv2d, FoldedConv2d)


class _Decision:
    """Per group: which removed channels are dropped, and the constants to fold."""

    def __init__(self, modules: dict[str, nn.Module], rows: dict[str, Tensor], cols: dict[str, Tensor],
                 constants: dict[str, Tensor]):
        self.modules = modules
        self.rows, self.cols = rows, cols
        self.constants = constants
        self.kept: list[str] = []
        self.kept_channels = 0

    def alive(self, group: ChannelGroup) -> tuple[Tensor, Tensor | None]:
        alive_out = torch.zeros(group.size, dtype=torch.bool)
        alive_in = None
        for m in group.members:
            if m.role in (OUT, DEPTHWISE):
                alive_out |= self.rows[m.module][m.index].any(1) if m.module in self.rows else True
            elif m.role == IN:
                alive_in = torch.zeros(group.size, dtype=torch.bool) if alive_in is None else alive_in
                alive_in |= self.cols[m.module][m.index].any(1) if m.module in self.cols else True
        return alive_out, alive_in

    def unfoldable(self, group: ChannelGroup) -> tuple[Tensor, list[str]]:
        """Bool [size]: constant channels that cannot be folded into every consumer, and why
        (one reason per consumer that refuses)."""
        refused = torch.zeros(group.size, dtype=torch.bool)
        reasons = []
        for m in group.consumers:
            module = self.modules[m.module]
            reads = self.cols[m.module][m.index].any(1) if m.module in self.cols else torch.ones(group.size, dtype=torch.bool)
            values = self.constants.get(m.module)
            values = values[m.index] if values is not None else torch.full(tuple(m.index.shape), math.nan)
            unknown = reads & ~torch.isfinite(values).all(1)
            if unknown.any():
                reasons.append(f"its value at the input of '{m.module}' is not a constant slicing can determine "
                               "(it passes an op that does not preserve constants, or the layer runs on different "
                               "inputs)")
            border = torch.zeros(group.size, dtype=torch.bool)
            if isinstance(module, nn.Conv2d) and _zero_padded(module) and not _border_capable(module):
                border = reads & ~unknown & (values != 0).any(1)
                if border.any():
                    reasons.append(f"'{m.module}' is a {type(module).__name__} with zero padding "
                                   "(only nn.Conv2d and FoldedConv2d take a border term)")
            refused |= unknown | border
        return refused, reasons

    def dropped(self, group: ChannelGroup, removed: Tensor) -> Tensor:
        alive_out, alive_in = self.alive(group)
        constant = removed & ~alive_out
        if alive_in is not None:
            constant &= alive_in  # a channel nobody reads goes without folding
        drop = removed.clone()
        if constant.any():
            refused, reasons = self.unfoldable(group)
            refused &= constant
            if refused.any():
                drop &= ~refused
                self.kept_channels += int(refused.sum())
                self.kept.append(f"{int(refused.sum())} channels of group {group.id} ({_producer_names(group)}): "
                                 + "; ".join(reasons))
        if drop.all():  # a layer needs at least one channel: keep one, unchanged
            drop[0] = False
            self.kept_channels += 1
            self.kept.append(f"channel 0 of group {group.id} ({_producer_names(group)}): every channel of the "
                             "group was removed; one is kept so its layers keep a channel")
        return drop


def _producer_names(group: ChannelGroup) -> str:
    names = [m.module for m in group.producers]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


# --------------------------------------------------------------------------- the slice
def _fold_term(module: nn.Module, weight: Tensor, values: Tensor, columns: Tensor) -> Tensor | None:
    """Σ_j c_j · W[:, j] over the dropped constant columns: [out, kh, kw] or [out]; None if 0."""
    c = torch.zeros(weight.shape[1], dtype=torch.float64, device=weight.device)
    vals = values[columns.cpu()].to(c.device)
    c[columns.to(c.device)] = torch.nan_to_num(vals, nan=0.0)  # NaN only where the column is all zero
    if not bool((c != 0).any()):
        return None
    term = torch.einsum("oi...,i->o...", weight.detach().double(), c)
    return term if bool((term != 0).any()) else None


def slice_model(model: nn.Module, example_input: Tensor | None = None, *, leaf_modules=()) -> nn.Module:
    """A smaller dense copy of ``model`` without its structurally removed channels.

    Args:
        model: a structurally pruned model (masks in ``nn.utils.prune`` format, e.g.
            ``lostprune.prune(model, "ft", r).model``; zeroed weights count the same).
        example_input: a batch to trace the model on; defaults to ``model.input_size``.
        leaf_modules: module types or names the dependency graph treats as opaque.

    Returns a new ``nn.Module`` (no pruning hooks; the user's model is untouched) whose output
    equals the masked model's in eval mode within float32 rounding; ``.slice_report`` tells
    what was removed, folded and kept.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if example_input is None:
        size = getattr(model, "input_size", None)
        if size is None:
            raise ValueError("slice_model traces the model and needs an example input: pass "
                             "example_input=torch.randn(1, C, H, W) (or set model.input_size)")
        reference = next(itertools.chain(model.parameters(), model.buffers()), None)
        example_input = torch.zeros(1, *size, device=reference.device if reference is not None else None)
    if not isinstance(example_input, Tensor) or example_input.dim() < 2:
        raise ValueError("example_input must be a batch tensor (N x C x H x W or N x features)")
    params_before = _count_params(model)
    # masked layers: weights their masks keep (slicing drops only masked ones; the rest of a
    # sliced layer's weights are masked weights that stay, as zeros)
    pruned = {name: int(torch.count_nonzero(m.weight_mask)) for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and "weight" in masked_parameters(m)}

    dense, shared, live = _dense_copy(model)
    training = {m: m.training for m in dense.modules()}
    dense.eval()  # BN folds with running statistics; shape propagation never updates them
    try:
        graph = build_graph(dense, example_input[:1], leaf_modules, reuse_from=model)
        modules = graph.modules
        rows, cols = _live_rows_and_columns(modules, live)
        removed = {}
        for group in graph.groups:
            if group.prunable:
                gone = graph._removed(group, rows, cols)
                if gone.any():
                    removed[group.id] = gone
        report = SliceReport(params_before, params_before)
        if not removed:
            warnings.warn("slice_model: no channel is structurally removed (the model has no structural masks: "
                          "it is unpruned or pruned unstructured) — returning an equal dense copy", SlicingWarning,
                          stacklevel=2)
            plan = _Plan(modules, {}, {})
        else:
            plan = _plan(graph, modules, rows, cols, removed, report)
        _materialize(dense, modules, plan, shared)
    finally:
        for module, mode in training.items():
            module.training = mode
    for conv in plan.folded.values():  # after the modes are restored: the new module copies its own
        _replace(dense, conv, FoldedConv2d.from_conv(conv, conv._buffers.pop("fold_weight")))
    report.params_after = _count_params(dense)
    report.zeros_kept = sum(dense.get_submodule(name).weight.numel() - kept for name, kept in pruned.items())
    _count_conv_work(dense, graph, report, example_input)
    report.shapes = {name: tuple(p.shape) for name, p in dense.named_parameters()}
    if report.kept:
        warnings.warn(f"slice_model kept {report.channels_kept} removed channels to keep the model's function: "
                      + "; ".join(report.kept[:3]) + (" …" if len(report.kept) > 3 else ""), SlicingWarning,
                      stacklevel=2)
    dense.slice_report = report
    return dense


def _count_conv_work(sliced: nn.Module, graph, report: SliceReport, example_input: Tensor) -> None:
    """Fill ``report.conv_macs*``: per sample, over dense (groups=1) convs, each call counted
    (output positions read off the trace where it sees every call, else one shape pass)."""
    report.channel_multiple = multiple = channel_multiple(example_input.device)
    positions, _ = graph.output_positions() or output_positions(sliced, example_input)
    for name, count in positions.items():
        module = sliced.get_submodule(name)
        if not isinstance(module, nn.Conv2d) or module.groups != 1:
            continue
        per_channel = module.weight[0].numel() * count
        report.conv_macs += module.out_channels * per_channel
        report.conv_macs_padded += padded(module.out_channels, multiple) * per_channel
        if module.out_channels % multiple:
            report.unaligned.append(name)


@dataclass
class _Plan:
    modules: dict[str, nn.Module]
    keep_rows: dict[str, Tensor]  # module -> bool [dim 0] (conv/linear rows, depthwise, BN)
    keep_cols: dict[str, Tensor]  # module -> bool [in channels / features]
    new_tensors: dict[tuple[str, str], Tensor] = field(default_factory=dict)  # (module, attr) -> replaced source
    folded: dict[str, nn.Conv2d] = field(default_factory=dict)  # convs that take a border term


def _plan(graph, modules, rows, cols, removed, report: SliceReport) -> _Plan:
    constants = input_constants(graph.fx_graph, modules, {n: ~r for n, r in rows.items()})
    decision = _Decision(modules, rows, cols, constants)
    keep_rows: dict[str, Tensor] = {}
    keep_cols: dict[str, Tensor] = {}
    fold_columns: dict[str, list[Tensor]] = {}
    for group in graph.groups:
        if group.id not in removed:
            continue
        drop = decision.dropped(group, removed[group.id])
        if not drop.any():
            continue
        alive_out, alive_in = decision.alive(group)
        constant = drop & ~alive_out  # a constant some consumer column still reads: folded
        if alive_in is not None:
            constant &= alive_in
        report.channels_removed += int(drop.sum())
        report.channels_folded += int(constant.sum())
        for m in group.members:
            target = keep_cols if m.role == IN else keep_rows
            if m.module not in target:
                target[m.module] = torch.ones(_extent(modules[m.module], m.role), dtype=torch.bool)
            target[m.module][m.select(drop)] = False
            if m.role == IN and constant.any():
                fold_columns.setdefault(m.module, []).append(m.select(constant))
    report.kept, report.channels_kept = decision.kept, decision.kept_channels
    plan = _Plan(modules, keep_rows, keep_cols)
    for name, columns in fold_columns.items():
        module = modules[name]
        term = _fold_term(module, module.weight, constants[name], torch.cat(columns))
        if term is None:
            continue
        if isinstance(module, nn.Conv2d) and _zero_padded(module):
            previous = module.fold_weight.double() if isinstance(module, FoldedConv2d) else 0
            plan.new_tensors[(name, "fold_weight")] = (previous + term.unsqueeze(1)).to(module.weight.dtype)
            report.folded_layers[name] = "border"
        else:
            shift = term.flatten(1).sum(1) if term.dim() > 1 else term
            bias = module.bias.detach().double() if module.bias is not None else 0
            plan.new_tensors[(name, "bias")] = (bias + shift).to(module.weight.dtype)
            report.folded_layers[name] = "bias"
    return plan


def _extent(module: nn.Module, role: str) -> int:
    if role == IN:
        return module.weight.shape[1]
    if role == NORM:
        return module.num_features
    return module.weight.shape[0]


def _index(keep: Tensor | None) -> Tensor | None:
    return None if keep is None or bool(keep.all()) else keep.nonzero().flatten()


def _materialize(dense: nn.Module, modules: dict[str, nn.Module], plan: _Plan, shared: set[int]) -> None:
    """One gather for every tensor that is sliced or still shared with the user's model,
    then the modules' sizes."""
    jobs = []  # [module, attr, old tensor or None, source, rows, cols]
    for name, module in modules.items():
        rows, cols = _index(plan.keep_rows.get(name)), _index(plan.keep_cols.get(name))
        sliceable = isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._NormBase))
        for attr, tensor in itertools.chain(module._parameters.items(), module._buffers.items()):
            if tensor is None:
                continue
            source = plan.new_tensors.pop((name, attr), None)
            r = rows if sliceable and tensor.dim() >= 1 else None
            c = cols if sliceable and attr == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)) else None
            if source is None and r is None and c is None and id(tensor) not in shared:
                continue  # already this copy's own tensor, unchanged
            jobs.append([module, attr, tensor, source, r, c])
    for (name, attr), source in plan.new_tensors.items():  # a bias or fold term the layer did not have
        jobs.append([modules[name], attr, None, source, _index(plan.keep_rows.get(name)), None])
    plan.new_tensors.clear()

    # One output per distinct (tensor, slicing): weights tied between modules stay tied.
    distinct: dict[tuple, int] = {}
    sources, rows, cols, which = [], [], [], []
    for module, attr, old, source, r, c in jobs:
        key = (id(old), None if r is None else tuple(r.tolist()), None if c is None else tuple(c.tolist())) \
            if source is None else (id(source),)
        if key not in distinct:
            distinct[key] = len(sources)
            sources.append((source if source is not None else old).detach())
            rows.append(r)
            cols.append(c)
        which.append(distinct[key])
    outputs: list[Tensor | None] = [None] * len(sources)
    by_device: dict[torch.device, list[int]] = {}
    for i, source in enumerate(sources):
        if source.dim() == 0 or source.numel() == 0:
            outputs[i] = source.clone()
        else:
            by_device.setdefault(source.device, []).append(i)
    for indices in by_device.values():
        gathered = gather_channels([sources[i] for i in indices], [rows[i] for i in indices],
                                   [cols[i] for i in indices])
        for i, tensor in zip(indices, gathered):
            outputs[i] = tensor

    made: dict[int, Tensor] = {}
    for (module, attr, old, _, _, _), i in zip(jobs, which):
        is_param = attr in module._parameters or (old is None and attr != "fold_weight")
        if i not in made:
            if is_param:
                grad = old.requires_grad if old is not None else module.weight.requires_grad
                made[i] = nn.Parameter(outputs[i], requires_grad=grad)
            else:
                made[i] = outputs[i]
        (module._parameters if is_param else module._buffers)[attr] = made[i]

    for name, module in modules.items():
        if name in plan.keep_rows or name in plan.keep_cols:
            _resize(module)
        if type(module) is nn.Conv2d and "fold_weight" in module._buffers:
            plan.folded[name] = module
    leftovers = [n for n, t in itertools.chain(dense.named_parameters(), dense.named_buffers()) if id(t) in shared]
    if leftovers:
        raise RuntimeError(f"slice_model: internal error, tensors still shared with the input model: {leftovers[:5]}")


def _resize(module: nn.Module) -> None:
    """Set a module's size attributes from its (sliced) tensors."""
    if isinstance(module, nn.Conv2d):
        out_channels, per_group = module.weight.shape[:2]
        if module.groups > 1:  # depthwise: one input channel per output channel
            module.groups = module.in_channels = out_channels
        else:
            module.in_channels = per_group
        module.out_channels = out_channels
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        for attr in ("weight", "running_mean"):
            tensor = getattr(module, attr, None)
            if isinstance(tensor, Tensor):
                module.num_features = tensor.shape[0]
                break


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` sits (a reused module sits in several places)."""
    for qualified, module in list(root.named_modules(remove_duplicate=False)):
        if module is old and qualified:
            parent_name, _, child = qualified.rpartition(".")
            setattr(root.get_submodule(parent_name), child, new)


__all__ = ["FoldedConv2d", "SliceReport", "SlicingWarning", "slice_model"]
