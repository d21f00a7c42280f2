"""Sensitivity scoring ops (docs/methods.md §Sensitivities): SiPP weight sensitivities and PFP channel
sensitivities of one layer for a batch of inputs, with the sign split and the eps rule.

For output unit i and edge r (input channel, kernel offset) reading the im2col entry
A_r(x, p) of a non-negative data point x at output position p:

    g_ir(x, p) = |W_ir| A_r(x, p) / z_i^{sign W_ir}(x, p),   z+ = W+ A,  z- = |W-| A

(g = 0 where that z <= float32 eps). An input with negative entries counts as two data points,
max(a, 0) and max(-a, 0). Then

    weight_sensitivity(reduce="mean")[i, r] = max_x mean_p g_ir(x, p)     (SiPP, the paper's)
    weight_sensitivity(reduce="max")[i, r]  = max_x max_p  g_ir(x, p)
    channel_sensitivity[j]                  = max_x max_{i, r in channel j} max_p g_ir(x, p)  (PFP)

Every result is also maxed with ``running`` (a previous result), so batches can be streamed.

Three implementations, compared by the tests:
- the compiled kernels (``weight_sensitivity`` / ``channel_sensitivity``): fused, tiled, memory
  O(|W| + one tile);
- ``*_literal``: the definition step by step, per data point and output filter on a
  materialized unfold, as the original implementation did (oracle and speed baseline);
- ``*_reference``: vectorized PyTorch (convolutions for z, a batched matrix product for the
  mean, a broadcast max-times product for the max), chunked to bound its memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._build import use_kernel
from ._conv_args import IntPair, conv_out_hw, pair, same_padding
from ._precision import exact_fp32

WEIGHT_OP = "lostprune.weight_sensitivity"
CHANNEL_OP = "lostprune.channel_sensitivity"
# g = 0 where z <= float32 eps, in every dtype (docs/methods.md §Sensitivities)
EPS = torch.finfo(torch.float32).eps
REDUCTIONS = ("mean", "max")


# --------------------------------------------------------------------------- argument handling
class _Layer:
    """A layer in convolution form: x [B, Cin, H, W] and weight [Cout, Cin/g, kh, kw]; a linear
    layer is a 1x1 convolution whose positions are the tokens of a 3-D (or higher) input."""

    def __init__(
        self, op: str, x: Tensor, weight: Tensor, stride, padding, dilation, groups, running, level: str
    ):
        if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
            raise TypeError(f"{op}: x and weight must be tensors")
        if not x.is_floating_point() or not weight.is_floating_point():
            raise TypeError(f"{op}: x and weight must be floating point, got {x.dtype} and {weight.dtype}")
        if x.device != weight.device:
            raise ValueError(
                f"{op}: x is on {x.device} but weight is on {weight.device}; move both to the same device"
            )
        self.weight_shape = weight.shape
        self.linear_tokens: tuple[int, ...] | None = None  # a linear input's leading dims
        self.unbatched = False
        self.dtype = torch.float64 if torch.float64 in (x.dtype, weight.dtype) else torch.float32
        weight = weight.detach().to(self.dtype)
        x = x.detach().to(self.dtype)
        if weight.dim() == 2:  # linear: tokens (every dim between batch and features) are positions
            if (stride, padding, dilation, groups) != (1, 0, 1, 1):
                raise ValueError(f"{op}: a linear weight (2-D) takes no stride, padding, dilation or groups")
            if x.dim() < 2 or x.shape[-1] != weight.shape[1]:
                features = weight.shape[1]
                raise ValueError(
                    f"{op}: a linear layer with weight {tuple(weight.shape)} needs x of shape "
                    f"[B, {features}] or [B, tokens, {features}], got {tuple(x.shape)}"
                )
            self.linear_tokens = tuple(x.shape[:-1])
            x = x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2).unsqueeze(-1)
            weight = weight[:, :, None, None]
            stride, padding, dilation, groups = (1, 1), (0, 0), (1, 1), 1
        elif weight.dim() == 4:
            if x.dim() == 3:  # an unbatched image
                x = x.unsqueeze(0)
                self.unbatched = True
            if x.dim() != 4:
                raise ValueError(
                    f"{op}: a conv weight (4-D) needs x of shape [B, C, H, W], got {tuple(x.shape)}"
                )
            if not isinstance(groups, int) or groups < 1:
                raise ValueError(f"{op}: groups must be an int >= 1, got {groups!r}")
            stride = pair(stride, "stride", op, 1)
            dilation = pair(dilation, "dilation", op, 1)
            x, padding = self._padding(op, x, weight, padding, dilation, stride)
            if x.shape[1] != weight.shape[1] * groups:
                raise ValueError(
                    f"{op}: weight {tuple(weight.shape)} with groups={groups} expects "
                    f"{weight.shape[1] * groups} input channels, but x has {x.shape[1]} "
                    f"(shape {tuple(x.shape)})"
                )
            if weight.shape[0] % groups:
                raise ValueError(f"{op}: groups={groups} must divide the output channels ({weight.shape[0]})")
        else:
            raise ValueError(
                f"{op}: weight must be 2-D (linear) or 4-D (conv2d), got shape {tuple(weight.shape)}"
            )
        self.x, self.weight = x.contiguous(), weight.contiguous()
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.out_shape = self.weight_shape if level == "weight" else (x.shape[1],)
        self.running = None
        if running is not None:
            if not isinstance(running, Tensor) or tuple(running.shape) != tuple(self.out_shape):
                shape = tuple(running.shape) if isinstance(running, Tensor) else type(running).__name__
                raise ValueError(
                    f"{op}: running must have shape {tuple(self.out_shape)} (a previous result), got {shape}"
                )
            if running.device != self.x.device:
                raise ValueError(f"{op}: running is on {running.device} but x is on {self.x.device}")
            self.running = (
                running.detach()
                .to(self.dtype)
                .reshape(self.weight.shape if level == "weight" else self.out_shape)
            )

    @staticmethod
    def _padding(op: str, x: Tensor, weight: Tensor, padding, dilation, stride):
        if isinstance(padding, str):
            if padding == "valid":
                return x, (0, 0)
            if padding != "same":
                raise ValueError(f"{op}: padding must be an int, 2 ints, 'valid' or 'same', got {padding!r}")
            before, after = same_padding(weight.shape[2:], dilation, stride, op)
            if before == after:
                return x, before
            # An even dilated kernel pads one more on the bottom/right, like torch: pad explicitly.
            x = F.pad(x, (before[1], after[1], before[0], after[0]))
            return x, (0, 0)
        return x, pair(padding, "padding", op, 0)

    def op_args(self) -> tuple:
        """(x, weight, stride, padding, dilation, groups) as the compiled ops take them."""
        return self.x, self.weight, list(self.stride), list(self.padding), list(self.dilation), self.groups

    def finish(self, out: Tensor) -> Tensor:
        return out.reshape(self.out_shape)

    def finish_output(self, y: Tensor) -> Tensor:
        """The layer's output [B, Cout, oh, ow] in the caller's layout: [B, tokens..., Cout]
        for a linear layer, [Cout, oh, ow] for an unbatched image."""
        if self.linear_tokens is not None:  # contiguous, like F.linear's (callers may .view it)
            return y.flatten(2).transpose(1, 2).reshape(*self.linear_tokens, y.shape[1]).contiguous()
        return y[0] if self.unbatched else y

    def conv_output(self) -> Tensor:
        """conv(x, weight) without bias in the compute dtype (IEEE float32 on CUDA, not TF32)."""
        with exact_fp32(self.x.is_cuda):
            return F.conv2d(self.x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)

    @property
    def cout_g(self) -> int:
        return self.weight.shape[0] // self.groups

    @property
    def edges(self) -> int:
        return self.weight[0].numel()


def _check_reduce(reduce: str) -> None:
    if reduce not in REDUCTIONS:
        raise ValueError(f"{WEIGHT_OP}: reduce must be 'mean' or 'max', got {reduce!r}")


def _check_finite(layer: _Layer, op: str) -> None:
    if not torch.isfinite(layer.x).all():
        raise ValueError(f"{op}: x (the layer input) contains NaN or inf")
    if not torch.isfinite(layer.weight).all():
        raise ValueError(f"{op}: weight contains NaN or inf")


def _checked_layer(op: str, x, weight, stride, padding, dilation, groups, running, reduce: str | None = None):
    """The references' argument handling: a weight-level op when ``reduce`` is given."""
    if reduce is not None:
        _check_reduce(reduce)
    layer = _Layer(
        op,
        x,
        weight,
        stride,
        padding,
        dilation,
        groups,
        running,
        "weight" if reduce is not None else "channel",
    )
    _check_finite(layer, op)
    return layer


