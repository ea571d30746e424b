"""TFRS models: the user and movie towers, and the two-tower rating (ranking) model built from them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import recsys  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys.encoding import CONTEXT_FEATURES, FEATURE_GROUPS, MOVIE_FEATURES, USER_FEATURES

keras = tf.keras


@dataclass
class RankingConfig:
    """Hyper-parameters of the two-tower rating model (params group `ranking`).

    Attributes:
        features: the feature groups used beside the ids: any of "user", "movie", "context".
        embedding_dim: size of the user and movie vectors that meet in the dot product.
        side_dim: embedding size of each side feature (age group, city, genre, title word, ...).
        mlp_layers: hidden sizes of the head that reads [user, movie, user*movie, context].
        dropout: dropout in the head.
        l2: weight of the L2 penalty on the user and movie vectors of a batch (the looked-up rows,
            not the whole table, so rare users and movies are not shrunk by every batch they are
            absent from; the side-feature part of a vector is penalised with its id part).
        bias_l2: the same for the user and movie bias terms (weaker: a bias is one number).
        init_std: standard deviation of the initial embedding rows.
    """

    features: list[str] = field(default_factory=lambda: ["user", "movie", "context"])
    embedding_dim: int = 64
    side_dim: int = 16
    mlp_layers: list[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.3
    l2: float = 0.05
    bias_l2: float = 0.001
    init_std: float = 0.05
    optimizer: str = "adam"
    learning_rate: float = 0.002
    batch_size: int = 4096
    max_epochs: int = 30
    patience: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def _embedding(size: int, dim: int, name: str, init_std: float = 0.05) -> keras.layers.Embedding:
    return keras.layers.Embedding(size, dim, embeddings_initializer=keras.initializers.RandomNormal(stddev=init_std),
                                  name=name)


def _rows_l2(rows: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of the squared norm of the looked-up embedding rows."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(rows), axis=-1))


class UserTower(keras.layers.Layer):
    """A user as a vector: an id embedding plus a projection of the user's side features.

    The side features (age group, gender, occupation, ZIP, city, state) let users with few ratings
    borrow strength from similar users; the id embedding carries what is specific to one user.
    """

    def __init__(self, cardinalities: dict[str, int], embedding_dim: int, side_dim: int, use_features: bool,
                 init_std: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.id_embedding = _embedding(cardinalities["user_id"], embedding_dim, "user_id_embedding", init_std)
        self.bias = keras.layers.Embedding(cardinalities["user_id"], 1, embeddings_initializer="zeros",
                                           name="user_bias")
        self.side = {name: _embedding(cardinalities[name], side_dim, f"{name}_embedding")
                     for name in (USER_FEATURES if use_features else ())}
        self.project = keras.layers.Dense(embedding_dim, use_bias=False, name="user_side_projection") \
            if use_features else None

    def call(self, features: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Returns (user vector, user bias, L2 terms of the looked-up id rows and biases)."""
        id_rows = self.id_embedding(features["user_id"])
        vector = id_rows
        if self.project is not None:
            side = tf.concat([layer(features[name]) for name, layer in self.side.items()], axis=-1)
            vector = vector + self.project(side)
        bias = tf.squeeze(self.bias(features["user_id"]), -1)
        return vector, bias, _rows_l2(vector), tf.reduce_mean(tf.square(bias))


