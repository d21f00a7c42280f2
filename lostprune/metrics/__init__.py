"""What pruning loses beyond test accuracy (docs/methods.md §Prune potential and the sections after
it): prune potential (nominal, under noise, under corruptions), excess error, functional similarity,
informative features, mIoU, and ``evaluate_grid`` to score many models on many shifted test sets in
one pass."""

from .evaluation import EvaluationGrid, evaluate_grid, iter_labeled_batches
from .features import (
    FeatureMatrix,
    informative_feature_matrix,
    informative_features,
    log_confidence,
    reduce_to,
)
from .potential import (
    ExcessErrorFit,
    SeedSummary,
    excess_error,
    fit_excess_error,
    prune_potential,
    prune_potential_over_draws,
    prune_potential_over_seeds,
    summarize,
)
from .recommend import recommend_ratio
from .segmentation import confusion_matrix, iou_from_confusion, mean_iou
from .shifts import (
    Shift,
    corruption_name,
    corruption_shift,
    corruption_shifts,
    noise_name,
    noise_shift,
    nominal,
)
from .similarity import Similarity, functional_similarity, similarity_table

__all__ = [
    "EvaluationGrid",
    "ExcessErrorFit",
    "FeatureMatrix",
    "SeedSummary",
    "Shift",
    "Similarity",
    "confusion_matrix",
    "corruption_name",
    "corruption_shift",
    "corruption_shifts",
    "evaluate_grid",
    "excess_error",
    "fit_excess_error",
    "functional_similarity",
    "informative_feature_matrix",
    "informative_features",
    "iou_from_confusion",
    "iter_labeled_batches",
    "log_confidence",
    "mean_iou",
    "noise_name",
    "noise_shift",
    "nominal",
    "prune_potential",
    "prune_potential_over_draws",
    "prune_potential_over_seeds",
    "recommend_ratio",
    "reduce_to",
    "similarity_table",
    "summarize",
]
