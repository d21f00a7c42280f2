"""Run the test suite as parallel pytest processes within a deadline.

The GPU check has minutes, not the suite's single-process runtime, and the GPU machine has no
pytest-xdist: test files (and each test of the files whose tests take minutes) are handed to
``--jobs`` workers, the slowest-known first, each worker with its share of the CPU threads.
Prints one line per job and a total; exit 1 when a job fails or does not finish before the
deadline (its log says how far it got).

    python benchmarks/gpu/run_tests.py --jobs 6 --deadline 200 -m "not cuda" --logs gpu-out/tests
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Files that take longest (they compile kernels or train): started first.
SLOW_FIRST = [
    "test_build.py",
    "test_experiments.py",
    "test_cli.py",
    "test_slicing.py",
    "test_sparse.py",
    "test_robust_training.py",
    "test_sipp_pfp.py",
    "test_group_pruning.py",
    "test_cycles.py",
]
# Files with several tests of a minute or more (builds, training runs): one job per test.
SPLIT_BY_TEST = ["test_build.py", "test_experiments.py", "test_cycles.py"]
SUMMARY = re.compile(r"^=* ?(\d+ (?:passed|failed|skipped|deselected|errors?)\b.*?) in [\d.]+s", re.MULTILINE)


def order(files: list[Path]) -> list[Path]:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    return sorted(files, key=lambda p: (rank.get(p.name, len(rank)), -p.stat().st_size))


def split(path: Path, marker: str | None, env: dict) -> list[str]:
    """The test ids of ``path`` (selected by ``marker``), or the file itself if they cannot be listed."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(path)]
    done = subprocess.run(
        command + (["-m", marker] if marker else []),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    ids = [line.strip() for line in done.stdout.splitlines() if "::" in line]
    return ids or [str(path)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)))
    parser.add_argument("--deadline", type=float, default=600, help="seconds for the whole run")
    parser.add_argument("-m", dest="marker", default=None, help="pytest marker expression")
    parser.add_argument("--logs", default="test-logs", help="directory for one log per file")
    parser.add_argument("--ignore", action="append", default=[], help="test file names to leave out")
    parser.add_argument("files", nargs="*", help="test files (default tests/test_*.py)")
    args = parser.parse_args()
    end = time.monotonic() + args.deadline
    files = [Path(f) for f in args.files] or sorted((ROOT / "tests").glob("test_*.py"))
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    threads = str(max(1, (os.cpu_count() or 2) // args.jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    queue: list[str] = []
    for path in order([f for f in files if f.name not in args.ignore]):
        queue += split(path, args.marker, env) if path.name in SPLIT_BY_TEST else [str(path)]
    results: dict[str, tuple[str, str]] = {}
    lock = threading.Lock()

    def run(job: str) -> None:
        name = Path(job.split("::")[0]).name + ("::" + job.split("::", 1)[1] if "::" in job else "")
        log = logs / (re.sub(r"[^\w.-]+", "_", name) + ".log")
        left = end - time.monotonic()
        if left < 5:
            results[name] = ("NOT RUN", "deadline reached before it started")
            return
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", job]
        if args.marker:
            command += ["-m", args.marker]
        start = time.monotonic()
        with open(log, "w") as out:
            try:
                code = subprocess.run(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=left,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = None
        text = log.read_text(errors="replace")
        found = SUMMARY.findall(text)
        detail = f"{found[-1] if found else 'no summary'} ({time.monotonic() - start:.0f} s)"
        status = "TIMEOUT" if code is None else "PASS" if code in (0, 5) else "FAIL"  # 5: all deselected
        with lock:
            results[name] = (status, detail)
            print(f"  {status:7} {name}: {detail}", flush=True)

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                job = queue.pop(0)
            run(job)

    workers = [threading.Thread(target=worker) for _ in range(args.jobs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    bad = {name: r for name, r in results.items() if r[0] != "PASS"}
    for name, (status, detail) in sorted(bad.items()):
        if status == "NOT RUN":
            print(f"  {status:7} {name}: {detail}")
    names = sorted(bad)
    listed = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    print(
        f"{len(results) - len(bad)} of {len(results)} test jobs passed"
        + (f"; not passed: {listed}" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
