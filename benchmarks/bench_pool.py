"""lostprune.ops.max_pool2d (the CPU kernel FastMaxPool2d runs in converted sparse models)
against torch's max_pool2d on the same NCHW input (what nn.MaxPool2d runs; scalar on CPU)
on a channels-last copy (oneDNN's layout, the fair dense baseline's) and as two torch passes
(rows through the channels-last kernel, then columns through max_pool1d: what FastMaxPool2d
ran before the kernel), one thread,
thread CPU time, for the AVX-512 build and the AVX2 one (LOSTPRUNE_MARCH=x86-64-v3, torch
held to AVX2 too).

    python benchmarks/bench_pool.py          # writes benchmarks/results/pool.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from benchmarks._util import AVX2_ENV, cpu_model, write_section
from lostprune.ops import max_pool2d
from lostprune.timing import interleaved_ratio

# (what, input shape, kernel, stride, padding)
CASES = [
    ("resnet18 stem pool, batch 1", (1, 64, 112, 112), 3, 2, 1),
    ("resnet18 stem pool, batch 32", (32, 64, 112, 112), 3, 2, 1),
    ("VGG pool 2×2", (1, 128, 112, 112), 2, 2, 0),
    ("3×3 stride 1 (Inception branch)", (1, 192, 28, 28), 3, 1, 1),
]


def two_pass(x, k: int, s: int, p: int):
    """The previous FastMaxPool2d: rows through torch's channels-last kernel on a view whose
    "channels" are the image columns, then columns through torch's 1-d pool."""
    n, c, h, w = x.shape
    rows = F.max_pool2d(x.reshape(n * c, h, 1, w).permute(0, 3, 1, 2), (k, 1), (s, 1), (p, 0))
    rows = rows.permute(0, 2, 3, 1).reshape(n * c, rows.shape[2], w)
    out = F.max_pool1d(rows, k, s, p)
    return out.reshape(n, c, -1, out.shape[-1])


def measure(rounds: int) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for what, shape, k, s, p in CASES:
        x = torch.randn(shape).relu()
        x_cl = x.contiguous(memory_format=torch.channels_last)
        expected = F.max_pool2d(x, k, s, p)
        assert torch.equal(max_pool2d(x, k, s, p), expected) and torch.equal(two_pass(x, k, s, p), expected)
        baselines = {
            "nchw": lambda x=x, k=k, s=s, p=p: F.max_pool2d(x, k, s, p),
            "cl": lambda x=x_cl, k=k, s=s, p=p: F.max_pool2d(x, k, s, p),
            "two": lambda x=x, k=k, s=s, p=p: two_pass(x, k, s, p),
        }
        row = {
            "what": what,
            "shape": list(shape),
            "args": [k, s, p],
            "isa": torch.ops.lostprune.cpu_vector_isa(),
        }
        ours = []
        for name, baseline in baselines.items():
            row[name], t_ours, row[f"vs_{name}"] = interleaved_ratio(
                baseline,
                lambda x=x, k=k, s=s, p=p: max_pool2d(x, k, s, p),
                rounds=rounds,
                clock=time.thread_time,
            )
            ours.append(t_ours)
        row["ours"] = min(ours)
        print(
            f"{row['isa']} {what}: {row['ours'] * 1e3:.3f} ms; speedup {row['vs_nchw']:.1f}x over NCHW torch, "
            f"{row['vs_cl']:.2f}x over channels-last torch, {row['vs_two']:.2f}x over two passes",
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(int(sys.argv[2]))))
        return
    rounds = 1 if "--quick" in sys.argv else 5
    results = measure(rounds)
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(rounds)],
        env={**os.environ, **AVX2_ENV},
        check=True,
        capture_output=True,
        text=True,
    )
    results += json.loads(child.stdout.strip().splitlines()[-1])
    header = (
        "| build | case | input | kernel, stride, padding | torch NCHW (ms) | torch channels-last (ms) "
        "| two passes (ms) | max_pool2d (ms) | speedup over NCHW | over channels-last | over two passes |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [
        f"| {r['isa']} | {r['what']} | {'×'.join(map(str, r['shape']))} | {', '.join(map(str, r['args']))} "
        f"| {r['nchw'] * 1e3:.3f} | {r['cl'] * 1e3:.3f} | {r['two'] * 1e3:.3f} | {r['ours'] * 1e3:.3f} "
        f"| {r['vs_nchw']:.1f}× | **{r['vs_cl']:.2f}×** | **{r['vs_two']:.2f}×** |"
        for r in results
    ]
    body = (
        f"CPU: {cpu_model()}; "
        "float32, one thread, thread CPU time, medians of interleaved rounds (each baseline "
        "alternates with the kernel). Same values as torch in every case (checked before timing). "
        "torch's NCHW CPU max-pool is scalar; the channels-last one is vectorized (oneDNN's layout), "
        'the speed a channels-last dense model gets; "two passes" is what FastMaxPool2d ran before '
        "this kernel (torch's channels-last pool over rows, then max_pool1d over columns). A speedup "
        "below 1× means the kernel is slower.\n\n" + "\n".join(lines)
    )
    if "--quick" not in sys.argv:
        print(write_section("pool", "Max-pooling (CPU)", "python benchmarks/bench_pool.py", body))


if __name__ == "__main__":
    main()
