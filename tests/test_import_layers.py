"""No import cycle among the project's modules, deferred imports included, and the layering of
docs/architecture.md ("Layers"): a module imports only its own layer and the layers below it.

Imports are read with ``ast`` from the source files (top level, inside functions and under
``TYPE_CHECKING`` alike), with ``exporters/`` and ``hw_targets/`` named as installed
(``lasnn_deploy.exporters``, ``lasnn_deploy.hw_targets``). ``from .student import X`` is an edge to
the package ``lasnn_deploy.student`` (its ``__init__`` runs), ``from .student.files import X`` one to
that module alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lasnn_deploy"
FOLDERS = {
    PACKAGE: ROOT / "lasnn_deploy",
    f"{PACKAGE}.exporters": ROOT / "exporters",
    f"{PACKAGE}.hw_targets": ROOT / "hw_targets",
}

# Lowest first. A module may import modules of its own layer and of the layers below it; a name
# stands for the module and everything under it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("errors", "atomic", "modes", "neurons", "lif_kernels", "inputs", "lava_compat", "data")),
    ("student", ("student", "models", "loihi_quant", "nir_read", "run_folder")),
    ("readings of the student", ("exporters", "hw_targets", "evaluation", "training", "nir_import")),
    ("validation", ("validation",)),
    ("commands and the public API", ("demo", "cli", "__main__", "")),  # "": the package's __init__
]


def project_modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (source file, whether it is a package's ``__init__``)."""
    modules = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if "__pycache__" in parts:
                continue
            is_package = parts[-1] == "__init__"
            modules[".".join([package, *parts[: -1 if is_package else None]])] = (path, is_package)
    return modules


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its source."""
    graph = {}
    for name, (path, is_package) in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                # `from . import nir_runtimes` imports the submodule; `from .student import Conv` the package
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                return path[path.index(other) :] + [other]
            if other not in state and (cycle := visit(other)):
                return cycle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of the longest name that covers ``module``."""
    short = module.removeprefix(PACKAGE).removeprefix(".")
    best = (-1, -1)
    for k, (_, names) in enumerate(LAYERS):
        for n in names:
            if short == n or (n and short.startswith(n + ".")):
                best = max(best, (len(n), k))
    if best[1] < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS here and in docs/architecture.md")
    return best[1]


def test_no_import_cycle_among_the_projects_modules():
    cycle = find_cycle(import_graph(project_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_each_module_imports_only_its_own_layer_and_the_ones_below():
    graph = import_graph(project_modules())
    wrong = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {o} ({LAYERS[layer_of(o)][0]})"
        for m, others in sorted(graph.items())
        for o in sorted(others)
        if layer_of(o) > layer_of(m)
    ]
    assert not wrong, "imports against the layering of docs/architecture.md:\n" + "\n".join(wrong)


def test_the_reader_sees_deferred_imports_and_the_installed_names():
    """The graph has the edges a plain top-level scan would miss (imports inside functions)."""
    graph = import_graph(project_modules())
    assert "lasnn_deploy.nir_read" in graph["lasnn_deploy.student.files"]  # inside load_student
    assert "lasnn_deploy.exporters.target" in graph["lasnn_deploy.exporters.nir"]
    assert "lasnn_deploy.hw_targets.plots" in graph["lasnn_deploy.hw_targets.report"]  # inside energy_report


def test_the_layers_in_docs_match_this_table():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for name, modules in LAYERS:
        assert name in text, f"docs/architecture.md does not name the layer {name!r}"
        for module in filter(None, modules):
            assert f"`{module}`" in text, f"docs/architecture.md does not list {module} in its layers"
