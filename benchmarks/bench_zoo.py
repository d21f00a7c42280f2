"""The torchvision classification zoo, lostprune and Torch-Pruning side by side, at 50 % of MACs.

Per model (random weights, trained-like BN statistics, 3×224×224 — 299 for inception_v3):
* **lostprune**: group-aware FT (``coupled="sum"``) + ``slice_model``; **Torch-Pruning**: its
  documented recipe (``MetaPruner``, L1 magnitude, the same channel ratio in every group,
  the classifier's outputs kept; ``num_heads`` of ``nn.MultiheadAttention`` given).
* Each tool's ratio is searched (untimed, secant steps) until the pruned model computes
  50 ± 1.5 % of the dense model's MACs. One yardstick for both: multiply-accumulates per image
  of every conv and linear layer, attention projections included (``nn.MultiheadAttention``'s
  and Swin's run as ``F.linear`` on the layers' weights, counted per token), counted by
  forward hooks on the model each tool returns.
* **time to prune**: a fresh copy of the model to a pruned model (lostprune: copy, trace,
  prune, slice; Torch-Pruning: copy — it works in place —, graph, step); best of 5 runs (2
  with ``--quick``), the tools interleaved, garbage collected before each; kernels loaded
  beforehand. The copies differ: lostprune's ``copy_model`` (deepcopy's copy, 3-4× faster
  on small networks), Torch-Pruning's user's ``copy.deepcopy``; the deepcopy is also timed
  alone (interleaved too), and the ratio given without it: Torch-Pruning's in-place step
  against all of lostprune's work. *In place*: both tools prune a model of their own, without
  a copy (``prune(..., inplace=True)``; Torch-Pruning's step on a copy made untimed before),
  the same work on both sides: graph, prune, slice. Both tools run on one thread, so the
  thread's CPU time is what a run costs (what other processes take of a shared machine left
  out); the ratio is also given in wall time. lostprune keeps the traces of the last 16
  model structures: *cold* empties that cache before each run (what a first prune of a
  model costs, the one compared), *warm* does not (the same architecture pruned again).
* **exact**: lostprune's sliced model against its masked model (max |difference| / max
  |output|); Torch-Pruning has no masked counterpart: whether its pruned model runs.
* **speedup**: dense / pruned latency, batch 1 and 32 (8 with ``--quick``), one thread, NCHW,
  eval mode, medians of 3 interleaved runs (``interleaved_ratio``), in the thread's CPU time
  as the time to prune.
* A tool that raises on a model is reported with the exception's type and message; each
  model runs in its own subprocess (memory, and a crash stays with its model).

    python benchmarks/bench_zoo.py                      # writes benchmarks/results/zoo.md
    python benchmarks/bench_zoo.py --models resnet18 vit_b_16 --no-write
    python benchmarks/bench_zoo.py --profile mobilenet_v3_small   # cProfile of both tools' prune
"""

from __future__ import annotations

import argparse
import collections
import copy
import cProfile
import gc
import io
import json
import math
import os
import pstats
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._util import cpu_model

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
ROWS = Path(__file__).resolve().parent / "results" / "zoo.json"  # raw rows, merged across runs
PROFILE_HEADING = "### Where the time goes"  # zoo.md from here on is kept when the tables are rewritten


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


