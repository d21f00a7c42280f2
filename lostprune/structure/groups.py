"""Channel groups: the units of structured pruning (docs/methods.md §Group-aware variants).

A :class:`ChannelGroup` is ``size`` channels that go together, with, per member module (or
parameter), the indices each channel occupies in it. :class:`Elements` holds the channel
elements of a walk and the unions between them; :func:`assemble` resolves them as connected
components (scipy) and gathers components with the same members into groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

OUT, IN, NORM, DEPTHWISE, PARAM = "out", "in", "norm", "depthwise", "param"


class GraphError(RuntimeError):
    """The model cannot be traced or analysed."""


@dataclass
class Member:
    """One module's (or parameter's) share of a channel group.

    ``role``: ``"out"`` — weight dim 0 (and bias) of a conv/linear; ``"in"`` — weight dim 1 of
    a conv/linear (of one group, for a grouped conv); ``"norm"`` — a BatchNorm's per-channel
    parameters and statistics; ``"depthwise"`` — a depthwise conv whose output channel k reads
    only input channel k (weight dim 0, bias, and its ``groups``); ``"param"`` — dim ``dim``
    of the parameter named ``module`` (a layer scale, a class token, a per-head table).
    ``index``: [size, k] indices of each group channel in that dim: a channel may occupy
    several (the H·W features of a flattened channel, the rows of an attention head).
    """

    module: str
    role: str
    index: Tensor
    dim: int = 0

    @property
    def span(self) -> int:
        return self.index.shape[1]


@dataclass
class ChannelGroup:
    id: int
    size: int
    members: list[Member]
    prunable: bool = True
    reason: str | None = None  # why the group cannot be pruned

    @property
    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role in (OUT, DEPTHWISE)]

    @property
    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.role == IN]

    @property
    def norms(self) -> list[Member]:
        return [m for m in self.members if m.role == NORM]

    @property
    def params(self) -> list[Member]:
        return [m for m in self.members if m.role == PARAM]

    @property
    def coupled(self) -> bool:
        """More than one module produces these channels (residual add, multiply, depthwise)."""
        return len(self.producers) > 1

    def copy(self) -> ChannelGroup:
        return ChannelGroup(
            self.id,
            self.size,
            [Member(m.module, m.role, m.index, m.dim) for m in self.members],
            self.prunable,
            self.reason,
        )

    def __repr__(self) -> str:
        members = ", ".join(f"{m.module}:{m.role}" for m in self.members)
        state = "prunable" if self.prunable else f"frozen ({self.reason})"
        return f"ChannelGroup(id={self.id}, size={self.size}, {state}, [{members}])"


class Elements:
    """Channel elements and the unions between them, resolved at once by ``components``."""

    def __init__(self):
        self.count = 0
        self.unions: list[tuple[np.ndarray, np.ndarray]] = []
        self.frozen: dict[int, str] = {}

    def new(self, n: int, frozen: str | None = None) -> np.ndarray:
        ids = np.arange(self.count, self.count + n)
        self.count += n
        if frozen:
            self.freeze(ids, frozen)
        return ids

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
        different = a != b
        if different.any():
            self.unions.append((a[different], b[different]))

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        for i in np.unique(np.asarray(ids)).tolist():
            self.frozen.setdefault(i, reason)

    def components(self) -> np.ndarray:
        """Component label of every element."""
        if not self.unions:
            return np.arange(self.count)
        a = np.concatenate([a for a, _ in self.unions])
        b = np.concatenate([b for _, b in self.unions])
        edges = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(self.count, self.count))
        return connected_components(edges, directed=False)[1]


def sort_order(*keys: np.ndarray) -> np.ndarray:
    """Indices sorting non-negative integer ``keys`` lexicographically (first key first); the
    keys together must be unique. One argsort of a mixed-radix code, ~10x faster than
    ``np.lexsort``, where the code fits in 62 bits."""
    code = np.zeros(len(keys[0]), dtype=np.int64)
    bound = 1
    for key in keys:
        size = int(key.max()) + 1 if len(key) else 1
        bound *= size
        if bound >= 2**62:
            return np.lexsort(keys[::-1])
        code = code * size + key
    return np.argsort(code)


def assemble(
    elements: Elements, members: dict[tuple[str, str], np.ndarray], dims: dict[tuple[str, str], int]
) -> list[ChannelGroup]:
    """Components of channel elements gathered by the members they appear in and how often
    (their *signature*), vectorized over all (component, member, position) entries.
    ``members``: (module, role) -> the element of each index, in recording order.

    Group order: the order in which the walk first recorded a component of the signature;
    member order: sorted (module, role); channel order: position in the first member; a
    channel's indices in a member: ascending."""
    keys = list(members)
    if not keys:
        return []
    labels = elements.components()
    sizes = np.array([len(members[k]) for k in keys])
    roots = labels[np.concatenate([members[k] for k in keys])]  # one entry per member index
    positions = np.arange(len(roots)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    sorted_keys = sorted(range(len(keys)), key=keys.__getitem__)
    rank = np.empty(len(keys), dtype=np.int64)
    rank[sorted_keys] = np.arange(len(keys))
    entry_rank = np.repeat(rank, sizes)
    # entries by (component, member rank, position)
    order = sort_order(roots, entry_rank, positions)
    r, k, p = roots[order], entry_rank[order], positions[order]
    # runs of (component, member): their length is how many indices a channel has there
    run_start = np.flatnonzero(np.r_[True, (r[1:] != r[:-1]) | (k[1:] != k[:-1])])
    run_length = np.diff(np.r_[run_start, len(order)])
    run_root, run_rank = r[run_start], k[run_start]
    comp_start = np.flatnonzero(np.r_[True, run_root[1:] != run_root[:-1]])  # runs per component
    comp_runs = np.diff(np.r_[comp_start, len(run_start)])
    components = run_root[comp_start]
    # signature id per component: the sequence of (member rank, run length) of its runs
    pair = run_rank * (int(run_length.max()) + 1) + run_length
    signature_of = np.empty(len(components), dtype=np.int64)
    signatures = 0
    for count in np.unique(comp_runs).tolist():
        chosen = np.flatnonzero(comp_runs == count)
        ids = np.zeros(len(chosen), dtype=np.int64)
        for j in range(count):
            ids = np.unique(ids * (int(pair.max()) + 1) + pair[comp_start[chosen] + j], return_inverse=True)[
                1
            ].ravel()
        signature_of[chosen] = signatures + ids
        signatures += int(ids.max()) + 1
    # groups in the order the walk first recorded one of their components
    component_visit = np.minimum.reduceat(order, np.flatnonzero(np.r_[True, r[1:] != r[:-1]]))
    signature_visit = np.full(signatures, len(roots), dtype=np.int64)
    np.minimum.at(signature_visit, signature_of, component_visit)
    group_of_signature = np.empty(signatures, dtype=np.int64)
    group_of_signature[np.argsort(signature_visit, kind="stable")] = np.arange(signatures)
    group_of = group_of_signature[signature_of]
    entries_of = np.add.reduceat(run_length, comp_start) if len(comp_start) else np.zeros(0, dtype=np.int64)
    entry_start = run_start[comp_start]  # first entry of each component in `order`
    # channel order inside a group: the first member's first position
    first_pos = p[entry_start]
    frozen_reason = np.full(int(labels.max()) + 1, -1)
    reasons = list(dict.fromkeys(elements.frozen.values()))
    if elements.frozen:
        reason_index = {text: i for i, text in enumerate(reasons)}
        frozen_ids = np.fromiter(elements.frozen, dtype=np.int64)
        frozen_texts = np.array([reason_index[t] for t in elements.frozen.values()], dtype=np.int64)
        frozen_roots = labels[frozen_ids]
        first = np.unique(frozen_roots, return_index=True)  # the first reason of a component wins
        frozen_reason[first[0]] = frozen_texts[first[1]]
    comp_order = sort_order(group_of, first_pos, np.arange(len(components)))
    groups = []
    starts = (
        np.flatnonzero(np.r_[True, group_of[comp_order][1:] != group_of[comp_order][:-1]])
        if len(comp_order)
        else np.zeros(0, dtype=np.int64)
    )
    bounds = np.r_[starts, len(comp_order)]
    for g in range(len(starts)):
        comps = comp_order[bounds[g] : bounds[g + 1]]
        c0 = comps[0]
        width = int(entries_of[c0])
        block_entries = entry_start[comps][:, None] + np.arange(width)[None, :]  # [channels, width]
        block = torch.from_numpy(p[block_entries])
        runs = slice(comp_start[c0], comp_start[c0] + comp_runs[c0])
        members_out, column = [], 0
        for member_rank, length in zip(run_rank[runs].tolist(), run_length[runs].tolist()):
            key = keys[sorted_keys[member_rank]]
            members_out.append(
                Member(key[0], key[1], block[:, column : column + length].contiguous(), dims.get(key, 0))
            )
            column += length
        group_reasons = frozen_reason[components[comps]]
        has_reason = np.flatnonzero(group_reasons >= 0)
        has_producer = any(m.role in (OUT, DEPTHWISE) for m in members_out)
        # a group is frozen as a whole when any of its channels is (they share members)
        reason = (
            reasons[group_reasons[has_reason[0]]]
            if len(has_reason)
            else (None if has_producer else "no layer produces these channels")
        )
        groups.append(ChannelGroup(len(groups), len(comps), members_out, reason is None, reason))
    return groups
