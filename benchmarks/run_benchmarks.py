#!/usr/bin/env python
"""Run every benchmark in this folder, one after the other (never two at once: timings would mix)."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
# scripts run as files, packages (a folder with __main__.py) as `python -m benchmarks.<name>` from the project root
commands = {
    script.name: [sys.executable, str(script)]
    for script in here.glob("*.py")
    if script.name not in (Path(__file__).name, "__init__.py")
}
commands |= {
    f"{main.parent.name}/": [sys.executable, "-m", f"benchmarks.{main.parent.name}"]
    for main in here.glob("*/__main__.py")
}
# the val-only studies behind a default, and the request latency of a run, read finished runs the caller names:
# not run here, their command shown
NEEDS_RUNS = {
    "rating_val_grid.py": "python benchmarks/rating_val_grid.py --run artifacts/<run> '<json settings>' ...",
    "candidate_sources_val.py": "python benchmarks/candidate_sources_val.py --base artifacts/<run> --other artifacts/<run>",
    "ranker_learning_curve.py": "python benchmarks/ranker_learning_curve.py --run artifacts/<run>",
    "retrieval_val_grid.py": "python benchmarks/retrieval_val_grid.py --run artifacts/<run> '<json settings>' ...",
    "recommend_latency.py": "python benchmarks/recommend_latency.py --run artifacts/<run>",
    "rerun_wait.py": "python benchmarks/rerun_wait.py --run artifacts/<run>",
}
for name, usage in NEEDS_RUNS.items():
    del commands[name]
    print(f"=== {name}: needs finished runs, not run here: {usage}", flush=True)
codes = []
for name in sorted(commands):
    print(f"=== {name}", flush=True)
    codes.append(subprocess.call(commands[name], cwd=here.parent))
sys.exit(max(codes, default=0))
