"""Physical slicing: CPU latency of sliced vs masked models, and Torch-Pruning side by side.

(i)  torchvision ResNet18 after FT (and PFP, where registered) at 30 / 50 / 70 %: latency of
     the masked model (dense with zeros, hooks removed) over the sliced one, batch 1 and 32,
     next to the FLOP reduction dense/pruned (goal: speedup ≥ 0.8 × that at batch 32).
(ii) Torch-Pruning (MagnitudePruner, L1, same channel ratio per group) vs lostprune
     (FT + slice_model) on the same model: time to build the graph and prune (and slice), and
     the latency of the results. Also: slice_model alone on ResNet101 (goal < 2 s).
(iii) The convolution kernels' output-channel tile: latency of one conv as its output channels
     cross a multiple of ``channel_multiple()`` — why ``round_to="auto"`` pays.

    python benchmarks/bench_slicing.py            # writes benchmarks/results/slicing.md
    python benchmarks/bench_slicing.py --only torch-pruning channel-tile   # print those parts only
    python -m pytest benchmarks/bench_slicing.py --benchmark-enable
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lostprune
import lostprune.models as models
from benchmarks._util import interleaved_ratio, write_section
from lostprune.core.accounting import output_positions
from lostprune.core.layers import prunable_layers
from lostprune.structure.granularity import channel_multiple, padded

SIZE = 224
RATIOS = (0.3, 0.5, 0.7)


def example(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in prunable_layers(model).values())


def macs(model: nn.Module) -> int:
    """Conv/linear multiply-accumulates per image the model computes, zeros included."""
    positions, _ = output_positions(model, example())
    return sum(layer.weight.numel() * positions[name] for name, layer in prunable_layers(model).items())


def masked_dense(model: nn.Module) -> nn.Module:
    """The masked baseline: zeros in dense tensors, no pruning hooks (no mask multiply per call)."""
    return lostprune.remove_masks(copy.deepcopy(model)).eval()


def pruned_and_sliced(name: str, method: str, ratio: float, **options):
    if method == "pfp":
        options["data"] = example(8)
    model = models.randomize_norm_statistics(
        models.create(name)
    )  # trained-like: removed filters leave constants
    result = lostprune.prune(model, method, ratio, example_input=example(), progress=False, **options)
    return result, lostprune.slice_model(result.model, example()).eval()


def latency_ratio(
    baseline: nn.Module,
    candidate: nn.Module,
    batch: int,
    memory_format: torch.memory_format = torch.contiguous_format,
    fused: bool = False,
) -> tuple[float, float, float]:
    """Both models and the input in ``memory_format`` (channels_last: oneDNN's own layout, no
    reorder around every convolution); ``fused``: both through ``lostprune.sparse.fuse`` (BN
    folded into the convs, vectorized max-pool)."""
    if fused:
        baseline, candidate = lostprune.sparse.fuse(baseline), lostprune.sparse.fuse(candidate)
    x = example(batch).contiguous(memory_format=memory_format)
    baseline, candidate = baseline.to(memory_format=memory_format), candidate.to(memory_format=memory_format)
    with torch.inference_mode():
        return interleaved_ratio(
            lambda: baseline(x), lambda: candidate(x), rounds=3, min_time=0.3 if batch == 1 else 0.0
        )


# ----------------------------------------------------------------------------- Torch-Pruning
def torch_pruning_step(model: nn.Module, channel_ratio: float) -> nn.Module:
    """Torch-Pruning's documented recipe: L1 magnitude, the same channel ratio in every group,
    the classifier's outputs kept. Works in place, so it gets a copy (timed, like ours)."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(
        model,
        example(),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=channel_ratio,
        ignored_layers=[model.fc],
    )
    pruner.step()
    return model


def ours_step(model: nn.Module, ratio: float) -> nn.Module:
    result = lostprune.prune(model, "ft", ratio, example_input=example(), progress=False)
    return lostprune.slice_model(result.model, example())


def median_time(fn, repeat: int = 3) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# ----------------------------------------------------------------------------- pytest-benchmark
def test_slice_resnet18(benchmark):
    result = lostprune.prune(models.create("resnet18"), "ft", 0.5, example_input=example(), progress=False)
    benchmark(lostprune.slice_model, result.model, example())


def test_ft_prune_and_slice_resnet18(benchmark):
    model = models.create("resnet18")
    benchmark(ours_step, model, 0.5)


def test_torch_pruning_resnet18(benchmark):
    model = models.create("resnet18")
    benchmark(torch_pruning_step, model, 0.3)


