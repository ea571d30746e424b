"""Tiny notebooks for the runner's tests: a title, a parameters cell, one code cell, declared inputs."""

from __future__ import annotations

import nbformat


def make_notebook(path, code: str, reads=(), params: dict | None = None) -> None:
    """Write `path` as a notebook that declares run_name, artifacts_dir and `params`, then runs `code`."""
    notebook = nbformat.v4.new_notebook()
    lines = [
        "run_name = 'default'",
        "artifacts_dir = '../artifacts'",
        *(f"{k} = {v!r}" for k, v in (params or {}).items()),
    ]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["parameters"]
    notebook.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem} title"), cell, nbformat.v4.new_code_cell(code)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["recsys"] = {"reads": list(reads)}
    nbformat.write(notebook, str(path))
