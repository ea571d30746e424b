#!/usr/bin/env python
"""One process against two workers (tf.distribute MultiWorkerMirroredStrategy on loopback): quality, throughput, resume.

    python benchmarks/distributed.py [--data-dir ../shared/data/ml-1m-half] [--dataset ml-1m]

Notebook 01 prepares the run (through run_all.py); then, with the default params and the same
global batch and number of epochs everywhere:

* the rating model (the default setting, `rating.val_grid` not swept): fitted on train for the epochs
  early stopping on val chooses in one process, in one process and on 2 workers; val RMSE of each;
* the retrieval model: fitted on train for `retrieval.epochs` epochs, in one process and on 2
  workers; val Recall@100 (full ranking, as notebook 05 reports it);
* steady-state examples/second of each (on this 2-core machine 2 workers share the cores: not
  expected to be faster);
* the rating model on 2 workers again, one worker killed (SIGKILL) after the second epoch: the
  job restarts both workers and resumes from the last saved epoch; val RMSE after the resume.

Writes benchmarks/results/distributed.json. Run it alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

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
    parser.add_argument("--run-name", default="bench-distributed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distributed.json")
    args = parser.parse_args()
    overrides = ["-p", f"dataset={args.dataset}", "-p", f"data_dir={args.data_dir}", "--run-name", args.run_name]
    if run_all.main([*overrides, "--until", "01"]) != 0:
        return 1

    from recsys.data.rating_scale import RatingScale
    from recsys.evaluation import full_ranking
    from recsys.features.encoding import FeatureEncoder
    from recsys.models import retrieval_model
    from recsys.models.configs import RatingConfig, RetrievalConfig
    from recsys.runs.params import load_params
    from recsys.training import rating_training, retrieval_training
    from recsys.training.distributed.jobs import DataFiles, Distribute, run, train_rating, train_retrieval

    params = load_params(overrides=[f"dataset={args.dataset}", f"data_dir={args.data_dir}"])
    seed = params["seed"]
    stage = ROOT / "artifacts" / args.run_name / "01_preprocess"
    files = DataFiles(stage / "interactions.parquet", stage / "users.parquet", stage / "movies.parquet")
    scale = RatingScale.from_dict(json.loads((stage / "dataset.json").read_text()))
    interactions = pd.read_parquet(files.interactions)
    users, movies = pd.read_parquet(files.users), pd.read_parquet(files.movies)
    frames = {s: interactions[interactions["split"] == s] for s in ("train", "val")}
    encoder = FeatureEncoder.fit(users, movies, frames["train"])
    user_table, movie_table = encoder.user_table(users), encoder.movie_table(movies)
    data = {
        s: (encoder.example_inputs(f, user_table, movie_table), f["rating"].to_numpy("float32"))
        for s, f in frames.items()
    }
    settings = Distribute("multi_worker", 2, 3600, 2, ())
    jobs = ROOT / "artifacts" / args.run_name / "distributed"
    # with the machine (platform, CPUs, CPU model): timings compare on one CPU
    result: dict = {"dataset": args.dataset, "data_dir": str(args.data_dir), **machine.describe()}

    # the rating model at the default setting: the epochs early stopping chooses, then that many epochs everywhere
    rating = RatingConfig.from_params(params["rating"])
    chosen = rating_training.train_rating_model(
        rating, encoder.cardinalities(), *data["train"], seed, *data["val"]
    ).best_epoch
    single = rating_training.train_rating_model(rating, encoder.cardinalities(), *data["train"], seed, epochs=chosen)
    two = train_rating(rating, files, seed, scale, settings, jobs / "rating-2", epochs=chosen)
    result.update(
        {
            "rating_epochs": chosen,
            "global_batch": rating.batch_size,
            "val_rmse_1_worker": rating_training.evaluate_ratings(single.model, *data["val"], scale)["rmse"],
            "val_rmse_2_workers": rating_training.evaluate_ratings(two.model, *data["val"], scale)["rmse"],
            "examples_per_s_1_worker": single.examples_per_s,
            "examples_per_s_2_workers": two.examples_per_s,
        }
    )

    # the retrieval model: retrieval.epochs epochs, val Recall@100 over the whole catalogue
    retrieval = RetrievalConfig.from_params(params["retrieval"])
    active_users = np.sort(interactions["user_id"].unique())
    matrices = full_ranking.split_matrices(
        retrieval_training.positives(interactions, retrieval.min_rating), active_users, movie_table.index.to_numpy()
    )

    def recall_at_100(model) -> float:
        scores = retrieval_model.full_ranking_scores(
            model, encoder, user_table, movie_table, matrices.user_ids, matrices.movie_ids
        )
        return full_ranking.evaluate_scores(scores, matrices, "val", ks=(100,))["recall_at_100"]

    single_r = retrieval_training.train_retrieval_model(
        retrieval, encoder, frames["train"], user_table, movie_table, seed, epochs=retrieval.epochs
    )
    two_r = train_retrieval(retrieval, files, seed, settings, jobs / "retrieval-2", epochs=retrieval.epochs)
    result.update(
        {
            "retrieval_epochs": retrieval.epochs,
            "val_recall_at_100_1_worker": recall_at_100(single_r.model),
            "val_recall_at_100_2_workers": recall_at_100(two_r.model),
            "retrieval_examples_per_s_1_worker": single_r.examples_per_s,
            "retrieval_examples_per_s_2_workers": two_r.examples_per_s,
        }
    )

    # a worker killed after its second epoch: restart, resume from the last saved epoch
    killed_dir = jobs / "rating-killed"

    def kill_after_epoch_2(workers, attempt):
        if attempt > 0:
            return
        progress = killed_dir / "progress.jsonl"
        while not (progress.exists() and len(progress.read_text().splitlines()) >= 2):
            if any(code is not None for code in workers.poll()):
                return
            time.sleep(0.2)
        workers.kill(1)

    job = {
        "model": "rating",
        **{name: str(getattr(files, name)) for name in ("interactions", "users", "movies")},
        "config": dataclasses.asdict(rating),
        "seed": seed,
        "fit_on": ["train"],
        "epochs": chosen,
        "rating_scale": scale.to_dict(),
    }
    resumed, folder, restarts = run(job, killed_dir, settings, on_start=kill_after_epoch_2)
    model, _ = rating_training.load_rating_model(folder)
    result.update(
        {
            "resumed_after_kill": restarts == 1 and resumed["first_epoch"] > 0,
            "resumed_at_epoch": resumed["first_epoch"] + 1,
            "val_rmse_resumed": rating_training.evaluate_ratings(model, *data["val"], scale)["rmse"],
        }
    )
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