def weight_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates per image of every conv and linear layer (zeros included).
    ``nn.MultiheadAttention`` and torchvision's Swin attention apply their projections with
    ``F.linear`` (no hook of the Linear runs): counted per token from the attention's output."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

    fired: set[nn.Module] = set()
    attention: list[tuple[nn.Module, torch.Size]] = []
    total = 0

    def layer(module, inputs, output):
        nonlocal total
        fired.add(module)
        if isinstance(module, nn.Conv2d):
            positions = output[0, 0].numel()
        else:
            positions = output[0].numel() // output.shape[-1]
        total += module.weight.numel() * positions

    def attend(module, inputs, output):
        attention.append((module, (output[0] if isinstance(output, tuple) else output).shape))

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    attentions = [
        m
        for m in model.modules()
        if isinstance(m, (nn.MultiheadAttention, ShiftedWindowAttention, ShiftedWindowAttentionV2))
    ]
    hooks = [m.register_forward_hook(layer) for m in layers]
    hooks += [m.register_forward_hook(attend) for m in attentions]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    for module, shape in attention:
        if isinstance(module, nn.MultiheadAttention):  # (L, N, E) or (N, L, E), N = 1
            tokens = math.prod(shape[:-1])
            inner = (
                [module.in_proj_weight]
                if module.in_proj_weight is not None
                else [module.q_proj_weight, module.k_proj_weight, module.v_proj_weight]
            )
            total += tokens * sum(w.numel() for w in inner)
            projections = [module.out_proj]
        else:  # (1, H, W, C), windows padded to whole windows
            tokens = math.prod(
                -(-size // window) * window
                for size, window in zip(shape[1:3], module.window_size, strict=True)
            )
            projections = [module.qkv, module.proj]
        total += sum(tokens * p.weight.numel() for p in projections if p not in fired)
    return total


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
def lostprune_step(model: nn.Module, x: torch.Tensor, ratio: float, inplace: bool = False):
    """Prune a copy of ``model`` (``inplace``: the model itself) and slice it."""
    import lostprune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = lostprune.prune(
            model, "ft", ratio, example_input=x, coupled="sum", progress=False, inplace=inplace
        )
        return result, lostprune.slice_model(result.model, inplace=True)  # prune's copy, or in place


def torch_pruning_step(model: nn.Module, x: torch.Tensor, ratio: float, inplace: bool = False) -> nn.Module:
    """Prune a copy of ``model`` (``inplace``: the model itself) with Torch-Pruning."""
    import torch_pruning as tp

    if not inplace:  # Torch-Pruning works in place: the user's copy (timed, as lostprune's)
        model = copy.deepcopy(model)
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


def clear_traces() -> None:
    """Empty lostprune's trace cache, so the next prune traces the model as a first one does."""
    from lostprune.structure import graph

    graph._TRACES.clear()


def error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if isinstance(exc, MemoryError) and not text:
        text = ["over the worker's address-space cap (--memory)"]
    return f"{type(exc).__name__}: {text[0][:100]}" if text else type(exc).__name__


class _Failed(Exception):
    """A tool's pruned model, made without error, that does not run."""


def emit(row: dict) -> None:
    """The row so far on stdout: the parent keeps the last one if the worker dies later."""
    print("ROW " + json.dumps(row), flush=True)


def run_one(name: str, quick: bool, skip_tp: str | None = None) -> dict:
    from lostprune.ops import gather_channels
    from lostprune.timing import interleaved_ratio

    torch.set_num_threads(1)
    gather_channels([torch.zeros(2, 2)], [torch.tensor([0])], [None])  # load the kernels before timing
    model, x = create(name), example(name)
    dense_macs = weight_macs(model, x)
    row = {
        "model": name,
        "dense_gmacs": dense_macs / 1e9,
        "params": count(model),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": os.getloadavg()[0],
        "cpu": cpu_line(),  # rows of several runs are merged: each names its own machine
        "quick": quick,
        "lp": {},
        "tp": {},
    }

    def stage(text: str) -> None:
        row["stage"] = text
        emit(row)

    # lostprune: ratio search (untimed), exactness
    def lp_evaluate(r: float):
        result, sliced = lostprune_step(model, x, r)
        return weight_macs(sliced, x) / dense_macs, (result, sliced)

    stage("lostprune: prune and slice")
    sliced = pruned = None
    try:
        ratio, share, (result, sliced) = secant(lp_evaluate, 0.5, 0.05, 0.95)
        with torch.no_grad():
            masked_out, sliced_out = result.model.eval()(x), sliced.eval()(x)
        row["lp"] = {
            "ratio": ratio,
            "macs": share,
            "params": count(sliced) / row["params"],
            "error": float((masked_out - sliced_out).abs().max() / masked_out.abs().max()),
        }
        del result
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row["lp"] = {"failed": error_text(exc)}
        sliced = None

    # Torch-Pruning: ratio search (untimed); a pruned model that does not run is its own failure
    def tp_evaluate(r: float):
        candidate = torch_pruning_step(model, x, r)
        try:
            return weight_macs(candidate, x) / dense_macs, candidate
        except Exception as exc:
            raise _Failed(f"pruned model does not run: {error_text(exc)}") from exc

    stage("Torch-Pruning: prune")
    try:
        if skip_tp:  # it took the worker down before: the rest of the row without it
            raise _Failed(skip_tp)
        tp_ratio, share, pruned = secant(tp_evaluate, 0.3, 0.02, 0.9)
        with torch.no_grad():
            out = pruned(x)
        row["tp"] = {
            "ratio": tp_ratio,
            "macs": share,
            "params": count(pruned) / row["params"],
            "runs": tuple(out.shape) == (1, 1000),
        }
    except _Failed as exc:
        row["tp"] = {"failed": str(exc)}
        pruned = None
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row["tp"] = {"failed": error_text(exc)}
        pruned = None

    # time to prune: best of n, the tools interleaved; wall and this thread's CPU time (one
    # thread: the CPU time leaves out what other processes of a shared machine take)
    stage("time to prune")
    kinds = ("cold", "warm", "inplace", "tp", "copy", "tp_inplace")
    times: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}

    def timed(kind: str, step) -> None:
        gc.collect()  # a collection of the last run's garbage lands in neither tool's time
        wall, cpu = time.perf_counter(), time.thread_time()
        step()
        times[kind].append((time.perf_counter() - wall, time.thread_time() - cpu))

    for _ in range(2 if quick else 5):
        if sliced is not None:
            for kind in ("cold", "warm", "inplace"):
                if kind != "warm":
                    clear_traces()
                fresh = copy.deepcopy(model)  # (untimed: the user's model is not touched)
                timed(
                    kind,
                    lambda fresh=fresh, kind=kind: lostprune_step(
                        fresh, x, row["lp"]["ratio"], inplace=kind == "inplace"
                    ),
                )
        if pruned is not None:
            timed("tp", lambda: torch_pruning_step(model, x, row["tp"]["ratio"]))
            timed("copy", lambda: copy.deepcopy(model))  # the part of it that is the user's copy
            fresh = copy.deepcopy(model)  # (untimed)
            timed(
                "tp_inplace",
                lambda fresh=fresh: torch_pruning_step(fresh, x, row["tp"]["ratio"], inplace=True),
            )
    for key, chosen in (("lp", ("cold", "warm", "inplace")), ("tp", ("tp", "copy", "tp_inplace"))):
        for kind in chosen:
            if times[kind]:
                suffix = {"warm": "_warm", "copy": "_copy", "inplace": "_inplace", "tp_inplace": "_inplace"}
                row[key]["time" + suffix.get(kind, "")] = min(wall for wall, _ in times[kind])
                row[key]["cpu" + suffix.get(kind, "")] = min(cpu for _, cpu in times[kind])

    # latency
    for key, candidate in (("lp", sliced), ("tp", pruned)):
        if candidate is None or (key == "tp" and not row["tp"]["runs"]):
            continue
        for batch in (1, 8 if quick else 32):
            stage(f"speedup {key} batch {batch}")
            xb = example(name, batch)
            try:
                with torch.inference_mode():
                    _, _, speedup = interleaved_ratio(
                        lambda xb=xb: model(xb),
                        lambda xb=xb, candidate=candidate: candidate(xb),
                        rounds=3,
                        min_time=0.3 if batch == 1 else 0.0,
                        clock=time.thread_time,
                    )
                row[key][f"speedup{batch}"] = speedup
            except Exception as exc:  # noqa: BLE001
                row[key][f"speedup{batch}"] = error_text(exc)
    row.pop("stage")
    return row


