"""lostprune: prune PyTorch networks fast and measure what pruning loses beyond test accuracy."""

from ._version import __version__

__all__ = ["__version__"]
