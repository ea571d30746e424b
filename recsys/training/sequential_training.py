"""Fitting the sequential retriever: training windows, early stopping on full-ranking val recall."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tensorflow as tf

from recsys.core.seeding import set_seed
from recsys.core.tables import require_columns
from recsys.evaluation.full_ranking import SplitMatrices
from recsys.features.sequences import latest_histories
from recsys.models.configs import SequentialConfig
from recsys.models.sequential_model import (
    MovieVocabulary,
    SequentialRetrievalModel,
    full_ranking_scores,
    movie_shares,
    training_windows,
)
from recsys.training.callbacks import EpochTimer, FullRankingMonitor, steady_throughput, stop_at_best_recall


@dataclass
class SequentialTrainingResult:
    """A fitted sequential retriever with how it was trained (as `RetrievalTrainingResult`).

    Attributes:
        monitored: the history key of the early-stopping metric (`val_recall_at_<k>`), None without matrices.
    """

    model: SequentialRetrievalModel
    history: dict
    wall_s: float
    examples_per_s: float
    n_targets: int
    monitored: str | None


def train_sequential_model(
    config: SequentialConfig,
    vocabulary: MovieVocabulary,
    train_interactions: pd.DataFrame,
    seed: int,
    matrices: SplitMatrices | None = None,
    verbose: int = 0,
) -> SequentialTrainingResult:
    """Fit a fresh sequential retriever on the training interactions (user_id, movie_id, position).

    With `matrices`, val Recall@100 (Recall@catalogue size if smaller; full ranking, queries from each user's latest train movies,
    train movies excluded) is logged after each epoch; training stops when it has not improved
    for `config.patience` epochs and the best epoch's weights are restored.
    """
    require_columns(train_interactions, ("user_id", "movie_id", "position"), "train_interactions", ValueError)
    if matrices is not None and not np.array_equal(matrices.movie_ids, vocabulary.movie_ids):
        raise ValueError("the split matrices' columns must be the vocabulary's catalogue, in its order")
    set_seed(seed)
    train_users = train_interactions["user_id"].to_numpy()
    train_positions = train_interactions["position"].to_numpy()
    encoded = vocabulary.encode(train_interactions["movie_id"].to_numpy())
    inputs = training_windows(train_users, train_positions, encoded, config)
    model = SequentialRetrievalModel(len(vocabulary), config)
    model.movie_share.assign(movie_shares(encoded, len(vocabulary)))
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    timer = EpochTimer()
    callbacks: list = [timer]
    if matrices is not None:
        val_histories = latest_histories(
            matrices.user_ids, train_users, train_positions, encoded, config.history_length
        )
        k = min(100, len(vocabulary))
        monitor = FullRankingMonitor(lambda m: full_ranking_scores(m, val_histories), matrices, "val", k)
        callbacks += stop_at_best_recall(monitor, config.patience)
    start = time.perf_counter()
    history = model.fit(
        inputs, batch_size=config.batch_size, epochs=config.epochs, shuffle=True, callbacks=callbacks, verbose=verbose
    )
    wall_s = time.perf_counter() - start
    n_targets = int(inputs["loss_mask"].sum())
    throughput = steady_throughput(n_targets, timer.epoch_s)
    monitored = callbacks[1].key if matrices is not None else None
    return SequentialTrainingResult(model, history.history, wall_s, throughput, n_targets, monitored)
