"""Pruning methods, one file each, registered by name (docs/methods.md §WT, §SiPP, §FT, §PFP,
§Baselines, §Control)."""

from . import control, ft, pfp, random_, sipp, snip, wt  # noqa: F401  (registration)
from .allocation import keep_top_global
from .base import PruneContext, PruningMethod
from .registry import available_methods, get_method, register_method

__all__ = [
    "PruneContext",
    "PruningMethod",
    "available_methods",
    "get_method",
    "keep_top_global",
    "register_method",
]
