"""What produced each notebook's outputs, the check that refuses stale or mixed inputs, and one writer per run.

A run folder's `manifest.json` holds one entry per notebook. Besides status and timings, an entry
that ran records its provenance:

* `params`: the values of the parameters the notebook declares (its `parameters` cell's
  top-level keys, without `run_name` and `artifacts_dir`), and `params_hash`, their hash;
* `inputs`: for every artifact it read, the notebook that produced it and that producer's
  `lineage_hash`;
* `lineage_hash`: the hash of its own params and its inputs' lineage hashes, so it changes when
  anything upstream changed;
* `git_commit` and `ran_by` (`run_all.py` or `jupyter`).

Before a notebook reads an artifact that this run does not rebuild, `check_inputs` walks the
artifact's lineage upwards and refuses it when a producer ran with other values of keys that are
being used now, when two producers disagree on a shared key (e.g. `seed`), when a producer read an
older version of its own inputs (stale), or when nothing records how it was produced.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from recsys.core.io import write_json
from recsys.runs import machine
from recsys.runs.params import params_hash, resolve_paths
from recsys.runs.registry import ARTIFACTS, MANIFEST, stage_number

RUNNER_ENV = "RECSYS_RUN_ALL_PID"  # set by run_all.py for the kernels it starts
NOT_PARAMS = ("run_name", "artifacts_dir")  # where a run goes, not what it computes
LOCK_FILE = ".lock"


class ProvenanceError(RuntimeError):
    """An input was produced with other parameters than the ones in use, or its record is missing or stale."""


class RunLockedError(RuntimeError):
    """Another process is writing this run folder."""


def own_params(params: Mapping[str, Any], declared: Iterable[str]) -> dict[str, Any]:
    """The values of the keys a notebook declares, without the run's name and folder."""
    return {key: params[key] for key in declared if key not in NOT_PARAMS and key in params}


def producer(artifact: str) -> str:
    """The notebook that writes `artifact` (the artifact registry's answer)."""
    if artifact not in ARTIFACTS:
        raise KeyError(f"unknown artifact {artifact!r}; known: {', '.join(ARTIFACTS)}")
    return ARTIFACTS[artifact][0]


def entry_provenance(
    own: Mapping[str, Any], reads: Iterable[str], entries: Mapping[str, dict], ran_by: str, git_commit: str | None
) -> dict[str, Any]:
    """The provenance fields of a notebook's manifest entry, from its params and its inputs' current records."""
    inputs = {}
    for artifact in sorted(set(reads)):
        writer = producer(artifact)
        inputs[artifact] = {"producer": writer, "lineage_hash": entries.get(writer, {}).get("lineage_hash")}
    lineage = params_hash({"params": dict(own), "inputs": {a: i["lineage_hash"] for a, i in inputs.items()}})
    return {
        "params": dict(own),
        "params_hash": params_hash(dict(own)),
        "inputs": inputs,
        "lineage_hash": lineage,
        "git_commit": git_commit,
        "ran_by": ran_by,
        "cpu": machine.label(),  # kernels differ by CPU, so last digits may too (recsys.runs.machine)
    }


def _show(value: Any) -> str:
    if value is _NONE:
        return "(none)"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def differences(
    recorded: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "", one_sided: bool = False
) -> list[str]:
    """`key: recorded -> current` for every key (dotted into groups) present in both whose value differs.

    With `one_sided`, a key only one side has is a difference too, shown as `(none)` on the other side.
    """
    lines = []
    keys = set(recorded) | set(current) if one_sided else set(recorded) & set(current)
    for key in sorted(keys):
        a, b = recorded.get(key, _NONE), current.get(key, _NONE)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += differences(a, b, f"{prefix}{key}.", one_sided)
        elif a != b:
            lines.append(f"{prefix}{key}: {_show(a)} -> {_show(b)}")
    return lines


_NONE = object()  # a key one side of `differences` does not have


