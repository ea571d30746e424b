"""The sequential retriever: a GRU reads a user's latest movies and predicts the next one (in-batch softmax, logQ).

The query is the GRU's output after the last of the user's N most recent movies; the candidate is
a movie embedding; both are L2-normalised and trained with `tfrs.tasks.Retrieval` (temperature,
logQ correction, accidental hits removed), as the two-tower is. There is no user id: a history is
the whole query, so a user is served from their latest movies without retraining, and a person
who is not in training can be served from a few films (`HistoryQueries.for_history`).

Movies are encoded by a `MovieVocabulary`: index 1..n for the catalogue, 0 (`sequences.PAD`) for
an empty slot.
"""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys.core.errors import UnknownMovieError
from recsys.core.io import atomic_dir
from recsys.core.tables import IdIndex
from recsys.evaluation.score_blocks import RowScores
from recsys.features.sequences import PAD, causal_histories, latest_histories
from recsys.models.configs import SequentialConfig

_AFTER_EVERYTHING = np.iinfo(np.int32).max


class MovieVocabulary:
    """Movie ids <-> the model's indices: the catalogue gets 1..n in the order given, PAD (0) is no movie."""

    def __init__(self, movie_ids: np.ndarray):
        self.movie_ids = np.asarray(movie_ids, np.int64)
        if not pd.Index(self.movie_ids).is_unique:
            raise ValueError("the catalogue repeats a movie id")
        self._index = IdIndex(self.movie_ids)  # a binary search: no pandas overhead on a request's history

    def __len__(self) -> int:
        return len(self.movie_ids)

    def encode(self, movie_ids: np.ndarray) -> np.ndarray:
        """Indices (int32) of `movie_ids`; an id outside the catalogue raises UnknownMovieError naming it."""
        positions = self._index.positions(movie_ids)
        if (positions < 0).any():
            raise UnknownMovieError(pd.unique(np.asarray(movie_ids).reshape(-1)[positions < 0]))
        return (positions + 1).astype(np.int32)


class SequentialRetrievalModel(tfrs.Model):
    """GRU query over a movie sequence, movie-embedding candidates, in-batch softmax on every target of a window.

    Inputs of `compute_loss`: `window` (B, T + 1) movie indices and `loss_mask` (B, T), which
    slots of `window[:, :-1]` are trained (`training_windows`). The target of slot t is the movie
    at t + 1, or with `config.target_horizon` H > 1 one of the movies at t + 1 .. t + H drawn
    anew at every step (the window's last movie where fewer follow). `movie_share` holds each
    movie's share of the training movies: its probability of being an in-batch candidate (logQ).
    """

    def __init__(self, n_movies: int, config: SequentialConfig):
        super().__init__()
        self.config, self.n_movies = config, n_movies
        dim = config.embedding_dim
        self.history_embedding = tf.keras.layers.Embedding(n_movies + 1, dim, mask_zero=True)
        self.gru = tf.keras.layers.GRU(dim, return_sequences=True)
        self.projection = tf.keras.layers.Dense(dim)
        self.movie_embedding = tf.keras.layers.Embedding(n_movies + 1, dim)
        self.movie_share = tf.Variable(tf.fill([n_movies + 1], 1.0 / n_movies), trainable=False, name="movie_share")
        self.task = tfrs.tasks.Retrieval(
            temperature=config.temperature, remove_accidental_hits=config.remove_accidental_hits
        )

    def sequence_outputs(self, histories: tf.Tensor) -> tf.Tensor:
        """(B, T) -> (B, T, dim) unnormalised queries: slot t has read histories[:, :t + 1]."""
        return self.projection(self.gru(self.history_embedding(histories), mask=histories != PAD))

    def query(self, histories: tf.Tensor) -> tf.Tensor:
        """(B, N) histories, oldest first, left-padded -> (B, dim) L2-normalised queries."""
        return tf.math.l2_normalize(self.sequence_outputs(histories)[:, -1], axis=-1)

    def candidates(self, movie_indices: tf.Tensor) -> tf.Tensor:
        return tf.math.l2_normalize(self.movie_embedding(movie_indices), axis=-1)

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        window, mask = features["window"], features["loss_mask"]
        history = window[:, :-1]
        length = tf.shape(history)[1]
        target_slot = tf.broadcast_to(tf.range(1, length + 1)[None, :], tf.shape(history))
        if self.config.target_horizon > 1:
            offset = tf.random.uniform(tf.shape(history), 0, self.config.target_horizon, dtype=tf.int32)
            target_slot = tf.minimum(target_slot + offset, length)
        targets = tf.boolean_mask(tf.gather(window, target_slot, batch_dims=1), mask)
        queries = tf.math.l2_normalize(tf.boolean_mask(self.sequence_outputs(history), mask), axis=-1)
        probability = tf.gather(self.movie_share, targets) if self.config.logq_correction else None
        return self.task(
            queries,
            self.candidates(targets),
            candidate_sampling_probability=probability,
            candidate_ids=targets if self.config.remove_accidental_hits else None,
            compute_metrics=False,
        )


# ---- training data ------------------------------------------------------------------------------


