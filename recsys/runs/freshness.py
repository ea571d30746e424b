"""Which notebooks of a run folder are up to date, and why the others must rerun (`run_all.py --changed`).

A notebook is up to date when its last run in the folder succeeded and nothing it computes from
has changed since:

* its own parameters (the keys its `parameters` cell declares);
* its code: `code_fingerprint` hashes the notebook's cell sources (not its outputs), the source of
  the `recsys` package and the versions of the packages the manifest lists, so an edited cell, a
  library change or an upgrade reruns it;
* its inputs: no producer reruns now, none was rerun after it read, and every output it wrote is
  still in the folder.

The decision is made in pipeline order, so a notebook that reruns takes its readers with it. An
entry written before fingerprints were recorded, or by a notebook run by hand in Jupyter, has no
fingerprint and reruns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat

from recsys.runs.provenance import differences, own_params, producer
from recsys.runs.registry import ARTIFACTS

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # recsys/


def library_fingerprint(package_dir: Path = PACKAGE_DIR) -> str:
    """SHA-256 over the relative path and bytes of every .py file under `package_dir`, in path order."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_fingerprint(notebook: Path, library: str, versions: Mapping[str, Any]) -> str:
    """What a notebook computes with: its cells' types and sources, `library_fingerprint`, the package versions.

    Outputs, execution counts and metadata are left out: a notebook saved from Jupyter with its
    outputs has the fingerprint of the same notebook committed without them.
    """
    cells = [(cell.cell_type, cell.source) for cell in nbformat.read(str(notebook), as_version=4).cells]
    payload = json.dumps({"cells": cells, "library": library, "versions": dict(versions)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def params_changed(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for every value that differs, and every key (dotted into groups) only one side has.

    Both sides are compared as the manifest stores them (JSON), so a tuple equals its list. A key
    only one side has is a change: a default added to `params/default.yaml` reaches the notebook.
    """

    def as_stored(value):
        return json.loads(json.dumps(value, sort_keys=True, default=str))

    return differences(as_stored(dict(recorded)), as_stored(dict(current)), one_sided=True)


def outputs_of(stage: str, consumed: Iterable[str]) -> list[str]:
    """The files of a notebook's folder that must still be there: its metrics.json and its artifacts in `consumed`.

    `consumed` names the artifacts some notebook reads; an artifact only some settings write and
    nothing reads (e.g. `rating_jobs`, the multi-worker jobs' logs) is not asked for.
    """
    consumed = set(consumed)
    return ["metrics.json"] + [f for name, (writer, f) in ARTIFACTS.items() if writer == stage and name in consumed]


def rerun_reasons(
    stages: Sequence[tuple[str, Iterable[str], Iterable[str]]],
    entries: Mapping[str, dict],
    params: Mapping[str, Any],
    fingerprints: Mapping[str, str],
    run_dir: Path,
    consumed: Iterable[str],
) -> dict[str, str | None]:
    """Per stage, in the given (pipeline) order: why it must rerun, or None when it is up to date.

    Args:
        stages: (name, declared parameter names, artifacts it reads) of each selected notebook, in
            pipeline order (a reader after what it reads).
        entries: the run's manifest entries by notebook name (as the last runs left them).
        params: the parameter values in use (the whole merged params).
        fingerprints: name -> `code_fingerprint` of each selected notebook now.
        run_dir: the run folder (its outputs must still be there).
        consumed: the artifacts the pipeline's notebooks read (`outputs_of`).
    """
    reasons: dict[str, str | None] = {}
    consumed = set(consumed)
    for name, declared, reads in stages:
        outputs = outputs_of(name, consumed)
        reasons[name] = _reason(
            name, declared, reads, entries, params, fingerprints[name], run_dir / name, outputs, reasons
        )
    return reasons


def _reason(name, declared, reads, entries, params, fingerprint, folder, outputs, decided) -> str | None:
    entry = entries.get(name)
    if entry is None:
        return "it has not run in this folder"
    if entry.get("status") != "ok":
        return f"its last run ended {entry.get('status')!r}"
    if entry.get("stale"):
        return f"it is stale ({entry['stale']})"
    if entry.get("code_hash") is None:
        return "its last run recorded no code fingerprint (run by hand, or by an older runner)"
    if entry["code_hash"] != fingerprint:
        return "its code changed (the notebook, recsys/ or a package version)"
    changed = params_changed(entry.get("params", {}), own_params(params, declared))
    if changed:
        return "its parameters changed: " + "; ".join(changed)
    for artifact in sorted(set(reads)):
        writer = producer(artifact)
        if decided.get(writer) is not None:
            return f"{writer} reruns, and it reads {artifact}"
        recorded = entry.get("inputs", {}).get(artifact, {}).get("lineage_hash")
        if recorded is None or recorded != entries.get(writer, {}).get("lineage_hash"):
            return f"{writer} was rerun after it read {artifact}"
    missing = [filename for filename in outputs if not (folder / filename).exists()]
    if missing:
        return f"its output {missing[0]} is missing"
    return None
