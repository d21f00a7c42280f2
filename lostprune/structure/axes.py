"""Where a tensor's channels sit, and how shape ops move them.

A tensor's channels are a :class:`Channels`: the tensor dims that carry them (``dims``) and a
*label* per entry along those dims (``labels``, shaped like those dims). What a label is
belongs to the analysis walking the trace — an element to unite (the dependency graph) or a
slot in a flat boolean array (propagation) — the rules here only move labels around:
permute, transpose, reshape / view / flatten (split and merged dims), indexing, chunk /
split, concat, broadcasting. A label may repeat (a flattened channel spans H·W features;
Swin's patch merging concatenates four copies). A dim is *fixed* when its size never
changes: all labels along it go together (a head of ``view(B, N, -1, head_dim)``).

Values of the walk that are not channels: :class:`Opaque` (a tensor the walk cannot follow:
the network input, an op it does not know) and :class:`Param` (a parameter read as a
tensor, e.g. a layer scale or a class token, with the dims its axes went to).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class NotFollowed(Exception):
    """A shape op the label algebra cannot follow (the caller makes its output opaque)."""


@dataclass(frozen=True)
class Channels:
    labels: np.ndarray  # shape == tuple(tensor_shape[d] for d in dims)
    dims: tuple[int, ...]  # ascending, non-negative
    ndim: int
    fixed: frozenset = field(default_factory=frozenset)  # dims whose size never changes

    def dim(self, d: int) -> int:
        return d % self.ndim

    def axis(self, d: int) -> int:
        """Position of tensor dim ``d`` among ``dims`` (its axis in ``labels``)."""
        return self.dims.index(d % self.ndim)

    def with_(self, labels, dims, ndim, fixed=()) -> Channels | None:
        dims = tuple(dims)
        return Channels(np.asarray(labels), dims, ndim, frozenset(fixed) & frozenset(dims)) if dims else None

    def project(self, keep: tuple[int, ...]) -> np.ndarray:
        """Labels along the tensor dims ``keep`` only, index 0 along the other channel dims."""
        index = tuple(slice(None) if d in keep else 0 for d in self.dims)
        return self.labels[index]


@dataclass(frozen=True)
class Opaque:
    reason: str


@dataclass(frozen=True)
class Param:
    """A tensor computed from parameter ``name`` by shape ops: ``axes`` maps a parameter axis
    to the dim it now sits at (axes whose fate the walk lost are left out)."""

    name: str
    axes: dict
    ndim: int


# --------------------------------------------------------------------------- helpers
def permute(ch: Channels, perm) -> Channels:
    perm = [p % ch.ndim for p in perm]
    where = {old: new for new, old in enumerate(perm)}
    new_dims = [where[d] for d in ch.dims]
    order = np.argsort(new_dims)
    return Channels(
        np.transpose(ch.labels, order),
        tuple(sorted(new_dims)),
        ch.ndim,
        frozenset(where[d] for d in ch.fixed),
    )


def transpose_perm(ndim: int, a: int, b: int) -> list[int]:
    perm = list(range(ndim))
    a, b = a % ndim, b % ndim
    perm[a], perm[b] = perm[b], perm[a]
    return perm


def movedim_perm(ndim: int, source, destination) -> list[int]:
    source = [s % ndim for s in (source if isinstance(source, (tuple, list)) else [source])]
    destination = [
        d % ndim for d in (destination if isinstance(destination, (tuple, list)) else [destination])
    ]
    rest = [d for d in range(ndim) if d not in source]
    perm = [None] * ndim
    for s, d in zip(source, destination):
        perm[d] = s
    it = iter(rest)
    return [p if p is not None else next(it) for p in perm]


def unsqueeze(ch: Channels, d: int) -> Channels:
    d = d % (ch.ndim + 1)
    shift = lambda x: x + 1 if x >= d else x  # noqa: E731
    return Channels(
        ch.labels, tuple(shift(x) for x in ch.dims), ch.ndim + 1, frozenset(shift(x) for x in ch.fixed)
    )


def align(ch: Channels, ndim: int) -> Channels:
    """``ch`` with leading dims added up to ``ndim`` (broadcasting aligns from the right)."""
    extra = ndim - ch.ndim
    if extra == 0:
        return ch
    return Channels(
        ch.labels, tuple(d + extra for d in ch.dims), ndim, frozenset(d + extra for d in ch.fixed)
    )


def broadcast(ch: Channels, out_shape: tuple[int, ...]) -> Channels:
    """``ch`` of an operand broadcast to ``out_shape``: size-1 channel dims repeat their label."""
    ch = align(ch, len(out_shape))
    target = tuple(out_shape[d] for d in ch.dims)
    if ch.labels.shape == target:
        return ch
    return Channels(np.broadcast_to(ch.labels, target).copy(), ch.dims, ch.ndim, ch.fixed)


def expand_to(ch: Channels, dims: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """Labels of ``ch`` (already aligned to ``out_shape``) over the channel ``dims`` of an output
    (a superset of ``ch.dims``): constant along the dims ``ch`` lacks."""
    shape = [out_shape[d] if d in ch.dims else 1 for d in dims]
    labels = ch.labels.reshape(shape)
    return np.broadcast_to(labels, tuple(out_shape[d] for d in dims))


# --------------------------------------------------------------------------- reshape
def _blocks(in_shape, out_shape) -> list[tuple[list[int], list[int]]]:
    """Consecutive dims of equal products: pairs (input dims, output dims) that a row-major
    reshape maps onto each other."""
    blocks, i, j = [], 0, 0
    n, m = len(in_shape), len(out_shape)
    while i < n or j < m:
        ins, outs, p, q = [], [], 1, 1
        if i < n:
            ins.append(i)
            p *= in_shape[i]
            i += 1
        if j < m:
            outs.append(j)
            q *= out_shape[j]
            j += 1
        while p != q:
            if p < q and i < n:
                ins.append(i)
                p *= in_shape[i]
                i += 1
            elif q < p and j < m:
                outs.append(j)
                q *= out_shape[j]
                j += 1
            else:
                raise NotFollowed(f"reshape {tuple(in_shape)} -> {tuple(out_shape)}")
        blocks.append((ins, outs))
    return blocks


def reshape(ch: Channels, in_shape, out_shape) -> tuple[Channels | None, bool]:
    """Channels after a row-major reshape, and whether every label still has a dim (False: a
    single-label channel dim was squeezed away)."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    blocks = [b for b in _blocks(in_shape, out_shape) if any(d in ch.dims for d in b[0])]
    # one array over the input dims of the blocks holding channels (broadcast where no channel)
    in_dims = [d for ins, _ in blocks for d in ins]
    out_dims = [d for _, outs in blocks for d in outs]
    view = [in_shape[d] if d in ch.dims else 1 for d in in_dims]
    labels = np.broadcast_to(ch.labels.reshape(view), [in_shape[d] for d in in_dims])
    full = np.ascontiguousarray(labels).reshape([out_shape[d] for d in out_dims])
    varying = []
    for axis in range(full.ndim):
        first = np.take(full, [0], axis=axis)
        if not np.array_equal(np.broadcast_to(first, full.shape), full):
            varying.append(axis)
    kept_all = True
    # a block whose labels vary along no output dim holds a single label: spread over the block
    chosen = set(varying)
    start = 0
    for _ins, outs in blocks:
        axes = range(start, start + len(outs))
        if not any(a in chosen for a in axes):
            sized = [a for a in axes if full.shape[a] > 1]
            if sized:
                chosen.update(sized)
            elif outs:
                chosen.add(axes[-1])
            else:
                kept_all = False
        start += len(outs)
    chosen = sorted(chosen)
    index = tuple(slice(None) if a in chosen else 0 for a in range(full.ndim))
    new_dims = [out_dims[a] for a in chosen]
    fixed = set()
    for ins, outs in blocks:  # a 1:1 block keeps a fixed dim fixed
        sized_in = [d for d in ins if in_shape[d] > 1]
        sized_out = [d for d in outs if out_shape[d] > 1]
        if len(sized_in) == 1 and len(sized_out) == 1 and sized_in[0] in ch.fixed:
            fixed.add(sized_out[0])
    labels = full[index].copy()
    if not new_dims:
        return None, kept_all
    return Channels(labels, tuple(new_dims), len(out_shape), frozenset(fixed)), kept_all


