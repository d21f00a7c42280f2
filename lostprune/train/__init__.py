"""Training and prune–retrain cycles (docs/methods.md §Prune–retrain).

``train(model, data, TrainConfig(...))`` trains in place with masks enforced;
``prune_retrain(parent, method, keep_ratios, data, retrain)`` yields one ``PrunedNetwork``
per keep ratio in one-shot, cascade or rewind mode, ready to be stored as it comes;
``ShiftAugmentation`` is their shift-aware ``batch_transform`` (docs/methods.md §Guidelines).
"""

from ..core.masks import settle_masks
from .augment import ShiftAugmentation, ShiftedSample
from .cycles import MODES, PrunedNetwork, prune_retrain
from .evaluate import evaluate, logits_of
from .loop import train
from .schedules import Geometric, Linear, LRSchedule, keep_ratio_schedule, paper_keep_ratios
from .train_config import TrainConfig, TrainResult

__all__ = [
    "MODES",
    "Geometric",
    "LRSchedule",
    "Linear",
    "PrunedNetwork",
    "ShiftAugmentation",
    "ShiftedSample",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "keep_ratio_schedule",
    "logits_of",
    "paper_keep_ratios",
    "prune_retrain",
    "settle_masks",
    "train",
]
