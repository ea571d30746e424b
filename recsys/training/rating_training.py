"""Train, refit, score, save and reload the two-tower rating model (choose epochs on val, refit, test once)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from recsys.core.seeding import set_seed
from recsys.data.rating_scale import RatingScale
from recsys.evaluation import metrics
from recsys.features.encoding import MOVIE_ROW, ExampleInputs, FeatureEncoder, as_arrays
from recsys.features.fit_records import FitRecord, fingerprint
from recsys.models.configs import RatingConfig
from recsys.models.persistence import read_model_folder, save_model_folder
from recsys.models.predict import predict
from recsys.models.rating_model import TwoTowerRatingModel, build_rating_model
from recsys.training.callbacks import EpochTimer, ValidationEarlyStopping, steady_throughput

PREDICT_BATCH = 16_384


@dataclass
class TrainingResult:
    """A fitted model with how it was trained.

    Attributes:
        model: the fitted model.
        history: per-epoch metrics from Keras (train and, when validated, val RMSE).
        epochs: epochs run.
        best_epoch: the epoch with the lowest val RMSE (weights restored to it), or `epochs` without val.
        wall_s: wall time of `fit`.
        examples_per_s: steady-state training throughput (median epoch after the first, train examples only).
        epoch_s: wall time of each epoch.
    """

    model: TwoTowerRatingModel
    history: dict
    epochs: int
    best_epoch: int
    wall_s: float
    examples_per_s: float
    epoch_s: list[float]


Inputs = dict[str, np.ndarray] | ExampleInputs  # per-example arrays, or movie features kept once per movie


def training_dataset(inputs: Inputs, ratings: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    """Batches of examples, reshuffled every epoch, gathered from tensors held in memory.

    Only the example indices are shuffled (one shuffle of an index vector per epoch); each batch
    is a slice of that permutation and gathers its rows from the feature tensors. Measured on
    ml-1m-half, what the simpler pipelines cost:

    * Keras's own numpy path spent 10-20 s per `fit` before the first epoch, converting and
      slicing the arrays; a per-example `tf.data` shuffle of the feature dicts runs at a fraction
      of the speed.
    * `from_tensor_slices(order).batch(...)` builds each batch one index at a time, about 25 ms
      per batch of 16,384, which the training step waited for (35 ms/step became 28 ms).
    * A shuffle with a fixed op seed inside a dataset function restarts with every new
      iterator, and Keras makes one per epoch: every epoch replayed the first epoch's batches.
      Each epoch's permutation is therefore drawn from its own seed, taken from
      `Dataset.random(seed, rerandomize_each_iteration=True)`: new every epoch, the same
      sequence of epochs for the same seed.
    * tf.data's autotuning is off: the sizes are fixed (`prefetch(2)`, nothing parallel to tune),
      and with it on, dropping an epoch's iterator often waited about 0.45 s for the autotuning
      thread: 8 epochs took 10.6-11.4 s with it and 8.8 s without, the same epoch times.

    Args:
        inputs: model inputs, one array per feature, rows aligned with `ratings` (or ExampleInputs,
            whose movie features each batch gathers through its movie rows).
        ratings: the labels.
        batch_size: examples per batch (the last batch of an epoch holds the remainder).
        seed: drives every epoch's permutation.
    """
    per_example = inputs.examples if isinstance(inputs, ExampleInputs) else inputs
    features = {name: tf.constant(value) for name, value in per_example.items()}
    # movie inputs kept once per movie (ExampleInputs) are gathered per batch through the movie rows
    movies = (
        {name: tf.constant(value) for name, value in inputs.movies.items()} if isinstance(inputs, ExampleInputs) else {}
    )
    labels = tf.constant(np.asarray(ratings, dtype=np.float32))
    n = len(labels)
    n_batches = -(-n // batch_size)
    seed_tail = tf.constant(seed, tf.int64)

    def epoch_batches(epoch_seed):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([epoch_seed, seed_tail])
        )
        return tf.data.Dataset.range(n_batches).map(
            lambda i: order[i * batch_size : tf.minimum((i + 1) * batch_size, n)]
        )

    def gather(index):
        batch = {name: tf.gather(value, index) for name, value in features.items()}
        if movies:
            rows = batch.pop(MOVIE_ROW)
            batch.update({name: tf.gather(value, rows) for name, value in movies.items()})
        return batch, tf.gather(labels, index)

    options = tf.data.Options()
    options.autotune.enabled = False
    epoch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return epoch_seeds.flat_map(epoch_batches).map(gather).prefetch(2).with_options(options)


def inputs_fit_record(inputs: Inputs) -> FitRecord:
    """The FitRecord of the (user, movie) examples of model inputs, in the encoder's indices (`fit_records`)."""
    if isinstance(inputs, ExampleInputs):
        users, movies = inputs.examples["user_id"], inputs.movies["movie_id"][inputs.examples[MOVIE_ROW]]
    else:
        users, movies = inputs["user_id"], inputs["movie_id"]
    return fingerprint(users, movies, ids="encoder")


