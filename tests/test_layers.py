"""Imports point one way (docs/architecture.md, Layers): every import in lostprune/ —
module level, inside functions and under TYPE_CHECKING alike — goes to the importer's own
unit or to a unit on a lower layer, and no two modules import each other, directly or
around a loop."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lostprune"

# Bottom to top; a unit may import its own unit and the units of the layers below it.
LAYERS = [
    ["_version", "_threads", "_process", "_progress", "timing"],
    ["ops"],
    ["core", "_files"],
    ["data", "models", "robustness"],
    ["structure", "datapass", "io"],
    ["methods", "sparse"],
    ["api", "bench"],
    ["metrics", "train"],
    ["experiments"],
    ["report"],
    [""],  # the package's front door, lostprune/__init__.py
    ["cli"],
]
RANK = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = ["lostprune", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(module: str, path: Path) -> set[str]:
    """Every lostprune module ``module`` imports (``from a import b`` counts as a.b when that
    is a module, else as a), wherever the import statement stands."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
    return {name for name in found if name == "lostprune" or name.startswith("lostprune.")}


GRAPH = {module: imports_of(module, path) for module, path in MODULES.items()}


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in MODULES}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS (and to docs/architecture.md)"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import in ``graph`` that goes sideways or up the layers."""
    upward = []
    for module, targets in graph.items():
        source = unit_of(module)
        for target in targets:
            unit = unit_of(target)
            if unit not in RANK or source not in RANK:
                upward.append(f"{module} imports {target} (a unit without a layer: add it to LAYERS)")
            elif unit != source and RANK[unit] >= RANK[source]:
                upward.append(f"{module} imports {target} ({source!r} may not import {unit!r})")
    return sorted(upward)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of the module graph with more than one module (Tarjan);
    a package's __init__ importing its own submodules is not a cycle unless a submodule
    imports it back."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_imports_point_down():
    assert upward_imports(GRAPH) == []


def test_no_import_cycles():
    assert import_cycles(GRAPH) == []


def test_the_check_fails_on_a_violating_import():
    """An upward import, a sideways one and a loop inside one unit are each caught."""
    graph = {m: set(t) for m, t in GRAPH.items()}
    graph["lostprune.core.masks"].add("lostprune.metrics.potential")  # core -> metrics: up
    graph["lostprune.train.loop"].add("lostprune.metrics")  # train -> metrics: same layer
    assert upward_imports(graph) == [
        "lostprune.core.masks imports lostprune.metrics.potential ('core' may not import 'metrics')",
        "lostprune.train.loop imports lostprune.metrics ('train' may not import 'metrics')",
    ]
    graph = {m: set(t) for m, t in GRAPH.items()}
    graph["lostprune.report.robust"].add("lostprune.report.render")  # the old cycle: render imports robust
    assert import_cycles(graph) == [["lostprune.report.render", "lostprune.report.robust"]]


def test_the_check_sees_function_local_imports(tmp_path):
    """The scan must catch an import written inside a function (the usual way round a cycle)."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from ..report import render\n    import lostprune.cli\n")
    assert imports_of("lostprune.train.probe", source) >= {"lostprune.report.render", "lostprune.cli"}


@pytest.mark.parametrize(
    "module, former",
    [
        ("lostprune.train.augment", "lostprune.experiments.config"),
        ("lostprune.report.robust", "lostprune.report.render"),
        ("lostprune.sparse.convert", "lostprune.bench"),
    ],
)
def test_the_cycles_of_issue_21_stay_broken(module, former):
    assert former not in GRAPH[module]
