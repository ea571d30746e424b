"""The program every worker of a multi-worker training job runs: `python -m recsys.training.distributed.worker job.json`.

Each worker runs the same program with its own `TF_CONFIG` (`recsys.training.distributed.cluster.Cluster`): it
creates the MultiWorkerMirroredStrategy first (before any other TensorFlow call, as the strategy
requires), reads the same data, builds the same model in the strategy's scope, trains on its
share of every global batch (`cluster.sharded_batches`) and saves. Worker 0, the chief,
keeps the model folder and writes `result.json`; the others save to scratch folders they delete.

A job is a JSON file (`write_job`): which model ("rating" or "retrieval"), the interactions,
users and movies parquet files, the model's params group, the seed, the splits to fit on, a
number of epochs (or null: early stopping on val, as the single-process trainers do), the output
folder and an optional `backup_dir`. With a backup dir, Keras's BackupAndRestore saves the model
and both optimizers after every epoch, and a restarted job resumes after the last completed
epoch, reading the batches the interrupted run would have read.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

MODELS = ("rating", "retrieval")
JOB_KEYS = ("model", "interactions", "users", "movies", "config", "seed", "fit_on", "epochs", "out", "backup_dir")
RESULT = "result.json"


def write_job(path: str | os.PathLike, job: dict) -> Path:
    """Check a job and write it as JSON (what `python -m recsys.training.distributed.worker` reads)."""
    check_job(job)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(job, indent=2, default=str))
    return path


def check_job(job: dict) -> None:
    """Raise ValueError naming what is wrong with a job, before any worker starts."""
    missing = [key for key in JOB_KEYS if key not in job]
    if missing:
        raise ValueError(f"the training job lacks {missing} (keys: {list(JOB_KEYS)})")
    if job["model"] not in MODELS:
        raise ValueError(f"job model {job['model']!r} is not one of {MODELS}")
    for key in ("interactions", "users", "movies"):
        if not Path(job[key]).exists():
            raise ValueError(f"job {key}: {job[key]} does not exist")
    if not set(job["fit_on"]) <= {"train", "val"} or "train" not in job["fit_on"]:
        raise ValueError(f"job fit_on {job['fit_on']} must be ['train'] or ['train', 'val']")
    if job["epochs"] is None and "val" in job["fit_on"]:
        raise ValueError("a job fitted on val cannot stop early on val: give it a number of epochs")
    if job["model"] == "rating" and "rating_scale" not in job:
        raise ValueError("a rating job needs the dataset's rating_scale (RatingScale.to_dict())")


def resume_epoch(backup_dir: str | os.PathLike | None) -> int:
    """The epoch a job resumes at: after the last one BackupAndRestore saved (0 without a backup)."""
    import tensorflow as tf

    if backup_dir is None:
        return 0
    checkpoint = tf.train.latest_checkpoint(str(Path(backup_dir) / "chief"))
    if checkpoint is None:
        return 0
    return int(tf.train.load_variable(checkpoint, "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE")) + 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m recsys.training.distributed.worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    check_job(job)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # first: collectives are set up at program start
    train = _train_rating if job["model"] == "rating" else _train_retrieval
    result = train(job, strategy)
    from recsys.training.distributed.cluster import is_chief

    if is_chief(strategy):
        result.update({"strategy": "multi_worker", "workers": strategy.num_replicas_in_sync})
        tmp = Path(job["out"]) / (RESULT + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(Path(job["out"]) / RESULT)
    return 0


def _read(job: dict, columns: list[str]):
    import pandas as pd

    interactions = pd.read_parquet(job["interactions"], columns=columns)
    return interactions, pd.read_parquet(job["users"]), pd.read_parquet(job["movies"])


def _callbacks(job: dict, strategy) -> list:
    import tensorflow as tf

    from recsys.training.distributed.cluster import is_chief

    callbacks: list = []
    if job["backup_dir"] is not None:
        callbacks.append(tf.keras.callbacks.BackupAndRestore(str(job["backup_dir"])))
    if is_chief(strategy):
        callbacks.append(_EpochLog(Path(job["out"]) / "progress.jsonl"))
    return callbacks


def _train_rating(job: dict, strategy) -> dict:
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from recsys.core.seeding import set_seed
    from recsys.data.rating_scale import RatingScale
    from recsys.features.encoding import MOVIE_ROW, ExampleInputs, FeatureEncoder
    from recsys.models.configs import RatingConfig
    from recsys.models.rating_model import build_optimizer_state, build_rating_model
    from recsys.training.callbacks import EpochTimer, ValidationEarlyStopping
    from recsys.training.distributed import cluster
    from recsys.training.distributed.gradients import aggregate_small_tables_dense
    from recsys.training.rating_training import inputs_fit_record, save_rating_model

    config = RatingConfig.from_params(job["config"])
    columns = ["user_id", "movie_id", "rating", "split", "hour", "weekday", "month"]
    interactions, users, movies = _read(job, columns)
    frames = {s: interactions[interactions["split"] == s] for s in ("train", "val")}
    encoder = FeatureEncoder.fit(users, movies, frames["train"])
    user_table, movie_table = encoder.user_table(users), encoder.movie_table(movies)
    fit_frame = pd.concat([frames[s] for s in job["fit_on"]])
    inputs = encoder.example_inputs(fit_frame, user_table, movie_table)
    ratings = fit_frame["rating"].to_numpy(np.float32)
    first_epoch = resume_epoch(job["backup_dir"])
    dataset_fn = cluster.sharded_batches(
        inputs.examples, ratings, config.batch_size, job["seed"], first_epoch, inputs.movies, MOVIE_ROW
    )
    batches = strategy.distribute_datasets_from_function(dataset_fn)
    set_seed(job["seed"])
    with strategy.scope():
        model = build_rating_model(encoder.cardinalities(), config, float(np.mean(ratings)))
        one_example = ExampleInputs({name: value[:1] for name, value in inputs.examples.items()}, inputs.movies)
        build_optimizer_state(model, one_example.flat())
        for optimizer in filter(None, (model.optimizer, model.id_optimizer)):
            aggregate_small_tables_dense(optimizer)  # a few dense all-reduces a step, not dozens of all-gathers
    timer = EpochTimer()
    callbacks = [timer, *_callbacks(job, strategy)]
    if job["epochs"] is None:
        val = encoder.interaction_inputs(frames["val"], user_table, movie_table)
        callbacks.append(ValidationEarlyStopping(val, frames["val"]["rating"].to_numpy(np.float32), config.patience))
    start = time.perf_counter()
    history = model.fit(
        batches,
        epochs=job["epochs"] or config.max_epochs,
        steps_per_epoch=dataset_fn.steps_per_epoch,
        callbacks=callbacks,
        verbose=0,
    )
    wall_s = time.perf_counter() - start
    model.fit_record = inputs_fit_record(inputs)  # what it was fitted on, checked by the ranker's leakage guard
    folder = cluster.write_dir(Path(job["out"]) / "model", strategy)
    save_rating_model(model, encoder, folder, job["fit_on"], RatingScale.from_dict(job["rating_scale"]))
    cluster.discard(folder, strategy)
    val_rmse = history.history.get("val_root_mean_squared_error")
    return {
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        "epochs": len(history.history["loss"]),
        "best_epoch": int(np.argmin(val_rmse)) + 1 if val_rmse else len(history.history["loss"]),
        "first_epoch": first_epoch,
        "wall_s": wall_s,
        "epoch_s": timer.epoch_s,
        "n_examples": len(ratings),
        "tf_version": tf.__version__,
    }


def _train_retrieval(job: dict, strategy) -> dict:
    import numpy as np
    import tensorflow as tf

    from recsys.core.seeding import set_seed
    from recsys.evaluation.full_ranking import split_matrices
    from recsys.features.encoding import FeatureEncoder
    from recsys.features.fit_records import fingerprint
    from recsys.features.preprocessing import EVENT_COLUMNS
    from recsys.models.configs import RetrievalConfig
    from recsys.models.retrieval_model import build_retrieval_model, save_retrieval_model
    from recsys.training.callbacks import EpochTimer, stop_at_best_recall
    from recsys.training.distributed import cluster
    from recsys.training.distributed.gradients import aggregate_small_tables_dense
    from recsys.training.retrieval_training import (
        full_ranking_monitor,
        negative_catalogue,
        positives,
        training_inputs,
    )

    config = RetrievalConfig.from_params(job["config"])
    interactions, users, movies = _read(job, list(EVENT_COLUMNS))
    train = interactions[interactions["split"] == "train"]
    encoder = FeatureEncoder.fit(users, movies, train)
    user_table, movie_table = encoder.user_table(users), encoder.movie_table(movies)
    fit_frame = interactions[interactions["split"].isin(job["fit_on"])]
    inputs = training_inputs(config, encoder, fit_frame, user_table, movie_table)
    catalogue = negative_catalogue(config, encoder, fit_frame, movie_table, job["seed"])  # None for inbatch_logq
    first_epoch = resume_epoch(job["backup_dir"])
    dataset_fn = cluster.sharded_batches(inputs, None, config.batch_size, job["seed"], first_epoch)
    batches = strategy.distribute_datasets_from_function(dataset_fn)
    set_seed(job["seed"])
    with strategy.scope():
        # its variables exist (it ran a dummy batch); the sampled negatives' catalogue is a constant on every worker
        model = build_retrieval_model(encoder.cardinalities(), config, catalogue)
        model.optimizer.build(model.trainable_variables)  # slots now, so BackupAndRestore restores them
        aggregate_small_tables_dense(model.optimizer)
    timer = EpochTimer()
    callbacks = [timer, *_callbacks(job, strategy)]
    if job["epochs"] is None:
        active_users = np.sort(interactions["user_id"].unique())
        matrices = split_matrices(
            positives(interactions, config.min_rating), active_users, movie_table.index.to_numpy()
        )
        monitor = full_ranking_monitor(encoder, user_table, movie_table, matrices, "val", 100)
        callbacks += stop_at_best_recall(monitor, config.patience)
    start = time.perf_counter()
    history = model.fit(
        batches,
        epochs=job["epochs"] or config.epochs,
        steps_per_epoch=dataset_fn.steps_per_epoch,
        callbacks=callbacks,
        verbose=0,
    )
    wall_s = time.perf_counter() - start
    model.fit_record = fingerprint(inputs["user_id"], inputs["movie_id"], "encoder")  # checked by the leakage guard
    folder = cluster.write_dir(Path(job["out"]) / "model", strategy)
    save_retrieval_model(model, encoder, folder)
    cluster.discard(folder, strategy)
    return {
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        "epochs": len(history.history["loss"]),
        "first_epoch": first_epoch,
        "wall_s": wall_s,
        "epoch_s": timer.epoch_s,
        "n_examples": int(len(inputs["user_id"])),
        "tf_version": tf.__version__,
    }


class _EpochLog:
    """Appends each finished epoch (number, logs, wall clock) to a JSON-lines file: the job's progress."""

    def __new__(cls, path: Path):
        import tensorflow as tf

        class EpochLog(tf.keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                path.parent.mkdir(parents=True, exist_ok=True)
                record = {"epoch": epoch + 1, "time": time.time(), **{k: float(v) for k, v in (logs or {}).items()}}
                with open(path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")

        return EpochLog()


if __name__ == "__main__":
    sys.exit(main())