def training_windows(
    user_ids: np.ndarray, positions: np.ndarray, movie_indices: np.ndarray, config: SequentialConfig
) -> dict[str, np.ndarray]:
    """The model's training inputs: each user's sequence cut from its end into windows of N + S movies.

    Window j of a user with n movies ends before their movie n - j*S and holds the N + S movies
    before that end (fewer at the start, left-padded), so consecutive windows overlap by N. The
    loss is on the last S slots of a window that have a real movie before them: with
    target_horizon 1, every movie except each user's first is a target exactly once (with
    `max_windows_per_user`, only the user's latest windows are cut). No per-user
    Python loop: the window ends are computed with numpy and the windows cut by
    `sequences.causal_histories`.

    Returns:
        {"window": (n_windows, N + S) movie indices, "loss_mask": (n_windows, N + S - 1) bool}:
        the model's inputs (slot t of window[:, :-1] is trained where the mask is set).

    Args:
        user_ids, positions: each training interaction's user and timeline position.
        movie_indices: its movie as a MovieVocabulary index.
    """
    n, s = config.history_length, config.window_targets
    order = np.lexsort((positions, user_ids))
    users, pos = np.asarray(user_ids)[order], np.asarray(positions)[order]
    first = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    counts = np.diff(np.r_[first, len(users)])
    n_windows = -(-(counts - 1) // s)  # a user's first movie is never a target: (n - 1) targets, S per window
    if config.max_windows_per_user:
        n_windows = np.minimum(n_windows, config.max_windows_per_user)  # j = 0, 1, ...: the latest first
    group = np.repeat(np.arange(len(first)), n_windows)
    j = np.arange(len(group)) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    end = counts[group] - j * s  # the window holds the user's movies [end - n - s, end)
    end_position = np.where(end < counts[group], pos[np.minimum(first[group] + end, len(pos) - 1)], _AFTER_EVERYTHING)
    windows = causal_histories(users[first[group]], end_position, user_ids, positions, movie_indices, n + s)
    history, next_movie = windows[:, :-1], windows[:, 1:]
    slot = np.arange(n + s - 1)[None, :]
    loss_mask = (next_movie != PAD) & (history != PAD) & (slot >= n - 1)
    return {"window": windows, "loss_mask": loss_mask}  # every window trains its last slot at least


def movie_shares(movie_indices: np.ndarray, n_movies: int) -> np.ndarray:
    """(n_movies + 1,) each movie's share of the training movies (PAD's slot 0), floored at 1e-12 for logQ."""
    counts = np.bincount(np.asarray(movie_indices), minlength=n_movies + 1)[: n_movies + 1]
    return np.maximum(counts / max(counts.sum(), 1), 1e-12).astype(np.float32)


# ---- queries and scores --------------------------------------------------------------------------


# model -> its query as one traced graph for any batch and width (kept beside the model, not in it,
# so nothing is added to what the model saves)
_TRACED_QUERY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def query_vectors(model: SequentialRetrievalModel, histories: np.ndarray, batch: int = 4096) -> np.ndarray:
    """(n, N) encoded histories -> (n, dim) float32 queries.

    One traced graph serves every call (an eager GRU call costs milliseconds per request), and
    the leading columns that are PAD in every row of a batch are dropped first: the GRU skips
    masked steps (its state stays zero until the first movie), so the queries are the same and
    a 10-movie history costs 10 steps, not N.
    """
    if model not in _TRACED_QUERY:
        _TRACED_QUERY[model] = tf.function(model.query, input_signature=[tf.TensorSpec([None, None], tf.int32)])
    query = _TRACED_QUERY[model]
    histories = np.asarray(histories, np.int32)
    parts = []
    for i in range(0, len(histories), batch):
        block = histories[i : i + batch]
        real = (block != PAD).any(axis=0)
        first = int(np.argmax(real)) if real.any() else block.shape[1] - 1
        parts.append(query(tf.constant(block[:, first:])).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.config.embedding_dim), np.float32)


def movie_vectors(model: SequentialRetrievalModel) -> np.ndarray:
    """(n_movies, dim) candidate vectors, rows in the vocabulary's order (PAD's row dropped)."""
    return model.candidates(tf.range(1, model.n_movies + 1)).numpy()


def user_histories(
    interactions: pd.DataFrame, user_ids: np.ndarray, vocabulary: MovieVocabulary, length: int
) -> np.ndarray:
    """Each user's latest `length` movies among `interactions` (encoded, oldest first, left-padded)."""
    return latest_histories(
        user_ids,
        interactions["user_id"].to_numpy(),
        interactions["position"].to_numpy(),
        vocabulary.encode(interactions["movie_id"].to_numpy()),
        length,
    )


def full_ranking_scores(model: SequentialRetrievalModel, histories: np.ndarray) -> RowScores:
    """(n_users, n_movies) scores of every catalogue movie for each history (vocabulary order).

    The query vectors are computed now; the scores a block of users at a time when indexed.
    """
    return RowScores.dot(query_vectors(model, histories), movie_vectors(model))


# ---- persistence ---------------------------------------------------------------------------------


def save_sequential_model(
    model: SequentialRetrievalModel, vocabulary: MovieVocabulary, folder: str | os.PathLike
) -> Path:
    """Weights, config and the catalogue's movie ids in one folder, atomically."""
    with atomic_dir(folder) as tmp:
        model.save_weights(str(tmp / "weights"))
        state = {"config": model.config.to_dict(), "movie_ids": vocabulary.movie_ids.tolist()}
        (tmp / "model.json").write_text(json.dumps(state))
    return Path(folder)


def load_sequential_model(folder: str | os.PathLike) -> tuple[SequentialRetrievalModel, MovieVocabulary]:
    """Rebuild a model saved by `save_sequential_model` and load its weights."""
    folder = Path(folder)
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"{folder} holds no sequential model (model.json missing): save one first")
    state = json.loads((folder / "model.json").read_text())
    vocabulary = MovieVocabulary(np.asarray(state["movie_ids"], np.int64))
    model = SequentialRetrievalModel(len(vocabulary), SequentialConfig.from_params(state["config"]))
    model.load_weights(str(folder / "weights")).expect_partial()
    return model, vocabulary
