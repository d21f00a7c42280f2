"""Attention modules whose heads can be pruned and sliced: traceable replacements for
``nn.MultiheadAttention`` and torchvision's Swin attention (docs/methods.md §Attention).

``nn.MultiheadAttention`` is an fx leaf whose q, k, v projection is a bare parameter; Swin's
attention hands its layers' weights to one fx-wrapped function. Neither lets the channel
analysis see heads, nor the data pass see the projections' inputs, nor a pruning hook on the
output projection ever run. :func:`convert_attention` (which ``lostprune.prune`` calls)
swaps them for equivalents with the same function:

* :class:`MultiheadAttention` — ``in_proj`` (an ``nn.Linear`` holding the former
  ``in_proj_weight`` / ``in_proj_bias``), ``out_proj``, and a forward over
  ``F.scaled_dot_product_attention``; ``num_heads · head_dim`` may differ from
  ``embed_dim`` (heads removed). It loads state dicts of ``nn.MultiheadAttention`` too.
* :class:`SwinAttention` / :class:`SwinAttentionV2` — subclasses of torchvision's
  ``ShiftedWindowAttention`` / ``…V2`` (same parameters, same state dict) whose forward calls
  ``qkv`` and ``proj`` and splits heads as ``view(..., -1, head_dim)``.

Heads are then channel groups (q, k, v rows of a head, its columns of the output
projection, its column of Swin's relative position table); slicing updates ``num_heads``.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

try:
    from torchvision.models import swin_transformer as _swin
except ImportError:  # pragma: no cover - torchvision is a dependency
    _swin = None


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (q, k, v of one embedding size, no bias_k / bias_v / zero
    attention) with a traceable forward and ``num_heads · head_dim`` free of ``embed_dim``."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(
                    f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}) "
                    "unless head_dim is given"
                )
            head_dim = embed_dim // num_heads
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.in_proj = nn.Linear(embed_dim, 3 * inner, bias=bias, device=device, dtype=dtype)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, device=device, dtype=dtype)
        self._register_load_state_dict_pre_hook(_torch_state_names)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiheadAttention:
        """The same attention, sharing ``mha``'s parameters (no copy)."""
        reason = unsupported(mha)
        if reason:
            raise ValueError(f"cannot convert this nn.MultiheadAttention: {reason}")
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            batch_first=mha.batch_first,
            device="meta",
        )
        new.in_proj.weight = mha.in_proj_weight
        new.in_proj.bias = mha.in_proj_bias
        new.out_proj = mha.out_proj
        new.train(mha.training)
        return new

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        self_attention = key is query and value is query
        if not self.batch_first:
            query = query.transpose(0, 1)
            key, value = (query, query) if self_attention else (key.transpose(0, 1), value.transpose(0, 1))
        if self_attention:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:  # cross-attention: the projection's thirds of three calls
            q = self.in_proj(query).chunk(3, dim=-1)[0]
            k = self.in_proj(key).chunk(3, dim=-1)[1]
            v = self.in_proj(value).chunk(3, dim=-1)[2]
        batch, length, source = query.shape[0], query.shape[1], key.shape[1]
        q = q.view(batch, length, -1, self.head_dim).transpose(1, 2)  # [B, H, L, head_dim]
        k = k.view(batch, source, -1, self.head_dim).transpose(1, 2)
        v = v.view(batch, source, -1, self.head_dim).transpose(1, 2)
        mask = _additive_mask(attn_mask, key_padding_mask, q, batch, length, source)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            weights = torch.softmax(
                q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + (mask if mask is not None else 0.0),
                dim=-1,
            )
            if is_causal and mask is None:
                raise ValueError(
                    "is_causal needs attn_mask when need_weights=True (as nn.MultiheadAttention)"
                )
            out = F.dropout(weights, dropout, self.training) @ v
            weights = weights.mean(1) if average_attn_weights else weights
        else:
            weights = None
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None
            )
        out = self.out_proj(_merge_heads(out))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"batch_first={self.batch_first}"
        )


def _merge_heads(out: Tensor) -> Tensor:
    """[B, H, L, head_dim] -> [B, L, H·head_dim]. A copy, not a view: the attention kernel's
    output layout differs from that of the ops the ONNX exporter decomposes it into, and a
    ``contiguous()`` it saw as a no-op would leave an impossible view in the exported graph."""
    return out.transpose(1, 2).clone(memory_format=torch.contiguous_format).flatten(2)


