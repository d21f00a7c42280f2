"""Assemble benchmarks/RESULTS.md from the per-suite sections in benchmarks/results/*.md.

Each benchmark script writes its own section file (numbers, machine, the command that
produced them); this script only concatenates them in a fixed order, so suites can be
re-run independently without touching each other's numbers.

    python benchmarks/write_results.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    "machine",
    "gather",
    "nonzero",
    "core",
    "sensitivity",
    "slicing",
    "zoo",
    "shape_pass",
    "sparse",
    "sparse_ceiling",
    "pool",
    "gpu",
    "corruptions",
    "robust_training",
]

HEADER = """# Benchmark results

Every number below is a ratio against a baseline measured in the same run (the machine is
shared and noisy; absolute times drift). Each section names the command that produced it.
Regenerate this file with `python benchmarks/write_results.py` after re-running a suite.
"""


def main() -> None:
    sections = {p.stem: p.read_text().strip() for p in sorted((HERE / "results").glob("*.md"))}
    ordered = [name for name in ORDER if name in sections] + sorted(set(sections) - set(ORDER))
    body = "\n\n".join(sections[name] for name in ordered)
    (HERE / "RESULTS.md").write_text(HEADER + "\n" + body + "\n")
    print(f"wrote {HERE / 'RESULTS.md'} from {len(ordered)} sections: {', '.join(ordered)}")


if __name__ == "__main__":
    main()
