"""gather_channels vs the per-tensor index_select loop it replaces, on one slicing step of
a real network (every conv/BN/linear tensor of torchvision resnet18, half the channels kept).

    python benchmarks/bench_gather.py                   # writes benchmarks/results/gather.md
    python -m pytest benchmarks/bench_gather.py --benchmark-enable
"""

from __future__ import annotations

import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from benchmarks._util import interleaved_ratio, write_section
from lostprune.ops import gather_channels, gather_channels_reference


def slicing_step(model_name: str = "resnet18", keep: float = 0.5):
    import lostprune.models as models

    gen = torch.Generator().manual_seed(0)
    tensors, rows, cols = [], [], []
    for p in models.create(model_name).state_dict().values():
        if not p.is_floating_point() or p.dim() == 0:
            continue
        tensors.append(p)
        rows.append(torch.randperm(p.shape[0], generator=gen)[: max(1, int(keep * p.shape[0]))].sort().values)
        cols.append(
            torch.randperm(p.shape[1], generator=gen)[: max(1, int(keep * p.shape[1]))].sort().values
            if p.dim() >= 2
            else None
        )
    return tensors, rows, cols


def test_gather_kernel(benchmark):
    tensors, rows, cols = slicing_step()
    benchmark(gather_channels, tensors, rows, cols)


def test_gather_index_select_loop(benchmark):
    tensors, rows, cols = slicing_step()
    benchmark(gather_channels_reference, tensors, rows, cols)


def main() -> None:
    lines = [
        "| model | tensors | elements moved | index_select loop (ms) | gather op (ms) | speedup |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("resnet18", "resnet50"):
        tensors, rows, cols = slicing_step(name)
        moved = sum(t.numel() for t in gather_channels(tensors, rows, cols))
        tb, tc, ratio = interleaved_ratio(
            lambda t=tensors, r=rows, c=cols: gather_channels_reference(t, r, c),
            lambda t=tensors, r=rows, c=cols: gather_channels(t, r, c),
        )
        lines.append(
            f"| {name} | {len(tensors)} | {moved:,} | {tb * 1e3:.2f} | {tc * 1e3:.2f} | {ratio:.2f}× |"
        )
    body = (
        "One slicing step: every floating tensor of the model, half of its rows and columns kept "
        "(random sorted indices), CPU float32.\n\n" + "\n".join(lines)
    )
    print(write_section("gather", "Channel-slicing gather (CPU)", "python benchmarks/bench_gather.py", body))


if __name__ == "__main__":
    main()
