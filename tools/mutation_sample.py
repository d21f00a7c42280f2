"""Mutation coverage of the public API on a seeded random sample of mutants (docs/mutation.md).

Mutants are made by cosmic-ray's operators (``pip install cosmic-ray``; not a project or CI
dependency): every position where one of its argument-free operators applies in a module of
``lostprune/methods``, ``lostprune/core`` or ``lostprune/metrics`` is a candidate, and a seeded
``random.Random`` draws the same number from each package. cosmic-ray itself runs every
mutant against one test command; this driver runs each one against the test files that cover
its module (``TESTS``), first file the most specific, ``-x`` so a killed mutant stops early.

Each mutant is applied in a scratch copy of the tracked files, never in the working tree, so
an interrupted run leaves the checkout clean. Results go to a JSON-lines file, one mutant a
line; a rerun with the same file skips the mutants it already holds.

    python tools/mutation_sample.py --per-package 20 --seed 21 --out mutation.jsonl
    python tools/mutation_sample.py --out mutation.jsonl --summary      # table + survivors
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from cosmic_ray.ast import ast_nodes, get_ast
from cosmic_ray.mutating import mutate_code
from cosmic_ray.plugins import get_operator, operator_names

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("methods", "core", "metrics")

# module -> the test files that exercise it, the most specific first.
TESTS = {
    "methods/allocation.py": ["test_core.py", "test_sipp_pfp.py"],
    "methods/base.py": ["test_core.py", "test_bad_inputs.py", "test_sipp_pfp.py"],
    "methods/control.py": ["test_core.py"],
    "methods/ft.py": ["test_paper_structured.py", "test_core.py"],
    "methods/pfp.py": ["test_sipp_pfp.py", "test_paper_structured.py"],
    "methods/random_.py": ["test_core.py"],
    "methods/registry.py": ["test_core.py", "test_bad_inputs.py"],
    "methods/sipp.py": ["test_sipp_pfp.py"],
    "methods/snip.py": ["test_core.py"],
    "methods/wt.py": ["test_core.py"],
    "core/accounting.py": ["test_core.py", "test_shared_weights.py"],
    "core/layers.py": ["test_core.py", "test_shared_weights.py"],
    "core/masks.py": ["test_core.py", "test_shared_weights.py"],
    "core/shapes.py": ["test_bad_inputs.py", "test_core.py"],
    "metrics/evaluation.py": ["test_metrics.py"],
    "metrics/features.py": ["test_metrics.py"],
    "metrics/potential.py": ["test_metrics.py"],
    "metrics/recommend.py": [
        "test_robust_training.py::test_recommend_ratio_on_a_hand_made_table",
        "test_robust_training.py::test_recommend_ratio_errors",
    ],
    "metrics/segmentation.py": ["test_metrics.py"],
    "metrics/similarity.py": ["test_metrics.py"],
}


# test_paper_structured.py's torchvision-zoo instances, its inception-style budget test and the
# retraining round trip take 9.5 of its 10 minutes on 2 cores; the same checks on the small
# networks (chain, residual block, resnet20) stay.
SLOW = (
    "not densenet121 and not mobilenet_v2 and not resnet18 and not googlenet and not shufflenet "
    "and not efficientnet and not inception_style and not survive_retraining"
)


def annotation_lines(tree: ast.Module) -> set[int]:
    """Lines inside annotations. Under ``from __future__ import annotations`` they are never
    evaluated, so a mutant there (``int | None`` -> ``int & None``) is equivalent by construction."""
    future = any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    if not future:
        return set()
    lines = set()
    for node in ast.walk(tree):
        parts = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(node.returns)
        elif isinstance(node, (ast.arg, ast.AnnAssign)):
            parts.append(node.annotation)
        for part in parts:
            if part is not None:
                lines.update(range(part.lineno, part.end_lineno + 1))
    return lines


def candidates(module: Path) -> list[dict]:
    """Every (operator, occurrence) cosmic-ray can apply to the module, outside annotations."""
    source = module.read_text()
    skip = annotation_lines(ast.parse(source))
    tree = get_ast(source)
    out = []
    for name in operator_names():
        operator_class = get_operator(name)
        if operator_class.arguments():  # parameterized operators need a config; the plain ones suffice
            continue
        operator = operator_class()
        positions = [start for node in ast_nodes(tree) for start, _ in operator.mutation_positions(node)]
        for occurrence, (line, column) in enumerate(positions):
            if line not in skip:
                out.append(
                    {
                        "module": str(module.relative_to(ROOT / "lostprune")),
                        "operator": name,
                        "occurrence": occurrence,
                        "line": line,
                        "column": column,
                    }
                )
    return out


def draw(per_package: int, seed: int) -> list[dict]:
    """``per_package`` code sites (module, line, column) per package, then one of the mutants at
    each site: drawn over sites, not over mutants, since cosmic-ray makes a dozen mutants of
    every binary operator (``/`` -> ``>>``, ``|``, ...) that crash at once and would fill the sample."""
    rng = random.Random(seed)
    drawn = []
    for package in PACKAGES:
        sites = defaultdict(list)
        for module in sorted((ROOT / "lostprune" / package).glob("*.py")):
            if module.name != "__init__.py":
                for c in candidates(module):
                    sites[(c["module"], c["line"], c["column"])].append(c)
        drawn.append(
            [rng.choice(sites[site]) for site in rng.sample(sorted(sites), min(per_package, len(sites)))]
        )
    # round robin over the packages, so that a run stopped early has measured each alike
    sample = [c for row in itertools.zip_longest(*drawn) for c in row if c is not None]
    for c in sample:
        c["id"] = f"{c['module']}:{c['operator'].split('/')[-1]}:{c['occurrence']}"
    return sample


def one_line_diff(before: str, after: str, line: int) -> str:
    old, new = before.splitlines(), after.splitlines()
    changed = [i for i, (a, b) in enumerate(zip(old, new)) if a != b] or [line - 1]
    i = changed[0]
    return f"L{i + 1}: `{old[i].strip()}` -> `{new[i].strip() if i < len(new) else ''}`"


def scratch_copy() -> Path:
    """The tracked files (and untracked, not ignored ones) in a temporary folder."""
    files = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    target = Path(tempfile.mkdtemp(prefix="lostprune-mutants-"))
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def preload() -> None:
    """Import the heavy third-party modules once, in this process: every test run is a fork of
    it (``run_tests``), so a mutant costs its tests, not another start of torch (tens of seconds
    on a loaded 2-core machine). lostprune itself is imported only in the fork, from the copy."""
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import torch  # noqa: F401  (no torch op runs here: the fork starts with no threads)
    import torchvision  # noqa: F401
    import yaml  # noqa: F401


def run_tests(tree: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    """pytest on ``tests`` in a fork whose ``lostprune`` is the copy's: (outcome, seconds, last line)."""
    log = tree / ".mutant-pytest.log"
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(tree)
            sys.path.insert(0, str(tree))
            sys.dont_write_bytecode = True  # a mutant and its original may share a timestamp
            import pytest

            code = int(
                pytest.main(
                    ["-x", "-q", "-p", "no:cacheprovider", "-k", SLOW, *[f"tests/{t}" for t in tests]]
                )
            )
        finally:
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.perf_counter() - start, ""
        time.sleep(0.2)
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
    # exit 1: a test failed; 2-4: collection or usage errors (an import the mutant broke), also a kill
    return (
        ("survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"),
        time.perf_counter() - start,
        tail[0],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-package", type=int, default=20)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--out", type=Path, default=Path("mutation.jsonl"))
    parser.add_argument(
        "--only", action="append", help="run only mutants whose id contains this text (repeatable)"
    )
    parser.add_argument("--summary", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args()
    if args.summary:
        return summarize(args.out)
    sample = draw(args.per_package, args.seed)
    done = (
        {json.loads(line)["id"] for line in args.out.read_text().splitlines()} if args.out.exists() else set()
    )
    todo = [
        c for c in sample if c["id"] not in done and (not args.only or any(o in c["id"] for o in args.only))
    ]
    preload()
    tree = scratch_copy()
    signal.signal(
        signal.SIGTERM, lambda *_: sys.exit(143)
    )  # kill PID: the finally below still removes the copy
    try:
        baseline = {}
        for c in todo:
            path = tree / "lostprune" / c["module"]
            tests = TESTS[c["module"]]
            key = tuple(tests)
            if key not in baseline:  # the unmutated code must pass, and sets the timeout
                outcome, seconds, tail = run_tests(tree, tests, timeout=1800)
                if outcome != "survived":
                    raise SystemExit(f"tests {tests} fail without a mutant: {tail}")
                baseline[key] = seconds
            original = path.read_text()
            operator = get_operator(c["operator"])()
            mutated = mutate_code(original, operator, c["occurrence"])
            if mutated is None or ast.dump(ast.parse(mutated)) == ast.dump(ast.parse(original)):
                outcome, seconds, tail = "no-op", 0.0, ""
            else:
                path.write_text(mutated)
                try:
                    outcome, seconds, tail = run_tests(tree, tests, timeout=3 * baseline[key] + 60)
                finally:
                    path.write_text(original)
            record = dict(
                c,
                outcome=outcome,
                seconds=round(seconds, 1),
                tests=tests,
                last_line=tail,
                diff=one_line_diff(original, mutated, c["line"]) if mutated else "",
            )
            with args.out.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(f"{outcome:9s} {seconds:6.1f}s {record['id']}  {record['diff']}", flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def summarize(path: Path) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    counts = defaultdict(lambda: defaultdict(int))
    for r in records:
        counts[r["module"].split("/")[0]][r["outcome"]] += 1
    print("| package | mutants | killed | survived | killed share |\n|---|---|---|---|---|")
    for package in PACKAGES:
        c = counts[package]
        tested = c["killed"] + c["timeout"] + c["survived"]
        if tested:
            print(
                f"| {package}/ | {tested} | {c['killed'] + c['timeout']} | {c['survived']} | "
                f"{100 * (c['killed'] + c['timeout']) / tested:.0f} % |"
            )
    print("\nsurvivors:")
    for r in records:
        if r["outcome"] == "survived":
            print(f"- {r['id']} {r['diff']}")


if __name__ == "__main__":
    main()
