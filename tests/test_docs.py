"""Every citation of the project's docs resolves: "docs/methods.md §Name" (and the "§Other"
sections chained after it, "docs/methods.md §WT, §SiPP") names a heading of docs/methods.md,
"docs/architecture.md, Name" one of docs/architecture.md, and no "SPEC §" citation is left
(that document is not in the repository)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".cpp", ".h", ".cu", ".cuh", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg"}
SKIP = {"build", "dist", "__pycache__", "node_modules"}
SELF = Path(__file__).resolve()


def repository_files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIP or p.endswith(".egg-info") for p in parts[:-1]):
            continue
        if path.is_file() and path.suffix in SUFFIXES and path.resolve() != SELF:
            files.append(path)
    return files


def headings(doc: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in doc.read_text().splitlines() if re.match(r"#{1,6} ", line)]


METHODS = headings(ROOT / "docs" / "methods.md")
ARCHITECTURE = headings(ROOT / "docs" / "architecture.md")


def _section_at(text: str, at: int, names: list[str]) -> str | None:
    """The longest heading in ``names`` that ``text[at:]`` starts with as whole words."""
    for name in sorted(names, key=len, reverse=True):
        end = at + len(name)
        if text.startswith(name, at) and (end == len(text) or not text[end].isalnum()):
            return name
    return None


def broken_citations(text: str, methods: list[str], architecture: list[str], *, inside_methods: bool = False):
    """(cited text, context) of every citation in ``text`` that names no existing section."""
    text = re.sub(r"\s+", " ", text)  # a section name may wrap onto the next line
    broken = []
    starts = [m.end() for m in re.finditer(r"docs/methods\.md §", text)]
    if inside_methods:
        starts = [m.end() for m in re.finditer("§", text)]
    for at in starts:
        while True:  # the chain "§A, §B and §C" after one "docs/methods.md"
            name = _section_at(text, at, methods)
            if name is None:
                broken.append(text[at - 1 : at + 30])
                break
            follow = re.match(r"(?:,| and|/)\s*§", text[at + len(name) :])
            if not follow:
                break
            at += len(name) + follow.end()
    broken.extend(
        text[m.start() : m.end() + 30]
        for m in re.finditer(r"docs/architecture\.md, ", text)
        if not any(h.startswith(text[m.end() :].split(")")[0].split(";")[0].strip()) for h in architecture)
    )
    return broken


def test_the_documents_have_the_sections_the_code_needs():
    assert {
        "Prune ratio",
        "WT",
        "SiPP",
        "FT",
        "PFP",
        "Sensitivities",
        "Allocation",
        "Control",
        "Prune potential",
        "Excess error",
        "Functional similarity",
        "Informative features",
        "Corruptions",
        "Noise shifts",
    } <= set(METHODS)
    assert any(h.startswith("Kernels") for h in ARCHITECTURE)


def test_every_cited_section_exists():
    broken = []
    for path in repository_files():
        text = path.read_text(errors="replace")
        inside = path == ROOT / "docs" / "methods.md"
        broken += [
            f"{path.relative_to(ROOT)}: {c!r}"
            for c in broken_citations(text, METHODS, ARCHITECTURE, inside_methods=inside)
        ]
    assert broken == [], "citations of sections that do not exist:\n" + "\n".join(broken)


def test_no_spec_citations_are_left():
    left = [f"{p.relative_to(ROOT)}" for p in repository_files() if "SPEC §" in p.read_text(errors="replace")]
    assert left == []


@pytest.mark.parametrize(
    "text, broken",
    [
        ("see docs/methods.md §PFP.", []),
        ("see docs/methods.md §Prune\n    potential", []),
        ("(docs/methods.md §WT, §SiPP and §Nope)", ["§Nope)"]),
        ("docs/methods.md §Sensitivity", ["§Sensitivity"]),  # a prefix of a heading is not the heading
        ("docs/methods.md §Pruning", ["§Pruning"]),
        ("(docs/architecture.md, Kernels)", []),
        ("(docs/architecture.md, Kernals)", ["docs/architecture.md, Kernals)"]),
    ],
)
def test_the_check_fails_on_a_broken_citation(text, broken):
    found = broken_citations(text, METHODS, ARCHITECTURE)
    assert len(found) == len(broken) and all(f.startswith(b) for f, b in zip(found, broken)), found
