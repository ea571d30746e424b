#!/usr/bin/env python
"""The sequential retriever's target horizon H chosen on val: val Recall@100 for each H, nothing from test or fold-in.

    python benchmarks/sequential_horizon.py [--data-dir ../shared/data/ml-1m-half] [--horizons 1 5 10 20]

The data is read, cleaned and split as notebook 01 does under `split.strategy: temporal` (the
run's seed; fold-in users taken out, so no model sees them). For each H, the sequential model is
trained as notebook 05 trains it: `sequential` group of the parameter file with `target_horizon`
replaced, fitted on the train positives, early stopping on val Recall@100 (full catalogue, the
queries read each user's train movies). The H with the best val Recall@100 is chosen (ties: the
smaller H). Only val numbers are recorded; test and the fold-in users are never scored.

Writes benchmarks/results/sequential_horizon.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from recsys.core.io import PROJECT_ROOT, write_json  # noqa: E402
from recsys.runs.params import DEFAULT_PARAMS_FILE, load_params  # noqa: E402

DEFAULT_HORIZONS = (1, 5, 10, 20)


def default_data_dir() -> Path:
    shared = Path(os.environ.get("RECSYS_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return shared / "ml-1m-half"


def split_interactions(params: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Users, movies and the interactions of the non-fold-in users, split as the preprocessing notebook does.

    Raises:
        ValueError: the split strategy leaves ratings without a label (global_temporal): not what this measures.
    """
    from recsys.data.loader import load_dataset
    from recsys.features import preprocessing, splits

    split, seed, geo = params["split"], params["seed"], params["geo"]
    if split["strategy"] == "global_temporal":
        raise ValueError("split.strategy global_temporal drops unscored ratings; use temporal (the default here)")
    raw = load_dataset(
        params["dataset"], params["data_dir"], params["download"], params["synthetic"], seed, PROJECT_ROOT
    )
    users, _ = preprocessing.user_features(raw.users, geo["backend"], geo["uszipcode_db"])
    movies = preprocessing.movie_features(raw.movies)
    ratings, _ = splits.drop_sparse_users(raw.ratings, split["min_ratings_per_user"])
    foldin = splits.foldin_users(ratings["user_id"], split["foldin_share"], seed)
    labels = splits.assign_split(ratings, split["strategy"], split["val_share"], split["test_share"], seed)
    ratings = ratings.assign(
        split=splits.held_out_for_sample(
            labels, ratings["user_id"], split["eval_users"], seed, excluded=foldin, strategy=split["strategy"]
        ),
        position=splits.timeline_position(ratings, seed),
    )
    ratings = ratings[~ratings["user_id"].isin(foldin)]  # fold-in users: in no model's training, not scored here
    return users, movies, preprocessing.build_interactions(ratings, users, movies)


def val_rows(params: dict, horizons: list[int]) -> tuple[str, list[dict]]:
    """The monitored metric's key (val_recall_at_100) and one row per H: its best value when the sequential
    model is trained with that H, the epoch, and its value at every epoch."""
    from recsys.models import sequential_model
    from recsys.models.configs import RetrievalConfig, SequentialConfig
    from recsys.training import sequential_training
    from recsys.training.curves import TrainingCurve
    from recsys.training.retrieval_inputs import retrieval_inputs

    users, movies, interactions = split_interactions(params)
    inputs = retrieval_inputs(users, movies, interactions, RetrievalConfig.from_params(params["retrieval"]))
    vocabulary = sequential_model.MovieVocabulary(inputs.matrices.movie_ids)
    base = SequentialConfig.from_params(params["sequential"])
    rows, monitored = [], ""
    for horizon in horizons:
        config = dataclasses.replace(base, target_horizon=horizon)
        trained = sequential_training.train_sequential_model(
            config, vocabulary, inputs.train, params["seed"], matrices=inputs.matrices
        )
        monitored = trained.monitored
        curve = TrainingCurve.of(trained.history, monitored)
        by_epoch = [float(v) for v in curve.table[monitored]]
        row = {
            "target_horizon": horizon,
            f"best_{monitored}": max(by_epoch),
            "best_epoch": curve.best_epoch,
            "epochs_trained": len(by_epoch),
            f"{monitored}_by_epoch": by_epoch,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return monitored, rows


def choose(rows: list[dict], key: str) -> dict:
    """The row with the highest `key`; on a tie the first (the smaller H, as the rows are given in order)."""
    return max(rows, key=lambda row: row[key])  # max keeps the first of equal values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--dataset", default="ml-1m", help="the folder's file format (ml-1m for ml-1m-half)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_FILE, help="parameter file (run_all.py's)")
    parser.add_argument("-p", dest="overrides", action="append", default=[], help="group.key=value, after --params")
    parser.add_argument("--horizons", type=int, nargs="+", default=list(DEFAULT_HORIZONS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sequential_horizon.json")
    args = parser.parse_args(argv)
    if len(set(args.horizons)) != len(args.horizons) or min(args.horizons) < 1:
        parser.error(f"--horizons must be distinct integers >= 1, got {args.horizons}")
    overrides = [
        "split.strategy=temporal",
        f"dataset={args.dataset}",
        f"data_dir={args.data_dir.resolve()}",
        *args.overrides,
    ]
    params = load_params(args.params, overrides)

    monitored, rows = val_rows(params, args.horizons)
    chosen = choose(rows, f"best_{monitored}")
    result = {
        "dataset": args.dataset,
        "data_dir": os.path.relpath(args.data_dir.resolve(), ROOT),
        "params": os.path.relpath(args.params.resolve(), ROOT),
        "overrides": overrides[3:],
        "split_strategy": params["split"]["strategy"],
        "seed": params["seed"],
        "sequential": {k: v for k, v in params["sequential"].items() if k != "target_horizon"},
        "chosen_on": monitored,
        "rows": rows,
        "chosen_target_horizon": chosen["target_horizon"],
        f"chosen_{monitored}": chosen[f"best_{monitored}"],
    }
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
