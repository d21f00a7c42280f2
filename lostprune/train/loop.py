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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .._files import save_atomic
from ..core.masks import load_pruned, masked_parameters, settle_masks
from . import distributed
from .schedules import LRSchedule

CHECKPOINT_FORMAT = "lostprune.train/1"
SEGMENTATION_IGNORE_INDEX = 255
# Fields that change the trajectory; a checkpoint written under other values is not resumed.
_RUNTIME_ONLY = {"num_workers"}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run. ``milestones`` are epochs (default: the paper's
    91/182 and 136/182 of ``epochs``); ``amp=None`` means on for CUDA, off on the CPU.

    The length is ``epochs``, or ``steps`` optimizer steps when given (then ``epochs`` is not
    used: the schedule spans steps / batches-per-epoch epochs, the last one cut short).
    ``pct_start``, ``div_factor`` and ``final_div_factor`` shape the ``onecycle`` schedule.
    ``channels_last=None`` trains image models in channels-last memory format on the CPU
    (1.3x faster for ResNet20 on 32x32 images here) and leaves CUDA as it is."""

    epochs: int = 30
    steps: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    batch_size: int = 128
    schedule: str = "multistep"
    warmup_epochs: float = 0.0
    milestones: tuple[float, ...] | None = None
    gamma: float = 0.1
    min_lr: float = 0.0
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: bool | None = None
    amp_dtype: str = "float16"
    seed: int = 0
    num_workers: int = 0
    channels_last: bool | None = None

    def __post_init__(self):
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.steps is not None and (
            not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1
        ):
            raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.amp_dtype not in ("float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be 'float16' or 'bfloat16', got {self.amp_dtype!r}")
        if self.milestones is not None:
            object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        self.lr_schedule()  # validates the schedule fields

    @classmethod
    def paper_cifar(cls, **overrides) -> TrainConfig:
        """docs/methods.md §Prune–retrain, ResNet20 on CIFAR-10: SGD lr 0.1, momentum 0.9, batch
        128, weight decay 1e-4, 182 epochs, ×0.1 at epochs 91 and 136, 5 warm-up epochs."""
        base = cls(
            epochs=182,
            lr=0.1,
            momentum=0.9,
            batch_size=128,
            weight_decay=1e-4,
            schedule="multistep",
            milestones=(91, 136),
            gamma=0.1,
            warmup_epochs=5,
        )
        return dataclasses.replace(base, **overrides)

    def lr_schedule(self, steps_per_epoch: int | None = None) -> LRSchedule:
        """The learning rate over (fractional) epochs; with ``steps`` it spans
        ``steps / steps_per_epoch`` epochs (checked against 1 step an epoch when not given)."""
        epochs = self.epochs if self.steps is None else self.steps / (steps_per_epoch or 1)
        if self.steps is not None and steps_per_epoch is not None and self.warmup_epochs >= epochs:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} is not shorter than the {self.steps} steps "
                f"({epochs:.3g} epochs of {steps_per_epoch} steps)"
            )
        return LRSchedule(
            lr=self.lr,
            epochs=epochs,
            kind=self.schedule,
            warmup_epochs=self.warmup_epochs if self.steps is None or steps_per_epoch else 0.0,
            milestones=self.milestones,
            gamma=self.gamma,
            min_lr=self.min_lr,
            pct_start=self.pct_start,
            div_factor=self.div_factor,
            final_div_factor=self.final_div_factor,
        )

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.steps if self.steps is not None else self.epochs * steps_per_epoch

    def scaled(self, epochs: int) -> TrainConfig:
        """The same schedule squeezed into ``epochs`` (milestones and warm-up scale along): the
        short retraining budgets that CPU experiments need (docs/methods.md §Prune–retrain)."""
        schedule = dataclasses.replace(self, steps=None).lr_schedule().scaled(epochs)
        return dataclasses.replace(
            self,
            epochs=epochs,
            steps=None,
            warmup_epochs=schedule.warmup_epochs,
            milestones=schedule.milestones,
        )


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    snapshots: dict[int, dict] = field(default_factory=dict)
    stopped_early: bool = False
    resumed_from: int | None = None

    @property
    def final(self) -> dict:
        """The last epoch's record (empty if no epoch ran)."""
        return self.history[-1] if self.history else {}


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


