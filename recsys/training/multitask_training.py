"""Training the joint multitask model: early stopping on val RMSE and Recall@100, the refit, the weight sweep and its choice."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
from recsys.models.retrieval_model import SAMPLING_PROBABILITY, full_ranking_scores, load_retrieval_model
from recsys.training.callbacks import EpochTimer, steady_throughput
from recsys.training.rating_training import inputs_fit_record, load_rating_model, training_dataset
from recsys.training.rating_training import predict_ratings as predict
from recsys.training.retrieval_training import candidate_sampling_probability

RMSE_KEY, RECALL_KEY = "val_root_mean_squared_error", "val_recall_at_100"
RECALL_SHARE = 0.98  # the target: at least this share of the retrieval specialist's Recall@100


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


def refit_on_train_val(config: MultitaskConfig, weights, data: MultitaskData, seed: int, epochs: int):
    """A fresh model fitted on the train and val ratings for `epochs` (the early-stopped run's `best_epoch`).

    The rating models' protocol (and the two-tower's `two_tower_trainval` row): chosen on val,
    refitted on train + val, scored once on test. The encoder stays the one fitted on train.
    Raises ValueError for epochs < 1.
    """
    if epochs < 1:
        raise ValueError(f"refit for at least one epoch, got epochs={epochs}")
    return _fit(config, weights, data, data.split("train", "val"), seed, epochs, False, 0)


def specialists(data: MultitaskData, users: pd.DataFrame, movies: pd.DataFrame, require) -> dict[str, float]:
    """The two specialists' numbers on `data`, the references of the sweep's choice and figure.

    val_rmse: the rating model fitted on train (`rating_model_train`, unclipped as its early stopping);
    rmse: its refit (`rating_model`, clipped); val_ and test recall_at_100: the served two-tower
    (`retrieval_model`, fitted on train). `require` is `Run.require` (artifact name -> path).
    """
    out = {}
    for key, name, split in (("val_rmse", "rating_model_train", "val"), ("rmse", "rating_model", "test")):
        model, encoder = load_rating_model(require(name))
        frame, tables = data.split(split), (encoder.user_table(users), encoder.movie_table(movies))
        predicted = predict(model, encoder.example_inputs(frame, *tables))
        out[key] = metrics.rmse(frame["rating"].to_numpy(), predicted, None if split == "val" else data.scale)
    model, encoder = load_retrieval_model(require("retrieval_model"))
    tables = encoder.user_table(users), encoder.movie_table(movies)
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


@dataclass
class SweepResult:
    """The weight sweep: a row per setting, and the fits behind them.

    `table` is indexed by setting ("w_rating,w_retrieval"): w_rating, w_retrieval, best_epoch, epochs,
    train_s, val_rmse, val_recall_at_100 and, scored on test, test_fitted_on and the test rmse, mae,
    recall_at_10, recall_at_100, ndcg_at_10. `fits`: setting -> its early-stopped fit on train;
    `refits`: -> its refit on train + val (when the sweep refits).
    """

    table: pd.DataFrame
    fits: dict[str, MultitaskResult]
    refits: dict[str, MultitaskResult]


def sweep(weight_pairs: Sequence, config: MultitaskConfig, data: MultitaskData, seed: int, test=True, refit=False):
    """Train one joint model per (w_rating, w_retrieval) setting on train, early-stopped on val, all with `seed`.

    Args:
        weight_pairs: the settings, e.g. [(1, 0), (0, 1), (1, 0.1)]; each checked by `TaskWeights`.
        test: also score each setting on test (once; nothing is chosen on it).
        refit: score test with each setting's refit on train + val for its kept epochs (the rating
            models' protocol; about twice the training time), instead of its fit on train.

    Raises:
        ValueError: no settings, a setting given twice, or invalid weights.
    """
    settings = [TaskWeights.of(pair) for pair in weight_pairs]
    labels = [w.label for w in settings]
    if not settings or len(set(labels)) != len(labels):
        raise ValueError(f"the sweep needs distinct weight pairs, got {labels}")
    rows, fits, refits = [], {}, {}
    for w in settings:
        fit = fits[w.label] = train_multitask_model(config, w, data, seed)
        row = {"setting": w.label, "w_rating": w.rating, "w_retrieval": w.retrieval, "best_epoch": fit.best_epoch}
        row.update(epochs=len(fit.history["loss"]), train_s=fit.wall_s, val_rmse=fit.val_rmse)
        row.update(val_recall_at_100=fit.val_recall_at_100)
        if test:
            scored = refits[w.label] = refit_on_train_val(config, w, data, seed, fit.best_epoch) if refit else fit
            row.update(test_fitted_on="train+val" if refit else "train", **evaluate_on_test(scored.model, data))
        rows.append(row)
    return SweepResult(pd.DataFrame(rows).set_index("setting"), fits, refits if refit else {})


@dataclass
class SweepChoice:
    """The setting chosen on val (`label`, `weights`), whether it met the RMSE tolerance, why, and the table.

    `table` is the sweep table with val_rmse_gap (to the rating specialist), val_recall_ratio (to
    the retrieval specialist), within_rmse_tolerance and meets_recall_target (RECALL_SHARE).
    """

    label: str
    weights: TaskWeights
    qualified: bool
    reason: str
    table: pd.DataFrame


def choose_on_val(
    table: pd.DataFrame,
    rmse_tolerance: float = 0.005,
    specialist_val_rmse: float | None = None,
    specialist_val_recall: float | None = None,
) -> SweepChoice:
    """The setting to keep: within `rmse_tolerance` val RMSE of the rating specialist, the highest val Recall@100.

    Ties go to the lower val RMSE, then to the earlier row. If no setting qualifies, the lowest val
    RMSE is chosen (the closest to qualifying), and the reason says so.

    Args:
        table: `SweepResult.table`.
        specialist_val_rmse: the rating specialist's val RMSE; None takes the sweep's rating-only row.
        specialist_val_recall: the retrieval specialist's val Recall@100; None takes the retrieval-only row.

    Raises:
        ValueError: a specialist is not given and the sweep has no row for it (or no rows at all).
    """
    rating_only, retrieval_only = table[table["w_retrieval"] == 0], table[table["w_rating"] == 0]
    if (specialist_val_rmse is None and rating_only.empty) or (specialist_val_recall is None and retrieval_only.empty):
        raise ValueError(
            "choose_on_val needs each specialist's val value, given or from a sweep row of its own "
            "(w_retrieval = 0 for the rating specialist, w_rating = 0 for the retrieval specialist)"
        )
    rmse_ref = float(rating_only["val_rmse"].iloc[0] if specialist_val_rmse is None else specialist_val_rmse)
    recall_ref = float(
        retrieval_only["val_recall_at_100"].iloc[0] if specialist_val_recall is None else specialist_val_recall
    )
    out = table.assign(val_rmse_gap=table["val_rmse"] - rmse_ref)
    out["val_recall_ratio"] = out["val_recall_at_100"] / recall_ref
    out["within_rmse_tolerance"] = out["val_rmse_gap"] <= rmse_tolerance
    out["meets_recall_target"] = out["within_rmse_tolerance"] & (out["val_recall_ratio"] >= RECALL_SHARE)
    order = np.lexsort((np.arange(len(out)), out["val_rmse"].to_numpy(), -out["val_recall_at_100"].to_numpy()))
    qualifying = [i for i in order if out["within_rmse_tolerance"].iloc[i]]
    tolerance = f"within {rmse_tolerance} val RMSE of the rating specialist ({rmse_ref:.4f})"
    if qualifying:
        label = out.index[qualifying[0]]
        ratio = out.loc[label, "val_recall_ratio"]
        reason = f"{len(qualifying)} of {len(out)} settings lie {tolerance}; {label} has the highest val Recall@100 "
        reason += f"among them, {ratio:.3f} x the retrieval specialist's {recall_ref:.4f}"
    else:
        label = out["val_rmse"].idxmin()
        reason = f"no setting lies {tolerance}; fallback: {label}, the lowest val RMSE ({out['val_rmse'].min():.4f})"
    return SweepChoice(str(label), TaskWeights.of(str(label)), bool(qualifying), reason, out)


def tradeoff_figure(
    table, split="val", rating_specialist=None, retrieval_specialist=None, rmse_tolerance=0.005, chosen=None
):
    """RMSE against Recall@100, each setting a labelled point, the specialists as reference lines; a Figure.

    The rating specialist's RMSE is a vertical line (its tolerance dotted), the retrieval
    specialist's Recall@100 a horizontal one (RECALL_SHARE of it dotted): a setting in the shaded
    corner meets the target. A setting far to the right (a retrieval-only model rates poorly) is
    drawn at the edge, its RMSE in its label.

    Args:
        table: `SweepResult.table` (or `SweepChoice.table`).
        split: "val" (val_rmse, val_recall_at_100) or "test" (rmse, recall_at_100).
        rating_specialist, retrieval_specialist: their RMSE and Recall@100 on `split` (None: no line).
        chosen: the chosen setting, ringed.
    """
    import matplotlib.pyplot as plt

    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    columns = ("val_rmse", "val_recall_at_100") if split == "val" else ("rmse", "recall_at_100")
    x, y = (table[c].astype(float) for c in columns)
    low = min(x.min(), rating_specialist if rating_specialist is not None else np.inf)
    right = low + max(0.05, 4 * rmse_tolerance)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for label in table.index:
        px, far = min(x[label], right), x[label] > right
        ax.plot(px, y[label], ">" if far else "o", color="#4C72B0", ms=8)
        text = f"{label} (RMSE {x[label]:.2f})" if far else label
        ax.annotate(text, (px, y[label]), textcoords="offset points", xytext=(6, 6), fontsize=9)
        if label == chosen:
            ax.plot(px, y[label], "o", ms=16, mfc="none", mec="#C44E52", mew=2, label=f"chosen: {label}")
    rating, retrieval = rating_specialist, retrieval_specialist
    if rating is not None:
        ax.axvline(rating, color="#55A868", ls="--", label=f"rating specialist {rating:.4f}")
        ax.axvline(rating + rmse_tolerance, color="#55A868", ls=":", label=f"+ {rmse_tolerance}")
    if retrieval is not None:
        ax.axhline(retrieval, color="#8172B2", ls="--", label=f"retrieval specialist {retrieval:.4f}")
        ax.axhline(RECALL_SHARE * retrieval, color="#8172B2", ls=":", label=f"{RECALL_SHARE} x")
        if rating is not None:
            corner = [low - 2 * rmse_tolerance, rating + rmse_tolerance]
            ax.fill_between(corner, RECALL_SHARE * retrieval, max(y.max(), retrieval), alpha=0.1)
    ax.set_xlim(low - 2 * rmse_tolerance, right + 0.3 * (right - low))
    ax.set(xlabel=f"{split} RMSE (lower is better)", ylabel=f"{split} Recall@100 (higher is better)")
    ax.set_title(f"Joint model: one point per (w_rating, w_retrieval), {split} split")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def multitask_metrics(result: SweepResult, choice: SweepChoice, chosen_test: dict[str, float], epochs: int) -> dict:
    """metrics.json entries: the chosen setting's test scores (`<metric>_multitask`), its weights, and each setting's.

    Args:
        chosen_test: `evaluate_on_test` of the chosen setting's served model (its refit on train + val).
        epochs: the epochs it was trained for.
    """
    names = ("rmse", "mae", "recall_at_10", "recall_at_100", "ndcg_at_10")
    out: dict[str, Any] = {f"{name}_multitask": float(chosen_test[name]) for name in names}
    out.update(multitask_weights=choice.label, multitask_epochs=int(epochs), multitask_qualified=int(choice.qualified))
    for label, row in result.table.iterrows():
        key = TaskWeights.of(str(label)).key
        out[f"val_rmse_multitask_{key}"] = float(row["val_rmse"])
        out[f"val_recall_at_100_multitask_{key}"] = float(row["val_recall_at_100"])
        out[f"multitask_best_epoch_{key}"] = int(row["best_epoch"])
        out.update({f"{name}_multitask_{key}": float(row[name]) for name in names[:1] + names[2:] if name in row})
    return out
