"""The retrieval stage: a two-tower in-batch-softmax model, full-ranking evaluation, BruteForce and ScaNN indexes."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

import recsys  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys import metrics
from recsys.artifacts import atomic_dir, read_model_folder, save_model_folder
from recsys.ease import EASE
from recsys.encoding import CONTEXT_FEATURES, MOVIE_FEATURES, USER_FEATURES, FeatureEncoder, resolve_features
from recsys.models import ContextEncoder, MovieTower, UserTower
from recsys.seeding import set_seed
from recsys.training import EpochTimer, steady_throughput

keras = tf.keras

EMBED_BATCH = 8192
SAMPLING_PROBABILITY = "candidate_sampling_probability"  # the per-example input that carries logQ
RETRIEVAL_KS = metrics.DEFAULT_KS
FACTORIZED_KS = (1, 5, 10, 50, 100)
NO_MOVIE = -1  # pads exclusion lists and marks list slots an index could not fill


@dataclass
class RetrievalConfig:
    """Hyper-parameters of the two-tower retrieval model (params group `retrieval`).

    Attributes:
        features: what the towers use beside the ids: groups ("user", "movie", "context"), single
            features (e.g. "genres"), or ["ids"]. Default user + movie features: on ml-1m-half
            (val, 8 epochs) they match ids only (recall@100 0.571 vs 0.573, recall@10 0.238 vs
            0.241) and learn faster (0.445 vs 0.232 after one epoch), and they give a vector to
            a movie without training ratings (cold start), where ids only leave it at zero.
            Context (hour, weekday, month) only enters the query tower during training: the
            full-ranking protocol asks for one list per user, not per moment, so evaluation and
            the indexes query without it.
        embedding_dim: size of the query and candidate vectors.
        side_dim: embedding size of each side feature.
        init_std: standard deviation of the initial id embedding rows.
        l2_normalize: score by cosine instead of raw dot product. Without it, popular movies grow
            long vectors and win every list; with it, `temperature` sets how peaked the softmax is.
        temperature: divides the logits of the in-batch softmax (lower = sharper).
        logq_correction: subtract log(sampling probability) of each in-batch candidate from its
            logit. In-batch negatives are drawn in proportion to popularity, so without the
            correction popular movies are over-penalised as negatives (Yi et al., RecSys 2019).
        remove_accidental_hits: do not count as a negative a candidate that is the same movie as
            the row's positive (two users in one batch who watched the same movie).
        learning_rate: Adam's step size.
        batch_size: training batch, which is also the number of in-batch candidates per query.
        epochs: training epochs.
        min_rating: ratings below it are not positives (1 keeps every rating: for retrieval a
            watched movie is a positive whatever the rating).
    """

    features: list[str] = field(default_factory=lambda: ["user", "movie"])
    embedding_dim: int = 64
    side_dim: int = 16
    init_std: float = 0.05
    l2_normalize: bool = True
    temperature: float = 0.2
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    learning_rate: float = 1e-3
    batch_size: int = 1024
    epochs: int = 10
    min_rating: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


# ---- towers and model ----------------------------------------------------------------------------


def _normalize(vectors: tf.Tensor, enabled: bool) -> tf.Tensor:
    # l2_normalize maps a zero vector to zero (no NaN), which the unknown id rows rely on
    return tf.math.l2_normalize(vectors, axis=-1) if enabled else vectors


class QueryTower(keras.layers.Layer):
    """A user (and, in training, the moment of the rating) as one query vector.

    Args:
        cardinalities: embedding table sizes (FeatureEncoder.cardinalities()).
        config: the retrieval hyper-parameters.
    """

    def __init__(self, cardinalities: dict[str, int], config: RetrievalConfig, **kwargs):
        super().__init__(**kwargs)
        use = resolve_features(config.features)
        self.l2_normalize = config.l2_normalize
        self.user_tower = UserTower(cardinalities, config.embedding_dim, config.side_dim, use, config.init_std)
        self.user_tower.bias.trainable = False  # a rating bias means nothing to a softmax over movies
        self.context = None
        if use & set(CONTEXT_FEATURES):
            self.context = ContextEncoder(cardinalities, config.side_dim, use)
            self.context_projection = keras.layers.Dense(
                config.embedding_dim, use_bias=False, name="context_projection"
            )

    def call(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """Query vectors; the context term is added only when the context inputs are given."""
        vector = self.user_tower(features).vector
        if self.context is not None and all(name in features for name in self.context.embeddings):
            vector = vector + self.context_projection(self.context(features))
        return _normalize(vector, self.l2_normalize)


class CandidateTower(keras.layers.Layer):
    """A movie as one candidate vector, comparable with the query vectors by dot product.

    Args:
        cardinalities: embedding table sizes (FeatureEncoder.cardinalities()).
        config: the retrieval hyper-parameters.
    """

    def __init__(self, cardinalities: dict[str, int], config: RetrievalConfig, **kwargs):
        super().__init__(**kwargs)
        self.l2_normalize = config.l2_normalize
        self.movie_tower = MovieTower(
            cardinalities, config.embedding_dim, config.side_dim, resolve_features(config.features), config.init_std
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

    FactorizedTopK metrics are not attached to the task: scoring the whole catalogue at every step
    would cost more than the training itself; see `factorized_top_k_accuracy`.

    Args:
        cardinalities: embedding table sizes (FeatureEncoder.cardinalities()).
        config: hyper-parameters and feature switches.
    """

    def __init__(self, cardinalities: dict[str, int], config: RetrievalConfig):
        super().__init__()
        self.config = config
        self.query_tower = QueryTower(cardinalities, config)
        self.candidate_tower = CandidateTower(cardinalities, config)
        self.task = tfrs.tasks.Retrieval(
            temperature=config.temperature, remove_accidental_hits=config.remove_accidental_hits
        )

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """In-batch softmax loss of a batch of (user, watched movie) pairs.

        Args:
            features: user, movie (and context) inputs of each pair, plus, with logQ correction,
                `candidate_sampling_probability`: each movie's share of the training positives.
        """
        query_embeddings = self.query_tower(features)
        candidate_embeddings = self.candidate_tower(features)
        probability = features[SAMPLING_PROBABILITY] if self.config.logq_correction else None
        return self.task(
            query_embeddings,
            candidate_embeddings,
            candidate_sampling_probability=probability,
            candidate_ids=features["movie_id"],
            compute_metrics=False,
        )


