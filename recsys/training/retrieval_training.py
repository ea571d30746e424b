"""Training the two-tower retrieval model: positives, logQ probabilities, negatives, early stopping, variants."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tensorflow as tf

from recsys.core.seeding import set_seed
from recsys.evaluation.full_ranking import RETRIEVAL_KS, SplitMatrices, evaluate_scores, per_user_scores
from recsys.evaluation.score_blocks import RowScores
from recsys.features.encoding import MOVIE_ROW, FeatureEncoder
from recsys.models.configs import RetrievalConfig
from recsys.models.negative_sampling import NegativeCatalogue
from recsys.models.retrieval_model import (
    SAMPLING_PROBABILITY,
    TwoTowerRetrievalModel,
    build_retrieval_model,
    full_ranking_scores,
    model_inputs,
    movie_log_shares,
    set_popularity_prior,
    without_popularity_prior,
)
from recsys.training.callbacks import EpochTimer, FullRankingMonitor, steady_throughput, stop_at_best_recall
from recsys.training.curves import TrainingCurve
from recsys.training.retrieval_inputs import RetrievalInputs, positives


def candidate_sampling_probability(train_positives: pd.DataFrame) -> pd.Series:
    """Each movie's share of the training positives: how likely it is to be an in-batch negative.

    Returns:
        Series indexed by movie_id, summing to 1 (movies without positives are absent).
    """
    if train_positives.empty:
        raise ValueError("no training positives: check retrieval.min_rating and the train split")
    counts = train_positives["movie_id"].value_counts()
    return counts / counts.sum()


def training_inputs(
    config: RetrievalConfig,
    encoder: FeatureEncoder,
    train_interactions: pd.DataFrame,
    user_table: pd.DataFrame,
    movie_table: pd.DataFrame,
) -> dict[str, np.ndarray]:
    """Model inputs of every training positive, with its movie's sampling probability for logQ.

    `training_examples` with each positive's movie inputs gathered through its movie row (the
    distributed workers' batches carry them per positive).
    """
    examples, movies = training_examples(config, encoder, train_interactions, user_table, movie_table)
    rows = examples.pop(MOVIE_ROW)
    return {**examples, **{name: value[rows] for name, value in movies.items()}}


def training_examples(
    config: RetrievalConfig,
    encoder: FeatureEncoder,
    train_interactions: pd.DataFrame,
    user_table: pd.DataFrame,
    movie_table: pd.DataFrame,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`training_inputs` with the movie features kept once per movie: (per-positive inputs, per-movie inputs).

    Each positive carries its user and context inputs, its movie's id (the in-batch softmax's
    accidental hits and the fit record read it), `MOVIE_ROW` (its movie's row of the per-movie
    inputs, which the model gathers per batch: `TwoTowerRetrievalModel.set_movie_rows`) and its
    sampling probability: 20 bytes a positive instead of 68 with title tokens and genre flags.
    Gathered, they are `training_inputs` exactly.
    """
    train = positives(train_interactions, config.min_rating)
    probability = candidate_sampling_probability(train)
    user_names, movie_names, context_names = model_inputs(config, encoder.cardinalities())
    example = encoder.example_inputs(train, user_table, movie_table, context=bool(context_names))
    rows = example.examples[MOVIE_ROW]
    examples = {name: example.examples[name] for name in (*user_names, *context_names)}
    examples["movie_id"] = example.movies["movie_id"][rows]
    examples[MOVIE_ROW] = rows
    examples[SAMPLING_PROBABILITY] = probability.loc[train["movie_id"]].to_numpy(np.float32)
    return examples, {name: example.movies[name] for name in movie_names if name != "movie_id"}


