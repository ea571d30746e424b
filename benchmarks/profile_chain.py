#!/usr/bin/env python
"""Where the chain's time and memory go: wall time and peak memory per notebook and per cell.

Runs the whole chain once (`run_all.py`, ml-1m-half by default) while a sampler reads the resident
memory of every process under it (the notebooks' kernels, and the training workers they start)
every `--interval` seconds. Papermill writes each cell's start and end time into the executed
notebook (`<run>/notebooks/*.ipynb`), so each memory sample belongs to one cell of one notebook:
a cell's peak is the largest sample taken while it ran (a cell shorter than the interval may have
none). Writes a table per notebook, every cell with its time and peak, and the most expensive
cells, as JSON and a figure. `--from-run DIR` reads an existing run instead (times only: no
memory was sampled).

    python benchmarks/profile_chain.py                                   # ml-1m-half, about 25 min
    python benchmarks/profile_chain.py -p data_dir=../shared/data/ml-100k -p dataset=ml-100k
    python benchmarks/profile_chain.py --from-run artifacts/half         # times of a finished run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from recsys.runs import machine

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = "../shared/data/ml-1m-half"
GB = 1024**3


# ---- memory samples ---------------------------------------------------------------------------------


class MemorySampler:
    """Samples the resident memory of a process tree (the root excluded) in a thread: one row per process and sample."""

    def __init__(self, root_pid: int, interval: float):
        self.root, self.interval = psutil.Process(root_pid), interval
        self.rows: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                children = self.root.children(recursive=True)
            except psutil.Error:
                break
            for child in children:
                try:
                    self.rows.append((now, child.pid, child.memory_info().rss))
                except psutil.Error:  # the process ended between the listing and the read
                    continue
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def frame(self) -> pd.DataFrame:
        """time (epoch seconds), pid, rss (bytes)."""
        return pd.DataFrame(self.rows, columns=["time", "pid", "rss"])


def total_memory(samples: pd.DataFrame) -> pd.Series:
    """Resident memory of the whole tree at each sampling time (bytes), indexed by time."""
    return samples.groupby("time")["rss"].sum() if len(samples) else pd.Series(dtype=float)


# ---- cells and notebooks --------------------------------------------------------------------------------


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def cell_table(notebook_path: Path) -> pd.DataFrame:
    """Every code cell of an executed notebook: index, its first line, start and end (epoch seconds), seconds.

    Raises:
        ValueError: a code cell without papermill's timing (the notebook was not run by papermill).
    """
    notebook = json.loads(Path(notebook_path).read_text())
    rows = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        timing = cell.get("metadata", {}).get("papermill", {})
        if not timing.get("start_time") or not timing.get("end_time"):
            raise ValueError(f"{notebook_path}: cell {index} has no papermill timing; profile a run made by run_all.py")
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines = [
            line
            for line in source.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "import ", "from "))
        ]
        start, end = _epoch(timing["start_time"]), _epoch(timing["end_time"])
        rows.append(
            {
                "cell": index,
                "first_line": (lines[0] if lines else "")[:90],
                "start": start,
                "end": end,
                "seconds": end - start,
            }
        )
    return pd.DataFrame(rows, columns=["cell", "first_line", "start", "end", "seconds"])


def with_peaks(cells: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """`cells` with peak_gb: the largest total memory of the process tree sampled while each cell ran (NaN: none)."""
    totals = total_memory(samples)
    times, values = totals.index.to_numpy(), totals.to_numpy()
    peaks = []
    for start, end in zip(cells["start"], cells["end"]):
        inside = values[(times >= start) & (times <= end)]
        peaks.append(inside.max() / GB if len(inside) else np.nan)
    return cells.assign(peak_gb=peaks)


def profile(run_dir: Path, samples: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per notebook: seconds, peak_gb, cells; one row per code cell of every notebook) of a finished run."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    samples = samples if samples is not None else pd.DataFrame(columns=["time", "pid", "rss"])
    notebooks, cells = [], []
    for entry in manifest["notebooks"]:
        table = with_peaks(cell_table(run_dir / "notebooks" / f"{entry['name']}.ipynb"), samples)
        cells.append(table.assign(notebook=entry["name"]))
        notebooks.append(
            {
                "notebook": entry["name"],
                "seconds": float(entry.get("wall_s", table["seconds"].sum())),
                "peak_gb": float(table["peak_gb"].max()) if table["peak_gb"].notna().any() else np.nan,
                "cells": len(table),
            }
        )
    return pd.DataFrame(notebooks), pd.concat(cells, ignore_index=True)


def figure(notebooks: pd.DataFrame, cells: pd.DataFrame, top: int, path: Path) -> None:
    """Seconds and peak memory per notebook, and the `top` most expensive cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    names = notebooks["notebook"].str.split("_").str[0]
    axes[0].bar(names, notebooks["seconds"], color="#4C72B0")
    axes[0].set(title=f"Wall time per notebook (total {notebooks['seconds'].sum():.0f} s)", ylabel="seconds")
    axes[1].bar(names, notebooks["peak_gb"].fillna(0), color="#DD8452")
    sampled = notebooks["peak_gb"].notna().any()
    axes[1].set(title="Peak resident memory per notebook" + ("" if sampled else " (not sampled)"), ylabel="GB")
    worst = cells.nlargest(top, "seconds").iloc[::-1]
    labels = [
        f"{n.split('_')[0]}·{c}: {line[:45]}"
        for n, c, line in zip(worst["notebook"], worst["cell"], worst["first_line"])
    ]
    axes[2].barh(labels, worst["seconds"], color="#55A868")
    axes[2].set(title=f"The {top} most expensive cells", xlabel="seconds")
    axes[2].tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=110)
    os.replace(tmp.name, path)
    plt.close(fig)