def check_inputs(
    entries: Mapping[str, dict],
    reads: Iterable[str],
    current: Mapping[str, Any],
    rebuilt: Iterable[str] = (),
    fix: str = "rerun the chain from {earliest} (run_all.py --from {number})",
) -> None:
    """Refuse inputs that were produced with other parameters, or whose lineage is mixed, stale or unknown.

    Args:
        entries: the run's manifest entries by notebook name.
        reads: the artifacts about to be read.
        current: the parameter values in use (the whole merged params for run_all.py; a notebook
            run by hand knows only its own).
        rebuilt: notebooks this run executes before their readers (their outputs will be fresh).
        fix: how the message tells the user to rebuild, with {earliest} (the earliest producer
            concerned) and {number} (its two digits).

    Raises:
        ProvenanceError: naming, per problem, the producer, the keys with both values, and the
            command that rebuilds the chain from the earliest producer concerned.
    """
    rebuilt = set(rebuilt)
    problems: dict[str, list[str]] = {}  # producer -> what is wrong with it
    seen: dict[str, dict] = {}  # every ancestor not rebuilt, walked once

    def walk(stage: str) -> None:
        if stage in seen or stage in rebuilt:
            return
        entry = entries.get(stage) or {}
        seen[stage] = entry
        if entry.get("status") != "ok" or "params" not in entry:
            status = entry.get("status", "never run in this folder")
            problems.setdefault(stage, []).append(f"no record of the parameters it ran with (status: {status})")
            return
        for artifact, record in entry.get("inputs", {}).items():
            upstream = record["producer"]
            walk(upstream)
            now = entries.get(upstream, {}).get("lineage_hash")
            if upstream not in rebuilt and now is not None and now != record["lineage_hash"]:
                problems.setdefault(stage, []).append(
                    f"it read {artifact} from an earlier run of {upstream}, which has been rerun since"
                )

    for artifact in reads:
        walk(producer(artifact))
    for stage, entry in seen.items():
        differ = differences(entry.get("params", {}), current)
        if differ:
            problems.setdefault(stage, []).append("it ran with " + "; ".join(differ))
    # the producers of one lineage must agree on every key they share (e.g. seed, dataset, split)
    recorded = sorted((stage, entry.get("params", {})) for stage, entry in seen.items())
    for i, (first, a) in enumerate(recorded):
        for second, b in recorded[i + 1 :]:
            differ = differences(a, b)
            if differ:
                problems.setdefault(second, []).append(f"it disagrees with {first}: " + "; ".join(differ))
    if problems:
        earliest = min(problems)
        listing = "\n".join(f"  - {stage}: {reason}" for stage in sorted(problems) for reason in problems[stage])
        how = fix.format(earliest=earliest, number=stage_number(earliest))
        raise ProvenanceError(
            "stale or mixed inputs: the run folder holds outputs of other parameters (old -> now):\n"
            f"{listing}\nTo use these parameters, {how}, or use another --run-name."
        )


def mark_stale(entries: list[dict]) -> list[str]:
    """Flag the entries whose outputs were built from inputs that have been rebuilt since (and their readers).

    An entry is stale when an input's producer now records another lineage hash than the one the
    entry read, or when the producer is itself stale. Sets or clears `entry["stale"]` (the reason).

    Returns:
        The names of the stale entries, in notebook order.
    """
    by_name = {entry["name"]: entry for entry in entries}
    stale: list[str] = []
    for entry in sorted(entries, key=lambda e: e["name"]):
        entry.pop("stale", None)
        if entry.get("status") != "ok":
            continue
        for artifact, record in entry.get("inputs", {}).items():
            upstream = by_name.get(record["producer"], {})
            if upstream.get("lineage_hash") != record["lineage_hash"]:
                entry["stale"] = f"{record['producer']} was rerun after it read {artifact}"
            elif "stale" in upstream:
                entry["stale"] = f"it read {artifact} from {record['producer']}, which is stale"
        if "stale" in entry:
            stale.append(entry["name"])
    return stale


# ---- notebooks run by hand -------------------------------------------------------------------------


