"""benchmarks/profile_chain.py: each memory sample belongs to the cell that was running, times from papermill's records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import profile_chain

START = 1_800_000_000.0  # epoch seconds of the fake run


def stamp(offset: float) -> str:
    return pd.Timestamp(START + offset, unit="s", tz="UTC").isoformat()


def executed(path: Path, cells: list[tuple[str, float, float]]) -> None:
    """An executed notebook: a markdown cell, then code cells (source, start offset, end offset) timed by papermill."""
    notebook = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# title"}]}
    for source, start, end in cells:
        timing = {"start_time": stamp(start), "end_time": stamp(end), "duration": end - start}
        notebook["cells"].append({"cell_type": "code", "metadata": {"papermill": timing}, "source": source})
    path.write_text(json.dumps(notebook))


@pytest.fixture
def fake_run(tmp_path):
    run = tmp_path / "run"
    (run / "notebooks").mkdir(parents=True)
    executed(run / "notebooks" / "01_a.ipynb", [("import numpy\nx = 1", 0, 2), ("train(model)  # slow", 2, 12)])
    executed(run / "notebooks" / "02_b.ipynb", [("# a comment\nscore()", 13, 20)])
    entries = [{"name": "01_a", "wall_s": 12.5}, {"name": "02_b", "wall_s": 7.5}]
    (run / "manifest.json").write_text(json.dumps({"notebooks": entries}))
    return run


def test_each_sample_counts_toward_the_cell_running_at_its_time(fake_run):
    gb = profile_chain.GB
    samples = pd.DataFrame(
        [  # (seconds after START, pid, GB): two processes at 5 s (the tree's total counts), none during cell 1
            (5, 10, 1.0),
            (5, 11, 0.5),
            (9, 10, 2.0),
            (15, 12, 0.75),
            (30, 12, 9.0),  # after the run: no cell's
        ],
        columns=["time", "pid", "rss"],
    ).assign(time=lambda f: f["time"] + START, rss=lambda f: f["rss"] * gb)
    notebooks, cells = profile_chain.profile(fake_run, samples)
    assert notebooks["notebook"].tolist() == ["01_a", "02_b"] and notebooks["seconds"].tolist() == [12.5, 7.5]
    assert notebooks["peak_gb"].tolist() == pytest.approx([2.0, 0.75])
    first, second, third = cells.to_dict("records")
    assert np.isnan(first["peak_gb"]) and first["seconds"] == pytest.approx(2) and first["first_line"] == "x = 1"
    assert second["peak_gb"] == pytest.approx(2.0) and second["seconds"] == pytest.approx(10)  # max of 1.5 and 2.0
    assert third["first_line"] == "score()" and third["peak_gb"] == pytest.approx(0.75) and third["cell"] == 1


def test_from_run_writes_the_tables_and_the_figure(fake_run, tmp_path):
    out = tmp_path / "profile.json"
    assert profile_chain.main(["--from-run", str(fake_run), "--out", str(out), "--top", "2"]) == 0
    result = json.loads(out.read_text())
    assert result["memory_sampled"] is False and result["total_s"] == 20.0
    assert [c["first_line"] for c in result["top_cells"]] == ["train(model)  # slow", "score()"]
    assert len(result["cells"]) == 3 and out.with_suffix(".png").stat().st_size > 10_000


def test_a_notebook_not_run_by_papermill_is_refused(fake_run):
    path = fake_run / "notebooks" / "02_b.ipynb"
    notebook = json.loads(path.read_text())
    notebook["cells"][1]["metadata"] = {}
    path.write_text(json.dumps(notebook))
    with pytest.raises(ValueError, match="no papermill timing"):
        profile_chain.profile(fake_run, None)


def test_the_sampler_reads_the_memory_of_the_processes_under_the_root():
    child = subprocess.Popen([sys.executable, "-c", "import time; data = bytearray(200 * 2**20); time.sleep(3)"])
    try:
        with profile_chain.MemorySampler(os.getpid(), 0.1) as sampler:
            time.sleep(1.5)
        samples = sampler.frame()
    finally:
        child.kill()
    mine = samples[samples["pid"] == child.pid]
    assert len(mine) >= 3 and mine["rss"].max() > 150 * 2**20  # the child's 200 MB buffer
