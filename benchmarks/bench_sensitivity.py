"""The sensitivity pass (SiPP weight sensitivities, PFP channel sensitivities) against the
literal reference (a) and the vectorized reference (b), against one forward pass on the same
batch, and its peak memory.

    python benchmarks/bench_sensitivity.py              # writes benchmarks/results/sensitivity.md
    python -m pytest benchmarks/bench_sensitivity.py --benchmark-enable

Timing ratios are measured in the same run, interleaved. The references are slow (the literal
one runs per image and per output filter), so they run on a subset of the batch and the kernel
is timed again, interleaved, on that same subset for their ratio. Peak memory is read from the kernel's
VmHWM in a fresh process per measurement, with glibc returning freed blocks at once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._util import interleaved_ratio, write_section  # noqa: E402
from lostprune import models  # noqa: E402
from lostprune.datapass import sensitivity_pass  # noqa: E402

# model, batch (the issue's), images for reference (b), images for reference (a)
CASES = [("resnet20", 256, 64, 16), ("resnet18", 32, 4, 2)]
KINDS = [("weight", "mean", "SiPP weight sensitivities"), ("channel", "max", "PFP channel sensitivities")]


def setup(name: str, batch: int):
    torch.manual_seed(0)
    model = models.create(name).eval()
    x = torch.randn(batch, *model.input_size, generator=torch.Generator().manual_seed(1))
    return model, x


def forward(model, x):
    with torch.no_grad():
        return model(x)


def score(model, x, kind: str, reduce: str, implementation: str = "kernel"):
    return sensitivity_pass(model, x, kind=kind, reduce=reduce, batch_size=x.shape[0], progress=False,
                            implementation=implementation)


def largest_layer_input(model, x) -> int:
    """Bytes of the largest conv/linear input of the batch."""
    sizes = []
    hooks = [m.register_forward_hook(lambda mod, args, out: sizes.append(args[0].nbytes))
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    forward(model, x)
    for h in hooks:
        h.remove()
    return max(sizes)


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


# --------------------------------------------------------------------------- memory (subprocess)
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


def peak_extra(name: str, batch: int, kind: str, reduce: str, what: str) -> int:
    """Peak resident memory above the loaded model and data, in bytes, in a fresh process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run([sys.executable, __file__, "--memory", name, str(batch), kind, reduce, what],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["extra"]


# --------------------------------------------------------------------------- report
def main() -> None:
    timing = ["| model | batch | scores | forward (s) | sensitivity pass (s) | pass ÷ forward |",
              "|---|---|---|---|---|---|"]
    refs = ["| model | scores | reference | images | reference (s) | kernel pass (s) | speedup |",
            "|---|---|---|---|---|---|---|"]
    memory = ["| model | batch | scores | largest layer input (MB) | forward peak extra (MB) "
              "| pass peak extra (MB) | pass − forward (MB) | (pass − forward) ÷ largest input |",
              "|---|---|---|---|---|---|---|---|"]
    ref_memory = ["| model | scores | implementation | images | peak extra (MB) |", "|---|---|---|---|---|"]
    mb = 1 << 20
    for name, batch, n_vec, n_lit in CASES:
        model, x = setup(name, batch)
        largest = largest_layer_input(model, x)
        for kind, reduce, label in KINDS:
            print(f"{name} {label}", flush=True)
            tf, tp, _ = interleaved_ratio(lambda: forward(model, x), lambda: score(model, x, kind, reduce),
                                          rounds=3, min_time=0.0)
            timing.append(f"| {name} | {batch} | {label} | {tf:.3f} | {tp:.3f} | {tp / tf:.2f}× |")
            for implementation, n in (("reference", n_vec), ("literal", n_lit)):
                sub = x[:n]
                # Interleaved: the kernel loops for about as long as one reference run, so
                # both sides see the same machine load.
                def reference(sub=sub, implementation=implementation):
                    return score(model, sub, kind, reduce, implementation)

                def kernel(sub=sub):
                    return score(model, sub, kind, reduce)

                t_ref, t_kernel, speedup = interleaved_ratio(reference, kernel, rounds=2, min_time=1.0)
                tag = "(b) vectorized" if implementation == "reference" else "(a) literal"
                refs.append(f"| {name} | {label} | {tag} | {n} | {t_ref:.2f} | {t_kernel:.3f} "
                            f"| {speedup:.0f}× |")
            fwd = peak_extra(name, batch, kind, reduce, "forward")
            sens = peak_extra(name, batch, kind, reduce, "kernel")
            memory.append(f"| {name} | {batch} | {label} | {largest / mb:.1f} | {fwd / mb:.1f} "
                          f"| {sens / mb:.1f} | {(sens - fwd) / mb:.1f} | {(sens - fwd) / largest:.2f} |")
            for implementation, n in (("kernel", n_vec), ("reference", n_vec), ("literal", n_lit)):
                extra = peak_extra(name, n, kind, reduce, implementation)
                ref_memory.append(f"| {name} | {label} | {implementation} | {n} | {extra / mb:.1f} |")
    body = f"""CPU, float32, random-initialized models, inputs N(0, 1) (so the first layer takes the sign
split). ResNet20 on {CASES[0][1]} CIFAR-shaped images, torchvision resnet18 at 224×224 on
{CASES[1][1]} images; the whole data pass through `lostprune.datapass.sensitivity_pass` (hooks,
every conv and linear layer).

**(ii) Sensitivity pass ÷ one forward pass** on the same batch (the pass includes its own
forward; interleaved medians of 3):

{chr(10).join(timing)}

**(i) Against the references**, on the first images of the same batch (interleaved medians
of 2 after a warm-up run; the kernel repeats for at least 1 s per sample):

{chr(10).join(refs)}

**Peak memory** above the loaded model and batch (VmHWM − VmRSS, fresh process each; glibc
returns freed blocks at once). "pass − forward" is what scoring adds to running the network:

{chr(10).join(memory)}

Peak memory of the implementations on the reference subsets:

{chr(10).join(ref_memory)}
"""
    command = "python benchmarks/bench_sensitivity.py"
    print(write_section("sensitivity", "Sensitivity pass (CPU)", command, body))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory":
        _memory_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
    else:
        main()