def negative_catalogue(
    config: RetrievalConfig,
    encoder: FeatureEncoder,
    train_interactions: pd.DataFrame,
    movie_table: pd.DataFrame,
    seed: int,
) -> NegativeCatalogue | None:
    """The movies `config.negatives` draws negatives from, or None for "inbatch_logq" (it draws none).

    Every movie of `movie_table` with an id row of its own (`NegativeCatalogue`), with its share of
    the positives of `train_interactions` (those the model is fitted on: the same shares as the
    examples' `candidate_sampling_probability`).
    """
    if config.negatives == "inbatch_logq":
        return None
    share = candidate_sampling_probability(positives(train_interactions, config.min_rating))
    known = movie_table[movie_table["movie_id_idx"].to_numpy() > 0]
    movie_names = model_inputs(config, encoder.cardinalities())[1]
    inputs = encoder.movie_inputs(known)
    shares = share.reindex(known.index, fill_value=0.0).to_numpy(np.float32)
    return NegativeCatalogue({name: inputs[name] for name in movie_names}, shares, seed)


def full_ranking_monitor(
    encoder: FeatureEncoder,
    user_table: pd.DataFrame,
    movie_table: pd.DataFrame,
    matrices: SplitMatrices,
    split: str = "val",
    k: int = 100,
) -> FullRankingMonitor:
    """A callback logging `<split>_recall_at_<k>` of the model being trained after each epoch (full ranking)."""

    def score_users(model: TwoTowerRetrievalModel) -> RowScores:
        return full_ranking_scores(model, encoder, user_table, movie_table, matrices.user_ids, matrices.movie_ids)

    return FullRankingMonitor(score_users, matrices, split, k)


@dataclass
class RetrievalTrainingResult:
    """A fitted retrieval model with how it was trained.

    Attributes:
        model: the fitted model.
        history: per-epoch loss (and monitored val recall, if any).
        wall_s: wall time of `fit`.
        examples_per_s: steady-state throughput (median epoch after the first).
        n_positives: training examples per epoch.
    """

    model: TwoTowerRetrievalModel
    history: dict
    wall_s: float
    examples_per_s: float
    n_positives: int


def train_retrieval_model(
    config: RetrievalConfig,
    encoder: FeatureEncoder,
    train_interactions: pd.DataFrame,
    user_table: pd.DataFrame,
    movie_table: pd.DataFrame,
    seed: int,
    epochs: int | None = None,
    monitor: FullRankingMonitor | None = None,
    verbose: int = 0,
) -> RetrievalTrainingResult:
    """Fit a fresh retrieval model on the training positives.

    Examples are tensors that Keras reshuffles every epoch, so each epoch pairs every user
    with new in-batch negatives.

    Args:
        config: hyper-parameters.
        encoder: the FeatureEncoder fitted on the same training interactions.
        train_interactions: interactions to learn from (train, or train + val for the refit).
        user_table, movie_table: encoded feature tables (encoder.user_table/movie_table).
        seed: seeds initialisation and shuffling, so a rerun gives the same model.
        epochs: overrides `config.epochs` (the refit uses the epochs chosen on val).
        monitor: optional FullRankingMonitor (`full_ranking_monitor`) recording val recall after each
            epoch; with it, training stops when that recall has not improved for `config.patience`
            epochs and the weights of the best epoch are restored (early stopping on the reported metric).
        verbose: Keras's per-epoch lines (0: none; `callbacks.history_table` shows the run as a table).
    """
    set_seed(seed)
    arrays, movies = training_examples(config, encoder, train_interactions, user_table, movie_table)
    # Keras turns numpy inputs into tensors before training and keeps both alive through `fit` (and
    # the tensors after it); converting them here, one array at a time, holds the examples once
    inputs = {name: tf.convert_to_tensor(arrays.pop(name)) for name in list(arrays)}
    catalogue = negative_catalogue(config, encoder, train_interactions, movie_table, seed)
    model = build_retrieval_model(encoder.cardinalities(), config, catalogue)
    model.set_movie_rows(movies)
    timer = EpochTimer()
    callbacks: list = [timer] + (stop_at_best_recall(monitor, config.patience) if monitor is not None else [])
    start = time.perf_counter()
    history = model.fit(
        inputs,
        batch_size=config.batch_size,
        epochs=epochs or config.epochs,
        shuffle=True,
        callbacks=callbacks,
        verbose=verbose,
    )
    wall_s = time.perf_counter() - start
    model.set_movie_rows(None)
    n = int(inputs["user_id"].shape[0])
    return RetrievalTrainingResult(model, history.history, wall_s, steady_throughput(n, timer.epoch_s), n)