def _additive_mask(
    attn_mask, key_padding_mask, q: Tensor, batch: int, length: int, source: int
) -> Tensor | None:
    """nn.MultiheadAttention's masks (True / -inf = not attended) as one additive float mask."""
    mask = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
        mask = attn_mask.view(batch, -1, length, source) if attn_mask.dim() == 3 else attn_mask
    if key_padding_mask is not None:
        if key_padding_mask.dtype == torch.bool:
            key_padding_mask = torch.zeros_like(key_padding_mask, dtype=q.dtype).masked_fill(
                key_padding_mask, float("-inf")
            )
        padding = key_padding_mask.view(batch, 1, 1, source)
        mask = padding if mask is None else mask + padding
    return mask


def _torch_state_names(state_dict, prefix, *args) -> None:
    """Load an ``nn.MultiheadAttention`` state dict: ``in_proj_weight`` -> ``in_proj.weight``."""
    for old, new in (("in_proj_weight", "in_proj.weight"), ("in_proj_bias", "in_proj.bias")):
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


def unsupported(mha: nn.MultiheadAttention) -> str | None:
    """Why ``mha`` cannot be converted (None: it can)."""
    if not mha._qkv_same_embed_dim:
        return "key / value sizes differ from the embedding size (kdim / vdim)"
    if mha.bias_k is not None or mha.bias_v is not None:
        return "add_bias_kv=True"
    if mha.add_zero_attn:
        return "add_zero_attn=True"
    return None