class MovieTower(keras.layers.Layer):
    """A movie as a vector: an id embedding plus a projection of genres, title words and release year.

    The title is embedded as the mean of its word embeddings (a learned text embedding), which
    links sequels and movies that share words; genres enter as a multi-hot vector.
    """

    def __init__(self, cardinalities: dict[str, int], embedding_dim: int, side_dim: int, use_features: bool,
                 init_std: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.id_embedding = _embedding(cardinalities["movie_id"], embedding_dim, "movie_id_embedding", init_std)
        self.bias = keras.layers.Embedding(cardinalities["movie_id"], 1, embeddings_initializer="zeros",
                                           name="movie_bias")
        self.use_features = use_features
        if use_features:
            self.title_embedding = _embedding(cardinalities["title"], side_dim, "title_word_embedding")
            self.year_embedding = _embedding(cardinalities["release_year"], side_dim, "release_year_embedding")
            self.genre_projection = keras.layers.Dense(side_dim, use_bias=False, name="genre_projection")
            self.project = keras.layers.Dense(embedding_dim, use_bias=False, name="movie_side_projection")

    def call(self, features: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Returns (movie vector, movie bias, L2 terms of the looked-up id rows and biases)."""
        id_rows = self.id_embedding(features["movie_id"])
        vector = id_rows
        if self.use_features:
            tokens = features["title"]
            mask = tf.cast(tokens > 0, tf.float32)[..., None]
            words = self.title_embedding(tokens) * mask
            title = tf.reduce_sum(words, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
            side = tf.concat([self.genre_projection(features["genres"]), title,
                              self.year_embedding(features["release_year"])], axis=-1)
            vector = vector + self.project(side)
        bias = tf.squeeze(self.bias(features["movie_id"]), -1)
        return vector, bias, _rows_l2(vector), tf.reduce_mean(tf.square(bias))


class ContextEncoder(keras.layers.Layer):
    """When the rating happened (hour, weekday, month), as one vector for the head."""

    def __init__(self, cardinalities: dict[str, int], side_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.embeddings = {name: _embedding(cardinalities[name], side_dim, f"{name}_embedding")
                           for name in CONTEXT_FEATURES}

    def call(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.concat([layer(features[name]) for name, layer in self.embeddings.items()], axis=-1)


class TwoTowerRatingModel(tfrs.Model):
    """Predicts a user's rating of a movie from a user tower and a movie tower.

    Ranking comes after retrieval: retrieval narrows thousands of movies to a shortlist, and this
    model orders the shortlist by predicted rating. The towers meet twice: in a dot product (the
    matrix-factorisation path, which carries most of the signal on MovieLens) and in an MLP head
    over [user, movie, user * movie, context] that can learn what a dot product cannot. Learned
    user and movie biases and the training mean complete the prediction.

    Args:
        cardinalities: embedding table size per input (FeatureEncoder.cardinalities()).
        config: hyper-parameters and feature switches.
        global_mean: mean training rating, the starting point of every prediction.
    """

    def __init__(self, cardinalities: dict[str, int], config: RankingConfig, global_mean: float):
        super().__init__()
        self.config = config
        self.global_mean = float(global_mean)
        use = set(config.features)
        self.user_tower = UserTower(cardinalities, config.embedding_dim, config.side_dim, "user" in use,
                                    config.init_std)
        self.movie_tower = MovieTower(cardinalities, config.embedding_dim, config.side_dim, "movie" in use,
                                      config.init_std)
        self.context = ContextEncoder(cardinalities, config.side_dim) if "context" in use else None
        head = []
        for units in config.mlp_layers:
            head += [keras.layers.Dense(units, activation="relu"), keras.layers.Dropout(config.dropout)]
        head.append(keras.layers.Dense(1, kernel_initializer="zeros"))
        self.head = keras.Sequential(head, name="head")
        self.task = tfrs.tasks.Ranking(loss=keras.losses.MeanSquaredError(),
                                       metrics=[keras.metrics.RootMeanSquaredError()])

    def _forward(self, features: dict[str, tf.Tensor], training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        user, user_bias, user_l2, user_bias_l2 = self.user_tower(features)
        movie, movie_bias, movie_l2, movie_bias_l2 = self.movie_tower(features)
        parts = [user, movie, user * movie]
        if self.context is not None:
            parts.append(self.context(features))
        interaction = tf.reduce_sum(user * movie, axis=-1)
        head = tf.squeeze(self.head(tf.concat(parts, axis=-1), training=training), -1)
        prediction = self.global_mean + user_bias + movie_bias + interaction + head
        penalty = self.config.l2 * (user_l2 + movie_l2) + self.config.bias_l2 * (user_bias_l2 + movie_bias_l2)
        return prediction, penalty

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Predicted ratings (unclipped; metrics clip to 1..5)."""
        return self._forward(features, training)[0]

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        features, ratings = inputs
        prediction, penalty = self._forward(features, training)
        return self.task(labels=ratings, predictions=prediction) + penalty


def build_ranking_model(cardinalities: dict[str, int], config: RankingConfig, global_mean: float) -> TwoTowerRatingModel:
    """Build and compile the rating model with the configured optimizer and learning rate."""
    unknown = set(config.features) - set(FEATURE_GROUPS)
    if unknown:
        raise ValueError(f"ranking.features: unknown group(s) {sorted(unknown)}; valid: {sorted(FEATURE_GROUPS)}")
    model = TwoTowerRatingModel(cardinalities, config, global_mean)
    optimizers = {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad, "sgd": keras.optimizers.SGD}
    if config.optimizer not in optimizers:
        raise ValueError(f"ranking.optimizer: {config.optimizer!r} is not one of {sorted(optimizers)}")
    model.compile(optimizer=optimizers[config.optimizer](config.learning_rate))
    return model


__all__ = ["RankingConfig", "UserTower", "MovieTower", "ContextEncoder", "TwoTowerRatingModel",
           "build_ranking_model", "MOVIE_FEATURES"]
