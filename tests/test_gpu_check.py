"""The GPU check (benchmarks/gpu/check.sh) without a GPU: its dry run compiles the CUDA kernels
cold, runs the op script and the benchmark on the CPU, reports every GPU step as skipped and
exits 0; a check that runs out of time fails with a line per step."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "benchmarks" / "gpu" / "check.sh"
GPU_STEPS = ("tests-cuda", "memcheck", "racecheck", "synccheck", "bench", "tests-rest")

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: run the check itself"),
    pytest.mark.skipif(os.environ.get("LOSTPRUNE_GPU_CHECK") == "1", reason="already inside the GPU check"),
    pytest.mark.skipif(shutil.which("timeout") is None, reason="the check needs coreutils' timeout"),
]


def run_check(tmp_path: Path, **env_update: str) -> tuple[subprocess.CompletedProcess, dict[str, str], Path]:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env_update}
    done = subprocess.run(
        ["bash", str(CHECK)], check=False, env=env, capture_output=True, text=True, timeout=1200, cwd=tmp_path
    )
    lines = (out / "summary.txt").read_text().splitlines()
    assert lines == done.stdout.splitlines()  # every summary line is printed as it happens
    steps = {}
    for line in lines:
        status, _, rest = line.partition(" ")
        name = rest.strip().split(" ", 1)[0].rstrip(":")
        if status in ("PASS", "FAIL", "SKIP"):
            steps[name] = line
    return done, steps, out


@pytest.mark.slow
def test_dry_run_compiles_runs_the_scripts_and_skips_the_gpu_steps(tmp_path):
    done, steps, out = run_check(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no GPU visible" in done.stdout
    for name in GPU_STEPS:
        assert steps[name].startswith("SKIP") and "no GPU" in steps[name], steps[name]
    assert steps["env"].startswith("PASS") and "GPU: none" in steps["env"]
    if torch.version.cuda is not None and (shutil.which("nvcc") or os.environ.get("CUDA_HOME")):
        # A cold CUDA build with lostprune's default architectures: binaries and Hopper PTX.
        assert steps["compile"].startswith("PASS") and "cold build" in steps["compile"], steps["compile"]
        assert "sm80.sm90.ptx90" in steps["compile"], steps["compile"]
    assert steps["ops-cpu"].startswith("PASS") and "0 wrong results" in steps["ops-cpu"], steps["ops-cpu"]
    assert steps["bench-smoke"].startswith("PASS"), steps["bench-smoke"]
    table = (out / "smoke" / "gpu.md").read_text()
    for section in ("Sensitivity pass vs forward", "Sparse layers", "WT-90 % end to end", "FT-50 % sliced"):
        assert section in table
    assert done.stdout.splitlines()[-1].startswith("GPU check: passed")


def test_a_spent_budget_fails_every_step_with_its_own_line(tmp_path):
    done, steps, _ = run_check(tmp_path, LOSTPRUNE_GPU_CHECK_SECONDS="5")
    assert done.returncode == 1
    assert steps["env"].startswith("FAIL") and "not run" in steps["env"]
    assert "GPU check: FAILED (env" in done.stdout.splitlines()[-1]