def train_rating_model(
    config: RatingConfig,
    cardinalities: dict[str, int],
    x_train: Inputs,
    y_train: np.ndarray,
    seed: int,
    x_val: Inputs | None = None,
    y_val: np.ndarray | None = None,
    epochs: int | None = None,
    verbose: int = 0,
) -> TrainingResult:
    """Fit a fresh model: with val data, early stopping on val RMSE; without, exactly `epochs` epochs.

    Examples come from `training_dataset`, reshuffled every epoch, in batches of
    `config.batch_size` (large batches keep two CPU cores busy).

    Args:
        config: hyper-parameters; `config.max_epochs` and `config.patience` drive early stopping.
        cardinalities: embedding sizes from the FeatureEncoder.
        x_train, y_train: model inputs and ratings.
        seed: seeds initialisation and shuffling, so a rerun gives the same model.
        x_val, y_val: validation data for early stopping (restores the best epoch's weights).
        epochs: for a refit without validation data: how many epochs to run.
        verbose: Keras's per-epoch lines (0: none; `callbacks.history_table` shows the run as a table).

    The model carries `fit_record` (`inputs_fit_record(x_train)`): what it was fitted on, saved with it.
    """
    set_seed(seed)
    model = build_rating_model(cardinalities, config, float(np.mean(y_train)))
    model.fit_record = inputs_fit_record(x_train)
    timer = EpochTimer()
    callbacks: list = [timer]
    if x_val is not None:
        callbacks.append(ValidationEarlyStopping(as_arrays(x_val), y_val, config.patience))
        epochs = config.max_epochs
    elif epochs is None:
        raise ValueError("train_rating_model: give validation data (early stopping) or a number of epochs")
    start = time.perf_counter()
    history = model.fit(
        training_dataset(x_train, y_train, config.batch_size, seed), epochs=epochs, callbacks=callbacks, verbose=verbose
    )
    wall_s = time.perf_counter() - start
    val_rmse = history.history.get("val_root_mean_squared_error")
    best_epoch = int(np.argmin(val_rmse)) + 1 if val_rmse else len(history.history["loss"])
    return TrainingResult(
        model,
        history.history,
        len(history.history["loss"]),
        best_epoch,
        wall_s,
        steady_throughput(len(y_train), timer.epoch_s),
        timer.epoch_s,
    )


def predict_ratings(model: TwoTowerRatingModel, inputs: Inputs) -> np.ndarray:
    """Predicted ratings (unclipped; the metrics clip to the rating scale)."""
    return predict(model, as_arrays(inputs), batch_size=PREDICT_BATCH)


def evaluate_ratings(model: TwoTowerRatingModel, inputs: Inputs, ratings: np.ndarray, scale: RatingScale) -> dict:
    """RMSE and MAE of a model's predictions (clipped to the dataset's scale, as every rating metric here)."""
    predictions = predict_ratings(model, inputs)
    return {"rmse": metrics.rmse(ratings, predictions, scale), "mae": metrics.mae(ratings, predictions, scale)}


def concat_inputs(*parts: Inputs) -> Inputs:
    """Stack the model inputs of several splits (train + val for the refit), in the form they come in."""
    if all(isinstance(p, ExampleInputs) for p in parts):
        return ExampleInputs.concat(*parts)
    arrays = [as_arrays(p) for p in parts]
    return {name: np.concatenate([p[name] for p in arrays]) for name in arrays[0]}


def early_stopping_refit_test(
    config: RatingConfig,
    cardinalities: dict[str, int],
    data: dict[str, tuple],
    seed: int,
    scale: RatingScale,
    verbose: int = 0,
) -> dict:
    """The rating model's protocol: choose the settings and epochs on val, refit on train + val, score once on test.

    Each point of `config.grid_points()` (the config alone when its `val_grid` is empty) is fitted
    on train with early stopping on val (`choose_on_val`); the lowest val RMSE is refit from scratch
    on train + val for its best epoch count and scored once on test.

    Args:
        data: {"train": (inputs, ratings), "val": (...), "test": (...)}.
        scale: the dataset's rating scale (test predictions are clipped to it).

    Returns:
        `protocol_result`'s record: the chosen early-stopped fit and its refit ("selected", "refit"),
        the chosen config and the grid table, val RMSE of the chosen epoch, the refit's test
        RMSE/MAE and test predictions, and the training wall time of every fit.
    """
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data["train"], data["val"], data["test"]
    chosen, selected, grid = choose_on_val(
        config,
        lambda point, _: train_rating_model(
            point, cardinalities, x_train, y_train, seed, x_val, y_val, verbose=verbose
        ),
    )
    refit = train_rating_model(
        chosen,
        cardinalities,
        concat_inputs(x_train, x_val),
        np.concatenate([y_train, y_val]),
        seed,
        epochs=selected.best_epoch,
        verbose=verbose,
    )
    return protocol_result(selected, refit, x_test, y_test, scale, chosen, grid)