def profile(name: str, top: int) -> None:
    """cProfile of each tool's time to prune (at the ratio of its first search step), cold."""
    from lostprune.ops import gather_channels

    torch.set_num_threads(1)
    gather_channels([torch.zeros(2, 2)], [torch.tensor([0])], [None])
    model, x = create(name), example(name)
    # lostprune.prune copies the model itself, as torch_pruning_step does
    for label, run in (
        ("lostprune (cold trace)", lambda: lostprune_step(model, x, 0.5)),
        ("Torch-Pruning", lambda: torch_pruning_step(model, x, 0.3)),
    ):
        run()  # imports and first-call costs out of the profile
        clear_traces()
        gc.collect()
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.runcall(run)
        wall = time.perf_counter() - start
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
        print(f"==== {name}: {label}, {wall:.3f} s wall (profiled)\n{text.getvalue()}")


# ----------------------------------------------------------------------------- report
def cell(value, fmt: str, suffix: str = "") -> str:
    if isinstance(value, str):
        return f"fails: {value}".replace("|", "\\|")
    return format(value, fmt) + suffix if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def failed(side: dict) -> str:
    return f"fails: {side['failed']}".replace("|", "\\|")


def tables(rows: list[dict], batch: int) -> str:
    lines = [
        (
            "| model | GMACs | lostprune: MACs kept | params kept | exact (max rel. error) | CPU s cold | "
            "CPU s warm | CPU s in place (cold) | Torch-Pruning: MACs kept | params kept | runs | CPU s | "
            "of which the copy | CPU s in place | lostprune (cold) / Torch-Pruning, CPU time | same, wall "
            "time | same, Torch-Pruning without its copy, CPU time | both in place: lostprune (cold) / "
            "Torch-Pruning, CPU time |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lp, tp = row["lp"], row["tp"]
        if "failed" in lp:
            lp_cells = [failed(lp)] + ["–"] * 5
        else:
            exact = lp.get("error")
            verdict = "–" if exact is None else f"{'yes' if exact <= 1e-5 else 'no'} ({exact:.0e})"
            lp_cells = [
                cell(lp.get("macs"), ".1%"),
                cell(lp.get("params"), ".1%"),
                verdict,
                cell(lp.get("cpu"), ".3f"),
                cell(lp.get("cpu_warm"), ".3f"),
                cell(lp.get("cpu_inplace"), ".3f"),
            ]
        if "failed" in tp:
            tp_cells = [failed(tp)] + ["–"] * 5
        else:
            tp_cells = [
                cell(tp.get("macs"), ".1%"),
                cell(tp.get("params"), ".1%"),
                {True: "yes", False: "no"}.get(tp.get("runs"), "–"),
                cell(tp.get("cpu"), ".3f"),
                cell(tp.get("cpu_copy"), ".3f"),
                cell(tp.get("cpu_inplace"), ".3f"),
            ]
        ratios = [lp[k] / tp[k] if k in lp and k in tp else None for k in ("cpu", "time")]
        in_place = tp["cpu"] - tp["cpu_copy"] if "cpu" in tp and "cpu_copy" in tp else None
        ratios.append(lp["cpu"] / in_place if "cpu" in lp and in_place else None)
        both = "cpu_inplace" in lp and "cpu_inplace" in tp
        ratios.append(lp["cpu_inplace"] / tp["cpu_inplace"] if both else None)
        lines.append(
            f"| {row['model']} | {cell(row['dense_gmacs'], '.2f')} | "
            + " | ".join(lp_cells)
            + " | "
            + " | ".join(tp_cells)
            + " | "
            + " | ".join(cell(r, ".2f", "×") for r in ratios)
            + " |"
        )
    lines += [
        "",
        "Speedup (dense / pruned latency, one thread, CPU time):",
        "",
        (
            f"| model | lostprune batch 1 | lostprune batch {batch} | Torch-Pruning batch 1 | "
            f"Torch-Pruning batch {batch} |"
        ),
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [cell(row[key].get(f"speedup{b}"), ".2f", "×") for key in ("lp", "tp") for b in (1, batch)]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _text(output) -> str:
    """Captured output of a killed subprocess (bytes, whatever ``text=True`` asked)."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_worker(name: str, quick: bool, timeout: float, memory_gb: float) -> dict:
    """One model in a subprocess: its row, or what is known of it when the worker dies. A worker
    that Torch-Pruning takes down is run again without it, for lostprune's numbers."""
    row = _worker(name, quick, timeout, memory_gb)
    failed = row["tp"].get("failed", "")
    if "worker" in row and failed.startswith("worker") and "Torch-Pruning" in failed:
        row = _worker(name, quick, timeout, memory_gb, skip_tp=failed) | {"worker": row["worker"]}
    return row


def _worker(name: str, quick: bool, timeout: float, memory_gb: float, skip_tp: str | None = None) -> dict:
    command = [sys.executable, __file__, "--one", name, "--memory", str(memory_gb)]
    command += (["--quick"] if quick else []) + (["--skip-tp", skip_tp] if skip_tp else [])
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
        stdout, stderr = done.stdout, done.stderr
        trouble = None if done.returncode == 0 else f"exit code {done.returncode}"
    except subprocess.TimeoutExpired as exc:
        stdout, stderr, trouble = _text(exc.stdout), _text(exc.stderr), f"timed out after {timeout:.0f} s"
    found = [line[4:] for line in stdout.splitlines() if line.startswith("ROW ")]
    row = json.loads(found[-1]) if found else {"model": name, "dense_gmacs": None, "lp": {}, "tp": {}}
    if trouble:  # the worker died: the stage it was in failed, for the tool it concerns
        last = (stderr.strip().splitlines() or [""])[-1][:100]
        text = f"worker {trouble} in stage '{row.pop('stage', 'setup')}' {last}".strip()
        for key in ("lp", "tp"):
            if not row[key]:
                row[key] = {"failed": text}
        row["worker"] = text
    return row


def cpu_line() -> str:
    """The CPU model and the widest vector ISA it has, from /proc/cpuinfo."""
    from lostprune.ops._toolchain import cpu_flags

    name = cpu_model()
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name}, {os.cpu_count()} cores, widest vector ISA {isa}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # worker: one model, JSON on stdout
    parser.add_argument("--quick", action="store_true", help="batch 8 instead of 32, best of 2 prune timings")
    parser.add_argument("--profile", metavar="MODEL", help="cProfile of both tools' time to prune, then exit")
    parser.add_argument("--top", type=int, default=25, help="functions listed per profile")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per model")
    parser.add_argument(
        "--memory",
        type=float,
        default=12.0,
        help="GiB of address space per worker: a tool that needs more fails with an "
        "allocation error instead of waking the machine's OOM killer",
    )
    parser.add_argument("--skip-tp", help=argparse.SUPPRESS)  # worker: why Torch-Pruning is left out
    args = parser.parse_args()
    if args.one:
        limit = int(args.memory * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        emit(run_one(args.one, args.quick, args.skip_tp))
        return
    if args.profile:
        profile(args.profile, args.top)
        return
    rows = []
    for name in args.models:
        start = time.perf_counter()
        rows.append(run_worker(name, args.quick, args.timeout, args.memory))
        print(f"{name}: {time.perf_counter() - start:.0f}s {json.dumps(rows[-1])}", flush=True)
        if not args.no_write:  # after every model: a run cut short keeps what it measured
            write(rows, " ".join(sys.argv[1:]))
    print(tables(rows, 8 if args.quick else 32))


def write(rows: list[dict], arguments: str) -> None:
    """Merge ``rows`` into the stored rows (a model re-run replaces its row) and write zoo.md."""
    import importlib.metadata

    from benchmarks._util import write_section

    command = f"python benchmarks/bench_zoo.py {arguments}".strip()
    for row in rows:
        row.setdefault("command", command)
    stored = json.loads(ROWS.read_text()) if ROWS.exists() else {"rows": []}
    by_model = {row["model"]: row for row in stored["rows"]} | {row["model"]: row for row in rows}
    ordered = [by_model[m] for m in MODELS if m in by_model]
    ordered += [r for m, r in by_model.items() if m not in MODELS]
    ROWS.write_text(json.dumps({"rows": ordered}, indent=1) + "\n")
    quick = {row.get("quick", False) for row in ordered}
    runs = sorted({row["when"] for row in ordered if "when" in row})
    version = importlib.metadata.version
    notes = (
        f"{machines_note(ordered)} torch {torch.__version__}, torchvision {version('torchvision')}, "
        f"torch-pruning {version('torch-pruning')}. Shared machine: other sessions' builds and tests "
        "ran beside these rows, hence times in the thread's CPU time. "
        f"Rows measured {runs[0]} to {runs[-1]}; 1-minute load average when each model started: "
        + ", ".join(f"{row['model']} {row['load']:.1f}" for row in ordered if "load" in row)
        + "."
    )
    commands = collections.Counter(row.get("command", command) for row in ordered)
    main_command = commands.most_common(1)[0][0]
    for other in commands:
        if other != main_command:
            notes += (
                f" Rows of {', '.join(r['model'] for r in ordered if r.get('command') == other)} "
                f"come from a later run: `{other}`."
            )
    # the profiles' analysis, written by hand after the tables, stays
    kept = ""
    if (ROWS.parent / "zoo.md").exists():
        kept = (ROWS.parent / "zoo.md").read_text().partition(PROFILE_HEADING)[2]
    torch.set_num_threads(1)  # (the machine line names the workers' thread count)
    path = write_section(
        "zoo",
        "The torchvision zoo at 50 % of MACs: lostprune and Torch-Pruning (CPU)",
        main_command,
        _intro()
        + "\n\n"
        + notes
        + "\n\n"
        + tables(ordered, 8 if quick == {True} else 32)
        + (f"\n\n{PROFILE_HEADING}{kept}" if kept else ""),
    )
    print(f"wrote {path}")


def machines_note(rows: list[dict]) -> str:
    """Which CPU measured which rows: one machine named once; rows merged from runs on
    different machines (a later ``--models`` run) each listed under their own."""
    by_cpu: dict[str, list[str]] = {}
    for row in rows:
        by_cpu.setdefault(row.get("cpu", "not recorded"), []).append(row["model"])
    if len(by_cpu) == 1:
        return f"CPU: {next(iter(by_cpu))}."
    return (
        "Rows from different machines (times compare within a machine only): "
        + "; ".join(f"{cpu}: {', '.join(models)}" for cpu, models in by_cpu.items())
        + "."
    )


def _intro() -> str:
    """The method of this file's docstring (from "Per model"), as the section's preamble."""
    return __doc__.split("\n\n", 1)[1].split("\n\n    python")[0].strip()


if __name__ == "__main__":
    main()
