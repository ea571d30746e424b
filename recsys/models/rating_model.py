"""The two-tower rating model (TFRS ranking): predicts a user's rating of a movie from the two towers."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys.features.encoding import CONTEXT_FEATURES, EXAMPLE_WEIGHT, resolve_features
from recsys.models.configs import RatingConfig
from recsys.models.towers import ContextEncoder, MovieTower, TowerOutput, UserTower

# one Keras class per choice of `rating.optimizer` (recsys.models.configs.OPTIMIZERS)
OPTIMIZER_CLASSES = {
    "adam": tf.keras.optimizers.Adam,
    "adagrad": tf.keras.optimizers.Adagrad,
    "sgd": tf.keras.optimizers.SGD,
}


class TwoTowerRatingModel(tfrs.Model):
    """Predicts a user's rating of a movie from a user tower and a movie tower.

    Ranking comes after retrieval: retrieval narrows thousands of movies to a shortlist, and this
    model orders the shortlist by predicted rating. The towers meet twice: in a dot product (the
    matrix-factorisation path, which carries most of the signal on MovieLens) and in an MLP head
    over the tower outputs, their product and the context, which can learn what a dot product
    cannot (see RatingConfig.head_on for which part of the tower outputs it reads). Learned user
    and movie biases and the training mean complete the prediction.

    Args:
        cardinalities: embedding table size per input (FeatureEncoder.cardinalities()).
        config: hyper-parameters and feature switches.
        global_mean: mean training rating, the starting point of every prediction.
    """

    def __init__(self, cardinalities: dict[str, int], config: RatingConfig, global_mean: float):
        super().__init__()
        self.config = config
        self.global_mean = float(global_mean)
        use = resolve_features(config.features, cardinalities)
        self.user_tower = UserTower(cardinalities, config.embedding_dim, config.side_dim, use, config.init_std)
        self.movie_tower = MovieTower(cardinalities, config.embedding_dim, config.side_dim, use, config.init_std)
        self.context = ContextEncoder(cardinalities, config.side_dim, use) if use & set(CONTEXT_FEATURES) else None
        self.head = None
        has_side = bool(self.user_tower.side) or bool(self.movie_tower.features)
        if config.head_on == "towers" or has_side or self.context is not None:
            head = []
            for units in config.mlp_layers:
                head += [tf.keras.layers.Dense(units, activation="relu"), tf.keras.layers.Dropout(config.dropout)]
            head.append(tf.keras.layers.Dense(1, kernel_initializer="zeros"))
            self.head = tf.keras.Sequential(head, name="head")
        self.id_optimizer = (
            tf.keras.optimizers.SGD(config.id_learning_rate * config.batch_size)
            if config.id_learning_rate > 0
            else None
        )
        # Reduction NONE: the batch mean of 1-D labels and predictions all the same (the loss averages
        # the last axis), and allowed under a tf.distribute strategy, where the default raises
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(reduction=tf.keras.losses.Reduction.NONE),
            metrics=[tf.keras.metrics.RootMeanSquaredError()],
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

    def _forward(self, features: dict[str, tf.Tensor], training: bool) -> tuple[tf.Tensor, TowerOutput, TowerOutput]:
        """Predicted ratings, and the two towers' outputs (their vectors and biases are penalised)."""
        user, movie = self.user_tower(features), self.movie_tower(features)
        prediction = self.global_mean + user.bias + movie.bias + tf.reduce_sum(user.vector * movie.vector, axis=-1)
        if self.head is not None:
            head_inputs = tf.concat(self._head_inputs(user, movie, features), axis=-1)
            prediction += tf.squeeze(self.head(head_inputs, training=training), -1)
        return prediction, user, movie

    def _batch_penalty(self, user: TowerOutput, movie: TowerOutput) -> tf.Tensor:
        """The L2 penalty of the batch's vectors and biases: a mean over the batch."""
        return self.config.l2 * (user.vector_l2 + movie.vector_l2) + self.config.bias_l2 * (
            user.bias_l2 + movie.bias_l2
        )

    def _example_penalties(self, user: TowerOutput, movie: TowerOutput) -> tf.Tensor:
        """The same penalty per example (its mean over the batch is `_batch_penalty`)."""
        vectors = tf.reduce_sum(tf.square(user.vector), axis=-1) + tf.reduce_sum(tf.square(movie.vector), axis=-1)
        return self.config.l2 * vectors + self.config.bias_l2 * (tf.square(user.bias) + tf.square(movie.bias))

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
        """Predicted ratings (unclipped; metrics clip them to the dataset's rating scale)."""
        return self._forward(features, training)[0]

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        """Mean squared error plus the L2 penalty, both means over the batch.

        On one worker of several (`distributed.sharded_batches`), the batch is that worker's share
        of a global batch and each example carries `EXAMPLE_WEIGHT` = 1 / the global batch's size.
        The loss is then the weighted sum of the examples' squared errors and penalties, so the sum
        the all-reduce makes is the global batch's mean loss, the loss one process would have
        computed. It is a sum, not a mean scaled by the share: a share left empty (a last global
        batch with fewer examples than workers) adds exactly 0 to the loss and to the gradient,
        where a mean of no examples would be NaN.
        """
        features, ratings = inputs
        prediction, user, movie = self._forward(features, training)
        if EXAMPLE_WEIGHT not in features:
            return self.task(labels=ratings, predictions=prediction) + self._batch_penalty(user, movie)
        # a column per example: the MSE (reduction NONE) averages the last axis only, giving each squared error
        errors = self.task(labels=ratings[:, None], predictions=prediction[:, None])
        return tf.reduce_sum(features[EXAMPLE_WEIGHT] * (errors + self._example_penalties(user, movie)))


def build_rating_model(cardinalities: dict[str, int], config: RatingConfig, global_mean: float) -> TwoTowerRatingModel:
    """Build and compile the rating model with the configured optimizer and learning rate."""
    model = TwoTowerRatingModel(cardinalities, config, global_mean)
    model.compile(optimizer=OPTIMIZER_CLASSES[config.optimizer](config.learning_rate))
    return model


def build_optimizer_state(model: TwoTowerRatingModel, sample: dict) -> None:
    """Create the model's variables and both optimizers' slots now, from one example.

    Keras's BackupAndRestore restores a checkpoint when `fit` starts; variables that do not exist
    yet (an unbuilt subclassed model, optimizer slots made at the first step) are restored later
    or not at all. Building everything first makes a resumed job start from exactly the saved state.
    """
    model(sample, training=False)
    id_refs = {variable.ref() for variable in model.id_variables()}
    if model.id_optimizer is None:
        model.optimizer.build(model.trainable_variables)
        return
    model.id_optimizer.build(model.id_variables())
    model.optimizer.build([v for v in model.trainable_variables if v.ref() not in id_refs])
