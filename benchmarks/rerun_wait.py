#!/usr/bin/env python
"""The analyst's wait after editing one notebook of a finished run: `run_all.py --changed` against `--from NN`.

    python benchmarks/rerun_wait.py --run artifacts/<run>

For each notebook of the run, the notebooks `--changed` would rerun if that notebook's code
changed (`freshness.rerun_reasons` on the run's manifest, that notebook's fingerprint replaced),
and the sum of their wall times in this run, beside the sum of every notebook from it to the end
(what `--from NN` reruns). A change of one of its own parameters reruns the same set. The times
are the run's own: rerun `run_all.py --changed` after an edit to measure one. Writes
benchmarks/results/rerun_wait.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import run_all  # noqa: E402
from recsys.core.io import write_json  # noqa: E402
from recsys.runs.freshness import rerun_reasons  # noqa: E402


def rerun_table(run_dir: Path) -> pd.DataFrame:
    """One row per notebook of the run: what an edit of it reruns with --changed, and both waits (s)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    entries = {entry["name"]: entry for entry in manifest["notebooks"]}
    infos = [run_all.notebook_info(path) for path in run_all.discover_notebooks()]
    unusable = [
        info["name"]
        for info in infos
        if (entry := entries.get(info["name"], {})).get("status") != "ok"
        or entry.get("code_hash") is None
        or entry.get("wall_s") is None
    ]
    if unusable:
        raise SystemExit(
            f"{run_dir}: no run_all.py record (a successful run with its code fingerprint and wall time) of "
            f"{', '.join(unusable)}: rerun them with run_all.py (--changed reruns just those)"
        )
    # each notebook as it last ran: the parameters its own entry records (a later partial run may have changed
    # the run's parameters of notebooks it did not rerun), which must agree where two entries share a key
    params: dict = {}
    for entry in entries.values():
        for key, value in entry.get("params", {}).items():
            if key in params and params[key] != value:
                raise SystemExit(f"{run_dir} mixes parameters: {key} is {params[key]!r} and {value!r} in two entries")
            params[key] = value
    stages = [(info["name"], info["parameters"], info["reads"]) for info in infos]
    consumed = {artifact for info in infos for artifact in info["reads"]}
    recorded = {name: entry["code_hash"] for name, entry in entries.items() if "code_hash" in entry}
    rows = []
    for position, info in enumerate(infos):
        fingerprints = {**recorded, info["name"]: "edited"}
        reasons = rerun_reasons(stages, entries, params, fingerprints, run_dir, consumed)
        rerun = [name for name, reason in reasons.items() if reason is not None]
        rows.append(
            {
                "edited": info["name"],
                "reruns": " ".join(run_all.stage_number(name) for name in rerun),
                "changed_wait_s": sum(entries[name]["wall_s"] for name in rerun),
                "from_wait_s": sum(entries[i["name"]]["wall_s"] for i in infos[position:]),
            }
        )
    table = pd.DataFrame(rows).set_index("edited")
    table["saved_share"] = 1 - table["changed_wait_s"] / table["from_wait_s"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run folder (artifacts/<run>)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rerun_wait.json"))
    args = parser.parse_args()
    run_dir = Path(args.run).resolve()
    table = rerun_table(run_dir)
    print(table.round({"changed_wait_s": 1, "from_wait_s": 1, "saved_share": 3}).to_string())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    record = {
        key: manifest.get(key) for key in ("git_commit", "params_hash", "platform", "cpu_count", "cpu_model", "cpu_isa")
    }
    record["dataset"] = manifest["params"].get("dataset")
    write_json(
        Path(args.out), {"run": str(args.run), **record, "notebooks": table.reset_index().to_dict(orient="records")}
    )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
