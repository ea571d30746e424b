"""The user and movie towers (and the context encoder) that both TFRS models are built from."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from recsys.features.encoding import CONTEXT_FEATURES, MOVIE_FEATURES, USER_FEATURES


class TowerOutput(NamedTuple):
    """What a tower hands to the model: its vector, the side-feature part of it, its bias, L2 terms."""

    vector: tf.Tensor
    side_vector: tf.Tensor | None
    bias: tf.Tensor
    vector_l2: tf.Tensor
    bias_l2: tf.Tensor


def _embedding(size: int, dim: int, name: str, init_std: float = 0.05) -> tf.keras.layers.Embedding:
    return tf.keras.layers.Embedding(
        size, dim, embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=init_std), name=name
    )


def _rows_l2(rows: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of the squared norm of the looked-up embedding rows."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(rows), axis=-1))


class UserTower(tf.keras.layers.Layer):
    """A user as a vector: an id embedding plus a projection of the user's side features.

    The side features (age group, gender, occupation, ZIP, city, state) let users with few ratings
    borrow strength from similar users; the id embedding carries what is specific to one user.
    """

    def __init__(
        self,
        cardinalities: dict[str, int],
        embedding_dim: int,
        side_dim: int,
        features: set[str],
        init_std: float = 0.05,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.id_embedding = _embedding(cardinalities["user_id"], embedding_dim, "user_id_embedding", init_std)
        self.bias = tf.keras.layers.Embedding(
            cardinalities["user_id"], 1, embeddings_initializer="zeros", name="user_bias"
        )
        self.side = {
            name: _embedding(cardinalities[name], side_dim, f"{name}_embedding")
            for name in USER_FEATURES
            if name in features
        }
        self.project = (
            tf.keras.layers.Dense(embedding_dim, use_bias=False, name="user_side_projection") if self.side else None
        )

    def call(self, features: dict[str, tf.Tensor]) -> TowerOutput:
        id_rows = self.id_embedding(features["user_id"])
        side_vector = None
        if self.project is not None:
            side_vector = self.project(tf.concat([layer(features[name]) for name, layer in self.side.items()], axis=-1))
        vector = id_rows if side_vector is None else id_rows + side_vector
        bias = tf.squeeze(self.bias(features["user_id"]), -1)
        return TowerOutput(vector, side_vector, bias, _rows_l2(vector), tf.reduce_mean(tf.square(bias)))


class MovieTower(tf.keras.layers.Layer):
    """A movie as a vector: an id embedding plus a projection of genres, title words and release year.

    The title is embedded as the mean of its word embeddings (a learned text embedding), which
    links sequels and movies that share words; genres enter as a multi-hot vector.
    """

    def __init__(
        self,
        cardinalities: dict[str, int],
        embedding_dim: int,
        side_dim: int,
        features: set[str],
        init_std: float = 0.05,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.id_embedding = _embedding(cardinalities["movie_id"], embedding_dim, "movie_id_embedding", init_std)
        self.bias = tf.keras.layers.Embedding(
            cardinalities["movie_id"], 1, embeddings_initializer="zeros", name="movie_bias"
        )
        self.features = [name for name in MOVIE_FEATURES if name in features]
        if "title" in features:
            self.title_embedding = _embedding(cardinalities["title"], side_dim, "title_word_embedding")
        if "release_year" in features:
            self.year_embedding = _embedding(cardinalities["release_year"], side_dim, "release_year_embedding")
        if "genres" in features:
            self.genre_projection = tf.keras.layers.Dense(side_dim, use_bias=False, name="genre_projection")
        if self.features:
            self.project = tf.keras.layers.Dense(embedding_dim, use_bias=False, name="movie_side_projection")

    def call(self, features: dict[str, tf.Tensor]) -> TowerOutput:
        id_rows = self.id_embedding(features["movie_id"])
        side_vector = None
        if self.features:
            side = []
            if "genres" in self.features:
                side.append(self.genre_projection(tf.cast(features["genres"], self.compute_dtype)))  # int8 0/1 flags
            if "title" in self.features:
                tokens = features["title"]
                mask = tf.cast(tokens > 0, tf.float32)[..., None]
                words = self.title_embedding(tokens) * mask
                side.append(tf.reduce_sum(words, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0))
            if "release_year" in self.features:
                side.append(self.year_embedding(features["release_year"]))
            side_vector = self.project(tf.concat(side, axis=-1))
        vector = id_rows if side_vector is None else id_rows + side_vector
        bias = tf.squeeze(self.bias(features["movie_id"]), -1)
        return TowerOutput(vector, side_vector, bias, _rows_l2(vector), tf.reduce_mean(tf.square(bias)))


class ContextEncoder(tf.keras.layers.Layer):
    """When the rating happened (hour, weekday, month), as one vector for the head."""

    def __init__(self, cardinalities: dict[str, int], side_dim: int, features: set[str], **kwargs):
        super().__init__(**kwargs)
        self.embeddings = {
            name: _embedding(cardinalities[name], side_dim, f"{name}_embedding")
            for name in CONTEXT_FEATURES
            if name in features
        }

    def call(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.concat([layer(features[name]) for name, layer in self.embeddings.items()], axis=-1)


def dummy_inputs(cardinalities: dict[str, int], genres_dtype: tf.DType = tf.float32) -> dict[str, tf.Tensor]:
    """One example of every input a tower or head may read (all index 0), to create a model's variables.

    Args:
        cardinalities: embedding table sizes (FeatureEncoder.cardinalities()); "genres" sizes the multi-hot row.
        genres_dtype: the multi-hot genres' dtype, as the model is fed them.
    """
    dummy = {
        "user_id": tf.zeros([1], tf.int32),
        "movie_id": tf.zeros([1], tf.int32),
        "genres": tf.zeros([1, cardinalities["genres"]], genres_dtype),
        "title": tf.zeros([1, 1], tf.int32),
    }
    for name in (*USER_FEATURES, "release_year", *CONTEXT_FEATURES):
        dummy[name] = tf.zeros([1], tf.int32)
    return dummy
