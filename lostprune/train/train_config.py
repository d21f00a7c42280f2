"""What a training run is told (``TrainConfig``: optimizer, schedule, augmentation, AMP,
checkpointing) and what it reports (``TrainResult``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch.nn as nn

from .schedules import LRSchedule

# Fields that change the trajectory; a checkpoint written under other values is not resumed.
_RUNTIME_ONLY = {"num_workers"}
# The schedule's defaults are LRSchedule's own: one place says what an unset field means.
_SCHEDULE = {f.name: f.default for f in dataclasses.fields(LRSchedule)}


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
    lr: float = _SCHEDULE["lr"]
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    batch_size: int = 128
    schedule: str = _SCHEDULE["kind"]
    warmup_epochs: float = _SCHEDULE["warmup_epochs"]
    milestones: tuple[float, ...] | None = _SCHEDULE["milestones"]
    gamma: float = _SCHEDULE["gamma"]
    min_lr: float = _SCHEDULE["min_lr"]
    pct_start: float = _SCHEDULE["pct_start"]
    div_factor: float = _SCHEDULE["div_factor"]
    final_div_factor: float = _SCHEDULE["final_div_factor"]
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
