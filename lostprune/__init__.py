"""lostprune: prune PyTorch networks fast and measure what pruning loses beyond test accuracy.

result = lostprune.prune(model, "wt", 0.8)            # or "sipp", "ft", "pfp" (data=S)
result.model, result.masks, result.stats
"""

from . import sparse  # lostprune.sparse.convert
from ._version import __version__
from .api import PruneResult, prune
from .core.accounting import PruneStats
from .core.masks import load_pruned, remove_masks
from .methods import available_methods
from .structure.slicing import SliceReport, slice_model

__all__ = [
    "PruneResult",
    "PruneStats",
    "SliceReport",
    "__version__",
    "available_methods",
    "load_pruned",
    "prune",
    "remove_masks",
    "slice_model",
    "sparse",
]