# ----------------------------------------------------------------------------- report
def latency_table() -> str:
    variants = [("ft", {}), ("ft", {"round_to": 8}), ("ft", {"round_to": "auto"})]
    if "pfp" in lostprune.available_methods():
        variants += [
            ("pfp", {}),
            ("pfp", {"round_to": 8}),
            ("pfp", {"round_to": "auto"}),
            ("pfp", {"coupled": "per_layer"}),
        ]
    lines = [
        (
            "| method | ratio | FLOPs dense/pruned | FLOPs dense/sliced | conv work on padding | params sliced | batch "
            "| layout | masked (ms) | sliced (ms) | speedup | speedup / FLOP reduction |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, options in variants:
        label = method.upper() + "".join(f", {k}={v}" for k, v in options.items())
        for ratio in RATIOS:
            result, sliced = pruned_and_sliced("resnet18", method, ratio, **options)
            baseline = masked_dense(result.model)
            flop_factor = result.stats.flops_dense / result.stats.flops_pruned
            sliced_factor = result.stats.flops_dense / macs(sliced)
            for batch, layout in (
                (1, "NCHW"),
                (32, "NCHW"),
                (32, "channels_last"),
                (32, "channels_last, fused"),
            ):
                memory_format = (
                    torch.channels_last if layout.startswith("channels_last") else torch.contiguous_format
                )
                tb, tc, speedup = latency_ratio(
                    baseline, sliced, batch, memory_format, fused="fused" in layout
                )
                report = sliced.slice_report
                lines.append(
                    f"| {label} | {ratio:.0%} | {flop_factor:.2f}× | {sliced_factor:.2f}× | "
                    f"{report.padding_share:.0%} | "
                    f"{report.params_after:,} | "
                    f"{batch} | {layout} | {tb * 1e3:.1f} | {tc * 1e3:.1f} | {speedup:.2f}× | "
                    f"{speedup / flop_factor:.2f} |"
                )
                print(lines[-1], flush=True)
    missing = (
        ""
        if any(m == "pfp" for m, _ in variants)
        else "\n\nPFP is not registered on this branch yet; its rows appear once it is (rerun this script)."
    )
    return "\n".join(lines) + missing


def torch_pruning_table() -> str:
    lines = [
        (
            "| model | tool | channel ratio | prunable weights kept | graph + prune (+ slice) (s) | "
            "time / Torch-Pruning's | latency batch 32 (ms) | same function |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, channel_ratio in (("resnet18", 0.3), ("resnet50", 0.3), ("resnet101", 0.3)):
        model = models.create(name).eval()
        dense = weights(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = torch_pruning_step(model, channel_ratio).eval()  # also warms Torch-Pruning up
            ratio = 1 - weights(theirs) / dense  # our FT at the weight ratio Torch-Pruning reached
            ours = ours_step(model, ratio).eval()  # also warms lostprune up (kernel library loaded)
            # interleaved, so that load from other processes hits both tools alike
            t_tp, t_ours = [], []
            for _ in range(5):
                t_tp.append(median_time(lambda model=model, r=channel_ratio: torch_pruning_step(model, r), 1))
                t_ours.append(median_time(lambda model=model, r=ratio: ours_step(model, r), 1))
            t_tp, t_ours = statistics.median(t_tp), statistics.median(t_ours)
        latency = {}
        if name == "resnet18":
            tb, tc, _ = latency_ratio(theirs, ours, 32)
            latency = {"tp": f"{tb * 1e3:.0f}", "ours": f"{tc * 1e3:.0f}"}
        lines.append(
            f"| {name} | Torch-Pruning 1.6 | {channel_ratio:.0%} per group | {weights(theirs):,} | "
            f"{t_tp:.2f} | 1 | {latency.get('tp', '–')} | no (BN shifts of removed channels dropped) |"
        )
        lines.append(
            f"| {name} | lostprune FT + slice_model | FT at {ratio:.2%} of weights | {weights(ours):,} | "
            f"{t_ours:.2f} | {t_ours / t_tp:.2f} | {latency.get('ours', '–')} | yes (constants folded) |"
        )
        print(lines[-2], lines[-1], sep="\n", flush=True)
    return "\n".join(lines)


def channel_tile() -> str:
    """One 3×3 conv (32 input channels, 56×56, batch 32, channels_last) as its output channels
    grow past multiples of the tile: the cost follows ``padded(out, tile)``, not ``out``."""
    tile = channel_multiple()
    rows = [
        (
            f"| output channels | computed as (multiple of {tile}) | latency (ms) | ÷ latency at 32 | "
            "÷ channels/32 |"
        ),
        "|---|---|---|---|---|",
    ]
    x = torch.randn(32, 32, 56, 56).contiguous(memory_format=torch.channels_last)
    convs = {
        c: nn.Conv2d(32, c, 3, padding=1, bias=False).to(memory_format=torch.channels_last).eval()
        for c in (32, 33, 34, 40, 48, 49, 64)
    }
    with torch.inference_mode():
        for conv in convs.values():
            conv(x)
        samples = {c: [] for c in convs}
        for _ in range(5):  # interleaved rounds, so drift hits every width alike
            for c, conv in convs.items():
                samples[c].append(median_time(lambda conv=conv: conv(x), 1))
    base = min(samples[32])
    for c in convs:
        t = min(samples[c])
        rows.append(f"| {c} | {padded(c, tile)} | {t * 1e3:.1f} | {t / base:.2f} | {c / 32:.2f} |")
    return "\n".join(rows)


def slicing_time() -> str:
    rows = ["| model | prune FT 50 % (s) | slice_model (s, median of 3) |", "|---|---|---|"]
    for name in ("resnet18", "resnet50", "resnet101"):
        start = time.perf_counter()
        result = lostprune.prune(models.create(name), "ft", 0.5, example_input=example(), progress=False)
        t_prune = time.perf_counter() - start
        t_slice = median_time(lambda pruned=result.model: lostprune.slice_model(pruned, example()))
        rows.append(f"| {name} | {t_prune:.2f} | {t_slice:.2f} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


PARTS = {
    "latency": latency_table,
    "torch-pruning": torch_pruning_table,
    "slicing-time": slicing_time,
    "channel-tile": channel_tile,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(PARTS),
        help="run only these parts and print them (benchmarks/results/slicing.md is left alone)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    # One thread: on a shared 2-core machine two OpenMP threads stall on each other whenever
    # one is descheduled, which drowns the ratios in noise.
    torch.set_num_threads(1)
    if args.only:
        for part in args.only:
            print(PARTS[part]())
        return
    body = (
        f"CPU float32, one thread, input 3×{SIZE}×{SIZE}, eval mode, `torch.inference_mode`. *Masked* = "
        "the pruned model with zeros in dense tensors (pruning hooks removed); *sliced* = "
        "`lostprune.slice_model` of it (same outputs within float32 rounding). BN statistics are randomized "
        "like a trained network's, so removed filters leave constants that slicing folds (border terms "
        "included). Speedups are medians of interleaved runs in the same process (`interleaved_ratio`). "
        "*layout*: both models and the input in that memory format — with channels_last oneDNN convolves in "
        "its own layout instead of reordering activations around every convolution, a memory-bound cost that "
        "does not shrink with FLOPs (`sliced.to(memory_format=torch.channels_last)` for CPU inference). "
        "*FLOPs dense/pruned*: the reduction the masks count (the goal's yardstick); *dense/sliced*: conv/linear "
        "MACs the sliced model really computes. They agree wherever whole channels go; with PFP "
        '`coupled="per_layer"` a column one reader of a residual channel drops stays (as zeros) in the sliced '
        "model. *conv work on padding*: see the output-channel tile below. `round_to=auto` is 16 on this CPU. "
        "*fused*: both models through `lostprune.sparse.fuse` (eval BatchNorms folded into the convs — into "
        "a sliced model's border terms too — and vectorized max-pooling), the memory-bound work deployment "
        "removes anyway, which otherwise shrinks with channels, not FLOPs."
        "\n\n### Sliced vs masked ResNet18\n\n"
        + latency_table()
        + "\n\n### Torch-Pruning side by side\n\nBoth tools start from the same randomly initialized "
        "torchvision model (eval mode) and example input; times include copying the model (Torch-Pruning "
        "prunes in place) and, for lostprune, accounting and slicing. Each tool runs once to warm up (kernel "
        "library loaded), then 5 times interleaved with the other; medians. Torch-Pruning removes the same "
        "fraction of channels in every group; lostprune's FT gets the weight ratio Torch-Pruning reached.\n\n"
        + torch_pruning_table()
        + "\n\n### Slicing time\n\n"
        + slicing_time()
        + "\n\n### Output-channel tile\n\nOne 3×3 convolution, 32 input channels, 56×56, batch 32, "
        "channels_last, as its output channels grow; interleaved rounds, best of 5. oneDNN computes output "
        "channels a vector register at a time, so the cost steps with the channel count rounded up to "
        f"`channel_multiple()` ({channel_multiple()} here): a layer that keeps 34 of 64 filters costs what one "
        "that keeps 48 does. This is the gap between the plain and the `round_to` rows above: *conv work on "
        "padding* is `slice_report.padding_share`, the share of the sliced convs' work the kernels spend on "
        "those padded channels.\n\n" + channel_tile()
    )
    print(
        write_section("slicing", "Physical channel slicing (CPU)", "python benchmarks/bench_slicing.py", body)
    )


if __name__ == "__main__":
    main()