def refit_on_train_val(
    config: RetrievalConfig, inputs: RetrievalInputs, seed: int, epochs: int
) -> RetrievalTrainingResult:
    """A fresh model fitted on the train and val positives for `epochs`, without early stopping.

    The rating models' protocol applied to retrieval: the epochs are chosen on val (the early-stopped
    run's best epoch, `TrainingCurve.best_epoch`), then the same config and seed learn from train + val,
    so at test the user vectors have read the same history as EASE and the sequential query
    (train + val). The encoder stays the one fitted on train (as for the rating model's refit):
    a movie first rated in val shares the unknown id row.

    Args:
        inputs: the run's `RetrievalInputs`: its positives with their `split` (test is left out here),
            the encoder fitted on train and the encoded tables.
        epochs: the number of epochs to train (>= 1).

    Raises:
        ValueError: epochs < 1, or no positive in train or val.
    """
    if epochs < 1:
        raise ValueError(f"refit for at least one epoch, got epochs={epochs}")
    before_test = inputs.positives[inputs.positives["split"].isin(("train", "val"))]
    if not before_test["split"].eq("val").any() or not before_test["split"].eq("train").any():
        raise ValueError("the refit needs train and val positives: check the split and retrieval.min_rating")
    tables = inputs.user_table, inputs.movie_table
    return train_retrieval_model(config, inputs.encoder, before_test, *tables, seed, epochs=epochs)