def logits_of(output) -> torch.Tensor:
    """The prediction tensor of a model output (torchvision segmentation models return {"out": ...})."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "out" in output:
        return output["out"]
    raise TypeError(f"model output must be a tensor or a mapping with 'out', got {type(output).__name__}")


def _default_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    ignore = SEGMENTATION_IGNORE_INDEX if logits.dim() > 2 else -100
    return nn.functional.cross_entropy(
        logits.float(), targets, ignore_index=ignore, label_smoothing=label_smoothing
    )


def _correct(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int | torch.Tensor]:
    """(number of correct predictions, number counted): top-1 per image, or per labelled pixel."""
    predicted = logits.argmax(1)
    if logits.dim() > 2:
        valid = targets != SEGMENTATION_IGNORE_INDEX
        return (predicted.eq(targets) & valid).sum(), valid.sum()
    return predicted.eq(targets).sum(), targets.numel()


def _split_batch(batch, argument: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f"{argument} must yield (inputs, targets) pairs, got {type(batch).__name__}")


def _check_inputs(model: nn.Module, inputs: torch.Tensor, argument: str) -> None:
    """Before the first forward: float, finite, and the channels the model declares."""
    if not inputs.is_floating_point():
        raise ValueError(
            f"{argument} yields {inputs.dtype} inputs; models need float inputs "
            f"(lostprune.data loaders convert and normalize images)"
        )
    if not torch.isfinite(inputs).all():
        raise ValueError(f"{argument} contains NaN or inf inputs")
    expected = getattr(model, "input_size", None)
    if expected is not None and (inputs.dim() - 1 != len(expected) or inputs.shape[1] != expected[0]):
        # Spatial sizes may differ (global pooling); rank and channels may not.
        raise ValueError(
            f"{argument} yields samples of shape {tuple(inputs.shape[1:])} but the model expects "
            f"{tuple(expected)} (channels first)"
        )


def _check_targets(targets: torch.Tensor, logits: torch.Tensor, argument: str) -> None:
    if targets.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise ValueError(f"{argument} yields {targets.dtype} targets; class indices (int64) are expected")
    labels = targets[targets != SEGMENTATION_IGNORE_INDEX] if logits.dim() > 2 else targets
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(
            f"{argument} has labels from {int(labels.min())} to {int(labels.max())}, but the model "
            f"outputs {logits.shape[1]} classes"
        )


def _as_dataset(data, argument: str, split: str):
    """``data`` as a Dataset or DataLoader; DataSplits stand for their ``split``."""
    from ..data.splits import DataSplits

    if isinstance(data, DataSplits):
        return data.split(split)
    if isinstance(data, (Dataset, DataLoader)):
        return data
    raise TypeError(f"{argument} must be a Dataset, a DataLoader or DataSplits, got {type(data).__name__}")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63)


def _autocast(device: torch.device, amp: bool | None, amp_dtype: str = "float16") -> tuple[bool, torch.dtype]:
    """(enabled, dtype): AMP defaults to on for CUDA; the CPU autocasts to bfloat16."""
    enabled = (device.type == "cuda") if amp is None else bool(amp)
    return enabled, getattr(torch, amp_dtype) if device.type == "cuda" else torch.bfloat16


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def state_on_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model.state_dict()`` (masks included)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    loss_fn: Callable | None = None,
    progress: bool = False,
) -> dict:
    """Loss, accuracy and error of ``model`` on ``data`` (a Dataset, DataLoader or DataSplits,
    whose test split is used). Accuracy is top-1 per image, or per labelled pixel for
    segmentation outputs (N x K x H x W; label 255 ignored)."""
    from tqdm.auto import tqdm

    data = _as_dataset(data, "data", "test")
    device = torch.device(device) if device is not None else model_device(model)
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, shuffle=False)
    use_amp, amp_dtype = _autocast(device, amp)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    counted, samples = torch.zeros((), dtype=torch.int64, device=device), 0
    try:
        for batch in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
            inputs, targets = _split_batch(batch, "data")
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if samples == 0:
                _check_inputs(model, inputs, "data")
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = logits_of(model(inputs))
            if samples == 0:
                _check_targets(targets, logits, "data")
            loss = loss_fn(logits, targets) if loss_fn else _default_loss(logits, targets, 0.0)
            loss_sum += loss.double() * inputs.shape[0]
            c, n = _correct(logits, targets)
            correct += c
            counted += n
            samples += inputs.shape[0]
    finally:
        model.train(was_training)
    if samples == 0:
        raise ValueError("data is empty")
    accuracy = correct.item() / max(1, counted.item())
    return {
        "loss": loss_sum.item() / samples,
        "accuracy": accuracy,
        "error": 1.0 - accuracy,
        "samples": samples,
    }


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
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place on ``data`` (a Dataset, a DataLoader or DataSplits, whose train
    split is used) and return its per-epoch history. ``val_data`` (DataSplits: the validation
    split) is evaluated after every epoch.

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
        disable=not progress or not distributed.is_main(),
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
                val = evaluate(
                    model, val_data, batch_size=max(config.batch_size, 256), device=device, amp=config.amp
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
