"""What slicing removes from a structurally masked model, and what it folds: per channel
group, the removed channels it drops (``_Decision``), the constants of removed filters that
consumers still read (``constants.input_constants``) folded into a bias or an exact border
term, and the keep vectors of every module and parameter (``SlicePlan``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..core.masks import nonzero_rows_and_columns
from .constants import input_constants
from .folded_conv import FoldedConv2d
from .graph import IN, NORM, PARAM, ChannelGroup


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
        text = (
            f"sliced: {self.params_before:,} → {self.params_after:,} parameters "
            f"(−{100 * self.param_reduction:.2f} %), {self.channels_removed:,} channels removed, "
            f"{self.channels_folded:,} constant channels folded into {len(self.folded_layers)} layers "
            f"({borders} with a border term)"
        )
        if self.padding_share >= 0.05:
            text += (
                f"\n  {self.padding_share:.0%} of the convolution work runs on channel padding: "
                f"{len(self.unaligned)} convs keep output channel counts that are not a multiple of "
                f"{self.channel_multiple}, the kernels' channel tile on this device; prune with "
                f"round_to='auto' to keep multiples of it"
            )
        if self.zeros_kept:
            text += (
                f"\n  {self.zeros_kept:,} masked weights stay as zeros: their channels are still read or "
                f"produced by another layer (per-layer pruning, the paper's FT / PFP); a group-aware "
                f"variant (coupled='sum') removes whole channels"
            )
        if self.kept:
            text += "\n  kept: " + "\n  kept: ".join(self.kept)
        return text


def live_rows_and_columns(
    modules: dict[str, nn.Module], known: dict[nn.Module, tuple[Tensor, Tensor]]
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
        return conv.padding == "same" and any(
            d * (k - 1) > 0 for d, k in zip(conv.dilation, conv.kernel_size)
        )
    return any(p > 0 for p in conv.padding)


def _border_capable(conv: nn.Module) -> bool:
    return type(conv) in (nn.Conv2d, FoldedConv2d)


class _Decision:
    """Per group: which removed channels are dropped, and the constants to fold."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        cols: dict[str, Tensor],
        constants: dict[str, Tensor],
        alive: dict[int, tuple[Tensor, Tensor | None]],
    ):
        self.modules = modules
        self.cols = cols
        self.constants = constants
        self.kept: list[str] = []
        self.kept_channels = 0
        self._alive = alive

    def alive(self, group: ChannelGroup) -> tuple[Tensor, Tensor | None]:
        """``DependencyGraph.alive_channels`` of the group (computed once, by slice_model)."""
        return self._alive[group.id]

    def unfoldable(self, group: ChannelGroup) -> tuple[Tensor, list[str]]:
        """Bool [size]: constant channels that cannot be folded into every consumer, and why
        (one reason per consumer that refuses)."""
        refused = torch.zeros(group.size, dtype=torch.bool)
        reasons = []
        for m in group.consumers:
            module = self.modules[m.module]
            reads = (
                self.cols[m.module][m.index].any(1)
                if m.module in self.cols
                else torch.ones(group.size, dtype=torch.bool)
            )
            values = self.constants.get(m.module)
            values = values[m.index] if values is not None else torch.full(tuple(m.index.shape), math.nan)
            unknown = reads & ~torch.isfinite(values).all(1)
            if unknown.any():
                reasons.append(
                    f"its value at the input of '{m.module}' is not a constant slicing can determine "
                    "(it passes an op that does not preserve constants, or the layer runs on different "
                    "inputs)"
                )
            border = torch.zeros(group.size, dtype=torch.bool)
            if isinstance(module, nn.Conv2d) and _zero_padded(module) and not _border_capable(module):
                border = reads & ~unknown & (values != 0).any(1)
                if border.any():
                    reasons.append(
                        f"'{m.module}' is a {type(module).__name__} with zero padding "
                        "(only nn.Conv2d and FoldedConv2d take a border term)"
                    )
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
                self.kept.append(
                    f"{int(refused.sum())} channels of group {group.id} ({_producer_names(group)}): "
                    + "; ".join(reasons)
                )
        if drop.all():  # a layer needs at least one channel: keep one, unchanged
            drop[0] = False
            self.kept_channels += 1
            self.kept.append(
                f"channel 0 of group {group.id} ({_producer_names(group)}): every channel of the "
                "group was removed; one is kept so its layers keep a channel"
            )
        return drop