@dataclass
class NegativesComparison:
    """The retrieval model trained once per `negatives` variant, and the variant val chose.

    Attributes:
        configs: each variant's config (`RetrievalConfig.variants`), in the order given.
        trained: each variant's training result.
        curves: each variant's training curve (loss and the monitored val recall per epoch).
        chosen: the variant with the best monitored val recall over its epochs (the first on a tie).
        prior: the popularity prior's choice on val for the chosen model, once `choose_popularity_prior` has run.
    """

    configs: dict[str, RetrievalConfig]
    trained: dict[str, RetrievalTrainingResult]
    curves: dict[str, TrainingCurve]
    chosen: str
    prior: PopularityPriorChoice | None = None

    def choose_popularity_prior(
        self, fitted_positives: pd.DataFrame, inputs: RetrievalInputs, grid: list[float], monitor: FullRankingMonitor
    ) -> PopularityPriorChoice:
        """`choose_popularity_prior` for the chosen variant's model (the served two-tower), kept as `prior`."""
        self.prior = choose_popularity_prior(self.trained[self.chosen].model, fitted_positives, inputs, grid, monitor)
        return self.prior

    @property
    def served_prior(self) -> float:
        """The served model's popularity prior beta: the `prior` choice's (0 before or without one)."""
        return 0.0 if self.prior is None else self.prior.beta

    @property
    def best(self) -> tuple[RetrievalConfig, RetrievalTrainingResult, TrainingCurve]:
        """(config, training result, curve) of the chosen variant: the served two-tower."""
        return self.configs[self.chosen], self.trained[self.chosen], self.curves[self.chosen]

    def others(self) -> dict[str, TrainingCurve]:
        """The curves of the variants not chosen (drawn beside the chosen one's)."""
        return {name: curve for name, curve in self.curves.items() if name != self.chosen}

    def per_user(
        self,
        score_users: Callable,
        matrices: SplitMatrices,
        split: str = "test",
        prefix: str = "two_tower",
        ks: Sequence[int] = RETRIEVAL_KS,
    ) -> dict[str, pd.DataFrame]:
        """Each variant's per-user metrics on `split` as trained, `<prefix>_<variant>`, and the served model's as `<prefix>`.

        The served model is the chosen variant with its popularity prior (`choose_popularity_prior`);
        without one, its rows are the chosen variant's.

        Args:
            score_users: a model -> its full-ranking scores (`FullRankingMonitor.score_users`).
            ks: the list lengths of the metrics.
        """
        served = self.trained[self.chosen].model
        with_prior = per_user_scores(score_users(served), matrices, split, ks) if self.served_prior else None
        with without_popularity_prior(served):  # the chosen variant as trained
            rows = {
                f"{prefix}_{name}": per_user_scores(score_users(result.model), matrices, split, ks)
                for name, result in self.trained.items()
            }
        return {prefix: rows[f"{prefix}_{self.chosen}"] if with_prior is None else with_prior, **rows}

    def pairs(self, prefix: str = "two_tower") -> list[tuple[str, str]]:
        """(`<prefix>_<variant>`, `<prefix>`) for each variant as trained against the served model, to be shown
        with a paired interval (val chose; test only says whether the gap is a shown difference): every variant
        not chosen, and the chosen one too when the served model adds a popularity prior to it."""
        return [(f"{prefix}_{name}", prefix) for name in self.curves if name != self.chosen or self.served_prior]

    def table(self) -> pd.DataFrame:
        """One row per variant: best val recall, its epoch, epochs run, wall time and seconds per epoch."""
        rows = {
            name: {
                curve.monitored: float(curve.table[curve.monitored].max()),
                "best_epoch": curve.best_epoch,
                "epochs": len(curve.table),
                "train_s": self.trained[name].wall_s,
                "s_per_epoch": self.trained[name].wall_s / len(curve.table),
            }
            for name, curve in self.curves.items()
        }
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("negatives")

    def metrics(self, prefix: str = "two_tower") -> dict[str, float | int | str]:
        """`<prefix>_negatives` (the chosen variant), `<prefix>_popularity_prior` (the served model's beta) and, per
        variant, `<monitored>_<prefix>_<variant>` (its best val recall), `<prefix>_<variant>_best_epoch` and
        `<prefix>_<variant>_train_s`. With a `prior` choice, also `<prefix>_list_popularity_prior` (the best beta by
        val Recall@10, a top-10 list's) and each beta's `val_<metric>_<prefix>_prior_<beta>` (Recall@10, @100)."""
        out: dict[str, float | int | str] = {f"{prefix}_negatives": self.chosen}
        out[f"{prefix}_popularity_prior"] = self.served_prior
        if self.prior is not None:
            out[f"{prefix}_list_popularity_prior"] = self.prior.best("recall_at_10")
            for metric in ("recall_at_10", "recall_at_100"):
                for beta, value in self.prior.table[metric].items():
                    out[f"val_{metric}_{prefix}_prior_{beta:g}".replace(".", "p")] = float(value)
        for name, curve in self.curves.items():
            out[f"{curve.monitored}_{prefix}_{name}"] = float(curve.table[curve.monitored].max())
            out.update(curve.metrics(f"{prefix}_{name}", self.trained[name].wall_s))
        return out


def compare_negatives(
    variants: dict[str, RetrievalConfig], fit: Callable[[RetrievalConfig], RetrievalTrainingResult], monitored: str
) -> NegativesComparison:
    """Train one model per variant with `fit` (early-stopped on val) and choose the best by `monitored`.

    Args:
        variants: `RetrievalConfig.variants(params["retrieval"])`.
        fit: a config -> its training result, early-stopped on the monitored val recall (in this
            process, `train_retrieval_model` with a monitor, or on the workers, `jobs.train_retrieval`;
            `jobs.retrieval_fitter` picks by the `distribute` params).
        monitored: the history key early stopping watched (`FullRankingMonitor.key`).
    """
    if not variants:
        raise ValueError("no retrieval.negatives variant to train")
    trained = {name: fit(config) for name, config in variants.items()}
    curves = {name: TrainingCurve.of(result.history, monitored) for name, result in trained.items()}
    best = {name: float(curve.table[monitored].max()) for name, curve in curves.items()}
    return NegativesComparison(dict(variants), trained, curves, max(best, key=best.__getitem__))


