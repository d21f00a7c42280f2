"""PFP — provable filter pruning (Liebenwein et al. 2020), deterministic variant
(docs/methods.md §PFP).

Structured: PFP removes *input channels* (weight columns) of each layer; a producing filter
goes when no layer reads its channel any more.

1. Scores (:func:`channel_sensitivities`): per layer and input channel j, s_j = the max over S,
   output units, edges of channel j and positions of the relative contribution g.
2. Allocation by error analysis (:func:`kept_channels`): for one relative error ε shared by
   all layers, layer ℓ keeps c_ℓ(ε) = clamp(⌈Σ_j 1 − (1 − p_j)^{m_ℓ(ε)}⌉, 1, Cin_ℓ) channels,
   p_j = s_j / S_ℓ, S_ℓ = Σ_j s_j, m_ℓ(ε) = ⌈K(6 + 2ε) α_ℓ S_ℓ / ε²⌉,
   α_ℓ = 2C ln(8 (P_ℓ + 1) κ_ℓ / δ), κ_ℓ = kh·kw, C = 3, K = 3, δ = 1e-16, P_ℓ = output positions.
   Layers whose sensitivities are spread (hard to approximate) thus keep more channels.
3. A root search on ε meets the budget on the prunable weights the masks really remove. No
   reweighting.

The paper's PFP (default, ``coupled="per_layer"``; :func:`layer_masks`): each ungrouped conv
and linear layer keeps its own top-c_ℓ(ε) input channels by s_j. The masks then drop what
that implies (``structure.Propagation``): a filter whose channel no layer reads is zeroed, a
column reading only a constant is zeroed; a residual channel dropped by one reader and kept
by another stays, as in the original (a sliced model keeps it; its report says so).

The group-aware variant, for deployment (:func:`group_masks`; ``coupled="sum" | "mean" |
"max" | "min" | callable``, or ``"skip"`` to leave coupled groups alone): a group channel's
score is the reduce of its consumers' s_j, a group keeps as many channels as its most
demanding consumer's c_ℓ(ε) asks of it, and ``round_to=8`` (or ``"auto"``) keeps a multiple
of 8 channels per group, so that slicing drops everything the masks remove.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..core.accounting import output_positions
from ..datapass import collect_sensitivities, sample_count
from ..structure.group_plan import GroupPlan, check_round_to, refuse_unsupported_coupling
from ..structure.layer_plan import LayerPlan
from .base import PER_LAYER, PruneContext, PruningMethod, structured_options
from .registry import register_method

C, K, DELTA = 3.0, 3.0, 1e-16
_LOG10_EPS_RANGE = (-8.0, 20.0)  # ε from "keep everything" to "one channel per layer"


# --------------------------------------------------------------------------- scores
def channel_sensitivities(ctx: PruneContext) -> dict[str, Tensor]:
    """{layer name: s_j per input channel} of the context's layers on its data S (docs/methods.md §Sensitivities)."""
    return collect_sensitivities(
        ctx.model,
        ctx.batches(),
        ctx.layers,
        kind="channel",
        progress=ctx.progress,
        total=sample_count(ctx.data),
    )


# --------------------------------------------------------------------------- error-based allocation
@dataclass
class LayerErrorModel:
    """What the error analysis needs of one layer."""

    scores: Tensor  # s_j per input channel, float64 on the CPU
    positions: int  # P: output positions per sample
    kernel: int  # κ = kh·kw

    @property
    def alpha(self) -> float:
        return 2.0 * C * math.log(8.0 * (self.positions + 1) * self.kernel / DELTA)

    def samples(self, eps: float) -> float:
        """m(ε) = ⌈K (6 + 2ε) α S / ε²⌉."""
        value = K * (6.0 + 2.0 * eps) * self.alpha * float(self.scores.sum()) / eps**2
        return float(math.ceil(value)) if value < 2.0**52 else value


def kept_channels(model: LayerErrorModel, eps: float) -> int:
    """c(ε): the expected number of distinct channels in m(ε) samples from p, clamped to [1, Cin]."""
    n = model.scores.numel()
    total = float(model.scores.sum())
    if total <= 0.0:
        return 1  # no channel contributes on S
    p = (model.scores / total).clamp(max=1.0)
    m = model.samples(eps)
    # 1 - (1 - p)^m, accurate for tiny p and huge m
    expected = float((-torch.expm1(m * torch.log1p(-p))).sum())
    return max(1, min(n, math.ceil(expected - 1e-9)))


def error_models(ctx: PruneContext, scores: dict[str, Tensor]) -> dict[str, LayerErrorModel]:
    if ctx.example_input is None:
        raise ValueError("pfp: needs an example input to count each layer's output positions; pass data")
    positions, _ = output_positions(ctx.model, ctx.example_input)
    models = {}
    for name, layer in ctx.layers.items():
        kernel = layer.weight[0, 0].numel() if isinstance(layer, nn.Conv2d) else 1
        s = scores[name].detach().double().cpu()
        models[name] = LayerErrorModel(s, max(1, positions.get(name, 1)), kernel)
    return models


