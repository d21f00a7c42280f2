"""The training loop: SGD with momentum and weight decay, warm-up then multistep or cosine
learning rates, AMP on CUDA, checkpoint and exact resume, and pruning masks kept enforced.

Masks are the ``torch.nn.utils.prune`` ones (``weight_orig`` * ``weight_mask``): the product
already zeroes the gradient of removed weights, and after every optimizer step the loop also
zeroes ``weight_orig`` under the mask, so weight decay and momentum never build up there and a
removed weight stays exactly 0 (docs/methods.md §Prune–retrain).

Every epoch draws its shuffle and augmentation from a seed derived from (config.seed, epoch)
inside a forked RNG, so an interrupted run resumed from its checkpoint retraces the
uninterrupted run, and training leaves the caller's random state untouched.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from .._files import save_atomic
from .._progress import bar_disabled
from ..core.masks import load_pruned, masked_parameters, settle_masks
from . import distributed
from .evaluate import (
    _as_dataset,
    _autocast,
    _check_inputs,
    _check_targets,
    _correct,
    _default_loss,
    _split_batch,
    cpu_has_bfloat16,
    evaluate,
    logits_of,
    model_device,
    state_on_cpu,
)
from .train_config import _RUNTIME_ONLY, TrainConfig, TrainResult

CHECKPOINT_FORMAT = "lostprune.train/1"


# --------------------------------------------------------------------------- masks


def _mask_pairs(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(raw parameter, mask) of every masked tensor, gathered once per run so the per-step
    re-zeroing is one in-place multiply per tensor."""
    return [
        (getattr(module, f"{name}_orig"), getattr(module, f"{name}_mask"))
        for module in model.modules()
        for name in masked_parameters(module)
    ]


@torch.no_grad()
def _zero_masked(pairs) -> None:
    for orig, mask in pairs:
        orig.mul_(mask)


# --------------------------------------------------------------------------- helpers


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63)


# --------------------------------------------------------------------------- evaluation


# --------------------------------------------------------------------------- training


def _make_loader(data, config: TrainConfig, device: torch.device, generator: torch.Generator) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if len(data) == 0:
        raise ValueError("data is empty")
    world = distributed.world_size()
    if world > 1:
        # Each process reads its shard; the configured batch stays the global batch.
        if config.batch_size % world:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {world} processes")
        sampler = DistributedSampler(
            data, num_replicas=world, rank=distributed.rank(), shuffle=True, seed=config.seed, drop_last=True
        )
        return DataLoader(
            data,
            batch_size=config.batch_size // world,
            sampler=sampler,
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )
    # A last batch of one image would break BatchNorm in training mode.
    drop_last = len(data) > config.batch_size and len(data) % config.batch_size == 1
    # Workers are not persistent: each epoch starts them from the reseeded generator, which
    # keeps augmentation in workers reproducible per epoch (and resume exact).
    return DataLoader(
        data,
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
    )


def _read_checkpoint(path: Path, config: TrainConfig) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {path} is not a lostprune training checkpoint")
    saved, current = state["config"], dataclasses.asdict(config)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    # A field added after the checkpoint was written matches it while at its default.
    differ = [
        f"{k}: {saved.get(k)!r} -> {v!r}"
        for k, v in current.items()
        if k not in _RUNTIME_ONLY
        and not (k not in saved and v == defaults.get(k))
        and _normalize(saved.get(k)) != _normalize(v)
    ]
    if differ:
        raise ValueError(
            f"checkpoint: {path} was written with another config ({'; '.join(differ)}); "
            f"pass resume=False to start over or use another checkpoint path"
        )
    return state