# ---- the popularity prior ----------------------------------------------------------------------------


def positives_log_shares(
    fitted_positives: pd.DataFrame, movie_table: pd.DataFrame, encoder: FeatureEncoder
) -> np.ndarray:
    """`movie_log_shares` of the positives a model was fitted on, over its encoder's movie id rows.

    Raises:
        KeyError: a positive's movie is not in `movie_table` (the run's encoded movies).
    """
    positions = movie_table.index.get_indexer(fitted_positives["movie_id"])
    if (positions < 0).any():
        missing = fitted_positives["movie_id"].to_numpy()[positions < 0][:5].tolist()
        raise KeyError(f"positives name movies {missing} that are not in the movie table")
    return movie_log_shares(movie_table["movie_id_idx"].to_numpy()[positions], encoder.cardinalities()["movie_id"])


@dataclass
class PopularityPriorChoice:
    """The popularity prior's weights tried on val: each one's val metrics, and the best beta for a metric.

    Attributes:
        table: one row per beta (in the grid's order): the val metrics of the model with that prior.
        metric: what chooses the served model's `beta` (a candidate generator's: Recall@100).
    """

    table: pd.DataFrame
    metric: str

    @property
    def beta(self) -> float:
        """The served model's weight: the best by `metric`."""
        return self.best(self.metric)

    def best(self, metric: str) -> float:
        """The beta with the best val `metric` (the smallest on a tie)."""
        values = self.table[metric]
        return float(values[values == values.max()].index.min())

    def set_on(
        self, model: TwoTowerRetrievalModel, fitted_positives: pd.DataFrame, inputs: RetrievalInputs, metric: str
    ) -> float:
        """Give another model (the refit on train + val) the best beta for `metric`, over the shares of the positives
        it was fitted on; return that beta."""
        beta = self.best(metric)
        set_popularity_prior(model, positives_log_shares(fitted_positives, inputs.movie_table, inputs.encoder), beta)
        return beta


def choose_popularity_prior(
    model: TwoTowerRetrievalModel,
    fitted_positives: pd.DataFrame,
    inputs: RetrievalInputs,
    grid: list[float],
    monitor: FullRankingMonitor,
    metric: str = "recall_at_100",
    ks: tuple[int, ...] = (10, 100),
) -> PopularityPriorChoice:
    """Try each beta of `grid` as `model`'s popularity prior on val, keep the best by `metric`, set it on `model`.

    The default metric is the served two-tower's job: 100 candidates for the ranker, judged by
    Recall@100 (as EASE's lambda and the early stopping are). A top-10 list takes its own beta from
    the same table (`PopularityPriorChoice.set_on(..., "recall_at_10")`).
    Scored as served: through the vectors with the prior (the `monitor`'s full ranking: seen movies
    excluded, every user with val movies). Only val may choose: a monitor of another split is refused.

    Args:
        fitted_positives: the positives the model was fitted on (their shares are the prior's).
        inputs: the run's `RetrievalInputs` (movie table and encoder).
        grid: the weights (`retrieval.popularity_prior_grid`), each >= 0.
        ks: the list lengths of the table's metrics (`metric` among them).
    """
    split, matrices = monitor.split, monitor.matrices
    if split != "val":
        raise ValueError(f"the popularity prior is chosen on val, not {split!r}")
    if not grid:
        raise ValueError("no popularity prior weight to try: retrieval.popularity_prior_grid is empty")
    log_shares = positives_log_shares(fitted_positives, inputs.movie_table, inputs.encoder)
    rows = {}
    for beta in grid:
        set_popularity_prior(model, log_shares, float(beta))
        rows[float(beta)] = evaluate_scores(monitor.score_users(model), matrices, split, ks)
    choice = PopularityPriorChoice(pd.DataFrame.from_dict(rows, orient="index").rename_axis("beta"), metric)
    set_popularity_prior(model, log_shares, choice.beta)
    return choice
