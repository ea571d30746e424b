"""The joint multitask model: one TFRS model that rates movies and retrieves them from shared user and movie towers."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys.data.rating_scale import RatingScale
from recsys.features.encoding import CONTEXT_FEATURES, EXAMPLE_WEIGHT, FeatureEncoder, resolve_features
from recsys.features.fit_records import FitRecord
from recsys.models.configs import RatingConfig, _FromParams
from recsys.models.persistence import read_model_folder, save_model_folder
from recsys.models.predict import predict
from recsys.models.rating_model import TwoTowerRatingModel
from recsys.models.retrieval_model import SAMPLING_PROBABILITY, embed_in_batches
from recsys.models.towers import dummy_inputs


@dataclass
class MultitaskConfig(_FromParams):
    """Hyper-parameters of the joint model and of its weight sweep (params group `multitask`).

    Built with `from_params(params["multitask"])`, which refuses a group with missing or unknown keys.

    The rating half takes the rating model's recipe (`RatingConfig`, head on the side features),
    the retrieval half the retrieval model's (`InBatchSoftmaxConfig`); one optimizer setting and
    one batch serve both, since every batch feeds both heads.

    Attributes:
        features: groups ("user", "movie", "context"), single features, or ["ids"]. Context enters
            the rating head only: retrieval is evaluated (and served) with one list per user.
        embedding_dim, side_dim, init_std: the shared vectors' size, each side feature's, the
            initial id rows' standard deviation.
        mlp_layers, dropout: the rating head on the side-feature parts and the context, as `RatingConfig`.
        l2, bias_l2: the rating model's penalties on the looked-up vectors and biases; part of the
            rating objective, so scaled by its weight (a retrieval-only model is not penalised).
        id_learning_rate: per-example SGD step for the id embeddings and biases (`RatingConfig`);
            0 trains them with Adam. learning_rate: Adam's step for everything else.
        temperature, logq_correction, remove_accidental_hits: the retrieval head's in-batch
            softmax, as `InBatchSoftmaxConfig`.
        retrieval_projection: the retrieval head reads a learned linear map of each shared vector
            (initialised to the identity) instead of the vector itself, so the cosine space can turn
            away from the rating space where the tasks disagree.
        batch_size: examples per step (the rating model trains at 16,384).
        retrieval_group: in-batch candidates per softmax: each batch is cut into groups of this
            many examples, each its own in-batch softmax (the retrieval model's batch of 1,024), so
            the rating head keeps a large batch; 0 makes the whole batch one softmax.
        max_epochs, patience: early stopping on val (`multitask_training.chosen_epoch`).
        weight_pairs: the (w_rating, w_retrieval) settings the sweep trains.
        rmse_tolerance: how far above the best val RMSE a kept epoch, and above the rating
            specialist's val RMSE a chosen setting, may lie.
    """

    features: list[str]
    embedding_dim: int
    side_dim: int
    mlp_layers: list[int]
    dropout: float
    l2: float
    bias_l2: float
    init_std: float
    id_learning_rate: float
    learning_rate: float
    temperature: float
    logq_correction: bool
    remove_accidental_hits: bool
    retrieval_projection: bool
    batch_size: int
    retrieval_group: int
    max_epochs: int
    patience: int
    weight_pairs: list[list[float]]
    rmse_tolerance: float

    def rating_config(self) -> RatingConfig:
        """The rating half as the rating model's config: the joint model is that model plus a retrieval head."""
        fixed = {"head_on": "features", "optimizer": "adam", "ablation": False}
        shared = [f.name for f in dataclasses.fields(RatingConfig) if f.name not in fixed and hasattr(self, f.name)]
        return RatingConfig(**{name: getattr(self, name) for name in shared}, **fixed)


@dataclass(frozen=True)
class TaskWeights:
    """The loss weights (w_rating, w_retrieval): loss = w_rating * rating loss + w_retrieval * retrieval loss.

    Raises:
        ValueError: a weight is negative or not finite, or both are 0 (nothing to learn).
    """

    rating: float
    retrieval: float

    def __post_init__(self):
        pair = (self.rating, self.retrieval)
        if (
            isinstance(self.rating, bool)
            or isinstance(self.retrieval, bool)
            or not all(isinstance(w, (int, float, np.number)) and math.isfinite(w) and w >= 0 for w in pair)
        ):
            raise ValueError(f"task weights must be finite numbers >= 0, got (w_rating, w_retrieval) = {pair!r}")
        if self.rating == 0 and self.retrieval == 0:
            raise ValueError("task weights (0, 0) train nothing: give the rating or the retrieval head a weight > 0")
        object.__setattr__(self, "rating", float(self.rating))
        object.__setattr__(self, "retrieval", float(self.retrieval))

    @classmethod
    def of(cls, value: TaskWeights | Sequence[float] | str) -> TaskWeights:
        """Weights from a pair (1, 0.1), a string "1,0.1" (as `label` writes it) or TaskWeights."""
        if isinstance(value, TaskWeights):
            return value
        parts = value.split(",") if isinstance(value, str) else list(value)
        if len(parts) != 2:
            raise ValueError(f"task weights are a pair (w_rating, w_retrieval), got {value!r}")
        return cls(float(parts[0]), float(parts[1]))

    @property
    def label(self) -> str:
        """ "w_rating,w_retrieval", e.g. "1,0.1": the setting's name in tables and in `multitask_weights`."""
        return f"{self.rating:g},{self.retrieval:g}"

    @property
    def key(self) -> str:
        """The setting in metric keys, e.g. "r1_t0p1" for (1, 0.1)."""
        return f"r{self.rating:g}_t{self.retrieval:g}".replace(".", "p").replace("-", "m")


def _l2_normalize(vectors: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(vectors, axis=-1)  # a zero vector stays zero (no NaN)


class MultitaskModel(TwoTowerRatingModel):
    """Rates a movie for a user and retrieves movies for a user, from one pair of towers.

    As the TFRS multitask tutorial: the user and movie towers are shared; a `tasks.Ranking` head
    (mean squared error) and a `tasks.Retrieval` head (in-batch softmax) read them, and the loss is
    w_rating * rating loss + w_retrieval * retrieval loss. The two heads want different things of
    the same vectors, so each reads them its own way:

    * rating head: the rating model unchanged (it is its subclass): global mean + user and movie
      biases + the dot product of the raw vectors + a head on the side-feature parts and the
      context. The vectors' lengths carry how strongly a user leans, which a rating needs.
    * retrieval head: the same vectors, through a linear map each (`retrieval_projection`, starting
      as the identity), L2-normalised, scored by cosine / temperature, in-batch softmax with logQ
      correction and accidental hits removed, as the retrieval model. Lengths are dropped: raw dot
      products let popular movies grow long vectors and win every list.

    Both losses are means over the batch (the retrieval task's cross-entropy per example, then its
    mean; the rating model's MSE and L2 penalty already are), so the weights compare like with like.
    A head whose weight is 0 is not computed: its own variables (biases and rating head, or the
    projections) get no gradient, and the loss is exactly the other head's.

    Args: embedding table sizes (FeatureEncoder.cardinalities()), the config, (w_rating,
    w_retrieval), and the mean training rating (where every predicted rating starts).
    """

    def __init__(self, cardinalities: dict[str, int], config: MultitaskConfig, weights, global_mean: float):
        super().__init__(cardinalities, config.rating_config(), global_mean)
        self.multitask_config = config
        self.task_weights = TaskWeights.of(weights)
        self.use_context = bool(resolve_features(config.features, cardinalities) & set(CONTEXT_FEATURES))
        self.query_projection = self.candidate_projection = None
        if config.retrieval_projection:
            dim = config.embedding_dim
            self.query_projection = tf.keras.layers.Dense(
                dim, use_bias=False, kernel_initializer="identity", name="query_projection"
            )
            self.candidate_projection = tf.keras.layers.Dense(
                dim, use_bias=False, kernel_initializer="identity", name="candidate_projection"
            )
        self.retrieval_task = tfrs.tasks.Retrieval(
            # per example: the task would sum over the batch; the mean is taken in `task_losses`
            loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=tf.keras.losses.Reduction.NONE),
            temperature=config.temperature,
            remove_accidental_hits=config.remove_accidental_hits,
        )
        # each head's own loss per epoch in the history (only for a head that is trained)
        if self.task_weights.rating > 0:
            self.rating_loss_tracker = tf.keras.metrics.Mean("rating_loss")
        if self.task_weights.retrieval > 0:
            self.retrieval_loss_tracker = tf.keras.metrics.Mean("retrieval_loss")

    # ---- the retrieval head's vectors ---------------------------------------------------------
    def _retrieval_vectors(self, vectors: tf.Tensor, projection: tf.keras.layers.Dense | None) -> tf.Tensor:
        return _l2_normalize(vectors if projection is None else projection(vectors))

    def query_vectors(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """Users as unit query vectors (no context): what the retrieval head and an index score with."""
        return self._retrieval_vectors(self.user_tower(features).vector, self.query_projection)

    def candidate_vectors(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """Movies as unit candidate vectors, comparable with `query_vectors` by dot product (cosine)."""
        return self._retrieval_vectors(self.movie_tower(features).vector, self.candidate_projection)

    def retrieval_scores(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """The retrieval score of aligned (user, movie) inputs: the cosine of their retrieval vectors."""
        return tf.reduce_sum(self.query_vectors(features) * self.candidate_vectors(features), axis=-1)

    # ---- losses -------------------------------------------------------------------------------
    def task_losses(self, inputs, training: bool = False) -> tuple[tf.Tensor | None, tf.Tensor | None]:
        """(rating loss, retrieval loss) of a batch, each a mean over its examples; None for a head of weight 0.

        The rating loss is the rating model's: MSE plus the L2 penalty of the batch's vectors and
        biases. The retrieval loss is the in-batch softmax cross-entropy of each (user, rated
        movie) pair against the batch's other movies, averaged over the pairs.

        Args:
            inputs: (features, ratings); features carry `candidate_sampling_probability` (each
                movie's share of the training ratings) when logQ correction is on.
        """
        features, ratings = inputs
        if EXAMPLE_WEIGHT in features:
            raise ValueError("the multitask model trains in one process: its batches carry no example_weight")
        prediction, user, movie = self._forward(features, training)
        rating_loss = retrieval_loss = None
        if self.task_weights.rating > 0:
            rating_loss = self.task(labels=ratings, predictions=prediction) + self._batch_penalty(user, movie)
        if self.task_weights.retrieval > 0:
            if self.multitask_config.logq_correction and SAMPLING_PROBABILITY not in features:
                raise ValueError(
                    f"logQ correction needs the input {SAMPLING_PROBABILITY!r} (multitask_training.training_examples "
                    "adds it); or set multitask.logq_correction to false"
                )
            logq = self.multitask_config.logq_correction
            retrieval_loss = self._softmax_loss(
                self._retrieval_vectors(user.vector, self.query_projection),
                self._retrieval_vectors(movie.vector, self.candidate_projection),
                features[SAMPLING_PROBABILITY] if logq else tf.ones_like(ratings),
                features["movie_id"],
            )
        return rating_loss, retrieval_loss

    def _softmax_loss(self, queries, candidates, probability, movie_ids) -> tf.Tensor:
        """The retrieval task's in-batch softmax, a group of `retrieval_group` examples at a time; the mean over examples.

        The last batch of an epoch is padded to whole groups; padded rows weigh 0 and padded
        candidates are masked out of every softmax.
        """
        n, group = tf.shape(queries)[0], self.multitask_config.retrieval_group or tf.shape(queries)[0]
        pad = (group - n % group) % group

        def grouped(x, value):  # (n, ...) -> (groups, group, ...)
            x = tf.concat([x, tf.fill(tf.concat([[pad], tf.shape(x)[1:]], 0), tf.cast(value, x.dtype))], 0)
            return tf.reshape(x, tf.concat([[-1, group], tf.shape(x)[1:]], 0))

        real = grouped(tf.ones([n], tf.bool), False)

        def one_group(parts):
            query, candidate, p, ids, mask = parts
            return self.retrieval_task(
                query,
                candidate,
                sample_weight=tf.cast(mask, tf.float32),
                candidate_sampling_probability=p if self.multitask_config.logq_correction else None,
                candidate_ids=ids,
                compute_metrics=False,
                score_mask=tf.broadcast_to(mask[None, :], [group, group]),
            )

        parts = (grouped(queries, 0), grouped(candidates, 0), grouped(probability, 1), grouped(movie_ids, -1), real)
        return tf.reduce_sum(tf.map_fn(one_group, parts, fn_output_signature=tf.float32)) / tf.cast(n, tf.float32)

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        """w_rating * rating loss + w_retrieval * retrieval loss (`task_losses`), logging each head's loss."""
        rating_loss, retrieval_loss = self.task_losses(inputs, training)
        total = tf.constant(0.0)
        if rating_loss is not None:
            self.rating_loss_tracker.update_state(rating_loss)
            total += self.task_weights.rating * rating_loss
        if retrieval_loss is not None:
            self.retrieval_loss_tracker.update_state(retrieval_loss)
            total += self.task_weights.retrieval * retrieval_loss
        return total

    def train_step(self, inputs):
        """One step of the joint loss; the id parameters go to their own SGD optimizer when `id_learning_rate` > 0.

        Variables without a gradient (those of a head of weight 0) are left out of both optimizers.
        """
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
        variables = self.trainable_variables
        pairs = [(g, v) for g, v in zip(tape.gradient(loss, variables), variables) if g is not None]
        id_refs = {v.ref() for v in self.id_variables()} if self.id_optimizer is not None else set()
        for optimizer, part in (
            (self.id_optimizer, [(g, v) for g, v in pairs if v.ref() in id_refs]),
            (self.optimizer, [(g, v) for g, v in pairs if v.ref() not in id_refs]),
        ):
            if part:  # e.g. nothing but ids to train (ids-only features, no projection)
                optimizer.apply_gradients(part)
        logs = {metric.name: metric.result() for metric in self.metrics}
        logs["loss"] = loss
        return logs

    def head_variables(self) -> dict[str, list[tf.Variable]]:
        """The variables only one head reads: "rating" (biases, rating head, context), "retrieval" (projections)."""
        rating = [self.user_tower.bias.embeddings, self.movie_tower.bias.embeddings]
        for layer in (self.head, self.context):
            rating += [] if layer is None else list(layer.trainable_variables)
        projections = [layer for layer in (self.query_projection, self.candidate_projection) if layer is not None]
        return {"rating": rating, "retrieval": [v for layer in projections for v in layer.weights]}


def build_multitask_model(
    cardinalities: dict[str, int], config: MultitaskConfig, weights, global_mean: float
) -> MultitaskModel:
    """Build and compile the joint model (Adam; SGD for the ids when `id_learning_rate` > 0).

    The unknown-id rows (index 0: a movie without training ratings, a new user) start and stay at
    zero, as in the retrieval model: left random, every unknown movie would share one random
    direction and could flood a user's top-k; at zero it is scored by its side features alone.
    """
    model = MultitaskModel(cardinalities, config, weights, global_mean)
    dummy = dummy_inputs(cardinalities, tf.int8)
    model(dummy, training=False)
    model.query_vectors(dummy)
    model.candidate_vectors(dummy)
    for table in (model.user_tower.id_embedding.embeddings, model.movie_tower.id_embedding.embeddings):
        table.scatter_update(tf.IndexedSlices(tf.zeros([1, table.shape[1]]), tf.constant([0])))
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    return model


def predict_ratings(model: MultitaskModel, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted ratings of per-example model inputs (unclipped; the metrics clip to the rating scale)."""
    return predict(model, inputs)


def user_vectors(
    model: MultitaskModel, encoder: FeatureEncoder, user_table: pd.DataFrame, users: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Unit query vectors of `users` (MovieLens ids), in that order (KeyError for a user not in `user_table`)."""
    rows = user_table.index.get_indexer(np.asarray(users))
    if (rows < 0).any():
        raise KeyError(f"users {np.asarray(users)[rows < 0][:5].tolist()} are not in the user table")
    return embed_in_batches(model.query_vectors, encoder.user_inputs(user_table.iloc[rows]))


def movie_vectors(
    model: MultitaskModel, encoder: FeatureEncoder, movie_table: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """(movie ids in table order, unit candidate vectors (n_movies, embedding_dim) float32) of `movie_table`."""
    return movie_table.index.to_numpy(), embed_in_batches(model.candidate_vectors, encoder.movie_inputs(movie_table))


def pair_scores(model: MultitaskModel, encoder: FeatureEncoder, user_table, movie_table, pairs) -> pd.DataFrame:
    """Both heads' scores of (user, movie) pairs, e.g. a ranker's candidates.

    Args:
        pairs: user_id, movie_id, and hour/weekday/month when the model reads context (the rating
            head's moment of the rating; the retrieval score ignores it).

    Returns predicted_rating (unclipped) and retrieval_score (cosine of the retrieval vectors) on
    `pairs`' index; KeyError for a user or movie outside the tables, or missing context columns.
    """
    missing = [c for c in CONTEXT_FEATURES if model.use_context and c not in pairs.columns]
    if missing:
        raise KeyError(f"the model reads the context: pairs need the columns {missing} (the moment of each request)")
    inputs = encoder.interaction_inputs(pairs, user_table, movie_table, context=model.use_context)
    users, user_index = np.unique(pairs["user_id"].to_numpy(), return_inverse=True)
    queries = user_vectors(model, encoder, user_table, users)
    _, candidates = movie_vectors(model, encoder, movie_table)
    movie_rows = movie_table.index.get_indexer(pairs["movie_id"].to_numpy())
    scores = {"predicted_rating": predict_ratings(model, inputs)}
    scores["retrieval_score"] = np.einsum("ij,ij->i", queries[user_index], candidates[movie_rows])
    return pd.DataFrame(scores, index=pairs.index)


def save_multitask_model(
    model: MultitaskModel,
    encoder: FeatureEncoder,
    folder: str | os.PathLike,
    fitted_on: Sequence[str],
    scale: RatingScale,
) -> Path:
    """Save weights, config, task weights, global mean, the splits it was fitted on, its fit record and scale.

    Written atomically (`persistence.save_model_folder`); `load_multitask_model` rebuilds the same model.
    """
    record = getattr(model, "fit_record", None)
    state = {
        "multitask_config": model.multitask_config.to_dict(),
        "task_weights": [model.task_weights.rating, model.task_weights.retrieval],
        "global_mean": model.global_mean,
        "fitted_on": list(fitted_on),
        "fit_record": None if record is None else record.to_dict(),
        **scale.to_dict(),
    }
    return save_model_folder(model, encoder, folder, state)


def load_multitask_model(folder: str | os.PathLike) -> tuple[MultitaskModel, FeatureEncoder]:
    """Rebuild a model saved by `save_multitask_model` and load its weights.

    The model carries `fitted_on` (the splits it was saved as fitted on), `fit_record` and
    `rating_scale` (what its predicted ratings are clipped to), as a loaded rating model does.
    """
    state, encoder, weights = read_model_folder(folder)
    if "multitask_config" not in state:
        raise ValueError(
            f"{folder} holds another kind of model (no multitask_config): save one with save_multitask_model"
        )
    config = MultitaskConfig.from_params(state["multitask_config"])
    model = build_multitask_model(state["cardinalities"], config, state["task_weights"], state["global_mean"])
    model.load_weights(weights).expect_partial()
    model.fitted_on = tuple(state["fitted_on"])
    model.fit_record = FitRecord.from_dict(state.get("fit_record"))
    model.rating_scale = RatingScale.from_dict(state)
    return model, encoder