def write_json(path: Path, payload: dict) -> None:
    """Atomically: a temporary file beside the target, then a rename."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".json", delete=False) as tmp:
        json.dump(payload, tmp, indent=2)
    os.replace(tmp.name, path)


def run_chain(artifacts_dir: Path, run_name: str, run_args: list[str], interval: float) -> pd.DataFrame:
    """Run the chain with `run_all.py` while sampling its processes' memory; the samples."""
    command = [sys.executable, str(ROOT / "run_all.py"), "--artifacts-dir", str(artifacts_dir), "--run-name", run_name]
    process = subprocess.Popen([*command, *run_args], cwd=ROOT)
    with MemorySampler(process.pid, interval) as sampler:
        code = process.wait()
    if code != 0:
        raise SystemExit(f"run_all.py failed (exit {code}); nothing to profile")
    return sampler.frame()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-run", type=Path, help="profile an existing run folder (times only)")
    parser.add_argument("--params", help="a parameter file for run_all.py")
    parser.add_argument("-p", dest="overrides", action="append", default=None, help="group.key=value for run_all.py")
    parser.add_argument("--artifacts-dir", type=Path, help="where the run goes (default: a temporary folder)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between memory samples")
    parser.add_argument("--top", type=int, default=15, help="most expensive cells listed and drawn")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile.json")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    overrides = args.overrides if args.overrides is not None else [f"data_dir={DEFAULT_DATA}"]
    if args.from_run is not None:
        run_dir, samples = args.from_run.resolve(), None
    else:
        artifacts = args.artifacts_dir or Path(tempfile.mkdtemp(prefix="profile-"))
        run_args = [*(["--params", args.params] if args.params else []), *[a for o in overrides for a in ("-p", o)]]
        samples = run_chain(artifacts, "profile", run_args, args.interval)
        run_dir = artifacts / "profile"
    notebooks, cells = profile(run_dir, samples)
    worst = cells.nlargest(args.top, "seconds")
    payload = {
        "run": str(run_dir),
        "command": "python benchmarks/profile_chain.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        **machine.describe(),  # platform, CPUs, CPU model: timings compare on one CPU
        "memory_sampled": samples is not None,
        "interval_s": args.interval,
        "total_s": float(notebooks["seconds"].sum()),
        "notebooks": notebooks.replace({np.nan: None}).to_dict("records"),
        "top_cells": worst.drop(columns=["start", "end"]).replace({np.nan: None}).to_dict("records"),
        "cells": cells.drop(columns=["start", "end"]).replace({np.nan: None}).to_dict("records"),
    }
    write_json(args.out, payload)
    figure(notebooks, cells, args.top, args.out.with_suffix(".png"))
    print(notebooks.round(3).to_string(index=False))
    print(f"\nthe {args.top} most expensive cells:")
    print(worst[["notebook", "cell", "seconds", "peak_gb", "first_line"]].round(3).to_string(index=False))
    print(f"\nwritten: {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
