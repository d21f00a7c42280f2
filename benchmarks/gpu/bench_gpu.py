"""The CUDA ops against their GPU baselines, measured in one run; writes a markdown table.

- sensitivity pass (SiPP weight / PFP channel sensitivities of every layer) vs a forward
  pass of the same model on the same batch (goal: at most 3x);
- sparse conv / linear at 90 and 95 % sparsity vs cuDNN / cuBLAS dense (torch's default
  settings, where cuDNN may use TF32, and IEEE float32) and vs cuSPARSE (``torch.sparse.mm``
  of the CSR weight, with ``F.unfold`` for convolutions);
- resnet18 pruned by WT to 90 % and run through ``lostprune.sparse.convert`` vs the dense
  model, batch 1 and 32, end to end;
- resnet18 pruned by FT to 50 % and sliced vs the dense model, batch 1 and 32;
- the other ops against what they replace: the channel-slicing gather (vs the per-tensor
  ``index_select`` loop, one slicing step of resnet18), max-pooling (vs torch's: cuDNN; the stem
  pool of resnet18) and the live rows and columns of every resnet18 weight (vs its
  reference's max reductions).

Every ratio interleaves the two sides (CUDA-synchronized samples of at least ``--min-time``)
so clock and thermal drift hit both alike; each contender's output is checked against its
baseline's before it is timed.

    python benchmarks/gpu/bench_gpu.py --out gpu-out            # writes gpu-out/gpu.md
    python benchmarks/gpu/bench_gpu.py --device cpu --smoke     # the dry run: tiny shapes
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lostprune
from benchmarks._util import write_section
from benchmarks.bench_gather import slicing_step
from benchmarks.bench_sparse import RESNET18_LAYERS, fair_dense, layer_callables, pruned_resnet18
from lostprune import models
from lostprune.datapass import sensitivity_pass
from lostprune.ops import gather_channels, gather_channels_reference, max_pool2d, pack_weight, sparse_linear
from lostprune.ops._precision import exact_fp32
from lostprune.ops.nonzero import nonzero_rows_cols, nonzero_rows_cols_reference

# resnet18's convolutions at 224x224: the stem, one per stage and one strided.
CONV_LAYERS = [
    layer
    for layer in RESNET18_LAYERS
    if layer[0]
    in (
        "resnet18 stem 7x7 s2",
        "resnet18 64@56",
        "resnet18 64->128 s2",
        "resnet18 128@28",
        "resnet18 256@14",
        "resnet18 512@7",
    )
]
LINEAR_LAYERS = [("resnet18 fc 512->1000", 512, 1000), ("4096->4096", 4096, 4096)]
SMOKE_CONV = [("smoke 8@9", 8, 8, 9, 3, 1, 1)]
SMOKE_LINEAR = [("smoke 24->10", 24, 10)]


class Timer:
    """Synchronized wall-clock samples on ``device``: each sample runs the call enough times
    (found once per callable) to last at least ``min_time``."""

    def __init__(self, device: torch.device, min_time: float, rounds: int):
        self.device, self.min_time, self.rounds = device, min_time, rounds

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _sample(self, fn: Callable[[], object], calls: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        self.sync()
        return (time.perf_counter() - start) / calls

    def _calls(self, fn: Callable[[], object]) -> int:
        calls = 1
        while True:
            per_call = self._sample(fn, calls)
            if per_call * calls >= self.min_time / 4 or calls >= 1 << 16:
                return max(1, min(1 << 16, int(self.min_time / max(per_call, 1e-9)) + 1))
            calls *= 4

    def ratio(
        self, baseline: Callable[[], object], contender: Callable[[], object]
    ) -> tuple[float, float, float]:
        """(baseline s, contender s, baseline / contender), medians of interleaved samples."""
        with torch.inference_mode():
            nb, nc = self._calls(baseline), self._calls(contender)
            b, c = [], []
            for _ in range(self.rounds):
                b.append(self._sample(baseline, nb))
                c.append(self._sample(contender, nc))
        tb, tc = statistics.median(b), statistics.median(c)
        return tb, tc, tb / tc


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def checked(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    err = relative_error(out, ref)
    if not err <= tol:
        raise AssertionError(
            f"{name}: the contender's output is off by {err:.2e} of the baseline's scale "
            f"(allowed {tol:.0e}); not timing a wrong answer"
        )


# --------------------------------------------------------------------------- sensitivity pass
def sensitivity_rows(timer: Timer, device: torch.device, smoke: bool) -> tuple[list[str], list[str]]:
    cases = [("resnet20", 128, 32), ("resnet18", 32, 224)] if not smoke else [("resnet20", 4, 16)]
    rows, goals = [], []
    for name, batch, size in cases:
        torch.manual_seed(0)
        model = models.randomize_norm_statistics(models.create(name)).eval().to(device)
        x = torch.randn(batch, 3, size, size, device=device)
        for kind in ("weight", "channel"):
            scores = functools.partial(
                sensitivity_pass, model, x, kind=kind, batch_size=batch, progress=False
            )
            tb, tc, ratio = timer.ratio(functools.partial(model, x), scores)
            slowdown = 1 / ratio
            rows.append(
                f"| {name} {size}×{size} | {batch} | {kind} ({'SiPP' if kind == 'weight' else 'PFP'}) | "
                f"{tb * 1e3:.2f} | {tc * 1e3:.2f} | **{slowdown:.2f}×** |"
            )
            goals.append(
                f"- sensitivity pass / forward, {name} batch {batch}, {kind}: {slowdown:.2f}× "
                f"(goal ≤ 3×: {'met' if slowdown <= 3 else 'NOT met'})"
            )
            print(rows[-1], flush=True)
    return rows, goals


# --------------------------------------------------------------------------- sparse layers
def conv_rows(timer: Timer, device: torch.device, layers, sparsities, batches) -> list[str]:
    rows = []
    for name, cin, cout, size, kernel, stride, padding in layers:
        for batch in batches:
            for sparsity in sparsities:
                fns = layer_callables(
                    cin, cout, size, kernel, stride, padding, sparsity, batch, device=device
                )
                rows.append(
                    _layer_row(
                        timer, f"{name} k{kernel}", batch, sparsity, fns["dense"], fns["sparse"], fns["csr"]
                    )
                )
    return rows


def linear_callables(fin: int, fout: int, sparsity: float, batch: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(fout, fin, generator=gen)
    weight[torch.rand(weight.shape, generator=gen) < sparsity] = 0
    x = torch.randn(batch, fin, generator=gen).to(device)
    weight = weight.to(device)
    packed, csr = pack_weight(weight), weight.to_sparse_csr()
    return {
        "dense": lambda: F.linear(x, weight),
        "sparse": lambda: sparse_linear(x, packed),
        "csr": lambda: torch.sparse.mm(csr, x.t()).t(),
    }


def linear_rows(timer: Timer, device: torch.device, layers, sparsities, batches) -> list[str]:
    rows = []
    for name, fin, fout in layers:
        for batch in batches:
            for sparsity in sparsities:
                fns = linear_callables(fin, fout, sparsity, batch, device)
                rows.append(_layer_row(timer, name, batch, sparsity, fns["dense"], fns["sparse"], fns["csr"]))
    return rows


def _layer_row(timer: Timer, name: str, batch: int, sparsity: float, dense, ours, cusparse) -> str:
    with torch.inference_mode(), exact_fp32():
        reference = dense()
        checked(f"{name} sparse", ours(), reference, 1e-4)
        checked(f"{name} torch.sparse", cusparse(), reference, 1e-4)
    t_dense, t_ours, vs_dense = timer.ratio(dense, ours)  # torch's defaults (cuDNN may use TF32)
    with exact_fp32():  # the lostprune kernels use neither cuDNN nor cuBLAS: only the baseline changes
        _, _, vs_ieee = timer.ratio(dense, ours)
    t_csr, _, vs_csr = timer.ratio(cusparse, ours)
    row = (
        f"| {name} | {batch} | {sparsity:.0%} | {t_dense * 1e6:.0f} | {t_csr * 1e6:.0f} | {t_ours * 1e6:.0f} | "
        f"**{vs_dense:.2f}×** | {vs_ieee:.2f}× | {vs_csr:.2f}× |"
    )
    print(row, flush=True)
    return row


# --------------------------------------------------------------------------- end to end
def wt90_rows(timer: Timer, device: torch.device, batches, size: int) -> tuple[list[str], list[str]]:
    rows, notes = [], []
    for batch in batches:
        dense = pruned_resnet18(0.9).to(device)
        x = torch.randn(batch, 3, size, size, device=device)
        sparse = lostprune.sparse.convert(dense, example_input=x, progress=False)
        folded = fair_dense(dense)
        with torch.inference_mode(), exact_fp32():
            err = relative_error(sparse(x), dense(x))
        if not err <= 1e-3:
            raise AssertionError(f"WT-90 resnet18: converted output off by {err:.2e}")
        report = lostprune.sparse.report(sparse)
        for base, label in (
            (dense, "dense (as users run it)"),
            (folded, "dense, BN folded, channels_last (fair)"),
        ):
            tb, tc, ratio = timer.ratio(functools.partial(base, x), functools.partial(sparse, x))
            rows.append(f"| {batch} | {label} | {tb * 1e3:.3f} | {tc * 1e3:.3f} | **{ratio:.2f}×** |")
            print(rows[-1], flush=True)
        notes.append(
            f"- batch {batch}: {len(report.converted)} of {len(report.layers)} layers sparse after "
            f"calibration; output vs dense (IEEE float32): max relative difference {err:.1e}"
        )
    return rows, notes


def ft50_rows(timer: Timer, device: torch.device, batches, size: int) -> tuple[list[str], list[str]]:
    torch.manual_seed(0)
    model = models.randomize_norm_statistics(models.create("resnet18")).eval().to(device)
    example = torch.randn(1, 3, size, size, device=device)
    # The group-aware sliceable FT: whole channel groups, kept counts in the kernels' tiles.
    options = {"coupled": "sum", "round_to": "auto"}
    try:
        result = lostprune.prune(model, "ft", 0.5, example_input=example, progress=False, **options)
        used = ", ".join(f"{k}={v!r}" for k, v in options.items())
    except TypeError:  # a method version without these options
        result = lostprune.prune(model, "ft", 0.5, example_input=example, progress=False)
        used = "default options"
    sliced = lostprune.slice_model(result.model).eval()
    dense = lostprune.remove_masks(copy.deepcopy(result.model)).eval()
    fused_dense, fused_sliced = lostprune.sparse.fuse(dense), lostprune.sparse.fuse(sliced)
    rows, notes = (
        [],
        [f"- `lostprune.prune(resnet18, 'ft', 0.5, {used})`; {result.stats.summary().splitlines()[0]}"],
    )
    for batch in batches:
        x = torch.randn(batch, 3, size, size, device=device)
        with torch.inference_mode(), exact_fp32():
            err = relative_error(sliced(x), dense(x))
        if not err <= 1e-3:
            raise AssertionError(f"FT-50 resnet18: sliced output off by {err:.2e}")
        for base, ours, label in (
            (dense, sliced, "as returned"),
            (fused_dense, fused_sliced, "both BN-folded (fuse)"),
        ):
            tb, tc, ratio = timer.ratio(functools.partial(base, x), functools.partial(ours, x))
            rows.append(f"| {batch} | {label} | {tb * 1e3:.3f} | {tc * 1e3:.3f} | **{ratio:.2f}×** |")
            print(rows[-1], flush=True)
        notes.append(
            f"- batch {batch}: sliced vs dense output (IEEE float32): max relative difference {err:.1e}"
        )
    return rows, notes


# --------------------------------------------------------------------------- other ops
def other_op_rows(timer: Timer, device: torch.device, smoke: bool) -> list[str]:
    """The gather, max-pool and live rows / columns ops, each against what it replaces;
    outputs compared exactly before timing (all three select or compare values)."""
    model = "resnet20" if smoke else "resnet18"
    tensors, rows, cols = slicing_step(model)
    to = functools.partial(_to_device, device=device)
    tensors, rows, cols = to(tensors), to(rows), to(cols)
    pool_shape = (1, 4, 9, 9) if smoke else (32, 64, 112, 112)
    x = torch.randn(pool_shape, generator=torch.Generator().manual_seed(0)).to(device)
    weights = [t for t in tensors if t.dim() >= 2]
    zeroed = [w.clone() for w in weights]
    for w in zeroed:  # FT's pattern: whole rows and columns zeroed
        w[: w.shape[0] // 3] = 0
        w[:, : w.shape[1] // 3] = 0
    cases = [
        (
            f"gather_channels: one slicing step of {model} ({len(tensors)} tensors, half the channels)",
            "index_select loop",
            lambda: gather_channels_reference(tensors, rows, cols),
            lambda: gather_channels(tensors, rows, cols),
        ),
        (
            f"max_pool2d 3×3 s2 p1, {list(pool_shape)}",
            "F.max_pool2d",
            lambda: [F.max_pool2d(x, 3, 2, 1)],
            lambda: [max_pool2d(x, 3, 2, 1)],
        ),
    ]
    for label, ws in (("dense", weights), ("a third of rows / cols zeroed", zeroed)):
        cases.append(
            (
                f"nonzero_rows_cols: every {model} weight, {label}",
                "max reductions (reference)",
                lambda ws=ws: [t for w in ws for t in nonzero_rows_cols_reference(w)],
                lambda ws=ws: [t for w in ws for t in nonzero_rows_cols(w)],
            )
        )
    out = []
    for label, baseline_name, baseline, ours in cases:
        with torch.inference_mode():
            expected, got = baseline(), ours()
        if len(expected) != len(got) or not all(torch.equal(a, b) for a, b in zip(expected, got)):
            raise AssertionError(f"{label}: the op's output differs from {baseline_name}'s; not timing it")
        tb, tc, ratio = timer.ratio(baseline, ours)
        out.append(f"| {label} | {baseline_name} | {tb * 1e6:.0f} | {tc * 1e6:.0f} | **{ratio:.2f}×** |")
        print(out[-1], flush=True)
    return out


def _to_device(items, device: torch.device):
    return [None if t is None else t.to(device) for t in items]


# --------------------------------------------------------------------------- script
def device_line(device: torch.device) -> str:
    if device.type != "cuda":
        return f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__} (dry run: not a GPU measurement)"
    props = torch.cuda.get_device_properties(device)
    return (
        f"{props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
        f"{props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-out", help="directory for gpu.md (default gpu-out)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round: checks the script runs")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.02, help="seconds per timing sample")
    args = parser.parse_args(argv := sys.argv[1:])
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (run with --device cpu --smoke to check the script)")
        return 1
    device = torch.device(args.device)
    state = lostprune.ops.ensure_loaded()
    if args.device == "cuda" and not state.cuda:
        print(f"the CUDA kernels are not compiled ({state.backend}: {state.reason})")
        return 1
    if args.smoke:
        args.rounds, args.min_time = 1, 0.001
        torch.set_num_threads(1)  # a dry run beside other work: no OpenMP barrier stalls
    timer = Timer(device, args.min_time, args.rounds)
    size = 224 if not args.smoke else 32
    batches = (1, 32) if not args.smoke else (1, 2)
    sparsities = (0.9, 0.95) if not args.smoke else (0.9,)

    sens_rows, goals = sensitivity_rows(timer, device, args.smoke)
    layer_rows = conv_rows(timer, device, SMOKE_CONV if args.smoke else CONV_LAYERS, sparsities, batches)
    layer_rows += linear_rows(
        timer, device, SMOKE_LINEAR if args.smoke else LINEAR_LAYERS, sparsities, batches
    )
    wt_rows, wt_notes = wt90_rows(timer, device, batches, size)
    ft_rows, ft_notes = ft50_rows(timer, device, batches, size)
    op_rows = other_op_rows(timer, device, args.smoke)

    body = [
        (
            f"Device: {device_line(device)}. float32, inference mode. Each ratio interleaves {args.rounds} "
            f"synchronized samples of each side (≥ {args.min_time * 1e3:.0f} ms each); medians. Dense baselines run "
            "with torch's default settings (cuDNN may use TF32 for float32 convolutions) unless marked IEEE."
        ),
        "",
        "### Goals",
        *goals,
        "",
        "### Sensitivity pass vs forward (same model, same batch)",
        "| model | batch | scores | forward ms | sensitivity pass ms | pass / forward |",
        "|---|---|---|---|---|---|",
        *sens_rows,
        "",
        "### Sparse layers (random unstructured masks)",
        (
            "cuSPARSE: `torch.sparse.mm` of the CSR weight with the input (`F.unfold` first for convolutions: part "
            "of that baseline). Speedups > 1 mean the lostprune kernel is faster."
        ),
        "",
        "| layer | batch | sparsity | dense µs | cuSPARSE µs | lostprune µs | vs dense | vs dense IEEE | vs cuSPARSE |",
        "|---|---|---|---|---|---|---|---|---|",
        *layer_rows,
        "",
        f"### resnet18 WT-90 % end to end ({size}×{size}): `lostprune.sparse.convert(model, example_input=x)`",
        "| batch | baseline | baseline ms | converted ms | speedup |",
        "|---|---|---|---|---|",
        *wt_rows,
        *wt_notes,
        "",
        f"### resnet18 FT-50 % sliced vs dense ({size}×{size})",
        "| batch | models | dense ms | sliced ms | speedup |",
        "|---|---|---|---|---|",
        *ft_rows,
        *ft_notes,
        "",
        "### Other ops vs what they replace",
        "| op, case | baseline | baseline µs | lostprune µs | speedup |",
        "|---|---|---|---|---|",
        *op_rows,
    ]
    title = f"GPU kernels ({device_line(device).split(' (')[0]})"
    command = "python benchmarks/gpu/bench_gpu.py " + " ".join(argv)
    path = write_section("gpu", title, command.strip(), "\n".join(body), directory=Path(args.out))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
