"""The hand-made mutants of docs/mutation.md: one plausible bug in the code each strengthened test
guards. Each is applied in a scratch copy of the tree (never the checkout) and its test is run;
the test must fail. With ``--before``, the test as it was before it was strengthened (the file
at the commit named in ``BEFORE``) is run against the same mutant, to show what it let through.

    python tools/hand_mutants.py            # every mutant against today's test
    python tools/hand_mutants.py --before   # and against the test as it was
    python tools/hand_mutants.py --only l2  # mutants whose name contains "l2"
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from mutation_sample import ROOT, scratch_copy

# name, test node, file, original line (exact, unique), mutant line
MUTANTS = [
    (
        "stop rule inverted",
        "tests/test_robust_training.py::test_runner_trains_and_retrains_the_robust_arm",
        "lostprune/metrics/recommend.py",
        "passed = np.where(worst <= delta + 1e-12, 0.0, 1.0)",
        "passed = np.where(worst <= delta + 1e-12, 1.0, 0.0)",
    ),
    (
        "channels-last off by default on the CPU",
        "tests/test_train.py::test_channels_last_trains_the_same_and_leaves_weights_contiguous",
        "lostprune/train/loop.py",
        'else device.type == "cpu"',
        'else device.type != "cpu"',
    ),
    (
        "feature matrix transposed",
        "tests/test_experiments.py::test_tiny_experiment_end_to_end",
        "lostprune/report/results.py",
        'rows.setdefault(dist.split(":", 1)[1], {})[net.key] = value',
        'rows.setdefault(net.key, {})[dist.split(":", 1)[1]] = value',
    ),
    (
        "DDP epoch loss over one process's images",
        "tests/test_distributed.py::test_ddp_training_keeps_processes_in_sync",
        "lostprune/train/loop.py",
        "samples *= distributed.world_size()",
        "pass",
    ),
    (
        "runner evaluates the nominal group only",
        "tests/test_distributed.py::test_runner_under_torchrun",
        "lostprune/experiments/tasks.py",
        "for shifts, pixels in env.similarity_groups():",
        "for shifts, pixels in env.similarity_groups()[:1]:",
    ),
    (
        "sensitivity op called without the padding",
        "tests/test_sensitivity.py::test_half_precision_computes_in_float32",
        "lostprune/ops/sensitivity.py",
        "list(self.stride), list(self.padding), list(self.dilation)",
        "list(self.stride), [0, 0], list(self.dilation)",
    ),
    (
        "l2 scores filters by the L1 norm",
        "tests/test_paper_structured.py::test_l2_ranks_filters_by_their_l2_norm",
        "lostprune/methods/ft.py",
        "    norm = 2\n",
        "    norm = 1\n",
    ),
]

# test -> the commit whose version of its file is the test before it was strengthened: issue #21's
# fixes (489c27c), or main before this branch for the two tests strengthened here
BEFORE = {
    "tests/test_robust_training.py::test_runner_trains_and_retrains_the_robust_arm": "489c27c^",
    "tests/test_train.py::test_channels_last_trains_the_same_and_leaves_weights_contiguous": "489c27c^",
    "tests/test_sensitivity.py::test_half_precision_computes_in_float32": "489c27c^",
    "tests/test_distributed.py::test_runner_under_torchrun": "489c27c^",
    "tests/test_experiments.py::test_tiny_experiment_end_to_end": "e8a18fa",
    "tests/test_distributed.py::test_ddp_training_keeps_processes_in_sync": "e8a18fa",
}


def run(tree: Path, node: str) -> tuple[str, float, str]:
    """(outcome, seconds, the first ``E`` line of the failure: which assertion caught the mutant)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", node],
        check=False,  # a failing test is the expected outcome for a mutant
        cwd=tree,
        env={**__import__("os").environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
    )
    outcome = {0: "passes (survives)", 1: "fails (killed)"}.get(done.returncode, f"error {done.returncode}")
    caught = next((line[1:].strip() for line in done.stdout.splitlines() if line.startswith("E ")), "")
    return outcome, time.perf_counter() - start, caught[:100]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", action="store_true")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    tree = scratch_copy()
    try:
        for name, node, path, old, new in MUTANTS:
            if args.only not in name:
                continue
            target = tree / path
            original = target.read_text()
            assert original.count(old) == 1, (path, old)
            target.write_text(original.replace(old, new))
            try:
                versions = [("now", None)]
                test_file = node.split("::")[0]
                if args.before and node in BEFORE:
                    versions.append((BEFORE[node], test_file))
                for label, swap in versions:
                    current = (tree / test_file).read_text()
                    if swap:
                        (tree / swap).write_text(
                            subprocess.run(
                                ["git", "show", f"{label}:{swap}"],
                                cwd=ROOT,
                                capture_output=True,
                                text=True,
                                check=True,
                            ).stdout
                        )
                    try:
                        outcome, seconds, caught = run(tree, node)
                    finally:
                        (tree / test_file).write_text(current)
                    print(
                        f"| {name} | `{old.strip()}` -> `{new.strip()}` ({path}) | `{node}` | test {label}: "
                        f"{outcome} | {seconds:.0f} s | {caught} |",
                        flush=True,
                    )
            finally:
                target.write_text(original)
    finally:
        import shutil

        shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    main()
