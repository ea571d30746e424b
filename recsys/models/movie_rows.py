"""The movie inputs of training positives kept once per movie: constants a batch gathers from through MOVIE_ROW."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from recsys.features.encoding import MOVIE_ROW


class MovieRows:
    """Movie inputs as constants, one row per movie (`retrieval_training.training_examples`).

    A plain holder, not a Keras layer: no weights, so a model that holds one saves none of it.
    `retrieval_training` sets it on the model for the length of `fit`
    (`TwoTowerRetrievalModel.set_movie_rows`): 20 bytes a positive instead of 68 with the title
    tokens and genre flags repeated per positive, and what TensorFlow keeps of a `fit`'s inputs
    after it shrinks with them.
    """

    def __init__(self, movies: dict[str, np.ndarray]):
        self.inputs = {name: tf.constant(value) for name, value in movies.items()}


def with_movie_features(features: dict[str, tf.Tensor], rows: MovieRows | None) -> dict[str, tf.Tensor]:
    """`features` with the movie inputs gathered through `MOVIE_ROW` when a batch carries it (unchanged otherwise).

    Raises:
        ValueError: the batch carries `MOVIE_ROW` but there are no rows to gather from.
    """
    if MOVIE_ROW not in features:
        return features
    if rows is None:
        raise ValueError(
            f"a batch carries {MOVIE_ROW!r} but the model has no movie rows to gather from: call "
            "set_movie_rows(...) before fit (retrieval_training.train_retrieval_model does)"
        )
    gathered = {name: tf.gather(value, features[MOVIE_ROW]) for name, value in rows.inputs.items()}
    return {**{k: v for k, v in features.items() if k != MOVIE_ROW}, **gathered}