def _producer_names(group: ChannelGroup) -> str:
    names = [m.module for m in group.producers]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _fold_term(module: nn.Module, weight: Tensor, values: Tensor, columns: Tensor) -> Tensor | None:
    """Σ_j c_j · W[:, j] over the dropped constant columns: [out, kh, kw] or [out]; None if 0."""
    c = torch.zeros(weight.shape[1], dtype=torch.float64, device=weight.device)
    vals = values[columns.cpu()].to(c.device)
    c[columns.to(c.device)] = torch.nan_to_num(vals, nan=0.0)  # NaN only where the column is all zero
    if not bool((c != 0).any()):
        return None
    term = torch.einsum("oi...,i->o...", weight.detach().double(), c)
    return term if bool((term != 0).any()) else None


@dataclass
class SlicePlan:
    modules: dict[str, nn.Module]
    keep_rows: dict[str, Tensor]  # module -> bool [dim 0] (conv/linear rows, depthwise, BN)
    keep_cols: dict[str, Tensor]  # module -> bool [in channels / features]
    keep_params: dict[str, tuple[int, Tensor]] = field(
        default_factory=dict
    )  # parameter -> (dim, bool [size])
    new_tensors: dict[tuple[str, str], Tensor] = field(
        default_factory=dict
    )  # (module, attr) -> replaced source
    folded: dict[str, nn.Conv2d] = field(default_factory=dict)  # convs that take a border term


def plan_slice(graph, modules, rows, cols, alive, removed, report: SliceReport) -> SlicePlan:
    """How to slice: per layer, the rows and columns kept and the constants folded. ``rows`` /
    ``cols``: live weight rows / columns per layer; ``alive``: ``DependencyGraph.alive_channels``
    per prunable group; ``removed``: the structurally gone channels per group."""
    constants = input_constants(graph.fx_graph, modules, {n: ~r for n, r in rows.items()})
    decision = _Decision(modules, cols, constants, alive)
    # keep vectors as numpy while the members mark them: one indexed store per member costs
    # a few microseconds in numpy, several times that in torch (tensors at the end)
    keep_rows: dict[str, np.ndarray] = {}
    keep_cols: dict[str, np.ndarray] = {}
    keep_params: dict[str, tuple[int, np.ndarray]] = {}
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
        dropped, folded = drop.numpy(), constant.numpy()
        any_folded = bool(folded.any())
        report.channels_removed += int(np.count_nonzero(dropped))
        report.channels_folded += int(np.count_nonzero(folded))
        for m in group.members:
            index = m.index.numpy()
            if m.role == PARAM:
                size = graph.model.get_parameter(m.module).shape[m.dim]
                keep_params.setdefault(m.module, (m.dim, np.ones(size, dtype=bool)))[1][index[dropped]] = (
                    False
                )
                continue
            target = keep_cols if m.role == IN else keep_rows
            if m.module not in target:
                target[m.module] = np.ones(_extent(modules[m.module], m.role), dtype=bool)
            target[m.module][index[dropped]] = False
            if m.role == IN and any_folded:
                fold_columns.setdefault(m.module, []).append(torch.from_numpy(index[folded].reshape(-1)))
    report.kept, report.channels_kept = decision.kept, decision.kept_channels
    plan = SlicePlan(
        modules,
        {name: torch.from_numpy(keep) for name, keep in keep_rows.items()},
        {name: torch.from_numpy(keep) for name, keep in keep_cols.items()},
        {name: (dim, torch.from_numpy(keep)) for name, (dim, keep) in keep_params.items()},
    )
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
