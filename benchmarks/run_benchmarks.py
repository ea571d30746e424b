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
codes = []
for name in sorted(commands):
    print(f"=== {name}", flush=True)
    codes.append(subprocess.call(commands[name], cwd=here.parent))
sys.exit(max(codes, default=0))