def model_inputs(config: RetrievalConfig) -> tuple[list[str], list[str], list[str]]:
    """The (user, movie, context) input names the model reads, so only those are fed to it."""
    use = resolve_features(config.features)
    user = ["user_id", *[n for n in USER_FEATURES if n in use]]
    movie = ["movie_id", *[n for n in MOVIE_FEATURES if n in use]]
    context = [n for n in CONTEXT_FEATURES if n in use]
    return user, movie, context


def build_retrieval_model(cardinalities: dict[str, int], config: RetrievalConfig) -> TwoTowerRetrievalModel:
    """Build and compile the retrieval model (Adam), with the unknown-id rows set to zero.

    Index 0 of the id embeddings stands for an id without training interactions (a movie never
    watched in train, a new user). Training never looks it up, so left random it would give every
    such movie the same random direction, which can flood a user's top-k with hundreds of tied
    unknown movies. Zero (kept zero: Adam moves only rows with gradients) means such a movie is
    scored by its side features alone (cold start) or, for the ids-only model, scores 0.
    """
    model = TwoTowerRetrievalModel(cardinalities, config)
    dummy = {
        "user_id": tf.zeros([1], tf.int32),
        "movie_id": tf.zeros([1], tf.int32),
        "genres": tf.zeros([1, cardinalities["genres"]], tf.float32),
        "title": tf.zeros([1, 1], tf.int32),
    }
    for name in (*USER_FEATURES, "release_year", *CONTEXT_FEATURES):
        dummy[name] = tf.zeros([1], tf.int32)
    model.query_tower(dummy)
    model.candidate_tower(dummy)
    for table in (
        model.query_tower.user_tower.id_embedding.embeddings,
        model.candidate_tower.movie_tower.id_embedding.embeddings,
    ):
        table.scatter_update(tf.IndexedSlices(tf.zeros([1, table.shape[1]]), tf.constant([0])))
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    return model


# ---- training ---------------------------------------------------------------------------------------


def positives(interactions: pd.DataFrame, min_rating: int) -> pd.DataFrame:
    """The interactions that count as positives: rating >= min_rating."""
    return interactions[interactions["rating"] >= min_rating]


def candidate_sampling_probability(train_positives: pd.DataFrame) -> pd.Series:
    """Each movie's share of the training positives: how likely it is to be an in-batch negative.

    Returns:
        Series indexed by movie_id, summing to 1 (movies without positives are absent).
    """
    if train_positives.empty:
        raise ValueError("no training positives: check retrieval.min_rating and the train split")
    counts = train_positives["movie_id"].value_counts()
    return counts / counts.sum()


