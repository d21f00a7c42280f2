"""``lostprune bench``: CPU latency of a saved network run masked, dense, sliced and sparse
(timers in ``lostprune.timing``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .core.copying import copy_model
from .timing import time_call


def _variants(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The ways to run a pruned network: masked (prune hooks), dense (masks folded in),
    sliced (channels really removed) and sparse (packed kernels), where they apply."""
    from .core.masks import remove_masks

    out = {"masked": model}
    dense = remove_masks(copy_model(model)).eval()
    out["dense"] = dense
    try:
        from .structure import slice_model

        out["sliced"] = slice_model(model).eval()
    except (ImportError, ValueError):
        pass
    try:
        from .sparse import convert

        out["sparse"] = convert(copy_model(dense)).eval()
    except ImportError:
        pass
    return out


def bench_network(path: str, batches: Sequence[int] = (1, 32), repeat: int = 5):
    """A rich table of CPU latency per variant and batch size, with speedups over dense."""
    from rich.table import Table

    from .io import load_network

    model = load_network(path).eval()
    size = getattr(model, "input_size", None)
    if size is None:
        raise ValueError(f"{path}: the network does not record its input size")
    variants = _variants(model)
    table = Table(title=f"CPU latency of {path} ({torch.get_num_threads()} threads)")
    table.add_column("batch", justify="right")
    for name in variants:
        table.add_column(f"{name} (ms)", justify="right")
    for name in variants:
        if name != "dense":
            table.add_column(f"{name} speedup", justify="right")
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, *size)
            times = {name: time_call(lambda m=m, x=x: m(x), repeat=repeat) for name, m in variants.items()}
            cells = [f"{1e3 * t:.2f}" for t in times.values()]
            cells += [f"{times['dense'] / t:.2f}×" for name, t in times.items() if name != "dense"]
            table.add_row(str(batch), *cells)
    return table