def _data_points(x: Tensor) -> Tensor:
    """The sign split: every sample's max(a, 0), plus max(-a, 0) for samples with negative entries."""
    negative = (x < 0).flatten(1).any(1)
    parts = [x.clamp(min=0)]
    if negative.any():
        parts.append((-x[negative]).clamp(min=0))
    return torch.cat(parts)


def _inverse(z: Tensor) -> Tensor:
    return torch.where(z > EPS, 1.0 / torch.where(z > EPS, z, torch.ones_like(z)), torch.zeros_like(z))


# --------------------------------------------------------------------------- reference (a): literal
def _literal(layer: _Layer, level: str, reduce: str) -> Tensor:
    w4 = layer.weight
    cout, cin_g, kh, kw = w4.shape
    out = torch.zeros(
        w4.shape if level == "weight" else (layer.x.shape[1],), dtype=layer.dtype, device=layer.x.device
    )
    for image in layer.x:
        points = [image.clamp(min=0)] + ([(-image).clamp(min=0)] if (image < 0).any() else [])
        for a in points:
            unfolded = F.unfold(a[None], (kh, kw), layer.dilation, layer.padding, layer.stride)[0]
            unfolded = unfolded.view(layer.groups, cin_g * kh * kw, -1)  # [groups, R, P]
            for i in range(cout):
                A = unfolded[i // layer.cout_g]
                w = w4[i].flatten()
                z_pos = (w.clamp(min=0)[:, None] * A).sum(0)
                z_neg = ((-w).clamp(min=0)[:, None] * A).sum(0)
                z = torch.where(w[:, None] > 0, z_pos[None, :], z_neg[None, :])
                g = torch.where(z > EPS, w.abs()[:, None] * A / z, torch.zeros_like(A))  # [R, P]
                if level == "weight":
                    s = g.mean(1) if reduce == "mean" else g.amax(1)
                    out[i] = torch.maximum(out[i], s.view(cin_g, kh, kw))
                else:
                    channels = slice((i // layer.cout_g) * cin_g, (i // layer.cout_g + 1) * cin_g)
                    out[channels] = torch.maximum(out[channels], g.amax(1).view(cin_g, kh * kw).amax(1))
    if layer.running is not None:
        out = torch.maximum(out, layer.running)
    return layer.finish(out)


def weight_sensitivity_literal(
    x: Tensor,
    weight: Tensor,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    reduce: str = "mean",
    running: Tensor | None = None,
) -> Tensor:
    """Reference (a): the definition step by step — per sample, per data point of the sign
    split, per output filter, on a materialized unfold. Slow by design; the oracle."""
    layer = _checked_layer(WEIGHT_OP, x, weight, stride, padding, dilation, groups, running, reduce)
    return _literal(layer, "weight", reduce)


def channel_sensitivity_literal(
    x: Tensor,
    weight: Tensor,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    running: Tensor | None = None,
) -> Tensor:
    """Reference (a) of :func:`channel_sensitivity`."""
    layer = _checked_layer(CHANNEL_OP, x, weight, stride, padding, dilation, groups, running)
    return _literal(layer, "channel", "max")


# --------------------------------------------------------------------------- reference (b): vectorized
_REFERENCE_CHUNK = 1 << 24  # elements of the largest temporary the vectorized reference makes


def _vectorized_max_times(layer: _Layer, points: Tensor) -> Tensor:
    """[Cout, R]: max over data points and positions of A_r * V_i^{sign W_ir}."""
    w = layer.weight.flatten(1)
    cout, edges = w.shape
    best = torch.zeros(cout, edges, dtype=layer.dtype, device=points.device)
    per_point = edges * max(1, math.prod(_out_hw(layer, points)))
    batch = max(1, _REFERENCE_CHUNK // per_point)
    for chunk in points.split(batch):
        v_pos, v_neg, unfolded = _inverses_and_unfold(layer, chunk)  # [b, g, cg, P], [b, g, R, P]
        for i in range(cout):
            group, local = divmod(i, layer.cout_g)
            A = unfolded[:, group]  # [b, R, P]
            v = torch.where(
                w[i, None, :, None] > 0, v_pos[:, group, local, None, :], v_neg[:, group, local, None, :]
            )
            best[i] = torch.maximum(best[i], (A * v).amax(dim=(0, 2)))
    return best


def _out_hw(layer: _Layer, x: Tensor) -> tuple[int, int]:
    return conv_out_hw(x.shape[2:], layer.weight.shape[2:], layer.stride, layer.padding, layer.dilation)


def _inverses_and_unfold(layer: _Layer, chunk: Tensor):
    w = layer.weight
    conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    b, g = chunk.shape[0], layer.groups
    v_pos = _inverse(F.conv2d(chunk, w.clamp(min=0), **conv)).view(b, g, layer.cout_g, -1)
    v_neg = _inverse(F.conv2d(chunk, (-w).clamp(min=0), **conv)).view(b, g, layer.cout_g, -1)
    unfolded = F.unfold(chunk, w.shape[2:], layer.dilation, layer.padding, layer.stride)
    unfolded = unfolded.view(b, g, layer.edges, -1)
    return v_pos, v_neg, unfolded


def _vectorized_mean(layer: _Layer, points: Tensor) -> Tensor:
    """[Cout, R]: max over data points of sum_p A_r(p) V_i^{sign W_ir}(p) — batched matrix
    products of 1/z with the unfolded input (docs/methods.md §Sensitivities)."""
    w = layer.weight.flatten(1).view(layer.groups, layer.cout_g, layer.edges)
    best = torch.zeros_like(w)
    per_point = layer.edges * max(1, math.prod(_out_hw(layer, points)))
    for chunk in points.split(max(1, _REFERENCE_CHUNK // per_point)):
        v_pos, v_neg, unfolded = _inverses_and_unfold(layer, chunk)
        sums = torch.where(w > 0, v_pos @ unfolded.transpose(-1, -2), v_neg @ unfolded.transpose(-1, -2))
        best = torch.maximum(best, sums.amax(0))
    return best.reshape(layer.weight.shape[0], layer.edges)


def _vectorized(layer: _Layer, level: str, reduce: str) -> Tensor:
    with exact_fp32(layer.x.is_cuda):  # z from cuDNN and the matmuls in IEEE float32, not TF32
        return _vectorized_scores(layer, level, reduce)


def _vectorized_scores(layer: _Layer, level: str, reduce: str) -> Tensor:
    points = _data_points(layer.x)
    w = layer.weight.flatten(1)
    if reduce == "mean" and level == "weight":
        n_positions = math.prod(_out_hw(layer, layer.x))
        scores = w.abs() * _vectorized_mean(layer, points) / n_positions
    else:
        scores = w.abs() * _vectorized_max_times(layer, points)
    if level == "weight":
        out = scores.view(layer.weight.shape)
    else:
        cin_g, k2 = layer.weight.shape[1], layer.weight[0, 0].numel()
        out = scores.view(layer.groups, layer.cout_g, cin_g, k2).amax(dim=(1, 3)).reshape(-1)
    if layer.running is not None:
        out = torch.maximum(out, layer.running)
    return layer.finish(out)


def weight_sensitivity_reference(
    x: Tensor,
    weight: Tensor,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    reduce: str = "mean",
    running: Tensor | None = None,
) -> Tensor:
    """Reference (b): vectorized PyTorch, chunked over data points."""
    layer = _checked_layer(WEIGHT_OP, x, weight, stride, padding, dilation, groups, running, reduce)
    return _vectorized(layer, "weight", reduce)


def channel_sensitivity_reference(
    x: Tensor,
    weight: Tensor,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    running: Tensor | None = None,
) -> Tensor:
    """Reference (b) of :func:`channel_sensitivity`."""
    layer = _checked_layer(CHANNEL_OP, x, weight, stride, padding, dilation, groups, running)
    return _vectorized(layer, "channel", "max")


# --------------------------------------------------------------------------- public ops
def weight_sensitivity(
    x: Tensor,
    weight: Tensor,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    reduce: str = "mean",
    running: Tensor | None = None,
    *,
    with_output: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """SiPP weight sensitivities of one layer for the batch ``x`` (docs/methods.md §Sensitivities).

    Args:
        x: the layer's input, [B, Cin, H, W] for a conv (weight 4-D), [B, Cin] or
            [B, tokens..., Cin] for a linear layer (weight 2-D; tokens are positions).
        weight: the layer's weight (masked weights included: zeros score 0).
        stride, padding, dilation, groups: as in ``nn.Conv2d`` (padding may be ``"same"`` or
            ``"valid"``); defaults for a linear layer.
        reduce: ``"mean"`` over positions (the paper's variant) or ``"max"``.
        running: a previous result to continue from; the result is its elementwise max with
            this batch's, so ``running = weight_sensitivity(batch, ..., running=running)``
            streams a data set batch by batch.
        with_output: also return the layer's output ``conv(x, weight)`` (``x @ weight.T`` for a
            linear layer; no bias), in the scores' dtype. Scoring computes z+ and z- at every
            position anyway and the output is z+ - z-, so on the CPU it comes almost free: a data
            pass uses it instead of running the layer's convolution (lostprune.datapass).

    Returns:
        A tensor shaped like ``weight`` with values in [0, 1] (float32, or float64 when an input
        is float64), or ``(scores, output)`` with ``with_output``. Not differentiable (inputs
        are detached).
    """
    _check_reduce(reduce)
    layer = _Layer(WEIGHT_OP, x, weight, stride, padding, dilation, groups, running, "weight")
    return _scored(layer, "weight", reduce, with_output)


def _scored(layer: _Layer, level: str, reduce: str, with_output: bool):
    """Both public ops on a prepared layer: the compiled kernel, or without one the vectorized
    reference (and the layer's output from a convolution); scores, or (scores, output)."""
    qualified = WEIGHT_OP if level == "weight" else CHANNEL_OP
    op = qualified.removeprefix("lostprune.")
    if use_kernel(op, layer.x.device):
        by_level = (reduce,) if level == "weight" else ()
        scores, y = getattr(torch.ops.lostprune, op)(*layer.op_args(), *by_level, layer.running, with_output)
    else:
        _check_finite(layer, qualified)
        scores = _vectorized(layer, level, reduce)
        y = layer.conv_output() if with_output else None
    scores = layer.finish(scores)
    if not with_output:
        return scores
    assert y is not None
    return scores, layer.finish_output(y)


def channel_sensitivity(
    x: Tensor,
    weight: Tensor,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    running: Tensor | None = None,
    *,
    with_output: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """PFP channel sensitivities of one layer for the batch ``x`` (docs/methods.md §Sensitivities):
    one value per input channel, the max over data points, output units, kernel offsets and
    positions of the relative contribution g. Arguments as :func:`weight_sensitivity`; ``running``
    has one entry per input channel."""
    layer = _Layer(CHANNEL_OP, x, weight, stride, padding, dilation, groups, running, "channel")
    return _scored(layer, "channel", "max", with_output)


# --------------------------------------------------------------------------- registrations
OPS = {
    "weight_sensitivity": weight_sensitivity_reference,
    "channel_sensitivity": channel_sensitivity_reference,
}


def _fake_output(x, weight, stride, padding, dilation, with_output: bool) -> Tensor:
    if not with_output:
        return x.new_empty((0,))
    out_hw = conv_out_hw(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    return x.new_empty((x.shape[0], weight.shape[0], *out_hw))


def _fake_weight(x, weight, stride, padding, dilation, groups, reduce, running, with_output=False):
    return weight.new_empty(weight.shape), _fake_output(x, weight, stride, padding, dilation, with_output)


def _fake_channel(x, weight, stride, padding, dilation, groups, running, with_output=False):
    return x.new_empty((x.shape[1],)), _fake_output(x, weight, stride, padding, dilation, with_output)


def register() -> None:
    torch.library.register_fake("lostprune::weight_sensitivity")(_fake_weight)
    torch.library.register_fake("lostprune::channel_sensitivity")(_fake_channel)
