"""The library's shape: it does not know the notebooks, and no module grows into a grab-bag."""

from __future__ import annotations

import re

import pytest

from tests.conftest import PROJECT_ROOT

MODULES = sorted((PROJECT_ROOT / "recsys").rglob("*.py"))
assert len(MODULES) > 50, "the module list must see the subpackages"
MAX_LINES = 450


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PROJECT_ROOT / "recsys")))
def test_only_the_artifact_registry_names_notebooks(module):
    if module.name == "registry.py":  # the registry: which notebook writes which artifact
        return
    text = module.read_text()
    stage = re.search(r"\b[01]\d[a-z]?_[a-z]{3,}", text)
    numbered = re.search(r"notebooks? [01]\d", text)
    assert not stage and not numbered, (
        f"{module.name} names a notebook ({(stage or numbered).group(0)!r}): ask for artifacts by key "
        "(recsys.runs.registry.ARTIFACTS) and describe steps by what they do"
    )
    assert "DESIGN §" not in text, f"{module.name} points at a design document outside the repository"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PROJECT_ROOT / "recsys")))
def test_modules_stay_small_and_say_their_job(module):
    lines = module.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"{module.name} has {len(lines)} lines; split it by concern (DESIGN.md, 1)"
    assert lines and lines[0].startswith('"""'), f"{module.name} does not start with a one-line docstring"


def test_design_doc_lists_every_module():
    design = (PROJECT_ROOT / "DESIGN.md").read_text()
    missing = [m.stem for m in MODULES if m.stem != "__init__" and f"`{m.stem}`" not in design]
    assert not missing, f"DESIGN.md does not say what these modules hold: {missing}"


BENCHMARK_FILES = sorted(
    p.relative_to(PROJECT_ROOT / "benchmarks").as_posix() for p in (PROJECT_ROOT / "benchmarks").rglob("*.py")
)
assert any("/" in f for f in BENCHMARK_FILES), "the benchmark list must see the packages (benchmarks/ann/)"


@pytest.mark.parametrize("script", BENCHMARK_FILES)
def test_benchmarks_import_only_what_recsys_has(script):
    """`make bench` runs these files rarely: a renamed module or function must fail here, not there."""
    import ast
    import importlib
    import importlib.util

    tree = ast.parse((PROJECT_ROOT / "benchmarks" / script).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "recsys":
            module = importlib.import_module(node.module)
            missing = [
                alias.name
                for alias in node.names
                if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None
            ]
            assert not missing, f"benchmarks/{script} imports {missing} from {node.module}, which has no such name"


@pytest.mark.parametrize("script", BENCHMARK_FILES)
def test_benchmark_files_stay_small(script):
    lines = (PROJECT_ROOT / "benchmarks" / script).read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"benchmarks/{script} has {len(lines)} lines; split it (as benchmarks/ann/ is)"


def test_faiss_workers_of_the_ann_benchmark_do_not_import_tensorflow():
    """A FAISS worker measures FAISS alone: TensorFlow's threads and memory must not be in its process."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import benchmarks.ann.worker, benchmarks.ann.searchers.faiss_hnsw, benchmarks.ann.searchers.faiss_ivfpq\n"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert out.stdout.strip() == "False"


NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))
MAX_NOTEBOOK_CODE_LINES = 200


def code_lines(notebook) -> int:
    """Non-empty, non-comment lines of a notebook's code cells."""
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    lines = (line.strip() for cell in cells if cell.cell_type == "code" for line in cell.source.splitlines())
    return sum(1 for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_stay_thin(notebook):
    """A notebook is a story of calls, figures and findings; the logic lives in recsys/ where tests reach it."""
    n = code_lines(notebook)
    assert n <= MAX_NOTEBOOK_CODE_LINES, f"{notebook.name} has {n} lines of code: move its logic into recsys/"


def test_tests_mirror_the_packages():
    """Tests of recsys/<layer>/ live in tests/<layer>/; the notebook chain in tests/notebooks/."""
    from tests.test_layers import LAYERS

    folders = {p.name for p in (PROJECT_ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert folders <= {*LAYERS, "notebooks"}, f"test folders that are no layer: {folders - {*LAYERS, 'notebooks'}}"
    loose = sorted(p.name for p in (PROJECT_ROOT / "tests").glob("test_*.py"))
    assert loose == ["test_layers.py", "test_structure.py"], f"tests outside a layer's folder: {loose}"