def training_inputs(
    config: RetrievalConfig,
    encoder: FeatureEncoder,
    train_interactions: pd.DataFrame,
    user_table: pd.DataFrame,
    movie_table: pd.DataFrame,
) -> dict[str, np.ndarray]:
    """Model inputs of every training positive, with its movie's sampling probability for logQ."""
    train = positives(train_interactions, config.min_rating)
    probability = candidate_sampling_probability(train)
    user_names, movie_names, context_names = model_inputs(config)
    all_inputs = encoder.interaction_inputs(train, user_table, movie_table, context=bool(context_names))
    inputs = {name: all_inputs[name] for name in (*user_names, *movie_names, *context_names)}
    inputs[SAMPLING_PROBABILITY] = probability.loc[train["movie_id"]].to_numpy(np.float32)
    return inputs


class FullRankingMonitor(keras.callbacks.Callback):
    """Val recall@k of the full-ranking protocol after each epoch (logged as `<split>_recall_at_<k>`).

    Costs one pass of each tower over users and catalogue per epoch (well under a second on ML-1M),
    so the notebook can choose the number of epochs on val, as DESIGN §5 asks.

    Args:
        encoder, user_table, movie_table: as for training.
        matrices: the split matrices (rows = users, columns = the catalogue).
        split: the held-out split to score ("val" during selection).
        k: list length.
    """

    def __init__(
        self,
        encoder: FeatureEncoder,
        user_table: pd.DataFrame,
        movie_table: pd.DataFrame,
        matrices: "SplitMatrices",
        split: str = "val",
        k: int = 100,
    ):
        super().__init__()
        self.encoder, self.user_table, self.movie_table = encoder, user_table, movie_table
        self.matrices, self.split, self.k = matrices, split, k

    def on_epoch_end(self, epoch, logs=None):
        result = evaluate_model(
            self.model, self.encoder, self.user_table, self.movie_table, self.matrices, self.split, ks=(self.k,)
        )[0]
        if logs is not None:
            logs[f"{self.split}_recall_at_{self.k}"] = result[f"recall_at_{self.k}"]


@dataclass
class RetrievalTrainingResult:
    """A fitted retrieval model with how it was trained.

    Attributes:
        model: the fitted model.
        history: per-epoch loss (and monitored val recall, if any).
        wall_s: wall time of `fit`.
        examples_per_s: steady-state throughput (median epoch after the first).
        n_positives: training examples per epoch.
    """

    model: TwoTowerRetrievalModel
    history: dict
    wall_s: float
    examples_per_s: float
    n_positives: int


def train_retrieval_model(
    config: RetrievalConfig,
    encoder: FeatureEncoder,
    train_interactions: pd.DataFrame,
    user_table: pd.DataFrame,
    movie_table: pd.DataFrame,
    seed: int,
    epochs: int | None = None,
    monitor: FullRankingMonitor | None = None,
    verbose: int = 2,
    patience: int | None = None,
) -> RetrievalTrainingResult:
    """Fit a fresh retrieval model on the training positives.

    Examples are numpy arrays that Keras reshuffles every epoch, so each epoch pairs every user
    with new in-batch negatives.

    Args:
        config: hyper-parameters.
        encoder: the FeatureEncoder fitted on the same training interactions.
        train_interactions: interactions to learn from (train, or train + val for the refit).
        user_table, movie_table: encoded feature tables (encoder.user_table/movie_table).
        seed: seeds initialisation and shuffling, so a rerun gives the same model.
        epochs: overrides `config.epochs` (the refit uses the epochs chosen on val).
        monitor: optional FullRankingMonitor recording val recall after each epoch.
        patience: with a monitor, stop when its val recall has not improved for this many epochs
            and restore the weights of the best epoch (early stopping on the full-ranking metric).
    """
    set_seed(seed)
    inputs = training_inputs(config, encoder, train_interactions, user_table, movie_table)
    model = build_retrieval_model(encoder.cardinalities(), config)
    timer = EpochTimer()
    callbacks: list = [timer] + ([monitor] if monitor is not None else [])
    if monitor is not None and patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=f"{monitor.split}_recall_at_{monitor.k}",
                mode="max",
                patience=patience,
                restore_best_weights=True,
            )
        )
    start = time.perf_counter()
    history = model.fit(
        inputs,
        batch_size=config.batch_size,
        epochs=epochs or config.epochs,
        shuffle=True,
        callbacks=callbacks,
        verbose=verbose,
    )
    wall_s = time.perf_counter() - start
    n = len(inputs["user_id"])
    return RetrievalTrainingResult(model, history.history, wall_s, steady_throughput(n, timer.epoch_s), n)


# ---- embeddings ---------------------------------------------------------------------------------------


