#!/usr/bin/env python
"""Run every benchmark in this folder, one after the other (never two at once: timings would mix)."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
codes = []
for script in sorted(here.glob("*.py")):
    if script.name == Path(__file__).name:
        continue
    print(f"=== {script.name}", flush=True)
    codes.append(subprocess.call([sys.executable, str(script)]))
sys.exit(max(codes, default=0))
