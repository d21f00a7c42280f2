"""The torchvision classification zoo, lostprune and Torch-Pruning side by side, at 50 % of MACs.

Per model (random weights, trained-like BN statistics, 3×224×224 — 299 for inception_v3):
* **lostprune**: group-aware FT (``coupled="sum"``) + ``slice_model``; **Torch-Pruning**: its
  documented recipe (``MetaPruner``, L1 magnitude, the same channel ratio in every group,
  the classifier's outputs kept; ``num_heads`` of ``nn.MultiheadAttention`` given).
* Each tool's ratio is searched (untimed, secant steps) until the pruned model computes
  50 ± 1.5 % of the dense conv/linear MACs (one yardstick for both: MACs per image of the
  conv and linear layers, counted on the model each tool returns).
* **time to prune**: a fresh copy of the model to a pruned model (lostprune: trace, prune,
  slice; Torch-Pruning: copy — it works in place —, graph, step); best of two runs,
  interleaved; kernels loaded beforehand.
* **exact**: lostprune's sliced model against its masked model (max |difference| / max
  |output|); Torch-Pruning has no masked counterpart: whether its pruned model runs.
* **speedup**: dense / pruned latency, batch 1 and 32, one thread, NCHW, eval mode, medians
  of interleaved runs (``interleaved_ratio``).

Each model runs in its own subprocess (memory, and a tool's failure stays with its model).

    python benchmarks/bench_zoo.py                      # writes benchmarks/results/zoo.md
    python benchmarks/bench_zoo.py --models resnet18 vit_b_16 --no-write
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = [
    "alexnet",
    "vgg16_bn",
    "googlenet",
    "inception_v3",
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "densenet121",
    "squeezenet1_1",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mnasnet1_0",
    "shufflenet_v2_x1_0",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
    "swin_v2_t",
    "maxvit_t",
]
TARGET, TOLERANCE = 0.5, 0.015


def example(name: str, batch: int = 1) -> torch.Tensor:
    size = 299 if name == "inception_v3" else 224
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def create(name: str) -> nn.Module:
    import torchvision

    import lostprune.models as models

    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    return models.randomize_norm_statistics(model).eval()


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates per image of the conv and linear layers (zeros included)."""
    from lostprune.core.accounting import output_positions

    positions, _ = output_positions(model, x)
    return sum(
        m.weight.numel() * positions[name]
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and name in positions
    )


def secant(evaluate, start: float, low: float, high: float, steps: int = 4):
    """(ratio, share, output) of the ratio whose MACs share is closest to TARGET, in at most
    ``steps`` evaluations (``evaluate``: ratio -> (share, output); share falls as ratio grows)."""
    tried: dict[float, tuple[float, object]] = {}
    ratio, previous = start, None
    for _ in range(steps):
        tried[ratio] = evaluate(ratio)
        share = tried[ratio][0]
        if abs(share - TARGET) <= TOLERANCE:
            break
        if previous is None or tried[previous][0] == share:
            slope = -2.0 * share  # MACs of a layer shrink with its input and output channels
        else:
            slope = (share - tried[previous][0]) / (ratio - previous)
        previous, ratio = ratio, min(high, max(low, ratio - (share - TARGET) / min(slope, -1e-3)))
        if ratio in tried:
            break
    best = min(tried, key=lambda r: abs(tried[r][0] - TARGET))
    return best, *tried[best]


# ----------------------------------------------------------------------------- the tools
def lostprune_step(model: nn.Module, x: torch.Tensor, ratio: float):
    import lostprune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = lostprune.prune(model, "ft", ratio, example_input=x, coupled="sum", progress=False)
        return result, lostprune.slice_model(result.model)


def torch_pruning_step(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model)  # Torch-Pruning works in place (timed, as lostprune's copy)
    classifier = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[classifier],
            num_heads=heads,
        )
        pruner.step()
    return model.eval()


def error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120] if text else ''}"


