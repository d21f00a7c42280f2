"""nonzero_rows_cols (the live rows and columns slicing reads off every weight) vs its
plain-PyTorch reference (max reductions of |w|, or max and min past 4 M elements), over
every weight of a torchvision network, dense and with 30 % of rows and columns zeroed as FT
leaves them; one thread, thread CPU time, interleaved medians.

    python benchmarks/bench_nonzero.py                  # writes benchmarks/results/nonzero.md
    python -m pytest benchmarks/bench_nonzero.py --benchmark-enable
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._util import interleaved_ratio, write_section
from benchmarks.bench_zoo import cpu_line
from lostprune.ops.nonzero import nonzero_rows_cols, nonzero_rows_cols_reference

MODELS = ("mobilenet_v3_small", "resnet18", "vgg16")


def weights(model_name: str, pruned: bool) -> list[torch.Tensor]:
    """The conv and linear weights of ``model_name`` (random init); ``pruned``: 30 % of each
    weight's rows and columns zeroed (random), as FT's masks leave them."""
    import torchvision

    model = getattr(torchvision.models, model_name)()
    gen = torch.Generator().manual_seed(0)
    out = []
    for p in model.parameters():
        if p.dim() < 2:
            continue
        w = p.detach().clone()
        if pruned:
            w[torch.randperm(w.shape[0], generator=gen)[: int(0.3 * w.shape[0])]] = 0
            w[:, torch.randperm(w.shape[1], generator=gen)[: int(0.3 * w.shape[1])]] = 0
        out.append(w)
    return out


def test_nonzero_kernel(benchmark):
    ws = weights("resnet18", True)
    benchmark(lambda: [nonzero_rows_cols(w) for w in ws])


def test_nonzero_reference(benchmark):
    ws = weights("resnet18", True)
    benchmark(lambda: [nonzero_rows_cols_reference(w) for w in ws])


def main() -> None:
    torch.set_num_threads(1)
    lines = [
        "| model | weights | elements | zeroed rows / cols | reference (ms) | kernel (ms) | speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        for pruned in (False, True):
            ws = weights(name, pruned)
            for w in ws:  # the same answer, before timing it
                got, expected = nonzero_rows_cols(w), nonzero_rows_cols_reference(w)
                assert all(torch.equal(g, e) for g, e in zip(got, expected)), name
            tb, tc, ratio = interleaved_ratio(
                lambda ws=ws: [nonzero_rows_cols_reference(w) for w in ws],
                lambda ws=ws: [nonzero_rows_cols(w) for w in ws],
                rounds=7,
                min_time=0.1,
                clock=time.thread_time,
            )
            lines.append(
                f"| {name} | {len(ws)} | {sum(w.numel() for w in ws):,} | {'30 %' if pruned else 'none'} | "
                f"{tb * 1e3:.2f} | {tc * 1e3:.2f} | **{ratio:.1f}×** |"
            )
            print(lines[-1], flush=True)
    body = (
        f"CPU: {cpu_line()}; one thread, thread CPU time, medians of 7 interleaved rounds; float32. Every "
        "conv and linear weight of the network (random init), one call per weight, as slicing makes them; "
        "the two agree on every weight (checked first).\n\n" + "\n".join(lines)
    )
    print(write_section("nonzero", "Live rows and columns (CPU)", "python benchmarks/bench_nonzero.py", body))


if __name__ == "__main__":
    main()
