#!/usr/bin/env python
"""Time to quality of the rating models on ml-1m-half: notebooks 01-04 through run_all.py, then a summary.

    python benchmarks/ranking.py [--data-dir ../shared/data/ml-1m-half] [--dataset ml-1m]

Prints and writes benchmarks/results/ranking.json: test RMSE of every model, the final two-tower
model's training wall time (every `rating.val_grid` point's early-stopped run + the refit) and steady-state examples/second, the wall
time of notebooks 03 and 04, and the peak resident memory of notebook 04's kernel.
Run it alone: another job on the two cores makes the timings meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import run_all  # noqa: E402
from recsys.core.io import write_json
from recsys.runs import machine


def default_data_dir() -> Path:
    shared = Path(os.environ.get("RECSYS_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return shared / "ml-1m-half"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--run-name", default="bench-ranking")
    args = parser.parse_args()
    code = run_all.main(
        [
            "-p",
            f"dataset={args.dataset}",
            "-p",
            f"data_dir={args.data_dir}",
            "--run-name",
            args.run_name,
            "--until",
            "04",
        ]
    )
    if code != 0:
        return code
    run_dir = ROOT / "artifacts" / args.run_name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    wall = {n["name"]: n["wall_s"] for n in manifest["notebooks"]}
    baselines = json.loads((run_dir / "03_baselines" / "metrics.json").read_text())
    ranking = json.loads((run_dir / "04_two_tower_rating" / "metrics.json").read_text())
    result = {
        "dataset": args.dataset,
        "data_dir": str(args.data_dir),
        **machine.describe(),  # platform, CPUs, CPU model: timings compare on one CPU
        "rmse_test": {
            **{k.removeprefix("rmse_"): v for k, v in baselines.items() if k.startswith("rmse_")},
            "two_tower": ranking["rmse_two_tower"],
            **{k.removeprefix("rmse_"): v for k, v in ranking.items() if k.startswith("rmse_ablation_")},
        },
        "two_tower_train_wall_s": ranking["train_wall_s"],
        "two_tower_examples_per_s": ranking["train_examples_per_s"],
        "two_tower_best_epoch": ranking["best_epoch"],
        "notebook_03_wall_s": wall["03_baselines"],
        "notebook_04_wall_s": wall["04_two_tower_rating"],
        "notebooks_03_04_wall_s": wall["03_baselines"] + wall["04_two_tower_rating"],
        "notebook_04_peak_rss_gb": ranking["kernel_peak_rss_gb"],
        "notebook_01_wall_s": wall["01_preprocess"],
        "notebook_02_wall_s": wall["02_eda"],
    }
    out = write_json(ROOT / "benchmarks" / "results" / "ranking.json", result)
    print("\nTest RMSE (refit on train+val, test once):")
    for name, value in sorted(result["rmse_test"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<22} {value:.4f}")
    print(
        f"two-tower training wall (val grid + refit): {result['two_tower_train_wall_s']:.1f} s; "
        f"steady state {result['two_tower_examples_per_s']:,.0f} examples/s"
    )
    print(
        f"notebooks 03 + 04: {result['notebook_03_wall_s']:.1f} + {result['notebook_04_wall_s']:.1f} = "
        f"{result['notebooks_03_04_wall_s']:.1f} s (target < 180 s)"
    )
    print(f"notebook 04 kernel peak RSS: {result['notebook_04_peak_rss_gb']:.2f} GB (target < 3 GB)")
    print(f"notebooks 01 / 02: {result['notebook_01_wall_s']:.1f} s / {result['notebook_02_wall_s']:.1f} s")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
