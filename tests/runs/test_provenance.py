"""A run folder tells the truth: per-notebook provenance, stale or mixed inputs refused, one writer at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import run_all
from recsys.runs import provenance
from recsys.runs.artifacts import Run
from recsys.runs.registry import ARTIFACTS
from tests.conftest import PROJECT_ROOT
from tests.notebook_fixtures import make_notebook

WRITE = "from pathlib import Path\nPath(artifacts_dir, run_name, {stage!r}).mkdir(parents=True, exist_ok=True)\n"


@pytest.fixture
def chain(tmp_path, monkeypatch):
    """01_a (seed) writes `thing`; 02_b (seed, noise) reads it and writes `thing2`; 03_c (least_viewed) reads thing2."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(run_all, "NOTEBOOKS_DIR", folder)
    monkeypatch.setitem(ARTIFACTS, "thing", ("01_a", "thing.txt"))
    monkeypatch.setitem(ARTIFACTS, "thing2", ("02_b", "thing2.txt"))
    write = "Path(artifacts_dir, run_name, {stage!r}, {file!r}).write_text(str({value}))\n"
    make_notebook(
        folder / "01_a.ipynb",
        WRITE.format(stage="01_a") + write.format(stage="01_a", file="thing.txt", value="seed"),
        params={"seed": 42},
    )
    make_notebook(
        folder / "02_b.ipynb",
        WRITE.format(stage="02_b") + write.format(stage="02_b", file="thing2.txt", value="noise['sigmas']"),
        reads=["thing"],
        params={"seed": 42, "noise": {"target": "user", "sigmas": [0.0, 0.05, 0.1, 0.2, 0.4]}},
    )
    make_notebook(
        folder / "03_c.ipynb",
        "print('reads thing2')",
        reads=["thing2"],
        params={"least_viewed": {"max_views": 1, "retrieval_k": 10, "example_users": 3}},
    )
    artifacts = tmp_path / "artifacts"

    def run(*args: str) -> int:
        return run_all.main(["--artifacts-dir", str(artifacts), "--run-name", "x", *args])

    return run, artifacts / "x"


def manifest(run_dir) -> dict:
    return {e["name"]: e for e in json.loads((run_dir / "manifest.json").read_text())["notebooks"]}


def test_each_entry_records_its_params_inputs_and_commit(chain):
    run, run_dir = chain
    assert run() == 0
    entries = manifest(run_dir)
    first, second = entries["01_a"], entries["02_b"]
    assert first["params"] == {"seed": 42} and first["inputs"] == {} and first["ran_by"] == "run_all.py"
    assert second["params"]["noise"]["sigmas"] == [0.0, 0.05, 0.1, 0.2, 0.4] and set(second["params"]) == {
        "seed",
        "noise",
    }
    assert second["inputs"] == {"thing": {"producer": "01_a", "lineage_hash": first["lineage_hash"]}}
    assert first["params_hash"] != second["params_hash"] and second["git_commit"]
    index = (run_dir / "reports" / "index.html").read_text()
    assert first["params_hash"] in index and "thing &larr; 01_a" in index


def test_a_partial_rerun_with_another_seed_is_refused_naming_the_key(chain, capsys):
    run, run_dir = chain
    assert run() == 0
    before = (run_dir / "manifest.json").read_text()
    assert run("-p", "seed=7", "--from", "02", "--until", "02") == 2
    err = capsys.readouterr().err
    assert "01_a: it ran with seed: 42 -> 7" in err and "--from 01" in err and "another --run-name" in err
    assert (run_dir / "manifest.json").read_text() == before  # nothing started, nothing rewritten


def test_a_key_only_the_selected_notebook_reads_is_fine_and_marks_its_readers_stale(chain, capsys):
    run, run_dir = chain
    assert run() == 0
    assert run("-p", "noise.sigmas=[0.0, 0.3]", "--only", "02") == 0
    assert "03_c read outputs that this run has replaced" in capsys.readouterr().err
    entries = manifest(run_dir)
    assert entries["03_c"]["stale"] == "02_b was rerun after it read thing2"
    assert "STALE" in (run_dir / "reports" / "index.html").read_text()
    # 03 on its own now needs 02's values, and then it is fresh again
    assert run("--only", "03") == 2
    assert "02_b: it ran with noise.sigmas: [0.0, 0.3] -> [0.0, 0.05, 0.1, 0.2, 0.4]" in capsys.readouterr().err
    assert run("-p", "noise.sigmas=[0.0, 0.3]", "--only", "03") == 0
    assert "stale" not in manifest(run_dir)["03_c"]


def test_an_input_without_a_record_is_refused(chain, capsys):
    run, run_dir = chain
    assert run() == 0
    data = json.loads((run_dir / "manifest.json").read_text())
    data["notebooks"] = [e for e in data["notebooks"] if e["name"] != "01_a"]  # e.g. a folder from older code
    (run_dir / "manifest.json").write_text(json.dumps(data))
    assert run("--only", "02") == 2
    assert "01_a: no record of the parameters it ran with" in capsys.readouterr().err


def test_a_second_writer_fails_at_once_naming_the_holder(chain, capsys):
    run, run_dir = chain
    run_dir.mkdir(parents=True)
    with provenance.run_lock(run_dir, "the first run"):
        started = time.perf_counter()
        assert run() == 2
        assert time.perf_counter() - started < 5
    err = capsys.readouterr().err
    assert f"being written by pid {os.getpid()}" in err and "the first run" in err
    assert run() == 0  # released: the next run goes ahead


def test_a_lock_left_by_a_killed_run_is_taken_over(chain, capsys):
    run, run_dir = chain
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom recsys.runs.provenance import run_lock\n"
            f"with run_lock({str(run_dir)!r}, 'doomed'):\n    print('locked', flush=True)\n    time.sleep(60)\n",
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert run() == 0
    assert f"took over the lock of x left by pid {holder.pid}" in capsys.readouterr().err


def test_a_notebook_run_by_hand_is_checked_and_recorded(chain, tmp_path, capsys):
    run, run_dir = chain
    assert run() == 0
    assert provenance.RUNNER_ENV not in os.environ  # run_all restores the environment
    by_hand = Run(run_dir.parent, "x", "02_b", {"seed": 7, "noise": {"target": "user", "sigmas": [0.1]}})
    assert "runs outside run_all.py" in capsys.readouterr().out
    with pytest.raises(provenance.ProvenanceError, match=r"01_a: it ran with seed: 42 -> 7"):
        by_hand.require("thing")
    same_seed = Run(run_dir.parent, "x", "02_b", {"seed": 42, "noise": {"target": "user", "sigmas": [0.1]}})
    same_seed.require("thing")
    same_seed.write_metrics("02_b", {"n": 1})
    entry = manifest(run_dir)["02_b"]
    assert entry["ran_by"] == "jupyter" and entry["params"]["noise"]["sigmas"] == [0.1]
    assert entry["inputs"]["thing"]["lineage_hash"] == manifest(run_dir)["01_a"]["lineage_hash"]
    assert "stale" in manifest(run_dir)["03_c"]  # it read the thing2 of the run_all.py run