def reshape_param(param: Param, in_shape, out_shape) -> Param:
    """A parameter's axes after a reshape: an axis survives where its block maps it 1:1."""
    axes = {}
    for ins, outs in _blocks(tuple(in_shape), tuple(out_shape)):
        sized_in = [d for d in ins if in_shape[d] > 1]
        sized_out = [d for d in outs if out_shape[d] > 1]
        if len(sized_in) == 1 and len(sized_out) == 1:
            for axis, d in param.axes.items():
                if d == sized_in[0]:
                    axes[axis] = sized_out[0]
    return Param(param.name, axes, len(out_shape))


def permute_param(param: Param, perm) -> Param:
    perm = [p % param.ndim for p in perm]
    where = {old: new for new, old in enumerate(perm)}
    return Param(param.name, {a: where[d] for a, d in param.axes.items()}, param.ndim)


def shift_param(param: Param, ndim: int, inserted: int | None = None) -> Param:
    """``param`` with leading dims added up to ``ndim`` (``inserted``: one new dim there instead)."""
    if inserted is not None:
        inserted %= param.ndim + 1
        return Param(
            param.name, {a: d + 1 if d >= inserted else d for a, d in param.axes.items()}, param.ndim + 1
        )
    extra = ndim - param.ndim
    return Param(param.name, {a: d + extra for a, d in param.axes.items()}, ndim)


# --------------------------------------------------------------------------- indexing
def normalize_key(key, ndim: int) -> list:
    """A getitem key as one item per input dim, None for inserted dims (Ellipsis expanded)."""
    items = list(key) if isinstance(key, tuple) else [key]
    used = sum(1 for k in items if k is not None and k is not Ellipsis)
    out = []
    for k in items:
        if k is Ellipsis:
            out += [slice(None)] * (ndim - used)
        else:
            out.append(k)
    consumed = sum(1 for k in out if k is not None)
    return out + [slice(None)] * (ndim - consumed)


def full_slice(item, size: int) -> bool:
    if not isinstance(item, slice):
        return False
    start, stop, step = item.indices(size)
    return start == 0 and stop == size and step == 1
