"""A learned ranker in TFRS: a DCN-v2 network (cross layers + a deep tower) trained with a listwise softmax loss."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys.core.io import atomic_dir
from recsys.core.seeding import set_seed
from recsys.evaluation.full_ranking import grouped_ndcg
from recsys.ranking.ranker_features import CATEGORICAL
from recsys.ranking.ranker_state import read_state, write_state

_MASKED = -1e9  # the logit of a padding slot: no probability in the softmax


class _CandidateScorer(tf.keras.Model):
    """One candidate's features -> one score: embeddings of the codes, cross layers, a deep tower."""

    def __init__(self, cardinalities: Sequence[int], embedding_dim: int, cross_layers: int, deep_layers: Sequence[int]):
        super().__init__()
        self.embeddings = [tf.keras.layers.Embedding(n, embedding_dim) for n in cardinalities]
        self.crosses = [tfrs.layers.dcn.Cross(kernel_initializer="glorot_uniform") for _ in range(cross_layers)]
        self.deep = [tf.keras.layers.Dense(units, activation="relu") for units in deep_layers]
        self.out = tf.keras.layers.Dense(1)

    def call(self, numeric: tf.Tensor, codes: tf.Tensor) -> tf.Tensor:
        parts = [numeric] + [layer(codes[..., i]) for i, layer in enumerate(self.embeddings)]
        x0 = tf.concat(parts, axis=-1)
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)
        for dense in self.deep:
            x = dense(x)
        return tf.squeeze(self.out(x), -1)


