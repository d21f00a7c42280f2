#!/usr/bin/env bash
# The GPU check: one command for a machine with one NVIDIA GPU, no network, run from the
# source tree (nothing is installed):
#
#     bash benchmarks/gpu/check.sh            # logs, the summary and gpu.md go to $OUT or ./gpu-out
#
# Steps, each under its own timeout and all within LOSTPRUNE_GPU_CHECK_SECONDS (default 470 s
# with a GPU; 1200 s for a dry run, whose CUDA compile may share a slow CI machine):
#   env         versions of Python, torch, CUDA, the GPU and the tools
#   compile     a cold build of the CPU and CUDA kernels for the visible GPU (build time reported)
#   tests-cuda  pytest -m cuda: every CUDA op against the float64 reference and the CPU op
#   memcheck, racecheck, synccheck
#               compute-sanitizer over benchmarks/gpu/sanitize_ops.py (every CUDA op once on odd shapes)
#   bench       benchmarks/gpu/bench_gpu.py: each CUDA op vs its GPU baseline -> $OUT/gpu.md
#   tests-rest  the rest of the suite with CUDA available, in parallel processes (run_tests.py)
# One summary line per step ($OUT/summary.txt); the exit status is non-zero when a step fails.
# Without a GPU it says so, runs what can run (the CUDA compile, the op script and a smoke
# run of the benchmark on the CPU) and exits 0 when those pass: tests/test_gpu_check.py
# runs it that way in CI, so the check cannot rot.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export LOSTPRUNE_CACHE="$OUT/kernel-cache"  # cold: the build is part of the check
export LOSTPRUNE_GPU_CHECK=1                 # tests/test_gpu_check.py: no check inside the check
export COLUMNS=1000                          # rich output in the logs: one line per line
unset TORCH_CUDA_ARCH_LIST                   # build for the visible GPU (or lostprune's default list)
rm -rf "$LOSTPRUNE_CACHE"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
START=$SECONDS
FAILED=()

say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME CAP_SECONDS DETAIL_COMMAND -- COMMAND...: runs COMMAND with a timeout of
# min(CAP, time left), output in $OUT/NAME.log; DETAIL_COMMAND prints the summary detail.
step() {
  local name=$1 cap=$2 detail=$3
  shift 4
  local left=$((BUDGET - (SECONDS - START)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 10)); then
    say "FAIL  $name: not run, the check's $BUDGET s are spent"
    FAILED+=("$name")
    return
  fi
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  local took=$((SECONDS - t0)) info
  info=$(eval "$detail" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')
  if ((rc == 0)); then
    say "PASS  $name ($took s): $info"
  else
    info=$(tail -n 2 "$OUT/$name.log" | tr '\n' ' ' | cut -c 1-300)
    [[ $rc == 124 || $rc == 137 ]] && info="timed out after $limit s; $info"
    say "FAIL  $name ($took s, exit $rc): $info (log: $OUT/$name.log)"
    FAILED+=("$name")
  fi
}

skip() { say "SKIP  $1: $2"; }

# ----------------------------------------------------------------------------- env
{ read -r TORCH_CUDA; read -r GPU; } < <("$PY" - <<'PY' 2>/dev/null
import torch
print(torch.version.cuda or "")
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
)
if [[ -n "$GPU" ]]; then
  BUDGET=${LOSTPRUNE_GPU_CHECK_SECONDS:-470}
  COMPILE_CAP=200
else
  BUDGET=${LOSTPRUNE_GPU_CHECK_SECONDS:-1200}
  COMPILE_CAP=$BUDGET
fi
step env 60 "tail -n 1 '$OUT/env.log'" -- "$PY" - <<'PY'
import platform, shutil, subprocess, sys
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| torch CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
for tool in ("nvcc", "compute-sanitizer", "ncu", "nvidia-smi", "ninja"):
    path = shutil.which(tool)
    version = ""
    if path and tool == "nvcc":
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-2]
    print(f"{tool}: {path or 'not found'} {version}")
