"""Prune–retrain cycles (docs/methods.md §Prune–retrain): one-shot, cascade and rewind.

- ``oneshot``: prune the parent to each keep ratio independently, retrain each.
- ``cascade`` (the paper's mode): prune the current network a step further, retrain, repeat.
- ``rewind`` (lottery-ticket style, Frankle et al. / Renda et al. weight rewinding): prune the
  current trained network, reset its surviving weights (and BatchNorm state) to
  ``rewind_state`` — the parent's state at epoch ``rewind_epoch`` of its training — and
  retrain from that epoch.

Retraining is learning-rate rewinding (Renda et al. 2020): the ``retrain`` schedule is re-run
from its start (or from ``rewind_epoch``) on the surviving weights; its length is yours
(``TrainConfig.scaled`` squeezes a schedule into a short budget).

``prune_retrain`` is a generator: each produced network is yielded as soon as it is retrained,
so a runner can store it and, after a crash, pass what it stored as ``completed`` to continue
(cascade and rewind continue from the last completed network; one-shot skips the done ones).
With ``checkpoint_dir`` an interrupted retraining also resumes mid-way.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .._progress import bar_disabled
from ..core.copying import copy_model
from ..core.masks import load_pruned
from .evaluate import state_on_cpu
from .loop import train
from .train_config import TrainConfig

MODES = ("oneshot", "cascade", "rewind")


@dataclass
class PrunedNetwork:
    """One network produced by the cycles. ``cycle`` counts the prune–retrain cycles behind it
    (one-shot: 1; cascade and rewind: index + 1)."""

    index: int
    cycle: int
    mode: str
    method: str
    keep_ratio: float
    model: nn.Module
    stats: object  # lostprune.PruneStats of the pruning step
    masks: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    prune_seconds: float = 0.0
    train_seconds: float = 0.0

    @property
    def target_ratio(self) -> float:
        return 1.0 - self.keep_ratio

    @property
    def achieved_ratio(self) -> float:
        return self.stats.achieved_ratio

    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copy of the model's state (masks included; restore with ``lostprune.load_pruned``)."""
        return state_on_cpu(self.model)

    def summary(self) -> dict:
        """A flat, JSON-friendly record: ratios, sizes, FLOPs, final training epoch, metrics, times."""
        stats = self.stats
        final = self.history[-1] if self.history else {}
        return {
            "index": self.index,
            "cycle": self.cycle,
            "mode": self.mode,
            "method": self.method,
            "keep_ratio": self.keep_ratio,
            "target_ratio": self.target_ratio,
            "achieved_ratio": stats.achieved_ratio,
            "paper_prune_ratio": stats.paper_prune_ratio,
            "nonzero_params": stats.nonzero_params,
            "total_params": stats.total_params,
            "flop_reduction": stats.flop_reduction,
            "retrain_epochs": len(self.history),
            **{f"final_{k}": v for k, v in final.items() if k != "epoch"},
            **{f"metric_{k}": v for k, v in self.metrics.items()},
            "prune_seconds": self.prune_seconds,
            "train_seconds": self.train_seconds,
        }


def _check_keep_ratios(keep_ratios, mode: str) -> list[float]:
    try:
        ratios = [float(k) for k in keep_ratios]
    except (TypeError, ValueError):
        raise TypeError(f"keep_ratios must be a sequence of numbers in (0, 1], got {keep_ratios!r}") from None
    if not ratios:
        raise ValueError("keep_ratios is empty")
    bad = [k for k in ratios if not 0 < k <= 1]
    if bad:
        raise ValueError(f"keep_ratios must lie in (0, 1] (the fraction of prunable weights kept), got {bad}")
    if mode != "oneshot":
        for i, (a, b) in enumerate(itertools.pairwise(ratios)):
            if b >= a:
                raise ValueError(
                    f"keep_ratios must decrease in {mode} mode (each cycle prunes further), "
                    f"got {a} then {b} at positions {i} and {i + 1}"
                )
    return ratios


