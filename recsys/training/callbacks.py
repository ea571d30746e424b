"""Keras callbacks and timing shared by the trainers: epoch timer, early stopping on val, full-ranking monitor."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import tensorflow as tf

if TYPE_CHECKING:
    from recsys.evaluation.full_ranking import SplitMatrices
    from recsys.evaluation.score_blocks import RowScores


class EpochTimer(tf.keras.callbacks.Callback):
    """Wall time of each epoch, to report steady-state throughput (the first epoch also traces)."""

    def on_train_begin(self, logs=None):
        self.epoch_s: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_s.append(time.perf_counter() - self._start)


def steady_throughput(n_examples: int, epoch_s: list[float]) -> float:
    """Examples per second of the median epoch after the first (which also traces the graph)."""
    steady = epoch_s[1:] or epoch_s
    return float(n_examples / np.median(steady))


class ValidationEarlyStopping(tf.keras.callbacks.Callback):
    """Early stopping on val RMSE, restoring the best epoch's weights at the end.

    Val RMSE is one traced call over the whole validation set, logged as
    `val_root_mean_squared_error` (predictions unclipped: the loss the model minimises). Keras's
    own pair (validation_data + EarlyStopping with restore_best_weights) did the same but cost
    about 0.7 s per improving epoch on ml-1m-half, mostly in `model.get_weights()`: 43 s instead
    of 26 s for 24 epochs.

    Args:
        inputs, ratings: the validation split.
        patience: epochs without improvement before stopping.
    """

    def __init__(self, inputs: dict[str, np.ndarray], ratings: np.ndarray, patience: int):
        super().__init__()
        self.inputs = {name: tf.constant(value) for name, value in inputs.items()}
        self.ratings = np.asarray(ratings, dtype=np.float32)
        self.patience = patience
        self._predict = None

    def on_train_begin(self, logs=None):
        self.best_rmse, self.best_weights, self.wait = np.inf, None, 0

    def on_epoch_end(self, epoch, logs=None):
        if self._predict is None:
            model = self.model
            self._predict = tf.function(lambda features: model(features, training=False))
        predictions = self._predict(self.inputs).numpy().reshape(-1)
        rmse = float(np.sqrt(np.mean((predictions - self.ratings) ** 2)))
        if logs is not None:
            logs["val_root_mean_squared_error"] = rmse
        if rmse < self.best_rmse:
            self.best_rmse, self.wait = rmse, 0
            self.best_weights = [variable.numpy() for variable in self.model.weights]
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            for variable, value in zip(self.model.weights, self.best_weights, strict=True):
                variable.assign(value)


class FullRankingMonitor(tf.keras.callbacks.Callback):
    """Val recall@k of the full-ranking protocol after each epoch, logged as `<split>_recall_at_<k>`.

    Costs one pass of each tower over users and catalogue per epoch (well under a second on
    ML-1M), so the number of epochs can be chosen on val with the metric that is reported.

    Args:
        score_users: the model -> (n_users, n_movies) scores (an array or a `score_blocks.RowScores`),
            rows and columns as in `matrices`.
        matrices: the split matrices (rows = users, columns = the catalogue).
        split: the held-out split to score ("val" during selection).
        k: list length.
    """

    def __init__(
        self,
        score_users: Callable[[tf.keras.Model], np.ndarray | RowScores],
        matrices: SplitMatrices,
        split: str = "val",
        k: int = 100,
    ):
        super().__init__()
        self.score_users, self.matrices, self.split, self.k = score_users, matrices, split, k

    @property
    def key(self) -> str:
        return f"{self.split}_recall_at_{self.k}"

    def on_epoch_end(self, epoch, logs=None):
        from recsys.evaluation.full_ranking import evaluate_scores

        result = evaluate_scores(self.score_users(self.model), self.matrices, self.split, ks=(self.k,))
        if logs is not None:
            logs[self.key] = result[f"recall_at_{self.k}"]


def stop_at_best_recall(monitor: FullRankingMonitor, patience: int) -> list[tf.keras.callbacks.Callback]:
    """The monitor and early stopping on its recall, keeping the best epoch's weights."""
    return [
        monitor,
        tf.keras.callbacks.EarlyStopping(monitor=monitor.key, mode="max", patience=patience, restore_best_weights=True),
    ]


def history_table(history: dict[str, list[float]], rename: dict[str, str] | None = None) -> pd.DataFrame:
    """A training run's per-epoch logs as one compact table (epoch from 1), instead of Keras's epoch lines."""
    table = pd.DataFrame(history).rename(columns=rename or {})
    table.index = pd.RangeIndex(1, len(table) + 1, name="epoch")
    return table
