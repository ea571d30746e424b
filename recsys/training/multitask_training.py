"""Training the joint multitask model: its data, early stopping on val RMSE and Recall@100, the refit, test scores.

The weight sweep, its choice on val and the comparison with the specialists are in `multitask_sweep`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import tensorflow as tf

from recsys.core.seeding import set_seed
from recsys.data.rating_scale import RatingScale
from recsys.evaluation import metrics
from recsys.evaluation.full_ranking import SplitMatrices, evaluate_scores, split_matrices
from recsys.evaluation.score_blocks import RowScores
from recsys.features.encoding import ExampleInputs, FeatureEncoder
from recsys.models import multitask_model
from recsys.models.multitask_model import MultitaskConfig, MultitaskModel, TaskWeights, build_multitask_model
from recsys.models.retrieval_model import (
    SAMPLING_PROBABILITY,
    full_ranking_scores,
    load_retrieval_model,
    without_popularity_prior,
)
from recsys.training.callbacks import EpochTimer, steady_throughput
from recsys.training.rating_training import inputs_fit_record, load_rating_model, training_dataset
from recsys.training.rating_training import predict_ratings as predict
from recsys.training.retrieval_training import candidate_sampling_probability

RMSE_KEY, RECALL_KEY = "val_root_mean_squared_error", "val_recall_at_100"


@dataclass
class MultitaskData:
    """What the joint model learns from and is scored on.

    Attributes:
        interactions: every rating with its `split` (and hour/weekday/month when the config uses
            context): each is a rating example and a retrieval positive (a watched movie, whatever
            the rating, as the retrieval model's default `min_rating: 1`).
        encoder: fitted on the train ratings; user_table, movie_table: its encoded tables.
        matrices: train/val/test ratings over every user with a rating x the catalogue (full ranking).
        scale: the release's rating scale (test RMSE clips predictions to it).
    """

    interactions: pd.DataFrame
    encoder: FeatureEncoder
    user_table: pd.DataFrame
    movie_table: pd.DataFrame
    matrices: SplitMatrices
    scale: RatingScale

    def split(self, *names: str) -> pd.DataFrame:
        """The ratings of the given splits."""
        return self.interactions[self.interactions["split"].isin(names).to_numpy()]


def multitask_data(
    users: pd.DataFrame, movies: pd.DataFrame, interactions: pd.DataFrame, scale: RatingScale
) -> MultitaskData:
    """The run's users, movies and rated interactions as `MultitaskData` (the encoder fitted on train)."""
    encoder = FeatureEncoder.fit(users, movies, interactions[interactions["split"] == "train"])
    movie_table = encoder.movie_table(movies)
    matrices = split_matrices(interactions, np.sort(interactions["user_id"].unique()), movie_table.index.to_numpy())
    return MultitaskData(interactions, encoder, encoder.user_table(users), movie_table, matrices, scale)


def training_examples(config: MultitaskConfig, data: MultitaskData, frame: pd.DataFrame, use_context: bool):
    """(ExampleInputs, ratings) of `frame`, with each movie's share of `frame`'s ratings for logQ correction."""
    inputs = data.encoder.example_inputs(frame, data.user_table, data.movie_table, context=use_context)
    examples = dict(inputs.examples)
    if config.logq_correction:  # each movie's share of the ratings, as `retrieval_training`'s positives
        examples[SAMPLING_PROBABILITY] = (
            frame["movie_id"].map(candidate_sampling_probability(frame)).to_numpy(np.float32)
        )
    return ExampleInputs(examples, inputs.movies), frame["rating"].to_numpy(np.float32)


def ranking_scores(model: MultitaskModel, data: MultitaskData) -> RowScores:
    """Retrieval scores (cosine) of every user row x catalogue column of `data.matrices`, a block at a time."""
    queries = multitask_model.user_vectors(model, data.encoder, data.user_table, data.matrices.user_ids)
    _, candidates = multitask_model.movie_vectors(model, data.encoder, data.movie_table.loc[data.matrices.movie_ids])
    return RowScores.dot(queries, candidates)


def _read(val_rmse: Sequence[float], val_recall: Sequence[float], weights: TaskWeights) -> tuple[np.ndarray, ...]:
    """The per-epoch values the rule reads: a metric of a head of weight 0 is ignored (read as 0)."""
    rmse = (
        np.nan_to_num(np.asarray(val_rmse, np.float64), nan=np.inf) if weights.rating > 0 else np.zeros(len(val_rmse))
    )
    recall = np.asarray(val_recall, np.float64) if weights.retrieval > 0 else np.zeros(len(val_rmse))
    return rmse, recall


def chosen_epoch(
    val_rmse: Sequence[float], val_recall: Sequence[float], weights: TaskWeights, rmse_tolerance: float
) -> int:
    """The epoch (from 1) whose weights a run keeps, by one rule on val read off the task weights.

    * rating only (w_retrieval = 0): the lowest val RMSE;
    * retrieval only (w_rating = 0): the highest val Recall@100;
    * a mix: the highest val Recall@100 among the epochs whose val RMSE is within `rmse_tolerance`
      of the run's best val RMSE (the sweep's target asks a joint model to rate within that
      tolerance of the rating specialist, so recall is bought only with RMSE it can spare).

    Ties go to the lower RMSE, then to the earlier epoch. A head of weight 0's metric is not read.
    """
    weights = TaskWeights.of(weights)
    rmse, recall = _read(val_rmse, val_recall, weights)
    feasible = rmse <= rmse.min() + (rmse_tolerance if weights.rating > 0 and weights.retrieval > 0 else 0.0)
    order = np.lexsort((np.arange(len(rmse)), rmse, -recall))  # recall high, then RMSE low, then early
    return int(next(e for e in order if feasible[e])) + 1


def candidate_epochs(val_rmse: Sequence[float], val_recall: Sequence[float], weights: TaskWeights) -> list[int]:
    """The epochs (from 1) `chosen_epoch` may still pick after more epochs: none beats them on what it reads.

    An epoch another one matches or beats on both metrics (strictly on one, or equal and earlier)
    can never be chosen again, so its weights need not be kept.
    """
    rmse, recall = _read(val_rmse, val_recall, TaskWeights.of(weights))
    index = np.arange(len(rmse))  # below, rows: the other epoch; columns: the epoch judged
    as_good = (rmse[:, None] <= rmse) & (recall[:, None] >= recall)
    beats = (rmse[:, None] < rmse) | (recall[:, None] > recall) | (index[:, None] < index)
    return [int(e) + 1 for e in np.flatnonzero(~(as_good & beats).any(axis=0))]


class MultitaskMonitor(tf.keras.callbacks.Callback):
    """Val RMSE and val Recall@100 after each epoch; keeps the `chosen_epoch` weights and stops early.

    Logs `val_root_mean_squared_error` (unclipped: the definition of the rating model's early
    stopping, so the two compare) and `val_recall_at_100` (full ranking, train movies excluded). A
    rating-only run reads no recall to stop, so its recall is computed once, at the end, for the
    kept weights. Training stops `patience` epochs after the kept one (`chosen_epoch` with
    `weights` and `rmse_tolerance`). The weights of every epoch that may still be chosen
    (`candidate_epochs`) are held in memory (numpy copies).
    """

    def __init__(self, data: MultitaskData, weights: TaskWeights, rmse_tolerance: float, patience: int, use_context):
        super().__init__()
        val = data.split("val")
        self.data, self.weights, self.tolerance, self.patience = data, weights, rmse_tolerance, patience
        self.val_inputs = data.encoder.example_inputs(val, data.user_table, data.movie_table, use_context).flat()
        self.val_ratings = val["rating"].to_numpy()

    def on_train_begin(self, logs=None):
        self.rmse, self.recall, self.snapshots = [], [], {}  # per epoch; epoch -> its weights
        self.best_epoch, self.final_recall = 0, float("nan")

    def _recall(self) -> float:
        scores = ranking_scores(self.model, self.data)
        return float(evaluate_scores(scores, self.data.matrices, "val", ks=(100,))["recall_at_100"])

    def on_epoch_end(self, epoch, logs=None):
        predictions = multitask_model.predict_ratings(self.model, self.val_inputs)
        self.rmse.append(metrics.rmse(self.val_ratings, predictions, None))
        self.recall.append(self._recall() if self.weights.retrieval > 0 else float("nan"))
        if logs is not None:
            logs.update({RMSE_KEY: self.rmse[-1], **({RECALL_KEY: self.recall[-1]} if self.weights.retrieval else {})})
        keep = candidate_epochs(self.rmse, self.recall, self.weights)
        self.snapshots = {e: w for e, w in self.snapshots.items() if e in keep}
        if len(self.rmse) in keep:
            self.snapshots[len(self.rmse)] = [variable.numpy() for variable in self.model.weights]
        self.best_epoch = chosen_epoch(self.rmse, self.recall, self.weights, self.tolerance)
        if len(self.rmse) - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        for variable, value in zip(self.model.weights, self.snapshots[self.best_epoch], strict=True):
            variable.assign(value)
        self.final_recall = self.recall[self.best_epoch - 1] if self.weights.retrieval > 0 else self._recall()


@dataclass
class MultitaskResult:
    """A fitted joint model (`model`, the kept epoch's weights), its `weights`, and how it was trained.

    `history` holds per epoch the loss, each trained head's loss (rating_loss, retrieval_loss), train
    RMSE and, early-stopped, val RMSE and (unless rating-only) val Recall@100. `best_epoch` is the
    kept epoch (`chosen_epoch`; without early stopping, the epochs run) and `val_rmse`,
    `val_recall_at_100` its val metrics (None without early stopping); `wall_s` is the time of
    `fit`, `epoch_s` of each epoch, `n_examples` the training ratings per epoch.
    """

    model: MultitaskModel
    weights: TaskWeights
    history: dict
    best_epoch: int
    val_rmse: float | None
    val_recall_at_100: float | None
    wall_s: float
    epoch_s: list[float] = field(repr=False)
    examples_per_s: float
    n_examples: int


def _fit(config, weights, data, frame, seed, epochs, monitor: bool, verbose) -> MultitaskResult:
    set_seed(seed)
    weights, mean_rating = TaskWeights.of(weights), float(frame["rating"].to_numpy(np.float64).mean())
    model = build_multitask_model(data.encoder.cardinalities(), config, weights, mean_rating)
    inputs, labels = training_examples(config, data, frame, model.use_context)
    model.fit_record = inputs_fit_record(inputs)
    timer = EpochTimer()
    watcher = monitor and MultitaskMonitor(data, weights, config.rmse_tolerance, config.patience, model.use_context)
    dataset = training_dataset(inputs, labels, config.batch_size, seed)
    callbacks = [timer] + ([watcher] if watcher else [])
    start = time.perf_counter()
    history = model.fit(dataset, epochs=epochs, callbacks=callbacks, verbose=verbose).history
    wall_s, best = time.perf_counter() - start, watcher.best_epoch if watcher else len(history["loss"])
    val = (watcher.rmse[best - 1], watcher.final_recall) if watcher else (None, None)
    throughput = steady_throughput(len(labels), timer.epoch_s)
    return MultitaskResult(model, weights, history, best, *val, wall_s, timer.epoch_s, throughput, len(labels))


def train_multitask_model(
    config: MultitaskConfig, weights, data: MultitaskData, seed: int, verbose=0
) -> MultitaskResult:
    """Fit a fresh joint model on the train ratings, early-stopped on val (`MultitaskMonitor`, `chosen_epoch`).

    Batches of `config.batch_size` ratings, reshuffled every epoch (`rating_training.training_dataset`):
    each is a batch of rating examples and, for the retrieval head, of (user, movie) positives
    whose movies are each other's in-batch negatives.

    Args:
        weights: (w_rating, w_retrieval), e.g. (1, 0.1) or "1,0.1".
        seed: seeds initialisation and shuffling: the same seed gives the same model.
    """
    return _fit(config, weights, data, data.split("train"), seed, config.max_epochs, True, verbose)


def fit_for_epochs(config: MultitaskConfig, weights, data: MultitaskData, splits, seed: int, epochs: int):
    """A fresh model fitted on the ratings of `splits` for exactly `epochs` (no early stopping, nothing read on val).

    Raises ValueError for epochs < 1.
    """
    if epochs < 1:
        raise ValueError(f"fit for at least one epoch, got epochs={epochs}")
    return _fit(config, weights, data, data.split(*splits), seed, epochs, False, 0)


def refit_on_train_val(config: MultitaskConfig, weights, data: MultitaskData, seed: int, epochs: int):
    """A fresh model fitted on the train and val ratings for `epochs` (the early-stopped run's `best_epoch`).

    The rating models' protocol (and the two-tower's `two_tower_trainval` row): chosen on val,
    refitted on train + val, scored once on test. The encoder stays the one fitted on train.
    Raises ValueError for epochs < 1.
    """
    return fit_for_epochs(config, weights, data, ("train", "val"), seed, epochs)


def specialists(data: MultitaskData, users: pd.DataFrame, movies: pd.DataFrame, require) -> dict[str, float]:
    """The two specialists' numbers on `data`, the references of the sweep's choice and figure.

    val_rmse: the rating model fitted on train (`rating_model_train`, unclipped as its early stopping);
    rmse: its refit (`rating_model`, clipped); val_ and test recall_at_100: the served two-tower
    (`retrieval_model`, fitted on train) as trained, without its popularity prior (the joint model
    has none: equal footing). `require` is `Run.require` (artifact name -> path).
    """
    out = {}
    for key, name, split in (("val_rmse", "rating_model_train", "val"), ("rmse", "rating_model", "test")):
        model, encoder = load_rating_model(require(name))
        frame, tables = data.split(split), (encoder.user_table(users), encoder.movie_table(movies))
        predicted = predict(model, encoder.example_inputs(frame, *tables))
        out[key] = metrics.rmse(frame["rating"].to_numpy(), predicted, None if split == "val" else data.scale)
    model, encoder = load_retrieval_model(require("retrieval_model"))
    tables = encoder.user_table(users), encoder.movie_table(movies)
    with without_popularity_prior(model):
        scores = full_ranking_scores(model, encoder, *tables, data.matrices.user_ids, data.matrices.movie_ids)
    for key, split in (("val_recall_at_100", "val"), ("recall_at_100", "test")):
        out[key] = float(evaluate_scores(scores, data.matrices, split, ks=(100,))["recall_at_100"])
    return out


def evaluate_on_test(model: MultitaskModel, data: MultitaskData) -> dict[str, float]:
    """Test RMSE and MAE (clipped to the scale) and full-ranking Recall@10/@100, NDCG@10 (train + val excluded)."""
    test = data.split("test")
    inputs = data.encoder.example_inputs(test, data.user_table, data.movie_table, model.use_context).flat()
    predictions, ratings = multitask_model.predict_ratings(model, inputs), test["rating"].to_numpy()
    ranking = evaluate_scores(ranking_scores(model, data), data.matrices, "test", ks=(10, 100))
    scores = {name: fn(ratings, predictions, data.scale) for name, fn in (("rmse", metrics.rmse), ("mae", metrics.mae))}
    return {**scores, **{name: float(ranking[name]) for name in ("recall_at_10", "recall_at_100", "ndcg_at_10")}}