def _rewind(model: nn.Module, rewind_state: Mapping[str, torch.Tensor]) -> None:
    """Reset every parameter and buffer of a pruned ``model`` to ``rewind_state`` (an unpruned
    or pruned state_dict of the same architecture), keeping the model's masks."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("_mask"):
            state[key] = value
            continue
        source = key[: -len("_orig")] if key.endswith("_orig") and key not in rewind_state else key
        if source not in rewind_state:
            raise KeyError(
                f"rewind_state has no entry {source!r}; pass the parent's state_dict from an early "
                f"epoch (train(..., snapshot_epochs=[k]).snapshots[k])"
            )
        state[key] = rewind_state[source]
    load_pruned(model, state)  # also re-zeroes the rewound weights under the masks


def prune_retrain(
    parent: nn.Module,
    method: str,
    keep_ratios: Sequence[float],
    data,
    retrain: TrainConfig,
    *,
    mode: str = "cascade",
    prune_data=None,
    val_data=None,
    evaluate: Callable[[nn.Module], Mapping] | None = None,
    rewind_state: Mapping[str, torch.Tensor] | None = None,
    rewind_epoch: int = 0,
    completed: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
    checkpoint_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    prune_options: Mapping | None = None,
    train_options: Mapping | None = None,
) -> Iterator[PrunedNetwork]:
    """Yield one retrained ``PrunedNetwork`` per keep ratio.

    Args:
        parent: the trained network; never modified.
        method: a registered pruning method (``lostprune.available_methods()``).
        keep_ratios: fractions of the prunable weights kept, e.g. ``paper_keep_ratios()`` or
            ``keep_ratio_schedule(Geometric(...), Linear(...))``; decreasing unless one-shot.
        data: training data (Dataset, DataLoader or DataSplits — then its train split, and its
            S split as ``prune_data`` unless given).
        retrain: the retraining schedule, re-run from its start every cycle (learning-rate
            rewinding); cycle i trains with seed ``retrain.seed + i``.
        prune_data: S for data-informed methods (held out of training, never the test set).
        evaluate: metrics hook, ``evaluate(model) -> dict``, stored in ``PrunedNetwork.metrics``.
        rewind_state, rewind_epoch: rewind mode — the parent's state at ``rewind_epoch`` of a
            ``retrain``-shaped training run; retraining restarts from that epoch.
        completed: {index: state_dict} of networks a previous run produced and stored.
        checkpoint_dir: per-cycle training checkpoints, so an interrupted retraining resumes.
        prune_options / train_options: extra keyword arguments for ``lostprune.prune`` /
            ``lostprune.train.train`` (e.g. ``batch_transform`` for robust retraining).
    """
    from tqdm.auto import tqdm

    from ..api import prune
    from ..data.splits import DataSplits
    from ..methods import get_method

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    method_name = get_method(method).name  # unknown methods fail here, listing the valid ones
    ratios = _check_keep_ratios(keep_ratios, mode)
    if not isinstance(retrain, TrainConfig):
        raise TypeError(f"retrain must be a TrainConfig, got {type(retrain).__name__}")
    if isinstance(data, DataSplits):
        prune_data = data.s if prune_data is None else prune_data
        data = data.train
    start_epoch = 0
    if mode == "rewind":
        if rewind_state is None:
            raise ValueError(
                "rewind mode needs rewind_state: the parent's state_dict at an early epoch "
                "(train(..., snapshot_epochs=[k]).snapshots[k])"
            )
        if (
            not isinstance(rewind_epoch, int)
            or rewind_epoch < 0
            or (retrain.steps is None and rewind_epoch >= retrain.epochs)
        ):
            raise ValueError(
                f"rewind_epoch must be an integer in [0, retrain.epochs={retrain.epochs}), "
                f"got {rewind_epoch!r}"
            )
        start_epoch = rewind_epoch
    elif rewind_state is not None:
        raise ValueError(f"rewind_state is only used in rewind mode, not {mode!r}")
    completed = dict(completed or {})
    bad = [i for i in completed if not (isinstance(i, int) and 0 <= i < len(ratios))]
    if bad:
        raise ValueError(f"completed has indices outside keep_ratios (0..{len(ratios) - 1}): {bad}")
    prune_options, train_options = dict(prune_options or {}), dict(train_options or {})
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    current, todo = parent, list(range(len(ratios)))
    if mode != "oneshot" and completed:
        last = max(completed)
        current = load_pruned(copy_model(parent), completed[last])
        todo = todo[last + 1 :]
    elif mode == "oneshot":
        todo = [i for i in todo if i not in completed]

    outer = tqdm(
        total=len(ratios),
        initial=len(ratios) - len(todo),
        desc=f"{mode} {method_name}",
        unit="net",
        disable=bar_disabled(progress),
        dynamic_ncols=True,
    )
    try:
        for index in todo:
            keep = ratios[index]
            outer.set_postfix(keep=f"{keep:.4f}", refresh=True)
            started = time.perf_counter()
            source = parent if mode == "oneshot" else current
            result = prune(
                source, method_name, 1.0 - keep, prune_data, inplace=False, progress=False, **prune_options
            )
            model = result.model
            if mode == "rewind":
                _rewind(model, rewind_state)
            pruned_at = time.perf_counter()
            checkpoint = checkpoint_dir / f"cycle-{index:03d}.pt" if checkpoint_dir is not None else None
            trained = train(
                model,
                data,
                dataclasses.replace(retrain, seed=retrain.seed + index),
                val_data=val_data,
                device=device,
                checkpoint=checkpoint,
                start_epoch=start_epoch,
                progress=progress,
                desc=f"retrain {index + 1}/{len(ratios)}",
                **train_options,
            )
            trained_at = time.perf_counter()
            network = PrunedNetwork(
                index=index,
                cycle=1 if mode == "oneshot" else index + 1,
                mode=mode,
                method=method_name,
                keep_ratio=keep,
                model=model,
                stats=result.stats,
                masks=result.masks,
                history=trained.history,
                metrics=dict(evaluate(model)) if evaluate is not None else {},
                prune_seconds=pruned_at - started,
                train_seconds=trained_at - pruned_at,
            )
            outer.update()
            yield network
            # The consumer has the network (and stored it, if it stores): its checkpoint is done.
            if checkpoint is not None and checkpoint.exists():
                checkpoint.unlink()
            current = model
    finally:
        outer.close()