gpus = [torch.cuda.get_device_name(i) + " (sm_%d%d)" % torch.cuda.get_device_capability(i)
        for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
print("torch", torch.__version__, "CUDA", torch.version.cuda, "| GPU:", ", ".join(gpus) or "none")
PY
if [[ -z "$GPU" ]]; then
  say "NOTE  no GPU visible: a dry run (compile and CPU smoke runs only; GPU steps skipped)"
fi

# ----------------------------------------------------------------------------- compile
NVCC=$(command -v nvcc || true)
if [[ -z "$TORCH_CUDA" ]]; then  # cannot happen with a GPU visible to torch
  skip compile "torch is a CPU-only build: no CUDA kernels to compile"
elif [[ -z "$NVCC" && -z "${CUDA_HOME:-}" && ! -x /usr/local/cuda/bin/nvcc ]]; then
  if [[ -n "$GPU" ]]; then
    say "FAIL  compile: nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    FAILED+=(compile)
  else
    skip compile "nvcc not found (no CUDA toolkit on this machine)"
  fi
else
  step compile "$COMPILE_CAP" "grep -o 'lostprune_C.so *([0-9.]* s)' '$OUT/compile.log' | sed 's/lostprune_C.so */cold build /'; \
        grep -o 'cuda[0-9.]*-nvcc[0-9.]*-[a-z0-9.]*' '$OUT/compile.log' | head -1" \
    -- env LOSTPRUNE_CUDA=1 "$PY" -m lostprune.cli build --check
fi

# ----------------------------------------------------------------------------- GPU steps
SANITIZER=$(command -v compute-sanitizer || true)
[[ -z "$SANITIZER" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/compute-sanitizer" ]] && SANITIZER="$CUDA_HOME/bin/compute-sanitizer"
if [[ -n "$GPU" ]]; then
  step tests-cuda 180 "grep -E '[0-9]+ (passed|failed|skipped|error)' '$OUT/tests-cuda.log' | tail -n 1" \
    -- "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
  # Only lostprune's kernels are instrumented (torch's and cuDNN's run as usual) where the
  # sanitizer can filter by kernel name; every tensor its own allocation, so an access past
  # its end is caught.
  FILTER=()
  [[ -n "$SANITIZER" ]] && "$SANITIZER" --help 2>/dev/null | grep -q -- --kernel-name && FILTER=(--kernel-name kns=lostprune)
  for tool in memcheck racecheck synccheck; do
    if [[ -z "$SANITIZER" ]]; then
      say "FAIL  $tool: compute-sanitizer not found"
      FAILED+=("$tool")
      continue
    fi
    step "$tool" 150 "grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|wrong results' '$OUT/$tool.log' | tail -n 2" \
      -- env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" --error-exitcode 1 \
         ${FILTER[@]+"${FILTER[@]}"} --print-limit 20 "$PY" benchmarks/gpu/sanitize_ops.py
  done
  step bench 240 "grep -E '^- sensitivity' '$OUT/gpu.md' | sed 's/^- //' | tr '\n' ';'; echo ' table: $OUT/gpu.md'" \
    -- "$PY" benchmarks/gpu/bench_gpu.py --out "$OUT"
  left=$((BUDGET - (SECONDS - START) - 10))
  step tests-rest "$((left > 10 ? left : 10))" "tail -n 1 '$OUT/tests-rest.log'" \
    -- "$PY" benchmarks/gpu/run_tests.py -m "not cuda" --deadline "$((left > 20 ? left - 10 : 10))" \
       --logs "$OUT/tests-rest"
else
  for name in tests-cuda memcheck racecheck synccheck bench tests-rest; do
    skip "$name" "no GPU"
  done
  # What can run without a GPU: the same op calls on the CPU kernels, and the benchmark on
  # tiny shapes, so a change to the library that breaks either script shows here.
  step ops-cpu 120 "tail -n 1 '$OUT/ops-cpu.log'" -- "$PY" benchmarks/gpu/sanitize_ops.py --device cpu
  step bench-smoke 240 "echo 'table: $OUT/smoke/gpu.md'" \
    -- "$PY" benchmarks/gpu/bench_gpu.py --device cpu --smoke --out "$OUT/smoke"
fi

# ----------------------------------------------------------------------------- verdict
TOTAL=$((SECONDS - START))
if ((${#FAILED[@]})); then
  say "GPU check: FAILED (${FAILED[*]}) in $TOTAL s${GPU:+ on $GPU}"
  exit 1
fi
say "GPU check: passed in $TOTAL s${GPU:+ on $GPU}${GPU:- (dry run: no GPU)}"
exit 0