def choose_on_val(
    config: RatingConfig, fit: Callable[[RatingConfig, int], TrainingResult]
) -> tuple[RatingConfig, TrainingResult, pd.DataFrame]:
    """Fit every grid point of `config` on train (early-stopped on val) and keep the lowest val RMSE.

    Args:
        config: its `val_grid` names the settings to try (`RatingConfig.grid_points`).
        fit: (grid point, its position) -> the point's early-stopped fit on train; only the best
            fit so far is kept in memory.

    Returns:
        (the chosen grid point, its fit, a table with one row per point: the grid's settings,
        rmse_val, best_epoch, wall_s and chosen). On equal val RMSE the earlier point wins; a point
        whose every val RMSE is NaN (a diverged fit) never does; NaN epochs after its best are skipped.

    Raises:
        ValueError: every point's val RMSE is NaN.
    """
    points = config.grid_points()
    varied = [name for name, values in config.val_grid.items() if values]
    rows, best, best_fit = [], None, None
    for position, point in enumerate(points):
        fitted = fit(point, position)
        rmse_val = best_val_rmse(fitted)
        rows.append(
            {
                **{name: getattr(point, name) for name in varied},
                "rmse_val": rmse_val,
                "best_epoch": fitted.best_epoch,
                "wall_s": fitted.wall_s,
            }
        )
        if not np.isnan(rmse_val) and (best is None or rmse_val < rows[best]["rmse_val"]):
            best, best_fit = position, fitted
        del fitted  # only the best fit so far stays in memory
    if best is None:
        raise ValueError(f"every one of the {len(points)} rating settings tried on val diverged (val RMSE NaN)")
    table = pd.DataFrame(rows)
    table["chosen"] = table.index == best
    return points[best], best_fit, table


def best_val_rmse(fitted: TrainingResult) -> float:
    """The lowest val RMSE of a fit's epochs (the epoch early stopping restored), NaN epochs skipped; NaN if all are."""
    curve = np.asarray(fitted.history["val_root_mean_squared_error"], np.float64)
    return float(curve[~np.isnan(curve)].min()) if (~np.isnan(curve)).any() else float("nan")


def protocol_result(
    selected: TrainingResult,
    refit: TrainingResult,
    x_test: Inputs,
    y_test: np.ndarray,
    scale: RatingScale,
    chosen: RatingConfig,
    grid: pd.DataFrame,
) -> dict:
    """`early_stopping_refit_test`'s record: the fits, the choice, val RMSE of the chosen epoch, the refit's test scores."""
    predictions = scale.clip(predict_ratings(refit.model, x_test))
    return {
        "selected": selected,
        "refit": refit,
        "config": chosen,
        "grid": grid,
        "best_epoch": selected.best_epoch,
        "rmse_val": best_val_rmse(selected),
        "rmse_test": metrics.rmse(y_test, predictions, scale),
        "mae_test": metrics.mae(y_test, predictions, scale),
        "test_predictions": predictions,
        "train_wall_s": float(grid["wall_s"].sum()) + refit.wall_s,
        "examples_per_s": refit.examples_per_s,
    }


# ---- persistence: weights + what is needed to rebuild the same model ------------------------------


def save_rating_model(
    model: TwoTowerRatingModel,
    encoder: FeatureEncoder,
    folder: str | os.PathLike,
    fitted_on: Sequence[str],
    scale: RatingScale,
) -> Path:
    """Save weights, config, global mean, the splits it was fitted on, the rating scale and the encoder.

    With them, the model's `fit_record` (set by `train_rating_model`, kept by `load_rating_model`):
    the fingerprint of the examples it was fitted on, which the learned ranker matches to the run's
    splits; `fitted_on` is the caller's label, which must agree with it there.
    """
    record = getattr(model, "fit_record", None)
    state = {
        "config": model.config.to_dict(),
        "global_mean": model.global_mean,
        "fitted_on": list(fitted_on),
        "fit_record": None if record is None else record.to_dict(),
        **scale.to_dict(),
    }
    return save_model_folder(model, encoder, folder, state)


def load_rating_model(folder: str | os.PathLike) -> tuple[TwoTowerRatingModel, FeatureEncoder]:
    """Rebuild a model saved by `save_rating_model` and load its weights.

    The model carries `fitted_on` (its label: the splits it was saved as fitted on), `fit_record`
    (the fingerprint of what it was fitted on; None for a model saved without one) and
    `rating_scale` (what its predictions are clipped to).
    """
    state, encoder, weights = read_model_folder(folder)
    model = build_rating_model(state["cardinalities"], RatingConfig.from_params(state["config"]), state["global_mean"])
    model.load_weights(weights).expect_partial()
    model.fitted_on = tuple(state["fitted_on"])
    model.fit_record = FitRecord.from_dict(state.get("fit_record"))
    if "rating_scale" not in state:
        raise ValueError(
            f"{folder} was saved without its rating scale (by an older version): rerun the notebook that trains it"
        )
    model.rating_scale = RatingScale.from_dict(state)
    return model, encoder