def _normalize(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def train(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    *,
    val_data=None,
    device: str | torch.device | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    checkpoint_every: int = 1,
    start_epoch: int = 0,
    snapshot_epochs: Sequence[int] = (),
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss_fn: Callable | None = None,
    callbacks: Sequence[Callable[[dict], bool | None]] = (),
    progress: bool | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place on ``data`` (a Dataset, a DataLoader or DataSplits, whose train
    split is used) and return its per-epoch history. ``val_data`` (DataSplits: the validation
    split) is evaluated after every epoch, in float32 whatever ``config.amp``.

    - ``start_epoch``: begin the schedule there (weight rewinding retrains from epoch k).
    - ``checkpoint``: file written every ``checkpoint_every`` epochs (atomically) and, with
      ``resume``, continued from when present: model (masks included), optimizer, AMP scaler,
      history and snapshots. A checkpoint of a finished run returns at once.
    - ``snapshot_epochs``: keep CPU copies of the model state after these epochs (0 = before
      training) in ``result.snapshots``, e.g. the rewind point of lottery-ticket cycles.
    - ``batch_transform``: applied to each input batch on the device (noise, corruptions).
    - ``callbacks``: called with each epoch's record; returning True stops training (for good:
      resuming that checkpoint returns at once).

    The model is left in eval mode, its masked weights current.
    """
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    data = _as_dataset(data, "data", "train")
    val_data = _as_dataset(val_data, "val_data", "validation") if val_data is not None else None
    device = torch.device(device) if device is not None else model_device(model)
    generator = torch.Generator()
    loader = _make_loader(data, config, device, generator)
    steps = len(loader)
    if steps == 0:
        raise ValueError("data yields no batches (fewer samples than batch_size with drop_last?)")
    total_steps = config.total_steps(steps)
    epochs = math.ceil(total_steps / steps)
    if not isinstance(start_epoch, int) or not 0 <= start_epoch < epochs:
        raise ValueError(f"start_epoch must be an integer in [0, epochs={epochs}), got {start_epoch!r}")
    bad = [e for e in snapshot_epochs if not (isinstance(e, int) and start_epoch <= e <= epochs)]
    if bad:
        raise ValueError(
            f"snapshot_epochs must lie in [start_epoch={start_epoch}, epochs={epochs}], got {bad}"
        )
    schedule = config.lr_schedule(steps)
    model.to(device)
    memory_format = _memory_format(config, device)
    if memory_format is not None:
        model.to(memory_format=memory_format)

    checkpoint = Path(checkpoint) if checkpoint is not None else None
    state = (
        _read_checkpoint(checkpoint, config)
        if checkpoint is not None and resume and checkpoint.exists()
        else None
    )
    if state is not None:
        load_pruned(model, state["model"])  # before the optimizer: it may install masks (new parameters)

    use_amp, amp_dtype = _autocast(device, config.amp, config.amp_dtype)
    if use_amp and device.type == "cpu" and not cpu_has_bfloat16():
        warnings.warn(
            "train: amp=True on the CPU autocasts to bfloat16, which this CPU has no instructions "
            "for (AVX512-BF16 or AMX): it is emulated, likely slower than float32; set amp=False",
            RuntimeWarning,
            stacklevel=2,
        )
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    optimizer = torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )

    result = TrainResult(model=model)
    first = start_epoch
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        result.history = list(state["history"])
        result.snapshots = dict(state.get("snapshots", {}))
        first = result.resumed_from = state["epoch"]
        result.stopped_early = bool(state.get("stopped_early", False))
    settle_masks(model)
    pruned = _mask_pairs(model)
    if first == start_epoch and start_epoch in snapshot_epochs:
        result.snapshots[start_epoch] = state_on_cpu(model)

    def save(epoch: int) -> None:
        if not distributed.is_main():
            return
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "config": dataclasses.asdict(config),
                "model": state_on_cpu(model),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "history": result.history,
                "snapshots": result.snapshots,
                "stopped_early": result.stopped_early,
            },
            checkpoint,
        )

    rng_devices = [device] if device.type == "cuda" else []
    bar = tqdm(
        total=total_steps - start_epoch * steps,
        initial=(first - start_epoch) * steps,
        desc=desc,
        unit="step",
        leave=False,
        disable=bar_disabled(progress) or not distributed.is_main(),
        dynamic_ncols=True,
    )
    # Under torchrun the forward/backward runs through DDP (gradients averaged across
    # processes); the bare model keeps its masks, checkpoints and snapshots.
    runner = (
        nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        if distributed.active()
        else model
    )
    model.train()
    try:
        for epoch in range(first, epochs if not result.stopped_early else first):
            started = time.perf_counter()
            seed = _epoch_seed(config.seed, epoch)
            generator.manual_seed(seed)
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            with torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(seed + distributed.rank())  # each process its own augmentation draws
                stats = _run_epoch(
                    runner,
                    loader,
                    optimizer,
                    scaler,
                    schedule,
                    epoch,
                    steps,
                    device,
                    use_amp,
                    amp_dtype,
                    config,
                    loss_fn,
                    batch_transform,
                    pruned,
                    bar,
                    check=epoch == first,
                    limit=min(steps, total_steps - epoch * steps),
                    memory_format=memory_format,
                )
            record = {"epoch": epoch + 1, **stats, "seconds": 0.0}
            if val_data is not None:
                # float32 like every test-set number (metrics/): an autocast validation would
                # report the accuracy of another computation than the model's
                val = evaluate(
                    model, val_data, batch_size=max(config.batch_size, 256), device=device, amp=False
                )
                record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                model.train()
            record["seconds"] = time.perf_counter() - started
            result.history.append(record)
            if epoch + 1 in snapshot_epochs:
                result.snapshots[epoch + 1] = state_on_cpu(model)
            bar.set_postfix(
                epoch=epoch + 1,
                loss=f"{stats['train_loss']:.3f}",
                acc=f"{stats['train_accuracy']:.3f}",
                refresh=False,
            )
            stop = result.stopped_early = any(bool(callback(record)) for callback in callbacks)
            if checkpoint is not None and (
                stop or (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs
            ):
                save(epoch + 1)
                distributed.barrier()
            if stop:
                break
    finally:
        bar.close()
        if memory_format is not None:  # pruning, slicing and the kernels expect contiguous weights
            model.to(memory_format=torch.contiguous_format)
        settle_masks(model)  # masked tensors current (not those of the last forward), deep-copyable
    model.eval()
    return result


def _memory_format(config: TrainConfig, device: torch.device) -> torch.memory_format | None:
    """channels_last when asked, or by default on the CPU (faster convolutions there)."""
    wanted = config.channels_last if config.channels_last is not None else device.type == "cpu"
    return torch.channels_last if wanted else None


def _run_epoch(
    model,
    loader,
    optimizer,
    scaler,
    schedule,
    epoch,
    steps,
    device,
    use_amp,
    amp_dtype,
    config,
    loss_fn,
    batch_transform,
    pruned,
    bar,
    *,
    check: bool,
    limit: int,
    memory_format,
) -> dict:
    """One epoch, or its first ``limit`` steps (the last epoch of a run measured in steps)."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    counted = torch.zeros((), dtype=torch.int64, device=device)
    samples, lr = 0, config.lr
    for step, batch in enumerate(loader):
        if step == limit:
            break
        inputs, targets = _split_batch(batch, "data")
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if batch_transform is not None:
            inputs = batch_transform(inputs)
        if memory_format is not None and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=memory_format)
        lr = schedule.lr_at(epoch + (step + 0.5) / steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if check and step == 0:
            _check_inputs(model, inputs, "data")
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            logits = logits_of(model(inputs))
            if check and step == 0:
                _check_targets(targets, logits, "data")
            loss = (
                loss_fn(logits, targets)
                if loss_fn
                else _default_loss(logits, targets, config.label_smoothing)
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        _zero_masked(pruned)
        loss_sum += loss.detach().double() * inputs.shape[0]
        c, n = _correct(logits.detach(), targets)
        correct += c
        counted += n
        samples += inputs.shape[0]
        bar.update()
        if step == limit - 1:  # epoch totals over every process
            distributed.all_reduce_sum(loss_sum, correct, counted)
            samples *= distributed.world_size()
        if step % 25 == 24 or step == limit - 1:
            mean_loss = loss_sum.item() / samples
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"training loss became {mean_loss} in epoch {epoch + 1} by step {step + 1} "
                    f"(lr {lr:.4g}); lower the learning rate or check the data"
                )
    return {
        "lr": lr,
        "train_loss": loss_sum.item() / samples,
        "train_accuracy": correct.item() / max(1, counted.item()),
    }
