"""The library's layers: each subpackage imports only from itself and the layers before it, and no import cycle exists.

Imports are read from the code (`ast`), including those inside functions: a lazy import that runs
against the pipeline's direction is still a dependency. DESIGN.md, 1 draws the same layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

# first to last: a module may import from its own layer and from the layers before it
LAYERS = (
    "core",
    "data",
    "features",
    "evaluation",
    "models",
    "training",
    "retrieval",
    "ranking",
    "serving",
    "exploration",
    "runs",
    "service",
)
# layers whose modules import without TensorFlow (runs' parameter checks and reports, data, features, metrics)
NO_TENSORFLOW = ("core", "data", "features", "evaluation", "runs")

PACKAGE = PROJECT_ROOT / "recsys"


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """The recsys modules `path` imports anywhere in its code (a package's import of a module names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "recsys")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "recsys":
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; write `from recsys.<layer>.<module> import ...`")
    return found - {module_name(path) if path.is_relative_to(PACKAGE) else None}


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # recsys/__init__.py: runs before anything, so it may use core only
        return 0
    assert parts[1] in LAYERS, f"{module} is in no layer: add its subpackage to LAYERS and DESIGN.md, 1"
    return LAYERS.index(parts[1])


GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def test_every_module_is_in_a_subpackage_of_a_known_layer():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules directly under recsys/: {loose}; move each into its layer's subpackage"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS)
    for name in MODULES:
        layer_of(name)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_only_toward_earlier_layers(module):
    later = sorted(dep for dep in GRAPH[module] if layer_of(dep) > layer_of(module))
    assert not later, (
        f"{module} (layer {LAYERS[layer_of(module)]}) imports from later layers: {later}. Move the shared piece "
        "down to the earliest layer that needs it, or pass it in from the caller"
    )


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (a list of modules, first = last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node], _ = 2, path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": set(), "b": {"b"}}) == ["b", "b"]


def test_layer_check_reads_imports_inside_functions(tmp_path):
    module = tmp_path / "late.py"
    module.write_text("def f():\n    from recsys.runs import params\n    import recsys.serving.recommender\n")
    assert imported_modules(module) == {"recsys.runs.params", "recsys.serving.recommender"}


@pytest.mark.parametrize("layer", NO_TENSORFLOW)
def test_early_layers_import_without_tensorflow(layer):
    names = sorted(name for name in MODULES if name.split(".")[1:2] == [layer])
    code = f"import sys\nimport {', '.join(names)}\nprint('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert out.stdout.strip() == "False", f"importing recsys.{layer} imports TensorFlow"


def test_every_subpackage_init_is_light():
    code = f"import sys\nimport {', '.join(f'recsys.{layer}' for layer in LAYERS)}\nprint('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert out.stdout.strip() == "False", "a subpackage's __init__ imports TensorFlow"
    for layer in LAYERS:
        text = (PACKAGE / layer / "__init__.py").read_text()
        assert "import" not in text, f"recsys/{layer}/__init__.py imports: keep subpackage inits to a docstring"
