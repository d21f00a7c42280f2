"""The sensitivity pass (SiPP weight sensitivities, PFP channel sensitivities) against one
forward pass of the same batch, op by op against one convolution of the same input, on the
AVX-512 and the AVX2 builds of the kernels, with its peak memory and a profile.

    python benchmarks/bench_sensitivity.py                 # writes benchmarks/results/sensitivity.md
    python benchmarks/bench_sensitivity.py --references    # also against the PyTorch references
    python -m pytest benchmarks/bench_sensitivity.py --benchmark-enable

Each ISA runs in its own process: the AVX-512 build (LOSTPRUNE_MARCH=native on an AVX-512
CPU) and the AVX2 build (LOSTPRUNE_MARCH=x86-64-v3), where torch's own kernels are held to
AVX2 too (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), so the forward
it is compared with is an AVX2 machine's. Ratios are measured in the same process,
interleaved, as medians: one thread in thread CPU time (what a pass costs, robust to a
shared machine's load), and the default threads in wall-clock time; the one-thread pass ÷
forward ratio in three fresh processes per build, their median reported with the range (a
forward's speed differs between processes on a shared machine). Peak memory is read from
VmHWM in a fresh process per measurement, with glibc returning freed blocks at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._util import cpu_model, interleaved_ratio, write_section
from lostprune import models
from lostprune.datapass import sensitivity_pass

# model, batch (the issue's), images for reference (b), images for reference (a)
CASES = [("resnet20", 256, 64, 16), ("resnet18", 32, 4, 2), ("mobilenet_v2", 32, 4, 2)]
KINDS = [("weight", "mean", "SiPP"), ("channel", "max", "PFP")]
# The two builds: LOSTPRUNE_MARCH and, for AVX2, torch's own kernels held to AVX2.
ISAS = {
    "AVX-512": {"LOSTPRUNE_MARCH": "native"},
    "AVX2": {
        "LOSTPRUNE_MARCH": "x86-64-v3",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
}
SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent


def setup(name: str, batch: int):
    torch.manual_seed(0)
    model = models.create(name).eval()
    x = torch.randn(batch, *model.input_size, generator=torch.Generator().manual_seed(1))
    return model, x


def forward(model, x):
    with torch.no_grad():
        return model(x)


def score(model, x, kind: str, reduce: str, implementation: str = "kernel", fused: bool = True):
    return sensitivity_pass(
        model,
        x,
        kind=kind,
        reduce=reduce,
        batch_size=x.shape[0],
        progress=False,
        implementation=implementation,
        fused=fused,
    )


def layer_inputs(model, x) -> dict:
    """{name: (module, its input)} for every conv and linear layer."""
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen.setdefault(name, (module, args[0]))  # returns None: the output stays

        return hook

    hooks = [
        m.register_forward_hook(record(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    forward(model, x)
    for h in hooks:
        h.remove()
    return seen


def largest_layer_input(model, x) -> int:
    """Bytes of the largest conv/linear input of the batch."""
    return max(inp.nbytes for _, inp in layer_inputs(model, x).values())


def thread_times(fns: dict, rounds: int) -> dict:
    """Median thread CPU seconds of each function, sampled interleaved after one warm-up call."""
    for fn in fns.values():
        fn()
    samples = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            start = time.thread_time()
            fn()
            samples[key].append(time.thread_time() - start)
    return {key: statistics.median(v) for key, v in samples.items()}


# --------------------------------------------------------------------------- pytest-benchmark
def test_forward_resnet20(benchmark):
    model, x = setup("resnet20", 64)
    benchmark(forward, model, x)


def test_sipp_pass_kernel_resnet20(benchmark):
    model, x = setup("resnet20", 64)
    benchmark(score, model, x, "weight", "mean")


def test_pfp_pass_kernel_resnet20(benchmark):
    model, x = setup("resnet20", 64)
    benchmark(score, model, x, "channel", "max")


def test_sipp_pass_vectorized_reference_resnet20(benchmark):
    model, x = setup("resnet20", 8)
    benchmark.pedantic(score, (model, x, "weight", "mean", "reference"), rounds=2)


def test_sipp_pass_literal_reference_resnet20(benchmark):
    model, x = setup("resnet20", 2)
    benchmark.pedantic(score, (model, x, "weight", "mean", "literal"), rounds=1)


# --------------------------------------------------------------------------- one ISA (child)
def measure_isa(isa: str, rounds: int, passes_only: bool = False) -> dict:
    """Everything one build measures: pass / forward (1 thread CPU time; default threads wall
    clock) and op / conv per layer (1 thread CPU time); ``passes_only``: pass / forward alone
    (the further processes of main's median)."""
    from lostprune.ops import _build, channel_sensitivity, weight_sensitivity

    built = _build.vector_isa()
    if built != isa:
        raise RuntimeError(
            f"asked for the {isa} build, got {built} kernels (LOSTPRUNE_MARCH="
            f"{os.environ.get('LOSTPRUNE_MARCH')})"
        )
    threads = torch.get_num_threads()
    out = {"isa": isa, "threads": threads, "torch_isa": torch.backends.cpu.get_cpu_capability(), "models": {}}
    for name, batch, _, _ in CASES:
        print(f"[{isa}] {name}", file=sys.stderr, flush=True)
        model, x = setup(name, batch)
        result = {"batch": batch}
        torch.set_num_threads(1)
        fns = {"forward": lambda model=model, x=x: forward(model, x)}
        for kind, reduce, label in KINDS:
            fns[label] = lambda model=model, x=x, kind=kind, reduce=reduce: score(model, x, kind, reduce)
            # the baseline: every layer runs its own forward, the op only scores
            fns[f"{label} unfused"] = lambda model=model, x=x, kind=kind, reduce=reduce: score(
                model, x, kind, reduce, fused=False
            )
        result["cpu"] = thread_times(fns, rounds)
        if passes_only:
            torch.set_num_threads(threads)
            out["models"][name] = result
            continue
        # Op by op: every layer's own input, the op against one convolution of it.
        layers = []
        with torch.no_grad():
            for layer, (m, inp) in layer_inputs(model, x).items():
                if isinstance(m, nn.Linear):
                    conv_args, conv = {}, lambda m=m, inp=inp: F.linear(inp, m.weight)
                else:
                    conv_args = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)
                    conv = lambda m=m, inp=inp, a=conv_args: F.conv2d(inp, m.weight, None, **a)  # noqa: E731
                t = thread_times(
                    {
                        "conv": conv,
                        "SiPP": lambda m=m, inp=inp, a=conv_args: weight_sensitivity(
                            inp, m.weight, reduce="mean", **a
                        ),
                        "PFP": lambda m=m, inp=inp, a=conv_args: channel_sensitivity(inp, m.weight, **a),
                    },
                    max(1, rounds - 1),
                )
                layers.append({"name": layer, "input": list(inp.shape), "weight": list(m.weight.shape), **t})
        result["layers"] = layers
        torch.set_num_threads(threads)
        result["wall"] = {}
        for kind, reduce, label in KINDS:
            tf, tp, _ = interleaved_ratio(
                lambda model=model, x=x: forward(model, x),
                lambda model=model, x=x, kind=kind, reduce=reduce: score(model, x, kind, reduce),
                rounds=rounds,
                min_time=0.0,
            )
            result["wall"][label] = {"forward": tf, "pass": tp}
        out["models"][name] = result
    return out