# --------------------------------------------------------------------------- masks
class KeptFamily:
    """Per-layer kept input channels along one parameter, ordered so that removal grows:
    first ``("zeros", t)`` for t from 1 to 0 — c_ℓ(ε_min) plus a share t of the layer's
    channels that score 0 on S, which the error analysis never keeps (an activation that is
    never positive on S) — then ``("eps", log10 ε)`` ascending: c_ℓ(ε), fewer and fewer. The
    first part exists only so that a budget that keeps more than every scored channel is met
    (see ``zero_note``)."""

    def __init__(self, models: dict[str, LayerErrorModel]):
        self.models = models
        low = 10.0 ** _LOG10_EPS_RANGE[0]
        self.base = {name: kept_channels(model, low) for name, model in models.items()}
        self.zeros = {name: int((model.scores == 0).sum()) for name, model in models.items()}

    def candidates(self, steps: int = 4097) -> list[tuple[str, float]]:
        eps = [("eps", e) for e in np.linspace(*_LOG10_EPS_RANGE, steps).tolist()]
        if not any(self.zeros.values()):
            return eps
        return [("zeros", t) for t in np.linspace(1.0, 0.0, 257).tolist()[:-1]] + eps

    def kept(self, point: tuple[str, float]) -> dict[str, int]:
        kind, value = point
        if kind == "zeros":
            return {
                name: min(self.models[name].scores.numel(), base + math.floor(value * self.zeros[name] + 0.5))
                for name, base in self.base.items()
            }
        return {name: kept_channels(model, 10.0**value) for name, model in self.models.items()}

    def zero_note(self, kept: dict[str, int]) -> list[str]:
        """Why a budget keeps channels that score 0, for the off-target warning and stats."""
        extra = sum(max(0, kept.get(name, 0) - self.base[name]) for name in self.base if self.zeros[name])
        if not extra:
            return []
        return [
            (
                f"{sum(self.zeros.values()):,} input channels score 0 on S (never active there) and the error "
                f"analysis drops them all; the budget keeps {extra:,} of them — a larger S scores them"
            )
        ]


def warn_silent_layers(models: dict[str, LayerErrorModel]) -> None:
    """Layers whose every channel scores 0 on S (e.g. a dead ReLU before them) carry no
    signal the error analysis can weigh: they keep one channel; say which."""
    silent = [name for name, model in models.items() if float(model.scores.sum()) <= 0.0]
    if silent:
        warnings.warn(
            f"pfp: {len(silent)} layer(s) see no signal on S (every input channel scores 0), each keeps "
            f"one input channel: {', '.join(silent[:8])}{' ...' if len(silent) > 8 else ''}",
            stacklevel=5,
        )


def layer_masks(
    ctx: PruneContext, scores: dict[str, Tensor], models: dict[str, LayerErrorModel]
) -> dict[str, Tensor]:
    """The paper's PFP: every layer keeps its own top-c_ℓ(ε) input channels, one ε for all,
    searched on the weights the masks really remove (propagation included)."""
    plan = LayerPlan(ctx.graph(), ctx.layers, ctx.current_masks, by="in")
    if not plan.units:
        raise ValueError("pfp: no layer has input channels that can be removed (only grouped convolutions)")
    plan.rank(scores)
    family = KeptFamily({name: models[name] for name in plan.units})
    kept = plan.fit(family.candidates(), family.kept, ctx.remove_budget())
    _note_zeros(ctx, family.zero_note(kept))
    ctx.warn_off_target("pfp", plan.removed_weights(kept))
    return plan.masks(kept)


def group_masks(
    ctx: PruneContext, scores: dict[str, Tensor], models: dict[str, LayerErrorModel], coupled, round_to
) -> dict[str, Tensor]:
    """The group-aware variant: the group plan's counts for c_ℓ(ε), with ε the largest on a
    fine log grid whose removal stays within the budget, then single steps (one group ±1
    allowed count) where channels are too coarse to land on it."""
    plan = GroupPlan(ctx.graph(), ctx.layers, ctx.current_masks, by="in", coupled=coupled, round_to=round_to)
    if not plan.units:
        raise ValueError(
            "pfp: no input channel group can be removed (every group is frozen"
            + (f"; {plan.skipped_note()}" if plan.skipped else "")
            + ")"
        )
    plan.rank(scores)
    target = ctx.remove_budget()
    family = KeptFamily(models)

    def counts_of(point) -> list[int]:
        return plan.counts_from_kept(family.kept(point), scores)

    candidates = family.candidates(2049)
    point = candidates[plan.fit_index(candidates, counts_of, target)]
    counts = plan.refine(counts_of(point), target)
    _note_zeros(ctx, family.zero_note(family.kept(point)))
    ctx.warn_off_target("pfp", plan.removed_weights(counts), plan.constraints())
    return plan.masks(counts)


def _note_zeros(ctx: PruneContext, note: list[str]) -> None:
    if note:
        warnings.warn(f"pfp: {note[0]}", stacklevel=5)


@register_method("pfp")
class ProvableFilterPruning(PruningMethod):
    structured = True
    version = 2  # 2: the paper's per-layer variant by default (1: whole channel groups)
    data_informed = True
    description = (
        "channel sensitivity on S, error-based allocation of input channels per layer (structured; paper)"
    )
    option_names = ("coupled", "round_to")

    def compute_masks(self, ctx: PruneContext):
        coupled, round_to = structured_options(ctx, self.name)
        # everything that can refuse the model before the sensitivity pass: the trace, the options,
        # a coupled group an unsupported op freezes
        graph = ctx.graph()
        if coupled != PER_LAYER:
            check_round_to(round_to, ctx.device)
            if coupled != "skip":
                refuse_unsupported_coupling(graph)
        scores = channel_sensitivities(ctx)
        models = error_models(ctx, scores)
        warn_silent_layers(models)
        if coupled == PER_LAYER:
            return layer_masks(ctx, scores, models)
        return group_masks(ctx, scores, models, coupled, round_to)
