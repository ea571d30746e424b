"""Retrieval indexes over the movie embeddings: exact (BruteForce) and approximate (ScaNN), saved and reloaded.

Both are TFRS `factorized_top_k` layers. With a `UserQueryModel` inside they take MovieLens user
ids; built without a query model they take query vectors (the sequential retriever's, computed
from a history). They return (scores, movie ids), best first. A saved index keeps a
`search(queries, k)` function whose k is chosen per call, so a reloaded index serves any list
length, as the in-memory one does. The FAISS indexes (`faiss_indexes`) offer the same call;
`save_index` and `load_index` take every kind, so a loader need not know which one a folder holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys.core.io import atomic_dir, write_json
from recsys.features.encoding import FeatureEncoder
from recsys.models.retrieval_model import TwoTowerRetrievalModel, model_inputs, with_prior_one
from recsys.retrieval.faiss_indexes import META_FILE as FAISS_META_FILE
from recsys.retrieval.faiss_indexes import FaissIndex, load_faiss_index
from recsys.retrieval.stored_queries import as_numpy, query_model_vectors, vectors_of_users

TopK = tfrs.layers.factorized_top_k.TopK
KIND_FILE = "index_kind.json"  # beside a saved TFRS index: {"kind": "scann" | "bruteforce"}


class UserQueryModel(tf.keras.Model):
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
        self.prior_dimension = bool(model.popularity_prior)  # the served vectors' last 1 (`query_vectors`)
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
            for name in model_inputs(model.config, encoder.cardinalities())[0]
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
        vectors = self.query_tower({name: tf.gather(values, rows) for name, values in self.user_features.items()})
        return with_prior_one(vectors) if self.prior_dimension else vectors


def _fill_index(index: TopK, query_model: tf.keras.Model | None, movie_ids: np.ndarray, vectors: np.ndarray) -> TopK:
    """Load the candidates into an index; with a query model, call it once so it can be saved."""
    index.index(tf.constant(vectors, tf.float32), tf.constant(np.asarray(movie_ids), tf.int32))
    index.n_candidates, index.query_dim = len(movie_ids), int(np.shape(vectors)[1])
    # a layer is saved with the input signature of its first call: a batch of ids, or of query vectors
    index(tf.zeros([1], tf.int32) if query_model is not None else tf.zeros([1, index.query_dim], tf.float32))
    return index


def build_bruteforce(
    query_model: tf.keras.Model | None, movie_ids: np.ndarray, movie_embeddings: np.ndarray, k: int
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
    query_model: tf.keras.Model | None,
    movie_ids: np.ndarray,
    movie_embeddings: np.ndarray,
    k: int,
    num_leaves: int,
    num_leaves_to_search: int,
    num_reordering_candidates: int | None,
    seed: int,
    dimensions_per_block: int = 2,
    training_iterations: int = 12,
) -> tfrs.layers.factorized_top_k.ScaNN:
    """An approximate index (TFRS's ScaNN layer, dot-product distance), built the same way for the same seed.

    ScaNN partitions the movies into `num_leaves` clusters, searches only the
    `num_leaves_to_search` closest to the query with quantised (asymmetric-hashing) scores, and
    re-scores the best `num_reordering_candidates` exactly: far fewer dot products than
    BruteForce, for a small loss of recall. Leaves should hold at least k + (seen movies) movies
    in total, or short lists come back padded (an exact fallback answers those users; see
    `retrievers.IndexRetriever`).

    TFRS's layer builds the partitioning from a k-means with random initial centres that ScaNN
    seeds differently in every process (measured: ScaNN's lists differed between two builds on
    the same vectors, with one training thread or two). The searcher is built here from the
    same ScaNN configuration but with k-means++ initial centres and ScaNN's own
    `clustering_seed` set to `seed`: the same vectors and seed give the same index, so a run's
    metrics repeat exactly.

    Args:
        query_model, movie_ids, movie_embeddings, k: as for `build_bruteforce`.
        num_leaves: partitions (about sqrt(n_movies) is the usual start).
        num_leaves_to_search: partitions searched per query: the recall/speed knob.
        num_reordering_candidates: candidates re-scored exactly (None: no reordering).
        seed: the partitioning's clustering seed (the run's seed).
        dimensions_per_block: dimensions per quantisation block (2 is the accurate choice).
        training_iterations: k-means iterations of the partitioning.
    """
    from scann.scann_ops.py import scann_ops

    index = tfrs.layers.factorized_top_k.ScaNN(query_model, k=k, distance_measure="dot_product")

    def build_searcher(candidates: tf.Tensor) -> Any:
        builder = scann_ops.builder(db=candidates, num_neighbors=k, distance_measure="dot_product")
        builder = builder.tree(
            num_leaves=num_leaves,
            num_leaves_to_search=num_leaves_to_search,
            training_iterations=training_iterations,
            random_init=False,
        ).score_ah(dimensions_per_block=dimensions_per_block)
        if num_reordering_candidates is not None:
            builder = builder.reorder(num_reordering_candidates)
        config = builder.create_config()
        if config.count("partitioning {") != 1:
            raise RuntimeError("unexpected ScaNN configuration: cannot set the partitioning's clustering seed")
        config = config.replace("partitioning {", f"partitioning {{\n  clustering_seed: {int(seed)}", 1)
        return scann_ops.create_searcher(candidates, config, shared_name=f"{index.name}/{uuid.uuid4()}")

    index._build_searcher = build_searcher  # TFRS's hook for the searcher that `index()` builds
    return _fill_index(index, query_model, movie_ids, movie_embeddings)


def _query_spec(index: TopK) -> tf.TensorSpec:
    """What the index is queried with: user ids (with a query model inside) or query vectors (without)."""
    if index.query_model is not None:
        return tf.TensorSpec([None], tf.int32)
    return tf.TensorSpec([None, index.query_dim], tf.float32)


def index_kind(index: Any) -> str | None:
    """The kind of an index: "scann", "bruteforce", "faiss_hnsw" or "faiss_ivf" (None: a reloaded index saved
    before kinds were recorded)."""
    if isinstance(index, (FaissIndex, LoadedIndex)):
        return index.kind
    if isinstance(index, tfrs.layers.factorized_top_k.ScaNN):
        return "scann"
    if isinstance(index, tfrs.layers.factorized_top_k.BruteForce):
        return "bruteforce"
    raise TypeError(f"not a retrieval index: {type(index).__name__}")


def save_index(index: TopK | FaissIndex, path: str | os.PathLike) -> Path:
    """Save an index (with its query model) atomically (temp folder + rename): a FAISS index as its folder
    (`FaissIndex.save`), a TFRS index as a SavedModel with its kind in `index_kind.json`.

    Besides the layer's own call (which answers with the k it was built with), the SavedModel
    keeps `search(queries, k)` (user ids, or query vectors for an index built without a query
    model), k chosen per call, and the catalogue size `n_candidates`, so a
    reloaded index serves lists of any length. The ScaNN searcher travels as a TF resource of the
    `Scann` op namespace, which SavedModel refuses unless it is whitelisted. The index must have
    been built by `build_bruteforce`/`build_scann` (they call it once, which fixes its signature).
    """
    if isinstance(index, FaissIndex):
        return index.save(path)
    kind = index_kind(index)
    query_spec = _query_spec(index)
    index.search = tf.function(
        lambda queries, k: index(queries, k=k), input_signature=[query_spec, tf.TensorSpec([], tf.int32)]
    )
    index.n_candidates_saved = tf.Variable(index.n_candidates, trainable=False, name="n_candidates")
    index.query_dim_saved = tf.Variable(0 if query_spec.shape.rank == 1 else query_spec.shape[1], name="query_dim")
    with atomic_dir(path) as tmp, _quiet_tensorflow_logger():
        tf.saved_model.save(index, str(tmp), options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
        write_json(tmp / KIND_FILE, {"kind": kind})
    return Path(path)


@contextlib.contextmanager
def _quiet_tensorflow_logger() -> Iterator[None]:
    # Saving a Keras layer as a plain SavedModel logs, per sub-model, that its __init__ arguments
    # "contain non-serializable objects" (the index is reloaded as a SavedModel, never rebuilt
    # from a Keras config) and "Assets written to <temporary folder>": neither is news to a reader.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# a saved TFRS ScaNN layer's searcher state (`scann_ops.ScannState`) -> the file ScaNN's own searcher reads it from
_SCANN_STATE_FILES = {
    "scann_config": "scann_config.pb",
    "serialized_partitioner": "serialized_partitioner.pb",
    "ah_codebook": "ah_codebook.pb",
    "datapoint_to_token": "datapoint_to_token.npy",
    "hashed_dataset": "hashed_dataset.npy",
    "int8_dataset": "int8_dataset.npy",
    "int8_multipliers": "int8_multipliers.npy",
    "dp_norms": "dp_norms.npy",
    "dataset": "dataset.npy",
}


def scann_searcher_from_state(state: Any) -> Any:
    """ScaNN's own searcher (`scann_ops_pybind`) over the searcher state a TFRS ScaNN layer saved.

    The state is what the layer's TensorFlow op rebuilds its searcher from at every call (its
    config, partitioner, codebook, hashed and raw datasets). Written out as the files ScaNN's
    serialisation uses and loaded by `scann_ops_pybind.load_searcher`, it is the same searcher in
    the same C++ library, called without TensorFlow (`LoadedIndex` searches it as the layer does).
    A part the configuration does not use is saved as an empty scalar and not written.
    """
    from scann.scann_ops.py import scann_ops_pybind, scann_ops_pybind_backcompat

    with tempfile.TemporaryDirectory() as folder:
        for name, file in _SCANN_STATE_FILES.items():
            value = getattr(state, name).numpy()
            if value.ndim == 0:  # a part this configuration does not have
                continue
            if value.dtype == object:  # a serialised proto, as bytes
                if value.shape != (1,) or not value[0]:
                    continue
                Path(folder, file).write_bytes(value[0])
            else:
                np.save(Path(folder, file), value)
        scann_ops_pybind_backcompat.populate_and_save_assets_proto(folder)  # the list of files it reads
        return scann_ops_pybind.load_searcher(folder, assets_backcompat_shim=False)


class LoadedIndex:
    """A TFRS index reloaded by `load_index`: call it like the layer, `scores, movie_ids = index(queries, k=...)`.

    `queries` are user ids or query vectors, as the index was built to take.

    A reloaded ScaNN index is searched without TensorFlow: the layer's own call runs the query
    model and rebuilds its searcher from the saved state at every request (0.74-0.90 ms of a
    request's index search on ml-1m-half, against 0.34 ms this way). Here ScaNN's own searcher is
    made once from that state (`scann_searcher_from_state`) and every user's query vector once
    from the saved query model (`stored_queries`), so a request is a numpy lookup and one ScaNN
    search. The lists are the layer's (`retrieval.reload_checks` compares them with the live
    index at every run).
    A BruteForce index (the exact fallback) is called through the saved graph.

    Attributes:
        n_candidates: the catalogue size (the most a list can hold).
        kind: "scann" or "bruteforce" (None for an index saved before kinds were recorded).
    """

    def __init__(self, saved: Any, kind: str | None = None):
        self._saved, self.kind = saved, kind
        self.n_candidates = int(saved.n_candidates_saved.numpy())
        dim = int(saved.query_dim_saved.numpy()) if hasattr(saved, "query_dim_saved") else 0
        self._query = tf.TensorSpec([None], tf.int32) if dim == 0 else tf.TensorSpec([None, dim], tf.float32)
        self.query_dim = dim  # 0: the index takes user ids
        # the restored graph itself: a restored function's dispatch costs about 0.5 ms a request
        self._search = saved.search.get_concrete_function(self._query, tf.TensorSpec([], tf.int32))
        self._searcher = self._identifiers = self._user_rows = self._user_vectors = None
        if kind == "scann":
            self._searcher = scann_searcher_from_state(saved._serialized_searcher)
            identifiers = getattr(saved, "_identifiers", None)
            self._identifiers = None if identifiers is None else identifiers.numpy()
            if dim == 0:
                self._user_rows, self._user_vectors = query_model_vectors(saved.query_model)

    def __call__(self, queries: tf.Tensor, k: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        if k is None:
            return self._saved(tf.cast(queries, self._query.dtype))
        if self._searcher is None:
            return self._search(tf.cast(queries, self._query.dtype), tf.constant(k, tf.int32))
        if self._user_vectors is not None:
            vectors = vectors_of_users(queries, self._user_rows, self._user_vectors)
        else:
            vectors = np.asarray(as_numpy(queries), np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != self.query_dim:  # ScaNN itself would not say what was wrong
                raise ValueError(f"this index takes query vectors of shape (n, {self.query_dim}), got {vectors.shape}")
        return self._scann_search(vectors, int(k))

    def _scann_search(self, vectors: np.ndarray, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        """The layer's (scores, ids) for query vectors, from ScaNN's own searcher.

        Searched as TFRS's layer searches (`parallelize_batch_searches`, its default): ScaNN's
        parallel batched search, which splits a batch into mini-batches whose size depends on the
        batch and on the machine's threads (at most 256), and a query's list can depend on its
        mini-batch. The same call with the same rule gives the layer's lists on any machine. A
        list it cannot fill is padded with NaN scores (row 0) up to k; the layer keeps only as
        many columns as the longest list of the batch holds, and so does this.
        """
        if not len(vectors):
            rows, scores = np.zeros((0, 0), np.int32), np.zeros((0, 0), np.float32)
        else:
            rows, scores = self._searcher.search_batched_parallel(vectors, final_num_neighbors=k)
        width = int((~np.isnan(scores)).sum(axis=1).max(initial=0))
        rows, scores = rows[:, :width].astype(np.int32), scores[:, :width]
        ids = rows if self._identifiers is None else self._identifiers[rows]
        return tf.constant(scores), tf.constant(ids)


def load_index(path: str | os.PathLike) -> LoadedIndex | FaissIndex:
    """Load an index saved by `save_index`, whichever kind the folder holds: a FAISS folder (`faiss_index.json`)
    or a SavedModel (importing `scann` first registers the ScaNN ops its graph needs).

    Raises:
        FileNotFoundError: `path` holds no index saved by `save_index`.
    """
    path = Path(path)
    if (path / FAISS_META_FILE).exists():
        return load_faiss_index(path)
    if not (path / "saved_model.pb").exists():
        raise FileNotFoundError(
            f"{path} holds no saved index (neither saved_model.pb nor {FAISS_META_FILE}): save one with save_index"
        )
    import scann  # noqa: F401  (registers the Scann ops)

    kind = json.loads((path / KIND_FILE).read_text())["kind"] if (path / KIND_FILE).exists() else None
    return LoadedIndex(tf.saved_model.load(str(path)), kind)


def time_queries(
    index: TopK | LoadedIndex | FaissIndex,
    queries: np.ndarray,
    batch: int = 1024,
    k: int | None = None,
    n_single: int = 200,
    warmup: int = 10,
) -> dict[str, float]:
    """Latency of an index: single queries (median after warm-up) and one batch.

    A TFRS layer goes through one `tf.function`, as a server would call it, so the numbers measure
    the search, not Python's eager overhead; a reloaded index (`LoadedIndex`: a ScaNN index
    searched by ScaNN's own searcher, a BruteForce one through its saved graph) and a FAISS index
    are called as they are served.

    Args:
        index: a TopK layer, a LoadedIndex or a FaissIndex, taking user ids or query vectors.
        queries: user ids (integers) or query vectors (floats, one per row); the first `batch`
            (repeated if fewer) form the batch.
        batch: size of the batch query (1,024 users).
        k: list length (the index's default if None).
        n_single: single queries timed.
        warmup: untimed single queries first (tracing, caches).

    Returns:
        {"single_query_latency_ms", "batch_latency_ms", "batch_latency_per_query_ms", "batch_queries_per_s"}.
    """
    queries = np.asarray(queries)
    dtype = tf.float32 if queries.dtype.kind == "f" else tf.int32  # query vectors or user ids

    def top_k(q):
        return index(q, k=k)

    # autograph off: it has nothing to convert here, and it warns when it cannot read a lambda's source
    search = tf.function(top_k, autograph=False) if isinstance(index, TopK) else top_k
    single = []
    for i in range(warmup + n_single):
        q = tf.constant(queries[i % len(queries)][None], dtype)
        start = time.perf_counter()
        search(q)[1].numpy()
        if i >= warmup:
            single.append(time.perf_counter() - start)
    batch_queries = tf.constant(queries[np.resize(np.arange(len(queries)), batch)], dtype)
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