def git_commit() -> str | None:
    """The checked-out commit, with "+dirty" when tracked files have uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _entries(run_dir: Path) -> dict[str, dict]:
    path = run_dir / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {"notebooks": []}
    return {entry["name"]: entry for entry in manifest["notebooks"]}


def open_by_hand(run_dir: Path, stage: str) -> str | None:
    """A notebook opens its run: under run_all.py nothing to do (None); by hand, say so and return the start time.

    Raises:
        RunLockedError: run_all.py (or another notebook's bookkeeping) is writing this run folder now.
    """
    if os.environ.get(RUNNER_ENV):
        return None
    if run_dir.exists():
        with run_lock(run_dir, f"jupyter: {stage} (checking the lock)"):
            pass  # fails at once while another process holds it
    print(
        f"{stage} runs outside run_all.py: its inputs are checked against manifest.json and its "
        "parameters are recorded there when it writes its metrics."
    )
    return _now()


def _own_by_hand(params: Mapping[str, Any]) -> dict[str, Any]:
    own = copy.deepcopy({key: value for key, value in params.items() if key not in NOT_PARAMS})
    return resolve_paths(own)  # relative to the notebook's folder, as the notebook used them


def check_by_hand(run_dir: Path, artifact: str, params: Mapping[str, Any]) -> None:
    """`check_inputs` for one artifact read by a notebook run by hand, against the values it knows (its own)."""
    current = _own_by_hand(params)
    check_inputs(
        _entries(run_dir),
        [artifact],
        current,
        fix=f"rerun {{earliest}} first (in Jupyter, or run_all.py --run-name {run_dir.name} --from {{number}})",
    )


def record_by_hand(run_dir: Path, stage: str, params: Mapping[str, Any], reads: Iterable[str], started: str) -> None:
    """Record a notebook run by hand in manifest.json (under the run lock), and flag what became stale."""
    own = _own_by_hand(params)
    with run_lock(run_dir, f"jupyter: {stage} (recording)"):
        path = run_dir / MANIFEST
        manifest = json.loads(path.read_text()) if path.exists() else {"run_name": run_dir.name, "notebooks": []}
        entries = {entry["name"]: entry for entry in manifest["notebooks"]}
        entries[stage] = {
            "name": stage,
            "status": "ok",
            "started": started,
            "ended": _now(),
            "wall_s": None,
            "error": None,
            **entry_provenance(own, reads, entries, "jupyter", git_commit()),
        }
        manifest["notebooks"] = [entries[name] for name in sorted(entries)]
        mark_stale(manifest["notebooks"])
        write_json(path, manifest)
        if "params_hash" in manifest:  # a folder run_all.py has written: keep its index current
            from recsys.runs.report import build_index

            build_index(run_dir, manifest)


# ---- one writer per run folder -------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, command: str = "") -> Iterator[str | None]:
    """Hold the run folder's lock (an exclusive `flock` on `<run>/.lock`) for the duration of the block.

    The kernel releases a `flock` when its holder dies, so a killed run never blocks the next one;
    the file keeps the holder's pid and start time to name it, and a record left by a process that
    is gone is reported as taken over.

    Yields:
        A note when the lock of a killed run was taken over, else None.

    Raises:
        RunLockedError: another live process holds the lock (naming its pid, start time and command).
    """
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise RunLockedError(
                f"{Path(run_dir)} is being written by pid {holder.get('pid', '?')} (started "
                f"{holder.get('started', '?')}: {holder.get('command', '?')}); wait for it to finish, "
                "or use another --run-name"
            ) from None
        previous = _read_holder(fd)
        note = None
        if previous.get("pid") and previous.get("pid") != os.getpid():
            state = "no longer running" if not _alive(int(previous["pid"])) else "no longer holding it"
            note = (
                f"took over the lock of {Path(run_dir).name} left by pid {previous['pid']} "
                f"(started {previous.get('started', '?')}), which is {state}"
            )
        holder = {
            "pid": os.getpid(),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": command or " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield note
        finally:
            os.ftruncate(fd, 0)  # released normally: nothing to take over
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}
