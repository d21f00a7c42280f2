"""Unstructured-pruned networks that run faster: SparseConv2d / SparseLinear (masked sparse
kernels, SPEC §6) and ``convert()``, which swaps them in where they beat the dense layer.

    result = lostprune.sparse.convert(pruned_model, example_input=x)
    print(result)            # per-layer decision: sparsity, dense vs sparse time
    fast = result.model
"""

from .convert import BREAK_EVEN_SPARSITY, LayerDecision, SparseConversion, convert
from .modules import SparseConv2d, SparseLinear

__all__ = ["BREAK_EVEN_SPARSITY", "LayerDecision", "SparseConv2d", "SparseConversion", "SparseLinear", "convert"]