# --------------------------------------------------------------------------- Swin
@torch.fx.wrap
def window_partition(x: Tensor, window_size: list[int], shift_size: list[int]) -> Tensor:
    """[B, H, W, C] -> [B · windows, window tokens, C]: zero-pad H, W to multiples of the window,
    roll by the shift (none where the window covers the map), cut into windows (as
    torchvision's ``shifted_window_attention``). Channels pass on the last dim."""
    _, height, width, channels = x.shape
    pad_r = (window_size[1] - width % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - height % window_size[0]) % window_size[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    shift = _shift(window_size, shift_size, x.shape[1], x.shape[2])
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    rows, cols = x.shape[1] // window_size[0], x.shape[2] // window_size[1]
    x = x.view(-1, rows, window_size[0], cols, window_size[1], channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window_size[0] * window_size[1], channels)


@torch.fx.wrap
def window_mask(x: Tensor, window_size: list[int], shift_size: list[int]) -> Tensor:
    """The additive mask of shifted windows for the input ``x`` [B, H, W, C]: [B · windows, 1,
    tokens, tokens] (-100 between tokens from different regions, as torchvision), zeros
    where nothing is shifted."""
    batch, height, width, _ = x.shape
    pad_h = height + (window_size[0] - height % window_size[0]) % window_size[0]
    pad_w = width + (window_size[1] - width % window_size[1]) % window_size[1]
    shift = _shift(window_size, shift_size, pad_h, pad_w)
    windows = (pad_h // window_size[0]) * (pad_w // window_size[1])
    tokens = window_size[0] * window_size[1]
    if sum(shift) == 0:
        return x.new_zeros((1, 1, tokens, tokens))
    mask = x.new_zeros((pad_h, pad_w))
    h_slices = ((0, -window_size[0]), (-window_size[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -window_size[1]), (-window_size[1], -shift[1]), (-shift[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            mask[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    mask = mask.view(pad_h // window_size[0], window_size[0], pad_w // window_size[1], window_size[1])
    mask = mask.permute(0, 2, 1, 3).reshape(windows, tokens)
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
    return mask.unsqueeze(1).repeat(batch, 1, 1, 1)


@torch.fx.wrap
def window_merge(windows: Tensor, x: Tensor, window_size: list[int], shift_size: list[int]) -> Tensor:
    """The inverse of :func:`window_partition` for the input ``x`` (whose shape it restores,
    with the channels of ``windows``)."""
    batch, height, width, _ = x.shape
    pad_h = height + (window_size[0] - height % window_size[0]) % window_size[0]
    pad_w = width + (window_size[1] - width % window_size[1]) % window_size[1]
    shift = _shift(window_size, shift_size, pad_h, pad_w)
    channels = windows.shape[-1]
    y = windows.view(
        batch, pad_h // window_size[0], pad_w // window_size[1], window_size[0], window_size[1], channels
    )
    y = y.permute(0, 1, 3, 2, 4, 5).reshape(batch, pad_h, pad_w, channels)
    if sum(shift) > 0:
        y = torch.roll(y, shifts=(shift[0], shift[1]), dims=(1, 2))
    return y[:, :height, :width, :].contiguous()


def _shift(window_size, shift_size, height: int, width: int) -> list[int]:
    """No shift along a dim the window covers whole (as torchvision)."""
    return [0 if window_size[0] >= height else shift_size[0], 0 if window_size[1] >= width else shift_size[1]]


if _swin is not None:

    class SwinAttention(_swin.ShiftedWindowAttention):
        """torchvision's ``ShiftedWindowAttention`` with a forward the channel analysis
        follows (same parameters and state dict; ``head_dim`` fixed, ``num_heads`` free)."""

        head_dim: int

        def relative_bias(self) -> Tensor:
            tokens = self.window_size[0] * self.window_size[1]
            table = self.relative_position_bias_table
            return table[self.relative_position_index].view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)

        def scaled(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
            return q, k, None  # SDPA's default scale: 1 / sqrt(head_dim)

        def forward(self, x: Tensor) -> Tensor:
            windows = window_partition(x, self.window_size, self.shift_size)
            qkv = self.qkv(windows)  # [B·nW, N, 3·H·head_dim]
            q, k, v = (
                qkv.view(qkv.shape[0], qkv.shape[1], 3, -1, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            )
            mask = self.relative_bias() + window_mask(x, self.window_size, self.shift_size)
            q, k, scale = self.scaled(q, k)
            dropout = self.attention_dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)
            out = F.dropout(self.proj(_merge_heads(out)), self.dropout, self.training)
            return window_merge(out, x, self.window_size, self.shift_size)

    class SwinAttentionV2(_swin.ShiftedWindowAttentionV2, SwinAttention):
        """torchvision's ``ShiftedWindowAttentionV2`` (cosine attention, continuous position
        bias) with a forward the channel analysis follows."""

        def relative_bias(self) -> Tensor:
            tokens = self.window_size[0] * self.window_size[1]
            table = self.cpb_mlp(self.relative_coords_table).flatten(0, -2)  # [positions, heads]
            bias = table[self.relative_position_index].view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)
            return 16 * torch.sigmoid(bias)

        def scaled(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
            scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()  # [H, 1, 1]
            return F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1), 1.0

        forward = SwinAttention.forward


def convert_attention(model: nn.Module) -> int:
    """Replace, in place, every ``nn.MultiheadAttention`` of ``model`` that can be (see
    :func:`unsupported`) by :class:`MultiheadAttention`, and torchvision's Swin attention by
    :class:`SwinAttention` / :class:`SwinAttentionV2`; returns how many were replaced. The
    model computes the same function (up to float rounding of the fused attention kernel).
    Swin V2's key bias, which torchvision zeroes in every forward, is zeroed once here."""
    count = 0
    for name, module in list(model.named_modules()):
        if type(module) is nn.MultiheadAttention and unsupported(module) is None:
            _set(model, name, MultiheadAttention.from_torch(module))
            count += 1
        elif _swin is not None and type(module) in (
            _swin.ShiftedWindowAttention,
            _swin.ShiftedWindowAttentionV2,
        ):
            v2 = type(module) is _swin.ShiftedWindowAttentionV2
            module.__class__ = SwinAttentionV2 if v2 else SwinAttention
            module.head_dim = module.qkv.in_features // module.num_heads
            if v2 and module.qkv.bias is not None:
                with torch.no_grad():
                    third = module.qkv.bias.numel() // 3
                    module.qkv.bias[third : 2 * third].zero_()
            count += 1
    return count


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def resize_attention(module: nn.Module) -> None:
    """Set ``num_heads`` (and ``embed_dim``) from a sliced attention module's projections."""
    if isinstance(module, MultiheadAttention):  # (the projections' own sizes may not be set yet)
        module.num_heads = module.in_proj.weight.shape[0] // (3 * module.head_dim)
        module.embed_dim = module.in_proj.weight.shape[1]
    elif _swin is not None and isinstance(module, SwinAttention):
        module.num_heads = module.qkv.weight.shape[0] // (3 * module.head_dim)


__all__ = [
    "MultiheadAttention",
    "convert_attention",
    "resize_attention",
    "unsupported",
    "window_mask",
    "window_merge",
    "window_partition",
]
if _swin is not None:
    __all__ += ["SwinAttention", "SwinAttentionV2"]