def _embed(tower: keras.layers.Layer, inputs: dict[str, np.ndarray]) -> np.ndarray:
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
        (len(users), embedding_dim) float32.
    """
    rows = user_table.index.get_indexer(np.asarray(users))
    if (rows < 0).any():
        raise KeyError(f"users {np.asarray(users)[rows < 0][:5].tolist()} are not in the user table")
    names = model_inputs(model.config)[0]
    inputs = encoder.user_inputs(user_table.iloc[rows])
    return _embed(model.query_tower, {n: inputs[n] for n in names})


def movie_embeddings(
    model: TwoTowerRetrievalModel, encoder: FeatureEncoder, movie_table: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate vectors of every movie of `movie_table` (the catalogue).

    Returns:
        (movie_ids in table order, (n_movies, embedding_dim) float32).
    """
    names = model_inputs(model.config)[1]
    inputs = encoder.movie_inputs(movie_table)
    return movie_table.index.to_numpy(), _embed(model.candidate_tower, {n: inputs[n] for n in names})


# ---- full-ranking evaluation (DESIGN §5) -----------------------------------------------------------


@dataclass
class SplitMatrices:
    """Who interacted with what, per split, over fixed user rows and catalogue columns.

    Attributes:
        user_ids: MovieLens user id of each row.
        movie_ids: MovieLens movie id of each column (the whole catalogue).
        train, val, test: binary (n_users, n_movies) CSR matrices of each split's interactions.
    """

    user_ids: np.ndarray
    movie_ids: np.ndarray
    train: sp.csr_matrix
    val: sp.csr_matrix
    test: sp.csr_matrix

    def relevant(self, split: str) -> sp.csr_matrix:
        """The held-out items of `split` ("val" or "test")."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        return getattr(self, split)

    def seen(self, split: str) -> sp.csr_matrix:
        """What a user has seen before `split`: train for val; train and val for test."""
        self.relevant(split)
        return self.train if split == "val" else (self.train + self.val).tocsr()

    def seen_movie_ids(self, split: str, rows: np.ndarray | None = None) -> list[np.ndarray]:
        """The movie ids to exclude for each user row (all rows by default), for index queries."""
        seen = self.seen(split)
        rows = np.arange(seen.shape[0]) if rows is None else np.asarray(rows)
        return [self.movie_ids[seen.indices[seen.indptr[r] : seen.indptr[r + 1]]] for r in rows]


def split_matrices(interactions: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray) -> SplitMatrices:
    """Build the train/val/test matrices from notebook 01's `split` column.

    Args:
        interactions: with user_id, movie_id and split.
        user_ids: the row order (e.g. every user with interactions, sorted).
        movie_ids: the column order: the whole catalogue (e.g. movie_table.index).
    """
    user_ids, movie_ids = np.asarray(user_ids), np.asarray(movie_ids)
    rows = pd.Index(user_ids).get_indexer(interactions["user_id"])
    cols = pd.Index(movie_ids).get_indexer(interactions["movie_id"])
    if (rows < 0).any() or (cols < 0).any():
        raise KeyError(
            f"interactions name users {interactions['user_id'][rows < 0].unique()[:5].tolist()} or movies "
            f"{interactions['movie_id'][cols < 0].unique()[:5].tolist()} outside the given rows/catalogue"
        )
    split = interactions["split"].to_numpy()
    matrices = {
        name: metrics.build_interaction_matrix(rows[split == name], cols[split == name], len(user_ids), len(movie_ids))
        for name in ("train", "val", "test")
    }
    return SplitMatrices(user_ids, movie_ids, **matrices)


def evaluate_scores(
    scores: np.ndarray, matrices: SplitMatrices, split: str, ks: Sequence[int] = RETRIEVAL_KS
) -> tuple[dict[str, float], np.ndarray]:
    """Full-ranking recall/NDCG/hit rate of a users x catalogue score matrix, seen items excluded.

    Args:
        scores: (n_users, n_movies), rows and columns as in `matrices`.
        split: "val" (train excluded) or "test" (train and val excluded).
        ks: list lengths.

    Returns:
        (metrics.retrieval_metrics's dict, the (n_users, max(ks)) top item columns).
    """
    top_items = metrics.top_k_from_scores(scores, max(ks), exclude=matrices.seen(split))
    return metrics.retrieval_metrics(top_items, matrices.relevant(split), ks), top_items


def evaluate_model(
    model: TwoTowerRetrievalModel,
    encoder: FeatureEncoder,
    user_table: pd.DataFrame,
    movie_table: pd.DataFrame,
    matrices: SplitMatrices,
    split: str,
    ks: Sequence[int] = RETRIEVAL_KS,
) -> tuple[dict[str, float], np.ndarray]:
    """Score every (user, movie) by the dot product of the towers' vectors and evaluate (see evaluate_scores)."""
    queries = user_embeddings(model, encoder, user_table, matrices.user_ids)
    _, candidates = movie_embeddings(model, encoder, movie_table.loc[matrices.movie_ids])
    return evaluate_scores(queries @ candidates.T, matrices, split, ks)


def popularity_scores(X_train: sp.spmatrix) -> np.ndarray:
    """The popularity anchor: every user gets the catalogue ordered by train interaction count.

    Returns:
        a read-only (n_users, n_movies) view of the counts (no copy per user).
    """
    counts = np.asarray(X_train.sum(axis=0), dtype=np.float32).ravel()
    return np.broadcast_to(counts, X_train.shape)


def ease_scores(X_train: sp.spmatrix, X_history: sp.spmatrix, l2: float) -> np.ndarray:
    """EASE fitted on `X_train`, scoring each user from `X_history` (train for val, train + val for test)."""
    return EASE(l2).fit(X_train).score(X_history)


def factorized_top_k_accuracy(
    model: TwoTowerRetrievalModel,
    encoder: FeatureEncoder,
    pairs: pd.DataFrame,
    user_table: pd.DataFrame,
    movie_table: pd.DataFrame,
    ks: Sequence[int] = FACTORIZED_KS,
    block: int = 4096,
) -> dict[str, float]:
    """TFRS's FactorizedTopK accuracy over held-out (user, movie) pairs, computed in numpy.

    The share of pairs whose movie is in the user's top-k over the whole catalogue (seen movies
    are not excluded, unlike the DESIGN §5 metrics): a pair is a hit at k when fewer than k
    movies score strictly higher than its movie. This equals `tfrs.metrics.FactorizedTopK` with a
    BruteForce index and `true_candidate_ids` (id-based evaluation; the tests check it). TFRS's
    score-based path (no ids) compares the pair's score from `reduce_sum(q * c)` with the index's
    matmul scores; the two differ in the last bit for about a third of the pairs, and when the
    matmul copy is larger the movie outranks itself and drops one place (measured on the test
    data: 0.51 instead of 0.555 at k=10). Here the pair's score is read from the same matrix it is
    compared with. Reported once after training: attached to the task, it would score the whole
    catalogue at every training step.

    Args:
        model, encoder, user_table, movie_table: the trained model and its inputs; the catalogue
            is every movie of `movie_table`.
        pairs: held-out interactions (user_id, movie_id), e.g. the test split.
        ks: cut-offs.
        block: pairs scored per numpy block (bounds memory).

    Returns:
        {"factorized_top_<k>_accuracy": share} for each k.
    """
    movie_ids, candidates = movie_embeddings(model, encoder, movie_table)
    users = np.unique(pairs["user_id"].to_numpy())
    queries = user_embeddings(model, encoder, user_table, users)
    user_rows = np.searchsorted(users, pairs["user_id"].to_numpy())
    movie_cols = pd.Index(movie_ids).get_indexer(pairs["movie_id"])
    if (movie_cols < 0).any():
        raise KeyError(f"movies {pairs['movie_id'][movie_cols < 0].unique()[:5].tolist()} are not in the catalogue")
    ranks = np.empty(len(pairs), np.int64)
    for start in range(0, len(pairs), block):
        stop = start + block
        scores = queries[user_rows[start:stop]] @ candidates.T
        positive = scores[np.arange(len(scores)), movie_cols[start:stop]]
        ranks[start:stop] = (scores > positive[:, None]).sum(axis=1)
    return {f"factorized_top_{k}_accuracy": float(np.mean(ranks < k)) for k in ks}


# ---- persistence of the model ------------------------------------------------------------------------


def save_retrieval_model(model: TwoTowerRetrievalModel, encoder: FeatureEncoder, folder: str | os.PathLike) -> Path:
    """Save weights, config, cardinalities and the encoder so `load_retrieval_model` rebuilds the same model.

    The encoder lives inside the folder: a refit on train + val has its own vocabularies.
    """
    return save_model_folder(model, encoder, folder, {"config": model.config.to_dict()})


def load_retrieval_model(folder: str | os.PathLike) -> tuple[TwoTowerRetrievalModel, FeatureEncoder]:
    """Rebuild a model saved by `save_retrieval_model` and load its weights."""
    state, encoder, weights = read_model_folder(folder, "05_retrieval")
    model = build_retrieval_model(state["cardinalities"], RetrievalConfig(**state["config"]))
    model.load_weights(weights).expect_partial()
    return model, encoder


# ---- indexes -----------------------------------------------------------------------------------------


class UserQueryModel(keras.Model):
    """MovieLens user ids in, query vectors out: the query model of a BruteForce or ScaNN index.

    It carries each user's encoded features (as non-trainable variables, saved with the index),
    so an index answers `index(tf.constant([user_id, ...], tf.int32))` with no pandas at serving
    time. An id it does not know gets the unknown user's features (every index 0).

    Args:
        model: the trained retrieval model (only its query tower is kept).
        encoder: its FeatureEncoder.
        user_table: encoded user features (encoder.user_table), indexed by user_id.
    """

    def __init__(self, model: TwoTowerRetrievalModel, encoder: FeatureEncoder, user_table: pd.DataFrame):
        super().__init__()
        self.query_tower = model.query_tower
        user_ids = user_table.index.to_numpy().astype(np.int64)
        if (user_ids < 0).any():
            raise ValueError("user ids must be non-negative integers")
        unknown_row = len(user_ids)  # an extra row of zeros: every feature unknown
        row_of_user = np.full(int(user_ids.max()) + 1 if len(user_ids) else 1, unknown_row, np.int32)
        row_of_user[user_ids] = np.arange(len(user_ids), dtype=np.int32)
        self.row_of_user = tf.Variable(row_of_user, trainable=False, name="row_of_user")
        inputs = encoder.user_inputs(user_table)
        self.user_features = {
            name: tf.Variable(np.concatenate([inputs[name], np.zeros(1, np.int32)]), trainable=False, name=name)
            for name in model_inputs(model.config)[0]
        }

    def call(self, user_ids: tf.Tensor) -> tf.Tensor:
        user_ids = tf.cast(user_ids, tf.int32)
        size = tf.shape(self.row_of_user)[0]
        known = (user_ids >= 0) & (user_ids < size)
        rows = tf.where(
            known,
            tf.gather(self.row_of_user, tf.clip_by_value(user_ids, 0, size - 1)),
            tf.shape(self.user_features["user_id"])[0] - 1,
        )
        return self.query_tower({name: tf.gather(values, rows) for name, values in self.user_features.items()})


def _fill_index(
    index: tfrs.layers.factorized_top_k.TopK,
    query_model: keras.Model | None,
    movie_ids: np.ndarray,
    movie_embeddings: np.ndarray,
) -> tfrs.layers.factorized_top_k.TopK:
    """Load the candidates into an index; with a query model, call it once so it can be saved."""
    index.index(tf.constant(movie_embeddings, tf.float32), tf.constant(np.asarray(movie_ids), tf.int32))
    index.n_candidates = len(movie_ids)
    if query_model is not None:
        # a Keras model is saved with the input signature of its first call: a batch of ids
        index(tf.zeros([1], tf.int32))
    return index


def build_bruteforce(
    query_model: keras.Model | None, movie_ids: np.ndarray, movie_embeddings: np.ndarray, k: int
) -> tfrs.layers.factorized_top_k.BruteForce:
    """An exact index: every query is scored against every movie (a matmul and a top-k).

    Args:
        query_model: maps queries to vectors (UserQueryModel), or None to query with vectors.
        movie_ids: identifier returned for each candidate row.
        movie_embeddings: (n_movies, dim) candidate vectors.
        k: default list length.
    """
    index = tfrs.layers.factorized_top_k.BruteForce(query_model, k=k)
    return _fill_index(index, query_model, movie_ids, movie_embeddings)


def build_scann(
    query_model: keras.Model | None,
    movie_ids: np.ndarray,
    movie_embeddings: np.ndarray,
    k: int,
    num_leaves: int,
    num_leaves_to_search: int,
    num_reordering_candidates: int | None,
    dimensions_per_block: int = 2,
    training_iterations: int = 12,
) -> tfrs.layers.factorized_top_k.ScaNN:
    """An approximate index (TFRS's ScaNN layer, dot-product distance).

    ScaNN partitions the movies into `num_leaves` clusters, searches only the
    `num_leaves_to_search` closest to the query with quantised (asymmetric-hashing) scores, and
    re-scores the best `num_reordering_candidates` exactly: far fewer dot products than
    BruteForce, for a small loss of recall. Leaves should hold at least k + (seen movies) movies
    in total, or short lists come back padded (see `query_excluding_seen`).

    Args:
        query_model, movie_ids, movie_embeddings, k: as for `build_bruteforce`.
        num_leaves: partitions (about sqrt(n_movies) is the usual start).
        num_leaves_to_search: partitions searched per query: the recall/speed knob.
        num_reordering_candidates: candidates re-scored exactly (None: no reordering).
        dimensions_per_block: dimensions per quantisation block (2 is the accurate choice).
        training_iterations: k-means iterations of the partitioning.
    """
    index = tfrs.layers.factorized_top_k.ScaNN(
        query_model,
        k=k,
        distance_measure="dot_product",
        num_leaves=num_leaves,
        num_leaves_to_search=num_leaves_to_search,
        num_reordering_candidates=num_reordering_candidates,
        dimensions_per_block=dimensions_per_block,
        training_iterations=training_iterations,
    )
    return _fill_index(index, query_model, movie_ids, movie_embeddings)


def save_index(index: tfrs.layers.factorized_top_k.TopK, path: str | os.PathLike) -> Path:
    """Save an index (with its query model) as a SavedModel, atomically (temp folder + rename).

    The ScaNN searcher travels as a TF resource of the `Scann` op namespace, which SavedModel
    refuses unless it is whitelisted. The index must have been called once (the builders do).
    """
    with atomic_dir(path) as tmp:
        tf.saved_model.save(index, str(tmp), options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
    return Path(path)


def load_index(path: str | os.PathLike) -> Any:
    """Load an index saved by `save_index`; call it with int32 user ids: `scores, movie_ids = index(ids)`.

    Importing `scann` first registers the ScaNN ops the graph needs.
    """
    path = Path(path)
    if not (path / "saved_model.pb").exists():
        raise FileNotFoundError(
            f"{path} holds no saved index (saved_model.pb missing): run notebook 05_retrieval first"
        )
    import scann  # noqa: F401  (registers the Scann ops)

    return tf.saved_model.load(str(path))


def _query(index: Any, queries: tf.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(index, tfrs.layers.factorized_top_k.TopK):
        scores, ids = index(queries, k=k)
    else:  # a reloaded SavedModel answers with the k it was built with
        scores, ids = index(queries)
    return scores.numpy(), ids.numpy()


class IndexLists(NamedTuple):
    """Top-k lists from an index, best first; a slot it could not fill holds score -inf and movie id -1.

    Attributes:
        scores: (n_users, k) float32.
        movie_ids: (n_users, k) int64.
        n_fallback: lists that came back short and were answered by the fallback index instead.
    """

    scores: np.ndarray
    movie_ids: np.ndarray
    n_fallback: int


def query_excluding_seen(
    index: Any,
    user_ids: np.ndarray,
    seen_movie_ids: Sequence[np.ndarray],
    k: int,
    batch_size: int = 1024,
    fallback: Any = None,
) -> IndexLists:
    """Top-k movies per user from an index, never returning a movie the user has already seen.

    TFRS 0.7.7 excludes items only through `TopK.query_with_exclusions(queries, exclusions, k)`:
    it retrieves k + (exclusion width) candidates, lowers excluded scores by 1e5 and re-runs
    `tf.math.top_k`. We do the same (query k + the batch's largest seen count, then filter), in
    numpy, for two reasons: ScaNN pads a list it cannot fill with NaN scores (and index 0), and
    `tf.math.top_k` ranks NaN first, so `query_with_exclusions` would return that padding (the
    catalogue's first movie) at rank 1; and BruteForce's top_k fails when k + width exceeds the
    catalogue. Users are batched in order of seen count, so a batch's padding stays small.

    A ScaNN list comes back short when the searched leaves hold fewer than k + seen movies: on
    MovieLens, the few users who have rated a large part of the catalogue. With `fallback` (an
    exact index), those users are answered by it, as a server would do.

    Args:
        index: a BruteForce/ScaNN layer with a UserQueryModel (or a reloaded one: it answers with
            its own k, which must then cover k + seen items).
        user_ids: MovieLens user ids.
        seen_movie_ids: for each user, the movie ids to exclude (SplitMatrices.seen_movie_ids).
        k: list length.
        batch_size: users per query batch.
        fallback: optional index for the users whose lists come back short.

    Returns:
        IndexLists(scores, movie_ids, n_fallback).
    """
    user_ids = np.asarray(user_ids)
    if len(seen_movie_ids) != len(user_ids):
        raise ValueError(f"{len(user_ids)} users but {len(seen_movie_ids)} lists of seen movies")
    n_candidates = getattr(index, "n_candidates", None)
    counts = np.array([len(s) for s in seen_movie_ids])
    order = np.argsort(counts, kind="stable")
    out_scores = np.full((len(user_ids), k), -np.inf, np.float32)
    out_ids = np.full((len(user_ids), k), NO_MOVIE, np.int64)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = int(counts[rows].max())
        wanted = k + width if n_candidates is None else min(k + width, n_candidates)
        scores, ids = _query(index, tf.constant(user_ids[rows], tf.int32), wanted)
        scores = np.where(np.isnan(scores), -np.inf, scores)
        for i, row in enumerate(rows):
            valid = np.isfinite(scores[i]) & ~np.isin(ids[i], seen_movie_ids[row])
            keep = np.flatnonzero(valid)[:k]  # the index returns its lists best first
            out_scores[row, : len(keep)] = scores[i, keep]
            out_ids[row, : len(keep)] = ids[i, keep]
    short = np.flatnonzero((out_ids == NO_MOVIE).any(axis=1))
    if fallback is not None and short.size:
        refill = query_excluding_seen(fallback, user_ids[short], [seen_movie_ids[r] for r in short], k, batch_size)
        out_scores[short], out_ids[short] = refill.scores, refill.movie_ids
    return IndexLists(out_scores, out_ids, int(short.size) if fallback is not None else 0)


def movie_columns(movie_ids: np.ndarray, top_movie_ids: np.ndarray) -> np.ndarray:
    """Map index results (movie ids, -1 padding) to catalogue columns for metrics.retrieval_metrics.

    Raises:
        ValueError: a list has unfilled slots (the index searched too few leaves for this k; pass
            a `fallback` to query_excluding_seen).
    """
    if (top_movie_ids == NO_MOVIE).any():
        raise ValueError(
            f"{int((top_movie_ids == NO_MOVIE).any(axis=1).sum())} lists are shorter than k: "
            "search more leaves (num_leaves_to_search), lower k, or give query_excluding_seen "
            "an exact fallback index"
        )
    return pd.Index(np.asarray(movie_ids)).get_indexer(top_movie_ids.ravel()).reshape(top_movie_ids.shape)


# ---- measurements ----------------------------------------------------------------------------------------


def overlap_at_k(a_ids: np.ndarray, b_ids: np.ndarray, k: int | None = None) -> float:
    """Mean over queries of |top-k of a ∩ top-k of b| / k: how much an approximate list agrees with an exact one.

    With b the exact top-k, this is the ANN's recall@k. Padding (-1) never counts as common.
    """
    a_ids, b_ids = np.asarray(a_ids), np.asarray(b_ids)
    if a_ids.shape[0] != b_ids.shape[0]:
        raise ValueError(f"a has {a_ids.shape[0]} queries but b has {b_ids.shape[0]}")
    k = k or min(a_ids.shape[1], b_ids.shape[1])
    if k > min(a_ids.shape[1], b_ids.shape[1]):
        raise ValueError(f"k={k} is longer than the lists ({a_ids.shape[1]}, {b_ids.shape[1]})")
    common = [len(set(a[:k]) & set(b[:k]) - {NO_MOVIE}) for a, b in zip(a_ids, b_ids)]
    return float(np.mean(common) / k)


def time_queries(
    index: Any, queries: np.ndarray, batch: int = 1024, k: int | None = None, n_single: int = 200, warmup: int = 10
) -> dict[str, float]:
    """Latency of an index: single queries (median after warm-up) and one batch.

    Both go through one `tf.function`, as a server would call the index, so the numbers measure
    the search, not Python's eager overhead.

    Args:
        index: a TopK layer (or a reloaded index) taking int32 user ids.
        queries: user ids; the first `batch` (repeated if fewer) form the batch.
        batch: size of the batch query (1,024 users).
        k: list length (the index's default if None).
        n_single: single queries timed.
        warmup: untimed single queries first (tracing, caches).

    Returns:
        {"single_query_latency_ms", "batch_latency_ms", "batch_latency_per_query_ms", "batch_queries_per_s"}.
    """
    queries = np.asarray(queries)
    if isinstance(index, tfrs.layers.factorized_top_k.TopK):
        search = tf.function(lambda q: index(q, k=k))
    else:
        search = tf.function(lambda q: index(q))
    single = []
    for i in range(warmup + n_single):
        q = tf.constant(queries[i % len(queries)][None], tf.int32)
        start = time.perf_counter()
        search(q)[1].numpy()
        if i >= warmup:
            single.append(time.perf_counter() - start)
    batch_queries = tf.constant(np.resize(queries, batch), tf.int32)
    search(batch_queries)[1].numpy()  # trace the batch shape
    start = time.perf_counter()
    search(batch_queries)[1].numpy()
    batch_s = time.perf_counter() - start
    return {
        "single_query_latency_ms": float(np.median(single) * 1e3),
        "batch_latency_ms": batch_s * 1e3,
        "batch_latency_per_query_ms": batch_s * 1e3 / batch,
        "batch_queries_per_s": batch / batch_s,
    }


__all__ = [
    "RetrievalConfig",
    "QueryTower",
    "CandidateTower",
    "TwoTowerRetrievalModel",
    "build_retrieval_model",
    "candidate_sampling_probability",
    "train_retrieval_model",
    "FullRankingMonitor",
    "user_embeddings",
    "movie_embeddings",
    "SplitMatrices",
    "split_matrices",
    "evaluate_scores",
    "evaluate_model",
    "popularity_scores",
    "ease_scores",
    "factorized_top_k_accuracy",
    "save_retrieval_model",
    "load_retrieval_model",
    "UserQueryModel",
    "build_bruteforce",
    "build_scann",
    "save_index",
    "load_index",
    "IndexLists",
    "query_excluding_seen",
    "movie_columns",
    "overlap_at_k",
    "time_queries",
]
