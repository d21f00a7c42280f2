"""What a pruning method is: a scoring rule plus an allocation, returning weight masks."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..core.layers import weight_count, weight_of
from ..data.batches import iter_inputs_and_labels
from ..structure.group_plan import check_coupled, check_round_to

if TYPE_CHECKING:
    from ..structure.graph import DependencyGraph

# coupled= value of the structured methods: each layer on its own, as in the paper (the default)
PER_LAYER = "per_layer"


@dataclass
class PruneContext:
    """Everything a method needs for one pruning step."""

    model: nn.Module
    # prunable layers, name -> module (definition order); of layers sharing a weight Parameter
    # only the first (core.layers.split_shared), whose mask the others share
    layers: dict[str, nn.Module]
    ratio: float  # target fraction of the prunable weights removed, in [0, 1)
    current_masks: dict[str, Tensor]  # 0/1 per weight, read-only; unpruned layers: core.masks.ones_view
    data: object = None  # S for data-informed methods (tensor, Dataset, DataLoader, iterable)
    example_input: Tensor | None = None  # 1 x C x H x W
    options: dict = field(default_factory=dict)
    progress: bool | None = None
    batch_size: int = 64
    leaf_modules: tuple = ()
    _graph: DependencyGraph | None = None

    @property
    def prunable_count(self) -> int:
        return weight_count(self.layers)

    def keep_budget(self) -> int:
        """Number of prunable weights to keep: round((1 - ratio) * N)."""
        return round((1.0 - self.ratio) * self.prunable_count)

    def remove_budget(self) -> int:
        return self.prunable_count - self.keep_budget()

    def warn_off_target(
        self, method: str, removed: int, why: Sequence[str] = (), tolerance: float = 0.005
    ) -> None:
        """One warning when the ``removed`` prunable weights miss ``remove_budget()`` by more
        than ``tolerance`` of it (coarse structured steps); ``why`` names the options to blame.
        Call it from a method's ``compute_masks`` or one function below it."""
        target = self.remove_budget()
        if abs(removed - target) <= tolerance * target:
            return
        warnings.warn(
            f"{method} removes {removed:,} of {self.prunable_count:,} prunable weights "
            f"({100 * removed / self.prunable_count:.2f} %) instead of the target {100 * self.ratio:.2f} %"
            + (f" ({'; '.join(why)})" if why else ""),
            stacklevel=5,
        )

    @property
    def device(self) -> torch.device:
        return weight_of(next(iter(self.layers.values()))).device

    @property
    def dtype(self) -> torch.dtype:
        return weight_of(next(iter(self.layers.values()))).dtype

    def graph(self) -> DependencyGraph:
        """The model's channel dependency graph (built once, on the example input)."""
        if self._graph is None:
            from ..structure.graph import build_graph

            if self.example_input is None:
                raise ValueError(
                    "this method traces the model and needs an example input: pass "
                    "example_input=torch.randn(1, C, H, W) or data"
                )
            self._graph = build_graph(self.model, self.example_input, self.leaf_modules)
        return self._graph

    def batches(self, name: str = "data") -> Iterator[Tensor]:
        """Validated input batches of S on the model's device."""
        for x, _ in self.labeled_batches(name):
            yield x

    def labeled_batches(self, name: str = "data") -> Iterator[tuple[Tensor, Tensor | None]]:
        """Validated (inputs, labels or None) batches of S on the model's device."""
        shape = tuple(self.example_input.shape[1:]) if self.example_input is not None else None
        return iter_inputs_and_labels(
            self.data,
            name,
            batch_size=self.batch_size,
            expected_shape=shape,
            device=self.device,
            dtype=self.dtype,
        )

    def option(self, key: str, default):
        return self.options.pop(key, default)


class PruningMethod:
    """Subclass, set the flags, implement ``compute_masks``, and register with
    ``@register_method("name")``. Masks must be subsets of ``ctx.current_masks``."""

    name: str = ""
    structured: bool = False  # removes whole channels (filters / input channels)
    data_informed: bool = False  # needs data S
    description: str = ""
    # the keyword options compute_masks reads (ctx.option), so configs can be checked before a
    # run; None: not declared (an unknown option then fails when the method runs)
    option_names: tuple[str, ...] | None = None
    # bumped when what the method computes changes, so stored results of the old one are not
    # resumed as if they were the new one's (experiment config digests include it)
    version: int = 1
    control: bool = False  # removes nothing: a baseline of the study, not a pruning method

    def compute_masks(self, ctx: PruneContext) -> dict[str, Tensor]:
        raise NotImplementedError


def structured_options(ctx: PruneContext, method: str):
    """(coupled, round_to) of a structured method: ``coupled="per_layer"`` (default) is the
    paper's variant, any other value (``"sum"``, ``"skip"``, ...) the group-aware one, which
    alone can round kept channels (``round_to``)."""
    coupled = check_coupled(ctx.option("coupled", PER_LAYER), extra=(PER_LAYER,))
    round_to = ctx.option("round_to", 1)
    if coupled == PER_LAYER and round_to != 1:
        check_round_to(round_to)  # a bad value gets its own message first
        raise ValueError(
            f"{method}: round_to={round_to!r} rounds the kept channels of whole channel groups, "
            "which the paper's per-layer variant (coupled='per_layer', the default) does not "
            "form: pass a group-aware variant too, e.g. coupled='sum'"
        )
    return coupled, round_to
