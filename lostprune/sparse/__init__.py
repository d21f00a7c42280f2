"""Unstructured-pruned networks that run faster: SparseConv2d / SparseLinear (masked sparse
kernels, docs/architecture.md, Kernels) and ``convert()``, which swaps them in where they beat the
dense layer.

    fast = lostprune.sparse.convert(pruned_model, example_input=x)
    print(lostprune.sparse.report(fast))   # per layer: sparsity, dense vs sparse time, fused ops, decision

``convert`` folds eval BatchNorms and fuses ReLU / residual adds into the sparse kernels
(``fuse=True``, torch.fx; the result is a GraphModule). ``fuse`` makes the same dense
rewrites without sparse layers (BatchNorm folding, vectorized max-pooling), e.g. for a sliced
model: ``lostprune.sparse.fuse(lostprune.slice_model(pruned).eval())``.
"""

from .convert import BREAK_EVEN_SPARSITY, ConversionReport, LayerDecision, convert, report
from .fusion import FastMaxPool2d, fuse
from .modules import SparseConv2d, SparseLinear

__all__ = [
    "BREAK_EVEN_SPARSITY",
    "ConversionReport",
    "FastMaxPool2d",
    "LayerDecision",
    "SparseConv2d",
    "SparseLinear",
    "convert",
    "fuse",
    "report",
]
