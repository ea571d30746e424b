"""The two-tower retrieval model: query and candidate towers meeting in a dot product, trained by softmax or BPR."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys.evaluation import full_ranking
from recsys.evaluation.score_blocks import RowScores
from recsys.features.encoding import CONTEXT_FEATURES, MOVIE_FEATURES, USER_FEATURES, FeatureEncoder, resolve_features
from recsys.features.fit_records import FitRecord, fingerprint
from recsys.models.configs import RetrievalConfig
from recsys.models.lazy_adam import LazyAdam
from recsys.models.movie_rows import MovieRows, with_movie_features
from recsys.models.negative_sampling import (
    NegativeCatalogue,
    SamplingTables,
    bpr_loss,
    mixed_sampling_probability,
    popularity_rows,
    step_seed,
    uniform_rows,
)
from recsys.models.persistence import read_model_folder, save_model_folder
from recsys.models.towers import ContextEncoder, MovieTower, UserTower, dummy_inputs

EMBED_BATCH = 8192
SAMPLING_PROBABILITY = "candidate_sampling_probability"  # the per-example input that carries logQ


def _normalize(vectors: tf.Tensor, enabled: bool) -> tf.Tensor:
    # l2_normalize maps a zero vector to zero (no NaN), which the unknown id rows rely on
    return tf.math.l2_normalize(vectors, axis=-1) if enabled else vectors


class QueryTower(tf.keras.layers.Layer):
    """A user (and, in training, the moment of the rating) as one query vector.

    Args:
        cardinalities: embedding table sizes (FeatureEncoder.cardinalities()).
        config: the retrieval hyper-parameters.
    """

    def __init__(self, cardinalities: dict[str, int], config: RetrievalConfig, **kwargs):
        super().__init__(**kwargs)
        use = resolve_features(config.features, cardinalities)
        self.l2_normalize = config.l2_normalize
        self.user_tower = UserTower(cardinalities, config.embedding_dim, config.side_dim, use, config.init_std)
        self.user_tower.bias.trainable = False  # a rating bias means nothing to a softmax over movies
        self.context = None
        if use & set(CONTEXT_FEATURES):
            self.context = ContextEncoder(cardinalities, config.side_dim, use)
            self.context_projection = tf.keras.layers.Dense(
                config.embedding_dim, use_bias=False, name="context_projection"
            )

    def call(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """Query vectors; the context term is added only when the context inputs are given."""
        vector = self.user_tower(features).vector
        if self.context is not None and all(name in features for name in self.context.embeddings):
            vector = vector + self.context_projection(self.context(features))
        return _normalize(vector, self.l2_normalize)


class CandidateTower(tf.keras.layers.Layer):
    """A movie as one candidate vector, comparable with the query vectors by dot product.

    Args:
        cardinalities: embedding table sizes (FeatureEncoder.cardinalities()).
        config: the retrieval hyper-parameters.
    """

    def __init__(self, cardinalities: dict[str, int], config: RetrievalConfig, **kwargs):
        super().__init__(**kwargs)
        self.l2_normalize = config.l2_normalize
        self.movie_tower = MovieTower(
            cardinalities,
            config.embedding_dim,
            config.side_dim,
            resolve_features(config.features, cardinalities),
            config.init_std,
        )
        self.movie_tower.bias.trainable = False

    def call(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        return _normalize(self.movie_tower(features).vector, self.l2_normalize)


class TwoTowerRetrievalModel(tfrs.Model):
    """Finds, among thousands of movies, the few hundred a user may watch next.

    Retrieval comes before ranking: it must score the whole catalogue for every request, so user
    and movie are encoded separately (two towers) and meet only in a dot product, which an index
    (BruteForce, ScaNN) can search without running the model per movie. Training is an in-batch
    softmax (TFRS's Retrieval task): each user's watched movie is the positive, the other movies
    of the batch the negatives, with logQ correction for their popularity-proportional sampling.
    `config.negatives` chooses harder negatives: "mixed" appends movies drawn uniformly from the
    catalogue to each batch's candidates, "bpr_popular" trains BPR's pairwise loss against movies
    drawn by popularity (`negative_sampling`); both draw from `catalogue`, held as constants.

    FactorizedTopK metrics are not attached to the task: scoring the whole catalogue at every step
    would cost more than the training itself; see `evaluation.factorized_top_k_accuracy`.

    `fit_record` is the fingerprint of the (user, movie) pairs the last `fit` was given as arrays
    (`fit_records.FitRecord`, in the encoder's indices), saved with the model: what it was fitted
    on, told by the data. A `fit` on a dataset (the workers' sharded batches) leaves it None.

    `popularity_prior` is beta of the score cosine / temperature + beta * log(movie's share of the
    training positives), set after training (`set_popularity_prior`; 0 as built). The served
    vectors (`query_vectors`, `candidate_vectors`: what every index, score and saved embedding is
    made of) then carry one more dimension: 1 for a query, temperature * beta * log share for a
    movie, so a dot product ranks by that score. Training reads the towers, never the prior.

    Args:
        cardinalities: embedding table sizes (FeatureEncoder.cardinalities()).
        config: hyper-parameters and feature switches.
        catalogue: the movies "mixed" and "bpr_popular" draw negatives from
            (`retrieval_training.negative_catalogue`); not needed to score, only to train them.
    """

    def __init__(
        self, cardinalities: dict[str, int], config: RetrievalConfig, catalogue: NegativeCatalogue | None = None
    ):
        super().__init__()
        self.config = config
        sampled = catalogue is not None and config.negatives != "inbatch_logq"
        self.sampling = SamplingTables(catalogue, config.bpr_alpha) if sampled else None
        self.fit_record: FitRecord | None = None
        self.query_tower = QueryTower(cardinalities, config)
        self.candidate_tower = CandidateTower(cardinalities, config)
        self.popularity_prior = 0.0
        self._movie_rows: MovieRows | None = None  # set_movie_rows: training batches that carry MOVIE_ROW
        # temperature * beta * log share of each movie id row: the candidates' prior dimension (saved with the weights)
        self.prior_column = tf.Variable(tf.zeros([cardinalities["movie_id"]]), trainable=False, name="prior_column")
        self.task = tfrs.tasks.Retrieval(
            temperature=config.temperature, remove_accidental_hits=config.remove_accidental_hits
        )

    def fit(self, x=None, *args, **kwargs):
        """Keras's `fit`, recording `fit_record` of the pairs in `x` when it is a dict of arrays or tensors."""
        pairs = isinstance(x, dict) and "user_id" in x and "movie_id" in x
        self.fit_record = fingerprint(np.asarray(x["user_id"]), np.asarray(x["movie_id"]), "encoder") if pairs else None
        return super().fit(x, *args, **kwargs)

    def set_movie_rows(self, movies: dict[str, np.ndarray] | None) -> None:
        """The per-movie inputs that training batches carrying `MOVIE_ROW` gather from, for `fit` (None: unset)."""
        self._movie_rows = None if movies is None else MovieRows(movies)

    def query_vectors(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """The served query vectors: the query tower's, with a last 1 when a popularity prior is set."""
        vectors = self.query_tower(features)
        return with_prior_one(vectors) if self.popularity_prior else vectors

    def candidate_vectors(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """The served movie vectors: the candidate tower's, with the movie's prior term last when a prior is set."""
        vectors = self.candidate_tower(features)
        if not self.popularity_prior:
            return vectors
        return tf.concat([vectors, tf.gather(self.prior_column, features["movie_id"])[:, None]], axis=1)

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """In-batch softmax loss of a batch of (user, watched movie) pairs, summed over the pairs.

        With `negatives: mixed` the softmax also holds `uniform_negatives` catalogue movies (`_uniform_negatives`);
        with `negatives: bpr_popular` the loss is BPR's instead (`_bpr_loss`).

        A batch of no pairs (a worker's share of a last global batch with fewer examples than
        workers, `distributed.sharded_batches`) has the sum over nothing: exactly 0, with a zero
        gradient. TFRS cannot compute it (its accidental-hit removal takes an argmax over no
        candidates, and the softmax cross-entropy fails on an empty batch), so it is not asked to.

        Args:
            features: user, movie (and context) inputs of each pair, plus, with logQ correction,
                `candidate_sampling_probability`: each movie's share of the training positives.
        """
        features = with_movie_features(features, self._movie_rows)
        if self.config.negatives == "bpr_popular":
            return self._bpr_loss(features)
        tables = self._tables() if self.config.negatives == "mixed" else None
        query_embeddings = self.query_tower(features)
        candidate_embeddings = self.candidate_tower(features)
        probability = features[SAMPLING_PROBABILITY] if self.config.logq_correction else None
        candidate_ids = features["movie_id"]
        if tables is not None:
            candidate_embeddings, probability, candidate_ids = self._uniform_negatives(
                features, candidate_embeddings, tables
            )

        def softmax_loss() -> tf.Tensor:
            return self.task(
                query_embeddings,
                candidate_embeddings,
                candidate_sampling_probability=probability,
                candidate_ids=candidate_ids,
                compute_metrics=False,
            )

        def no_pairs() -> tf.Tensor:  # 0, still read from the towers: every tower variable gets its (zero) gradient
            return tf.reduce_sum(query_embeddings) + tf.reduce_sum(candidate_embeddings)

        # the branch runs on the embeddings, not the tables: a sparse gradient stays sparse (no row for an empty share)
        return tf.cond(tf.size(features["movie_id"]) > 0, softmax_loss, no_pairs)

    def _tables(self) -> SamplingTables:
        if self.sampling is None:
            raise ValueError(
                f"retrieval.negatives {self.config.negatives!r} draws negatives from the catalogue, which this model "
                "was built without: build it with build_retrieval_model(..., catalogue=negative_catalogue(...)) "
                "(retrieval_training does); a loaded model scores but does not train this variant"
            )
        return self.sampling

    def _step_seed(self, tables: SamplingTables) -> tf.Tensor:
        optimizer = getattr(self, "optimizer", None)
        return step_seed(tables.seed, 0 if optimizer is None else optimizer.iterations)

    def _uniform_negatives(
        self, features: dict[str, tf.Tensor], candidate_embeddings: tf.Tensor, tables: SamplingTables
    ) -> tuple[tf.Tensor, tf.Tensor | None, tf.Tensor]:
        """Mixed negative sampling: (candidates, their logQ probabilities, ids) with M uniform catalogue draws appended.

        The extra columns come after the batch's own candidates, so TFRS's labels (tf.eye of queries x
        candidates) still mark each row's positive, and its accidental-hit removal (with
        `remove_accidental_hits`, the default), comparing each row's positive id with every column's,
        also drops a draw that is the row's own movie. An
        empty batch draws nothing (its loss stays exactly 0). Probabilities: `mixed_sampling_probability`.
        """
        batch_ids = features["movie_id"]
        count = tf.where(tf.size(batch_ids) > 0, self.config.uniform_negatives, 0)
        rows = uniform_rows(count, tables.n_movies, self._step_seed(tables))
        candidates = tf.concat([candidate_embeddings, self.candidate_tower(tables.movie_inputs(rows))], axis=0)
        ids = tf.concat([batch_ids, tf.gather(tables.movie_ids, rows)], axis=0)
        probability = None
        if self.config.logq_correction:
            sampled_share = tf.gather(tables.share, rows)
            probability = mixed_sampling_probability(features[SAMPLING_PROBABILITY], sampled_share, tables.n_movies)
        return candidates, probability, ids

    def _bpr_loss(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """BPR against K popularity-drawn negatives per positive (`negative_sampling.bpr_loss`), summed.

        The candidate tower runs once per distinct drawn movie, not once per draw (B K draws hold at
        most the catalogue's movies). An empty batch draws nothing: a sum over nothing, 0.
        """
        tables, k = self._tables(), self.config.bpr_negatives
        queries = self.query_tower(features)
        positives = self.candidate_tower(features)
        rows = popularity_rows(tf.stack([tf.shape(queries)[0], k]), tables.cdf, self._step_seed(tables))
        movies, where = tf.unique(tf.reshape(rows, [-1]))
        vectors = tf.gather(self.candidate_tower(tables.movie_inputs(movies)), where)
        negatives = tf.reshape(vectors, [-1, k, self.config.embedding_dim])
        negative_ids = tf.gather(tables.movie_ids, rows)
        return bpr_loss(queries, positives, negatives, features["movie_id"], negative_ids, self.config.temperature)


def with_prior_one(query_vectors: tf.Tensor) -> tf.Tensor:
    """Query vectors with the popularity prior's last dimension, 1: it meets each movie's prior term."""
    return tf.concat([query_vectors, tf.ones_like(query_vectors[:, :1])], axis=1)


def movie_log_shares(movie_rows: np.ndarray, n_rows: int) -> np.ndarray:
    """log of each movie id row's share of the positives whose rows (encoder indices) are `movie_rows`.

    Add-one smoothed over the `n_rows` rows (the id table's size), so a movie without positives
    (row 0 stands for every movie the encoder did not see) has a finite log share, the lowest.
    """
    movie_rows = np.asarray(movie_rows)
    if movie_rows.size and (movie_rows.min() < 0 or movie_rows.max() >= n_rows):
        raise ValueError(f"movie rows must lie in [0, {n_rows}), got {movie_rows.min()}..{movie_rows.max()}")
    counts = np.bincount(movie_rows, minlength=n_rows)
    return np.log((counts + 1.0) / (counts.sum() + n_rows)).astype(np.float32)


def set_popularity_prior(model: TwoTowerRetrievalModel, log_shares: np.ndarray, beta: float) -> None:
    """Give `model` the popularity prior beta * log share (`movie_log_shares` of its training positives); 0 removes it.

    The scores become cosine / temperature + beta * log share up to the factor temperature
    (see `TwoTowerRetrievalModel`); the towers are untouched.
    """
    if beta < 0:
        raise ValueError(f"the popularity prior's weight must be >= 0, got {beta}")
    rows = int(model.prior_column.shape[0])
    if np.shape(log_shares) != (rows,):
        raise ValueError(f"log_shares must hold one value per movie id row ({rows}), got shape {np.shape(log_shares)}")
    model.prior_column.assign(model.config.temperature * beta * np.asarray(log_shares, np.float32))
    model.popularity_prior = float(beta)


@contextmanager
def without_popularity_prior(model: TwoTowerRetrievalModel) -> Iterator[TwoTowerRetrievalModel]:
    """`model` scoring as trained (its towers' vectors) inside the block; its prior as it was after."""
    beta, model.popularity_prior = model.popularity_prior, 0.0
    try:
        yield model
    finally:
        model.popularity_prior = beta


def model_inputs(config: RetrievalConfig, available: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """The (user, movie, context) input names the model reads, so only those are fed to it.

    Args:
        config: the model's hyper-parameters (its `features`).
        available: the inputs the data has (FeatureEncoder.cardinalities()).
    """
    use = resolve_features(config.features, available)
    user = ["user_id", *[n for n in USER_FEATURES if n in use]]
    movie = ["movie_id", *[n for n in MOVIE_FEATURES if n in use]]
    context = [n for n in CONTEXT_FEATURES if n in use]
    return user, movie, context


def build_retrieval_model(
    cardinalities: dict[str, int], config: RetrievalConfig, catalogue: NegativeCatalogue | None = None
) -> TwoTowerRetrievalModel:
    """Build and compile the retrieval model (Adam), with the unknown-id rows set to zero.

    `catalogue` (the movies sampled negatives come from) is needed to train `negatives` "mixed"
    and "bpr_popular"; build it in the distribution strategy's scope like the rest of the model.

    Index 0 of the id embeddings stands for an id without training interactions (a movie never
    watched in train, a new user). Training never looks it up, so left random it would give every
    such movie the same random direction, which can flood a user's top-k with hundreds of tied
    unknown movies. Zero (kept zero: Adam moves only rows with gradients) means such a movie is
    scored by its side features alone (cold start) or, for the ids-only model, scores 0.
    """
    model = TwoTowerRetrievalModel(cardinalities, config, catalogue)
    dummy = dummy_inputs(cardinalities)
    model.query_tower(dummy)
    model.candidate_tower(dummy)
    for table in (
        model.query_tower.user_tower.id_embedding.embeddings,
        model.candidate_tower.movie_tower.id_embedding.embeddings,
    ):
        table.scatter_update(tf.IndexedSlices(tf.zeros([1, table.shape[1]]), tf.constant([0])))
    optimizer = LazyAdam if config.lazy_adam else tf.keras.optimizers.Adam
    model.compile(optimizer=optimizer(config.learning_rate))
    return model


# ---- embeddings ---------------------------------------------------------------------------------


def embed_in_batches(tower: Callable[[dict[str, tf.Tensor]], tf.Tensor], inputs: dict[str, np.ndarray]) -> np.ndarray:
    """`tower`'s vectors of every row of `inputs` (a dict of equal-length arrays), EMBED_BATCH rows per call."""
    n = len(next(iter(inputs.values())))
    parts = [
        tower({k: tf.constant(v[i : i + EMBED_BATCH]) for k, v in inputs.items()}).numpy()
        for i in range(0, n, EMBED_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def user_embeddings(
    model: TwoTowerRetrievalModel, encoder: FeatureEncoder, user_table: pd.DataFrame, users: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Query vectors of `users` (MovieLens user ids), in that order, without context.

    Returns:
        (len(users), embedding_dim) float32 (one column more with a popularity prior).
    """
    rows = user_table.index.get_indexer(np.asarray(users))
    if (rows < 0).any():
        raise KeyError(f"users {np.asarray(users)[rows < 0][:5].tolist()} are not in the user table")
    names = model_inputs(model.config, encoder.cardinalities())[0]
    inputs = encoder.user_inputs(user_table.iloc[rows])
    return embed_in_batches(model.query_vectors, {n: inputs[n] for n in names})


def movie_embeddings(
    model: TwoTowerRetrievalModel, encoder: FeatureEncoder, movie_table: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate vectors of every movie of `movie_table` (the catalogue).

    Returns:
        (movie_ids in table order, (n_movies, embedding_dim) float32, one column more with a popularity prior).
    """
    names = model_inputs(model.config, encoder.cardinalities())[1]
    inputs = encoder.movie_inputs(movie_table)
    return movie_table.index.to_numpy(), embed_in_batches(model.candidate_vectors, {n: inputs[n] for n in names})


def factorized_top_k(
    model: TwoTowerRetrievalModel,
    encoder: FeatureEncoder,
    user_table: pd.DataFrame,
    movie_ids: np.ndarray,
    movie_vectors: np.ndarray,
    pairs: pd.DataFrame,
) -> dict[str, float]:
    """TFRS's FactorizedTopK accuracy of the model on held-out (user_id, movie_id) `pairs` (seen movies not excluded).

    The users' query vectors come from `user_embeddings`; the catalogue is `movie_ids`, `movie_vectors`
    (`movie_embeddings`). See `full_ranking.factorized_top_k_accuracy` for what it counts.
    """
    users = np.unique(pairs["user_id"])
    vectors = user_embeddings(model, encoder, user_table, users)
    return full_ranking.factorized_top_k_accuracy(pairs, users, vectors, movie_ids, movie_vectors)


def full_ranking_scores(
    model: TwoTowerRetrievalModel,
    encoder: FeatureEncoder,
    user_table: pd.DataFrame,
    movie_table: pd.DataFrame,
    user_ids: np.ndarray,
    movie_ids: np.ndarray,
) -> RowScores:
    """Every (user, movie) score: the dot product of the towers' vectors, rows `user_ids`, columns `movie_ids`.

    The vectors are computed now; the scores a block of users at a time when indexed.
    """
    queries = user_embeddings(model, encoder, user_table, user_ids)
    _, candidates = movie_embeddings(model, encoder, movie_table.loc[movie_ids])
    return RowScores.dot(queries, candidates)


# ---- persistence -----------------------------------------------------------------------------------


def save_retrieval_model(model: TwoTowerRetrievalModel, encoder: FeatureEncoder, folder: str | os.PathLike) -> Path:
    """Save weights, config, cardinalities and the encoder so `load_retrieval_model` rebuilds the same model.

    The encoder lives inside the folder: a refit on train + val has its own vocabularies. So does
    the model's `fit_record` (what it was fitted on), which the learned ranker matches to the run's splits.
    """
    record = model.fit_record
    state = {"config": model.config.to_dict(), "fit_record": None if record is None else record.to_dict()}
    state["popularity_prior"] = model.popularity_prior  # its column is a weight
    return save_model_folder(model, encoder, folder, state)


def load_retrieval_model(folder: str | os.PathLike) -> tuple[TwoTowerRetrievalModel, FeatureEncoder]:
    """Rebuild a model saved by `save_retrieval_model` and load its weights (and its `fit_record`, if saved)."""
    state, encoder, weights = read_model_folder(folder)
    model = build_retrieval_model(state["cardinalities"], RetrievalConfig.from_params(state["config"]))
    model.load_weights(weights).expect_partial()
    model.fit_record = FitRecord.from_dict(state.get("fit_record"))
    model.popularity_prior = float(state.get("popularity_prior", 0.0))
    return model, encoder
