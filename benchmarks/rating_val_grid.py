#!/usr/bin/env python
"""The rating model's settings compared on val alone: the grid behind `rating`'s defaults in params/default.yaml.

    python benchmarks/rating_val_grid.py --run artifacts/<run> '{"learning_rate": 0.001}' '{"l2": 0.06}' ...

Each argument is a JSON object of `rating` settings that replace the defaults of the parameter file.
Each setting is fitted on the run's train split and early-stopped on its val split, as notebook 04
fits each point of `rating.val_grid`; its best val RMSE and epoch are printed and written. Test is
never read. Notebook 04 itself chooses among `rating.val_grid` on val; this wider grid is what
chose the defaults around it.

Writes benchmarks/results/rating_val_grid.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from recsys.core.io import write_json  # noqa: E402
from recsys.features.encoding import FeatureEncoder  # noqa: E402
from recsys.models.configs import RatingConfig  # noqa: E402
from recsys.runs.params import load_params  # noqa: E402
from recsys.runs.registry import ARTIFACTS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder whose preprocessing has run")
    parser.add_argument("--params", help="a parameter file (default: params/default.yaml)")
    parser.add_argument("settings", nargs="+", help="JSON objects of rating settings, e.g. '{\"l2\": 0.06}'")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rating_val_grid.json")
    args = parser.parse_args(argv)
    base = RatingConfig.from_params(load_params(args.params)["rating"])
    try:
        points = [dataclasses.replace(base, **json.loads(text)) for text in args.settings]
    except (json.JSONDecodeError, TypeError) as error:
        parser.error(f"each setting must be a JSON object of rating settings: {error}")

    from recsys.training.rating_training import best_val_rmse, train_rating_model  # TensorFlow from here

    def artifact(name: str) -> Path:
        stage, filename = ARTIFACTS[name]
        return args.run / stage / filename

    users, movies = pd.read_parquet(artifact("users")), pd.read_parquet(artifact("movies"))
    columns = ["user_id", "movie_id", "rating", "split", "hour", "weekday", "month"]
    interactions = pd.read_parquet(artifact("interactions"), columns=columns)
    frames = {split: interactions[interactions["split"] == split] for split in ("train", "val")}
    encoder = FeatureEncoder.fit(users, movies, frames["train"])
    tables = encoder.user_table(users), encoder.movie_table(movies)
    data = {s: (encoder.example_inputs(f, *tables), f["rating"].to_numpy(np.float32)) for s, f in frames.items()}
    seed = int(load_params(args.params)["seed"])
    rows = []
    for text, point in zip(args.settings, points):
        start = time.perf_counter()
        fitted = train_rating_model(point, encoder.cardinalities(), *data["train"], seed, *data["val"])
        row = {"setting": json.loads(text), "rmse_val": best_val_rmse(fitted), "best_epoch": fitted.best_epoch}
        rows.append({**row, "epochs": fitted.epochs, "wall_s": time.perf_counter() - start})
        print(f"{text}: best val RMSE {row['rmse_val']:.4f} at epoch {row['best_epoch']}", flush=True)
    write_json(args.out, {"run": str(args.run), "seed": seed, "points": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
