"""TFRS models: the user and movie towers, and the two-tower rating (ranking) model built from them."""

from __future__ import annotations

from typing import NamedTuple

import recsys  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys.encoding import CONTEXT_FEATURES, MOVIE_FEATURES, USER_FEATURES, resolve_features
from recsys.ranking_config import OPTIMIZERS, RankingConfig

keras = tf.keras


class TowerOutput(NamedTuple):
    """What a tower hands to the model: its vector, the side-feature part of it, its bias, L2 terms."""

    vector: tf.Tensor
    side_vector: tf.Tensor | None
    bias: tf.Tensor
    vector_l2: tf.Tensor
    bias_l2: tf.Tensor


def _embedding(size: int, dim: int, name: str, init_std: float = 0.05) -> keras.layers.Embedding:
    return keras.layers.Embedding(
        size, dim, embeddings_initializer=keras.initializers.RandomNormal(stddev=init_std), name=name
    )


def _rows_l2(rows: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of the squared norm of the looked-up embedding rows."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(rows), axis=-1))


class UserTower(keras.layers.Layer):
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
        self.bias = keras.layers.Embedding(
            cardinalities["user_id"], 1, embeddings_initializer="zeros", name="user_bias"
        )
        self.side = {
            name: _embedding(cardinalities[name], side_dim, f"{name}_embedding")
            for name in USER_FEATURES
            if name in features
        }
        self.project = (
            keras.layers.Dense(embedding_dim, use_bias=False, name="user_side_projection") if self.side else None
        )

    def call(self, features: dict[str, tf.Tensor]) -> TowerOutput:
        id_rows = self.id_embedding(features["user_id"])
        side_vector = None
        if self.project is not None:
            side_vector = self.project(tf.concat([layer(features[name]) for name, layer in self.side.items()], axis=-1))
        vector = id_rows if side_vector is None else id_rows + side_vector
        bias = tf.squeeze(self.bias(features["user_id"]), -1)
        return TowerOutput(vector, side_vector, bias, _rows_l2(vector), tf.reduce_mean(tf.square(bias)))


class MovieTower(keras.layers.Layer):
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
        self.bias = keras.layers.Embedding(
            cardinalities["movie_id"], 1, embeddings_initializer="zeros", name="movie_bias"
        )
        self.features = [name for name in MOVIE_FEATURES if name in features]
        if "title" in features:
            self.title_embedding = _embedding(cardinalities["title"], side_dim, "title_word_embedding")
        if "release_year" in features:
            self.year_embedding = _embedding(cardinalities["release_year"], side_dim, "release_year_embedding")
        if "genres" in features:
            self.genre_projection = keras.layers.Dense(side_dim, use_bias=False, name="genre_projection")
        if self.features:
            self.project = keras.layers.Dense(embedding_dim, use_bias=False, name="movie_side_projection")

    def call(self, features: dict[str, tf.Tensor]) -> TowerOutput:
        id_rows = self.id_embedding(features["movie_id"])
        side_vector = None
        if self.features:
            side = []
            if "genres" in self.features:
                side.append(self.genre_projection(features["genres"]))
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


class ContextEncoder(keras.layers.Layer):
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


class TwoTowerRatingModel(tfrs.Model):
    """Predicts a user's rating of a movie from a user tower and a movie tower.

    Ranking comes after retrieval: retrieval narrows thousands of movies to a shortlist, and this
    model orders the shortlist by predicted rating. The towers meet twice: in a dot product (the
    matrix-factorisation path, which carries most of the signal on MovieLens) and in an MLP head
    over the tower outputs, their product and the context, which can learn what a dot product
    cannot (see RankingConfig.head_on for which part of the tower outputs it reads). Learned user
    and movie biases and the training mean complete the prediction.

    Args:
        cardinalities: embedding table size per input (FeatureEncoder.cardinalities()).
        config: hyper-parameters and feature switches.
        global_mean: mean training rating, the starting point of every prediction.
    """

    def __init__(self, cardinalities: dict[str, int], config: RankingConfig, global_mean: float):
        super().__init__()
        self.config = config
        self.global_mean = float(global_mean)
        use = resolve_features(config.features)
        self.user_tower = UserTower(cardinalities, config.embedding_dim, config.side_dim, use, config.init_std)
        self.movie_tower = MovieTower(cardinalities, config.embedding_dim, config.side_dim, use, config.init_std)
        self.context = ContextEncoder(cardinalities, config.side_dim, use) if use & set(CONTEXT_FEATURES) else None
        self.head = None
        has_side = bool(self.user_tower.side) or bool(self.movie_tower.features)
        if config.head_on == "towers" or has_side or self.context is not None:
            head = []
            for units in config.mlp_layers:
                head += [keras.layers.Dense(units, activation="relu"), keras.layers.Dropout(config.dropout)]
            head.append(keras.layers.Dense(1, kernel_initializer="zeros"))
            self.head = keras.Sequential(head, name="head")
        self.id_optimizer = (
            keras.optimizers.SGD(config.id_learning_rate * config.batch_size) if config.id_learning_rate > 0 else None
        )
        self.task = tfrs.tasks.Ranking(
            loss=keras.losses.MeanSquaredError(), metrics=[keras.metrics.RootMeanSquaredError()]
        )

    def _head_inputs(self, user: TowerOutput, movie: TowerOutput, features: dict[str, tf.Tensor]) -> list[tf.Tensor]:
        if self.config.head_on == "towers":
            parts = [user.vector, movie.vector, user.vector * movie.vector]
        else:  # the side-feature parts of the towers: shared by many users/movies, so nothing to memorise
            parts = [p for p in (user.side_vector, movie.side_vector) if p is not None]
            if len(parts) == 2:
                parts.append(user.side_vector * movie.side_vector)
        if self.context is not None:
            parts.append(self.context(features))
        return parts

    def _forward(self, features: dict[str, tf.Tensor], training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        user, movie = self.user_tower(features), self.movie_tower(features)
        prediction = self.global_mean + user.bias + movie.bias + tf.reduce_sum(user.vector * movie.vector, axis=-1)
        if self.head is not None:
            head_inputs = tf.concat(self._head_inputs(user, movie, features), axis=-1)
            prediction += tf.squeeze(self.head(head_inputs, training=training), -1)
        penalty = self.config.l2 * (user.vector_l2 + movie.vector_l2) + self.config.bias_l2 * (
            user.bias_l2 + movie.bias_l2
        )
        return prediction, penalty

    def id_variables(self) -> list[tf.Variable]:
        """The per-user and per-movie parameters: id embeddings and biases (sparse, row-wise updates)."""
        return [
            self.user_tower.id_embedding.embeddings,
            self.user_tower.bias.embeddings,
            self.movie_tower.id_embedding.embeddings,
            self.movie_tower.bias.embeddings,
        ]

    def train_step(self, inputs):
        """One step; the id parameters go to their own SGD optimizer when `id_learning_rate` > 0."""
        if self.id_optimizer is None:
            return super().train_step(inputs)
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
        id_refs = {v.ref() for v in self.id_variables()}
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        pairs = list(zip(gradients, variables))
        self.id_optimizer.apply_gradients([(g, v) for g, v in pairs if v.ref() in id_refs])
        rest = [(g, v) for g, v in pairs if v.ref() not in id_refs and g is not None]
        if rest:
            self.optimizer.apply_gradients(rest)
        logs = {metric.name: metric.result() for metric in self.metrics}
        logs["loss"] = loss
        return logs

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Predicted ratings (unclipped; metrics clip to 1..5)."""
        return self._forward(features, training)[0]

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        features, ratings = inputs
        prediction, penalty = self._forward(features, training)
        return self.task(labels=ratings, predictions=prediction) + penalty


def build_ranking_model(
    cardinalities: dict[str, int], config: RankingConfig, global_mean: float
) -> TwoTowerRatingModel:
    """Build and compile the rating model with the configured optimizer and learning rate."""
    model = TwoTowerRatingModel(cardinalities, config, global_mean)
    optimizers = {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad, "sgd": keras.optimizers.SGD}
    model.compile(optimizer=optimizers[config.optimizer](config.learning_rate))
    return model


__all__ = [
    "RankingConfig",
    "UserTower",
    "MovieTower",
    "ContextEncoder",
    "TwoTowerRatingModel",
    "build_ranking_model",
    "MOVIE_FEATURES",
]
