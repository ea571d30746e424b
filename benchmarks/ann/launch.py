"""The parent's side of the workers: each method in a fresh process, its record read back (or reused)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.ann.settings import METHODS, ROOT


def launch(name: str, args: argparse.Namespace) -> dict | None:
    """Run worker `name` in a fresh process; its JSON record, or None if it failed."""
    out = args.cache_dir / f"{name}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-u", "-m", "benchmarks.ann", "--worker", name]  # from ROOT
    command += ["--cache-dir", str(args.cache_dir), "--seed", str(args.seed), "--hnsw-m", str(args.hnsw_m)]
    command += ["--hnsw-ef-construction", str(args.hnsw_ef_construction)]
    print(f"=== {name}", flush=True)
    code = subprocess.call(command, cwd=ROOT)
    if code != 0:
        print(f"worker {name} exited {code}", flush=True)
        return None
    return json.loads(out.read_text())


def run_methods(args: argparse.Namespace) -> tuple[dict[str, dict], list[str]]:
    """Each requested method's worker record (bruteforce's with its single-query figures), and the failed workers."""
    runs, failed = {}, []
    for method in METHODS:
        if method not in args.methods:
            if args.reuse and (args.cache_dir / f"{method}.json").exists():
                runs[method] = reused(method, args.cache_dir)
            continue
        run = launch(method, args)
        if run is None:
            failed.append(method)
            continue
        if method == "bruteforce":
            single = launch("bruteforce_single", args)
            if single is None:
                failed.append("bruteforce_single")
            else:
                run |= {key: value for key, value in single.items() if key.startswith("single_")}
        runs[method] = run
    return runs, failed


def reused(method: str, cache: Path) -> dict:
    """A method's record from an earlier run on the same cached data (`--reuse`)."""
    run = json.loads((cache / f"{method}.json").read_text())
    if method == "bruteforce" and (cache / "bruteforce_single.json").exists():
        single = json.loads((cache / "bruteforce_single.json").read_text())
        run |= {key: value for key, value in single.items() if key.startswith("single_")}
    print(f"=== {method}: reused from {cache / (method + '.json')}", flush=True)
    return {**run, "reused_from_earlier_run": True}