class DCNRanker:
    """Orders a user's candidates with a DCN-v2 scorer trained listwise.

    Each candidate is scored on its own (so serving scores any list), but training compares a
    user's candidates with each other: a softmax over the user's list, against the share of the
    user's relevant candidates (Cao et al. 2007's ListNet with binary relevance). `tfrs.layers.dcn.Cross`
    learns explicit feature crosses (x0 * (W x + b) + x); the deep tower the rest. Numeric
    features are standardised with the training rows' mean and deviation (a missing value takes
    the mean); the demographic codes are embedded. Early stopping on the held-out users' NDCG@10.

    Args:
        features: the feature columns, in order.
        params: embedding_dim, cross_layers, deep_layers, learning_rate, batch_users, max_epochs, patience.
        seed: seeds initialisation and the order of users in each epoch.
    """

    name = "dcn"

    def __init__(self, features: Sequence[str], params: dict, seed: int):
        self.features, self.params, self.seed = list(features), dict(params), seed
        self.numeric = [f for f in self.features if f not in CATEGORICAL]
        self.categorical = [f for f in self.features if f in CATEGORICAL]
        self.model: _CandidateScorer | None = None
        self.fit_s: float | None = None

    def _build(self) -> None:
        set_seed(self.seed)
        p = self.params
        self.model = _CandidateScorer(self.cardinalities, p["embedding_dim"], p["cross_layers"], p["deep_layers"])
        self.model(tf.zeros([1, len(self.numeric)]), tf.zeros([1, len(self.categorical)], tf.int32))
        self._predict = tf.function(lambda numeric, codes: self.model(numeric, codes))

    def _inputs(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        numeric = X[self.numeric].to_numpy(np.float32)
        numeric = np.where(np.isnan(numeric), self.mean, numeric)
        codes = X[self.categorical].to_numpy(np.float64).astype(np.int32)
        return (numeric - self.mean) / self.std, np.clip(codes, 0, np.asarray(self.cardinalities) - 1)

    @staticmethod
    def _lists(values: np.ndarray, groups: np.ndarray, width: int, fill: float = 0) -> np.ndarray:
        """Rows grouped by user -> (n_users, width, ...) padded lists."""
        out = np.full((len(groups), width, *values.shape[1:]), fill, values.dtype)
        slot = np.arange(len(values)) - np.repeat(np.cumsum(groups) - groups, groups)
        out[np.repeat(np.arange(len(groups)), groups), slot] = values
        return out

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        groups: np.ndarray,
        X_valid: pd.DataFrame,
        y_valid: np.ndarray,
        groups_valid: np.ndarray,
    ) -> DCNRanker:
        """Train on the training users' lists; keep the epoch with the best NDCG@10 of the held-out users."""
        started = time.perf_counter()
        numeric = X[self.numeric].to_numpy(np.float32)
        self.mean = np.nan_to_num(np.nanmean(numeric, axis=0)).astype(np.float32)
        self.std = np.nan_to_num(np.nanstd(numeric, axis=0), nan=1.0).astype(np.float32)
        self.std[self.std == 0] = 1.0
        self.cardinalities = [int(X[c].max()) + 2 for c in self.categorical]  # + unseen codes clip to the last
        self._build()
        groups, y = np.asarray(groups), np.asarray(y, np.float32)
        width = int(groups.max())
        numeric, codes = self._inputs(X)
        lists = {
            "numeric": self._lists(numeric, groups, width),
            "codes": self._lists(codes, groups, width),
            "labels": self._lists(y, groups, width),
            "mask": self._lists(np.ones(len(y), bool), groups, width, fill=False),
        }
        has_positive = lists["labels"].sum(axis=1) > 0  # a list without a relevant movie teaches nothing
        lists = {name: value[has_positive] for name, value in lists.items()}
        optimizer = tf.keras.optimizers.Adam(self.params["learning_rate"])
        model = self.model

        @tf.function
        def step(numeric, codes, labels, mask):
            target = labels / tf.reduce_sum(labels, axis=1, keepdims=True)
            with tf.GradientTape() as tape:
                logits = tf.where(mask, model(numeric, codes), _MASKED)
                loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(target, logits))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            return loss

        rng = np.random.default_rng(self.seed)
        best, best_weights, wait, self.history = -np.inf, None, 0, []
        batch = self.params["batch_users"]
        for _ in range(self.params["max_epochs"]):
            order = rng.permutation(int(has_positive.sum()))
            losses = [
                float(
                    step(*(tf.constant(lists[n][order[i : i + batch]]) for n in ("numeric", "codes", "labels", "mask")))
                )
                for i in range(0, len(order), batch)
            ]
            ndcg = grouped_ndcg(self.predict(X_valid), np.asarray(y_valid), np.asarray(groups_valid), k=10)
            self.history.append({"loss": float(np.mean(losses)), "valid_ndcg_at_10": ndcg})
            if ndcg > best:
                best, best_weights, wait = ndcg, [w.numpy() for w in model.weights], 0
            else:
                wait += 1
                if wait >= self.params["patience"]:
                    break
        model.set_weights(best_weights)
        self.valid_ndcg_at_10 = float(best)
        self.fit_s = time.perf_counter() - started
        return self

    def x0_columns(self) -> dict[str, slice]:
        """Each feature's columns of the cross layers' input x0, in `features` order.

        The scorer concatenates the standardised numeric features (one column each, in `numeric`
        order), then each categorical feature's embedding (`embedding_dim` columns, in `categorical`
        order): the layout by which the cross layers' weight matrices are indexed.
        """
        widths = [1] * len(self.numeric) + [self.params["embedding_dim"]] * len(self.categorical)
        ends = np.cumsum(widths).tolist()
        spans = {
            name: slice(end - width, end) for name, width, end in zip(self.numeric + self.categorical, widths, ends)
        }
        return {name: spans[name] for name in self.features}

    def x0(self, X: pd.DataFrame) -> np.ndarray:
        """The cross layers' input x0 of candidate rows, (rows, x0 width), built as the scorer builds it (numpy)."""
        if self.model is None:
            raise RuntimeError("DCNRanker.x0 was called before fit (or load)")
        numeric, codes = self._inputs(X)
        tables = [layer.embeddings.numpy() for layer in self.model.embeddings]
        return np.concatenate([numeric, *(table[codes[:, i]] for i, table in enumerate(tables))], axis=1)

    def predict(self, X: pd.DataFrame, batch: int = 65_536) -> np.ndarray:
        """Scores of candidate rows (higher first); only the order within a user means anything."""
        if self.model is None:
            raise RuntimeError("DCNRanker.predict was called before fit (or load)")
        numeric, codes = self._inputs(X)
        parts = [
            self._predict(tf.constant(numeric[i : i + batch]), tf.constant(codes[i : i + batch])).numpy()
            for i in range(0, len(numeric), batch)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def save(self, folder: str | os.PathLike) -> Path:
        """The weights, the normalisation and the settings, atomically; `load` rebuilds the same scorer."""
        with atomic_dir(folder) as tmp:
            np.savez(tmp / "weights.npz", *[w.numpy() for w in self.model.weights])
            write_state(
                tmp,
                self.name,
                features=self.features,
                params=self.params,
                seed=self.seed,
                mean=self.mean.tolist(),
                std=self.std.tolist(),
                cardinalities=self.cardinalities,
            )
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> DCNRanker:
        state = read_state(folder)
        ranker = cls(state["features"], state["params"], state["seed"])
        ranker.mean = np.asarray(state["mean"], np.float32)
        ranker.std = np.asarray(state["std"], np.float32)
        ranker.cardinalities = state["cardinalities"]
        ranker._build()
        weights = np.load(Path(folder) / "weights.npz")
        ranker.model.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])
        return ranker