def run_child(args: list[str], env_update: dict, timeout: float = 7200) -> str:
    env = dict(os.environ, LOSTPRUNE_CUDA="0", **env_update)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


# --------------------------------------------------------------------------- memory (child)
def _vm(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def _memory_child(name: str, batch: int, kind: str, reduce: str, what: str) -> None:
    model, x = setup(name, batch)
    score(model, x[:2], kind, reduce)  # load the kernels, warm the allocator's small pools
    baseline = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
    if what == "forward":
        forward(model, x)
    else:
        score(model, x, kind, reduce, what)
    print(json.dumps({"extra": _vm("VmHWM") - baseline}))


def peak_extra(name: str, batch: int, kind: str, reduce: str, what: str, env_update: dict) -> int:
    """Peak resident memory above the loaded model and data, in bytes, in a fresh process."""
    env = dict(env_update, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    line = run_child(["--memory", name, str(batch), kind, reduce, what], env)
    return json.loads(line)["extra"]


# --------------------------------------------------------------------------- profile (perf)
# Where a pass's samples fall: kernel symbols by phase (the rest is the forward and torch).
PHASES = [
    ("pass 1: z = W± A, V = 1/z", r"TileOps<.*>::inverses|LaneOps<.*>::(patch|list_block)"),
    ("pass 2: SiPP reduction of A V", r"WeightKernel<.*>::run|LaneOps<.*>::reduce_"),
    ("pass 2: PFP bound tests + reductions", r"ChannelKernel<.*>::run"),
    ("im2col tiles, batch-lane input", r"build_tile|copy_split_segment|build_lane_input"),
    ("signed weight lists", r"signed_lists"),
    (
        "driver: input scan, item folds, scores out",
        (
            r"data_points|weight_sensitivity_cpu|channel_sensitivity_cpu|"
            r"accumulate_tiles|accumulate_lanes"
        ),
    ),
]


def _profile_child(name: str, batch: int, kind: str, reduce: str, repeats: int) -> None:
    torch.set_num_threads(1)
    model, x = setup(name, batch)
    score(model, x, kind, reduce)
    for _ in range(repeats):
        score(model, x, kind, reduce)
    print("{}")


def profile(name: str, batch: int, kind: str, reduce: str, env_update: dict) -> dict | None:
    """{phase: share of the pass's samples} from perf, one thread; None without perf."""
    perf = shutil.which("perf")
    if perf is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        env = dict(os.environ, LOSTPRUNE_CUDA="0", OMP_NUM_THREADS="1", **env_update)
        record = subprocess.run(
            [
                perf,
                "record",
                "-q",
                "-o",
                str(data),
                "--",
                sys.executable,
                str(SCRIPT),
                "--profile",
                name,
                str(batch),
                kind,
                reduce,
                "2",
            ],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=3600,
        )
        if record.returncode != 0:
            return None
        report = subprocess.run(
            [perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym"],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
    shares: dict[str, float] = {}
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.*?)\s+\[[.k]\]\s+(.*)$", line)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
        if "lostprune" in dso:
            phase = next(
                (label for label, pattern in PHASES if re.search(pattern, sym)), "other lostprune code"
            )
        elif re.search(r"python|libc|ld-linux|kernel", dso):
            phase = "Python, libc, OS (process start and imports included)"
        else:
            phase = "forward and torch (oneDNN, MKL, ATen, OpenMP)"
        shares[phase] = shares.get(phase, 0.0) + pct
    return shares


# --------------------------------------------------------------------------- report
def main(references: bool, rounds: int, quick: bool = False, processes: int = 3) -> None:
    results, cpu_runs = {}, {}
    for isa, env in ISAS.items():
        print(f"measuring the {isa} build", file=sys.stderr, flush=True)
        extra = ["--quick"] if quick else []
        results[isa] = json.loads(run_child(["--isa", isa, str(rounds), *extra], env))
        # The forward's speed differs between processes of one build (oneDNN on this shared
        # machine: up to 75 %), the ratio with it: the pass / forward ratios of several fresh
        # processes, their median and range.
        cpu_runs[isa] = [results[isa]] + [
            json.loads(run_child(["--isa", isa, str(rounds), "--passes-only", *extra], env))
            for _ in range(processes - 1)
        ]
    mb = 1 << 20

    ratio = [
        (
            f"| model | batch | scores | build | forward (s) | pass (s) | pass ÷ forward, 1 thread CPU time "
            f"(median of {processes} processes) | range | unfused pass ÷ forward | pass ÷ forward, wall clock "
            "| Σ conv ÷ forward |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, batch, _, _ in CASES:
        for _, _, label in KINDS:
            for isa in ISAS:
                r = results[isa]["models"][name]
                runs = [run["models"][name]["cpu"] for run in cpu_runs[isa]]
                ratios = [run[label] / run["forward"] for run in runs]
                unfused = statistics.median(run[label + " unfused"] / run["forward"] for run in runs)
                forward_s = statistics.median(run["forward"] for run in runs)
                pass_s = statistics.median(run[label] for run in runs)
                wall = r["wall"][label]
                conv = sum(lay["conv"] for lay in r["layers"]) / r["cpu"]["forward"]
                ratio.append(
                    f"| {name} | {batch} | {label} | {isa} | {forward_s:.3f} | {pass_s:.3f} "
                    f"| **{statistics.median(ratios):.2f}×** | {min(ratios):.2f}–{max(ratios):.2f}× "
                    f"| {unfused:.2f}× | {wall['pass'] / wall['forward']:.2f}× | {conv:.2f} |"
                )

    per_op = [
        "| model | build | Σ conv (s) | SiPP op ÷ conv | PFP op ÷ conv | layers where SiPP ÷ conv is largest |",
        "|---|---|---|---|---|---|",
    ]
    for name, _, _, _ in CASES:
        for isa in ISAS:
            layers = results[isa]["models"][name]["layers"]
            conv = sum(lay["conv"] for lay in layers)
            sipp = sum(lay["SiPP"] for lay in layers)
            pfp = sum(lay["PFP"] for lay in layers)
            worst = sorted(layers, key=lambda lay: lay["SiPP"] / max(lay["conv"], 1e-9), reverse=True)[:3]
            worst_text = ", ".join(
                f"{lay['name']} {tuple(lay['input'][1:])} {lay['SiPP'] / lay['conv']:.1f}×" for lay in worst
            )
            per_op.append(
                f"| {name} | {isa} | {conv:.3f} | {sipp / conv:.2f}× | {pfp / conv:.2f}× | {worst_text} |"
            )

    # Where the op time goes, by layer shape (AVX-512 build).
    shape_rows = [
        "| model | layers | share of SiPP op time | SiPP ÷ conv | PFP ÷ conv |",
        "|---|---|---|---|---|",
    ]
    for name, _, _, _ in CASES:
        layers = results["AVX-512"]["models"][name]["layers"]
        total = sum(lay["SiPP"] for lay in layers)
        groups: dict[str, list] = {}
        for lay in layers:
            w = lay["weight"]
            if len(w) == 2:
                key = "linear"
            elif w[1] == 1 and w[2] > 1:
                key = f"depthwise {w[2]}×{w[3]}, {lay['input'][2]}×{lay['input'][3]} maps"
            else:
                key = f"{w[2]}×{w[3]} conv, {lay['input'][2]}×{lay['input'][3]} maps"
            groups.setdefault(key, []).append(lay)
        for key, group in sorted(groups.items(), key=lambda kv: -sum(lay["SiPP"] for lay in kv[1])):
            s, c, p = (sum(lay[f] for lay in group) for f in ("SiPP", "conv", "PFP"))
            if s / total < 0.03:
                continue
            shape_rows.append(
                f"| {name} | {key} ({len(group)}) | {100 * s / total:.0f} % | {s / c:.2f}× | {p / c:.2f}× |"
            )

    memory = [
        (
            "| model | batch | scores | build | largest layer input (MB) | forward peak extra (MB) "
            "| pass peak extra (MB) | (pass − forward) ÷ largest input |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, batch, _, _ in CASES:
        model, x = setup(name, batch)
        largest = largest_layer_input(model, x)
        fwd = peak_extra(name, batch, "weight", "mean", "forward", ISAS["AVX-512"])
        for kind, reduce, label in KINDS:
            for isa, env in ISAS.items():
                print(f"memory {name} {label} {isa}", file=sys.stderr, flush=True)
                sens = peak_extra(name, batch, kind, reduce, "kernel", env)
                memory.append(
                    f"| {name} | {batch} | {label} | {isa} | {largest / mb:.1f} | {fwd / mb:.1f} "
                    f"| {sens / mb:.1f} | {(sens - fwd) / largest:.2f} |"
                )

    profile_rows = ["| model | scores | phase | share of samples |", "|---|---|---|---|"]
    for name, batch in (("resnet18", 8), ("mobilenet_v2", 8))[: 1 if quick else 2]:
        for kind, reduce, label in KINDS:
            print(f"profile {name} {label}", file=sys.stderr, flush=True)
            shares = profile(name, batch, kind, reduce, ISAS["AVX-512"])
            if shares is None:
                profile_rows.append(f"| {name} | {label} | (perf unavailable) | |")
                continue
            for phase, pct in sorted(shares.items(), key=lambda kv: -kv[1]):
                if pct >= 1.0:
                    profile_rows.append(f"| {name} | {label} | {phase} | {pct:.0f} % |")

    ref_section = ""
    if references:
        ref_section = (
            "\n**Against the references** (AVX-512 build, default threads, wall clock; the kernel "
            "repeats for at least 1 s per sample):\n\n"
        ) + "\n".join(reference_rows())
    a, b = results["AVX-512"], results["AVX2"]
    body = f"""CPU ({cpu_model()}), float32, random-initialized models, inputs N(0, 1) (so the first layer takes the sign
split). ResNet20 on {CASES[0][1]} CIFAR-shaped images, torchvision ResNet18 and MobileNetV2 at
224×224 on {CASES[1][1]} images; the whole data pass through `lostprune.datapass.sensitivity_pass`
(every conv and linear layer; the pass includes its own forward, in which each layer takes its
output from its scoring op and ResNet18's max-pool runs in `ops.max_pool2d`, exact, instead of
torch's scalar NCHW pool, which the forward it is compared with keeps; "unfused" is the same
pass with every layer running its own forward and the op only scoring,
`sensitivity_pass(..., fused=False)`, measured interleaved with it).
Builds: AVX-512 (kernels `{a["isa"]}`, torch `{a["torch_isa"]}`) and AVX2 (LOSTPRUNE_MARCH=x86-64-v3:
kernels `{b["isa"]}`, torch held to `{b["torch_isa"]}`), same CPU. Interleaved medians of {rounds}
in each process; the pass ÷ forward ratios of {processes} fresh processes per build (the
forward's own speed differs between processes here), their median and range; forward and pass
times: medians over the processes. "Σ conv ÷ forward", the wall clock and the op-by-op table
come from the first process;
"1 thread CPU time" is thread CPU seconds with torch.set_num_threads(1) (robust to the shared
machine's load), "wall clock" uses the default {a["threads"]} threads.

**Sensitivity pass ÷ one forward pass** on the same batch. "Σ conv ÷ forward" is the share of
the forward spent in its convolutions (op by op below): SiPP needs z± (one multiply-add per
nonzero weight and position, the convolution's work split by sign) and the reduction of A·V
(the same again); the layer's output is z+ − z−, so at the convolution's own efficiency a fused
pass costs at least 1 + (Σ conv ÷ forward) forwards, an unfused one 1 + 2 × (Σ conv ÷ forward);
PFP needs z and skips most of its reduction by exact bounds.

{chr(10).join(ratio)}

**Op by op**: each layer's own input, `weight_sensitivity` (SiPP, mean) and
`channel_sensitivity` (PFP) ÷ one `F.conv2d` (`F.linear`) of it, summed over the layers
(1 thread CPU time):

{chr(10).join(per_op)}

**Peak memory** above the loaded model and batch (VmHWM − VmRSS, fresh process each; glibc
returns freed blocks at once); "(pass − forward)" is what scoring adds to running the network:

{chr(10).join(memory)}

**Where the remaining time goes.** Op time by layer shape (AVX-512 build, shapes with at
least 3 % of the SiPP op time):

{chr(10).join(shape_rows)}

A pass's perf samples by phase (AVX-512 build, one thread, batch 8, `perf record` over two
passes after a warm-up; "Python ..." includes starting the process and importing torch):

{chr(10).join(profile_rows)}
{ref_section}
"""
    if quick:
        print(body)
        return
    command = "python benchmarks/bench_sensitivity.py" + (" --references" if references else "")
    print(write_section("sensitivity", "Sensitivity pass (CPU)", command, body))


def reference_rows() -> list[str]:
    rows = [
        "| model | scores | reference | images | reference (s) | kernel pass (s) | speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, _, n_vec, n_lit in CASES[:2]:
        model, x = setup(name, max(n_vec, n_lit))
        for kind, reduce, label in KINDS:
            for implementation, n in (("reference", n_vec), ("literal", n_lit)):
                sub = x[:n]

                def reference(model=model, sub=sub, implementation=implementation, kind=kind, reduce=reduce):
                    return score(model, sub, kind, reduce, implementation)

                def kernel(model=model, sub=sub, kind=kind, reduce=reduce):
                    return score(model, sub, kind, reduce)

                t_ref, t_kernel, speedup = interleaved_ratio(reference, kernel, rounds=2, min_time=1.0)
                tag = "(b) vectorized" if implementation == "reference" else "(a) literal"
                rows.append(
                    f"| {name} | {label} | {tag} | {n} | {t_ref:.2f} | {t_kernel:.3f} | {speedup:.0f}× |"
                )
    return rows


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--memory"]:
        _memory_child(argv[1], int(argv[2]), argv[3], argv[4], argv[5])
    elif argv[:1] == ["--profile"]:
        _profile_child(argv[1], int(argv[2]), argv[3], argv[4], int(argv[5]))
    else:
        if "--quick" in argv:  # a smoke test: small batches, one round, nothing written
            CASES[:] = [(name, max(2, batch // 16), 2, 1) for name, batch, _, _ in CASES]
        if argv[:1] == ["--isa"]:
            print(json.dumps(measure_isa(argv[1], int(argv[2]), passes_only="--passes-only" in argv)))
        else:
            main(
                references="--references" in argv,
                rounds=1 if "--quick" in argv else 3,
                quick="--quick" in argv,
                processes=1 if "--quick" in argv else 3,
            )