def run_one(name: str) -> dict:
    from lostprune.bench import interleaved_ratio
    from lostprune.ops import gather_channels

    torch.set_num_threads(1)
    gather_channels([torch.zeros(2, 2)], [torch.tensor([0])], [None])  # load the kernels before timing
    model, x = create(name), example(name)
    dense_macs = conv_linear_macs(model, x)
    row = {
        "model": name,
        "dense_gmacs": dense_macs / 1e9,
        "params": sum(p.numel() for p in model.parameters()),
    }

    # lostprune
    def lp_evaluate(r: float):
        result, sliced = lostprune_step(model, x, r)
        return conv_linear_macs(sliced, x) / dense_macs, (result, sliced)

    sliced = pruned = None
    try:
        ratio, share, (result, sliced) = secant(lp_evaluate, 0.5, 0.05, 0.95)
        with torch.no_grad():
            masked_out, sliced_out = result.model.eval()(x), sliced.eval()(x)
        row["lp"] = {
            "ratio": ratio,
            "macs": share,
            "params": sum(p.numel() for p in sliced.parameters()) / row["params"],
            "error": float((masked_out - sliced_out).abs().max() / masked_out.abs().max()),
        }
        del result
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row["lp"] = {"failed": error_text(exc)}

    # Torch-Pruning
    def tp_evaluate(r: float):
        candidate = torch_pruning_step(model, x, r)
        return conv_linear_macs(candidate, x) / dense_macs, candidate

    try:
        tp_ratio, share, pruned = secant(tp_evaluate, 0.3, 0.02, 0.9)
        with torch.no_grad():
            out = pruned(x)
        row["tp"] = {
            "ratio": tp_ratio,
            "macs": share,
            "params": sum(p.numel() for p in pruned.parameters()) / row["params"],
            "runs": tuple(out.shape) == (1, 1000),
        }
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row["tp"] = {"failed": error_text(exc)}

    # time to prune: best of two, interleaved
    lp_times, tp_times = [], []
    for _ in range(2):
        if sliced is not None:
            fresh = copy.deepcopy(model)  # not yet traced
            start = time.perf_counter()
            lostprune_step(fresh, x, row["lp"]["ratio"])
            lp_times.append(time.perf_counter() - start)
        if pruned is not None:
            start = time.perf_counter()
            torch_pruning_step(model, x, row["tp"]["ratio"])
            tp_times.append(time.perf_counter() - start)
    if lp_times:
        row["lp"]["time"] = min(lp_times)
    if tp_times:
        row["tp"]["time"] = min(tp_times)

    # latency
    for key, candidate in (("lp", sliced), ("tp", pruned)):
        if candidate is None or (key == "tp" and not row["tp"]["runs"]):
            continue
        for batch in (1, 32):
            xb = example(name, batch)
            try:
                with torch.inference_mode():
                    _, _, speedup = interleaved_ratio(
                        lambda xb=xb: model(xb),
                        lambda c=candidate, xb=xb: c(xb),
                        rounds=3,
                        min_time=0.3 if batch == 1 else 0.0,
                    )
                row[key][f"speedup{batch}"] = speedup
            except Exception as exc:  # noqa: BLE001
                row[key][f"speedup{batch}"] = error_text(exc)
    return row


# ----------------------------------------------------------------------------- report
def cell(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "–"


def table(rows: list[dict]) -> str:
    lines = [
        (
            "| model | GMACs | lostprune: MACs kept | params kept | time to prune (s) | exact (max rel. error) | "
            "speedup b1 | speedup b32 | Torch-Pruning: MACs kept | params kept | time to prune (s) | runs | "
            "speedup b1 | speedup b32 | time lostprune / Torch-Pruning |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lp, tp = row.get("lp", {}), row.get("tp", {})
        if "failed" in lp:
            lp_cells = [f"fails: {lp['failed']}"] + ["–"] * 5
        else:
            exact = lp.get("error")
            lp_cells = [
                cell(lp.get("macs"), ".1%"),
                cell(lp.get("params"), ".1%"),
                cell(lp.get("time"), ".2f"),
                (f"yes ({exact:.0e})" if exact is not None and exact <= 1e-5 else f"no ({exact:.0e})")
                if exact is not None
                else "–",
                cell(lp.get("speedup1"), ".2f") + "×",
                cell(lp.get("speedup32"), ".2f") + "×",
            ]
        if "failed" in tp:
            tp_cells = [f"fails: {tp['failed']}"] + ["–"] * 5
        else:
            tp_cells = [
                cell(tp.get("macs"), ".1%"),
                cell(tp.get("params"), ".1%"),
                cell(tp.get("time"), ".2f"),
                "yes" if tp.get("runs") else "no",
                cell(tp.get("speedup1"), ".2f") + "×",
                cell(tp.get("speedup32"), ".2f") + "×",
            ]
        ratio = lp["time"] / tp["time"] if "time" in lp and "time" in tp else None
        lines.append(
            f"| {row['model']} | {row['dense_gmacs']:.2f} | "
            + " | ".join(lp_cells)
            + " | "
            + " | ".join(tp_cells)
            + f" | {cell(ratio, '.2f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # worker: one model, JSON on stdout
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per model")
    args = parser.parse_args()
    if args.one:
        print("ROW " + json.dumps(run_one(args.one)), flush=True)
        return
    rows = []
    for name in args.models:
        start = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--one", name],
                check=False,
                capture_output=True,
                text=True,
                timeout=args.timeout,
            )
            found = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
            row = (
                json.loads(found[0])
                if found
                else {
                    "model": name,
                    "dense_gmacs": float("nan"),
                    "lp": {"failed": (done.stderr.strip().splitlines() or ["no output"])[-1][:120]},
                    "tp": {},
                }
            )
        except subprocess.TimeoutExpired:
            row = {"model": name, "dense_gmacs": float("nan"), "lp": {"failed": "timed out"}, "tp": {}}
        rows.append(row)
        print(f"{name}: {time.perf_counter() - start:.0f}s {json.dumps(row)}", flush=True)
    body = table(rows)
    print(body)
    if not args.no_write:
        from benchmarks._util import write_section

        torch.set_num_threads(1)  # (the machine line names the workers' thread count)
        path = write_section(
            "zoo",
            "The torchvision zoo at 50 % of MACs: lostprune and Torch-Pruning (CPU)",
            "python benchmarks/bench_zoo.py",
            _intro() + "\n\n" + body,
        )
        print(f"wrote {path}")


def _intro() -> str:
    """The method of this file's docstring (from "Per model"), as the section's preamble."""
    return __doc__.split("\n\n", 1)[1].split("\n\n    python")[0].strip()


if __name__ == "__main__":
    main()
