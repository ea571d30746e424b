"""FAISS indexes (HNSW, IVF, inner product) behind the TFRS indexes' interface: `index(queries, k=...)`, saved and reloaded.

A `FaissIndex` answers `scores, movie_ids = index(queries, k=...)` as the TFRS layers of
`indexes` do (tensors, best first), with `n_candidates` and a default `k`, so `IndexRetriever`,
`indexes.time_queries` and the reload checks take it unchanged. Built with a `UserQueryModel` it
takes MovieLens user ids: the query vector of every user the query model knows, and of the
unknown user (every feature unknown, what the query model gives an id it does not know), is
computed once at build time and stored with the index, so serving runs no TensorFlow model.
Built without one it takes query vectors (the sequential retriever's).

A slot FAISS could not fill (id -1, score -3.4e38) comes back as NO_MOVIE with a NaN score, as
ScaNN pads: what `IndexRetriever` and `recommend_for_history` drop (both read NaN as -inf, and
numpy's `nan_to_num` would turn -inf itself into a finite score). A saved index is a folder: FAISS's own file, the movie ids, the
user vectors and `faiss_index.json` naming its kind and settings; `indexes.load_index` reads it.

Determinism: builds run on one OpenMP thread (HNSW inserts vectors in parallel otherwise, in an
order that depends on thread timing); HNSW's level draws and IVF's k-means are seeded with
`seed`, so the same vectors and seed give the same index and the same lists. Searches are
deterministic at any thread count (each query is searched on its own).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import tensorflow as tf

from recsys.core.ids import NO_MOVIE
from recsys.core.io import atomic_dir, write_json
from recsys.retrieval.stored_queries import as_numpy, query_model_vectors, vectors_of_users

FAISS_KINDS = ("faiss_hnsw", "faiss_ivf")
META_FILE = "faiss_index.json"  # marks a folder as a saved FaissIndex
# the folder's other files: FAISS's own, the id of each row, and (an index taking user ids) the stored query vectors
_INDEX_FILE, _MOVIE_IDS = "index.faiss", "movie_ids.npy"
_USER_VECTORS, _ROW_OF_USER = "user_vectors.npy", "row_of_user.npy"


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run FAISS on one OpenMP thread inside the block (a deterministic build), then restore the thread count."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class FaissIndex:
    """A FAISS index over the movie vectors, called like a TFRS index: `scores, movie_ids = index(queries, k=...)`.

    Attributes:
        kind: "faiss_hnsw" or "faiss_ivf".
        index: the FAISS index (inner product), its rows the candidates in `movie_ids` order.
        movie_ids: (n_candidates,) the id of each row.
        k: the default list length.
        n_candidates: the catalogue size (the most a list can hold).
        query_dim: the vectors' dimension.
        user_vectors, row_of_user: the stored query vectors (`stored_queries.query_model_vectors`), or None for
            an index queried with vectors.
        settings: what it was built with (kind-specific; saved with it and re-applied on load).
    """

    def __init__(
        self,
        kind: str,
        index: Any,
        movie_ids: np.ndarray,
        k: int,
        settings: dict[str, Any],
        user_vectors: np.ndarray | None = None,
        row_of_user: np.ndarray | None = None,
    ):
        if kind not in FAISS_KINDS:
            raise ValueError(f"a FAISS index is one of {FAISS_KINDS}, got {kind!r}")
        if (user_vectors is None) != (row_of_user is None):
            raise ValueError("give both user_vectors and row_of_user (an index taking user ids) or neither")
        self.kind, self.index, self.k, self.settings = kind, index, int(k), dict(settings)
        self.movie_ids = np.asarray(movie_ids, np.int64)
        self.n_candidates, self.query_dim = int(index.ntotal), int(index.d)
        self.user_vectors, self.row_of_user = user_vectors, row_of_user
        self._apply_search_settings()

    def _apply_search_settings(self) -> None:
        if self.kind == "faiss_hnsw":
            self.index.hnsw.efSearch = int(self.settings["ef_search"])
        else:
            self.index.nprobe = int(self.settings["nprobe"])

    @property
    def takes_user_ids(self) -> bool:
        """Whether it is queried with user ids (built with a query model) rather than with query vectors."""
        return self.user_vectors is not None

    def query_vectors(self, queries: Any) -> np.ndarray:
        """The (n, query_dim) float32 vectors searched for `queries` (user ids -> their stored vectors)."""
        if self.takes_user_ids:
            return vectors_of_users(queries, self.row_of_user, self.user_vectors)
        queries = as_numpy(queries)
        if queries.ndim != 2 or queries.shape[1] != self.query_dim:
            raise ValueError(f"this index takes query vectors of shape (n, {self.query_dim}), got {queries.shape}")
        return np.ascontiguousarray(queries, np.float32)

    def __call__(self, queries: Any, k: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """(scores, movie ids), each (n, k), best first; an unfilled slot holds a NaN score and NO_MOVIE."""
        k = self.k if k is None else int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        searched = min(k, int(self.settings["ef_search"])) if self.kind == "faiss_hnsw" else k
        scores, positions = self.index.search(self.query_vectors(queries), searched)
        if searched < k:  # HNSW: at most ef_search movies, the rest padded (see `build_faiss_hnsw`)
            scores = np.pad(scores, ((0, 0), (0, k - searched)), constant_values=np.nan)
            positions = np.pad(positions, ((0, 0), (0, k - searched)), constant_values=-1)
        filled = positions >= 0
        ids = np.where(filled, self.movie_ids[np.where(filled, positions, 0)], NO_MOVIE)
        return tf.constant(np.where(filled, scores, np.nan).astype(np.float32)), tf.constant(ids)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index as a folder, atomically: FAISS's file, the movie ids, the user vectors, faiss_index.json."""
        with atomic_dir(path) as tmp:
            faiss.write_index(self.index, str(tmp / _INDEX_FILE))
            np.save(tmp / _MOVIE_IDS, self.movie_ids)
            if self.takes_user_ids:
                np.save(tmp / _USER_VECTORS, self.user_vectors)
                np.save(tmp / _ROW_OF_USER, self.row_of_user)
            meta = {"kind": self.kind, "k": self.k, "n_candidates": self.n_candidates, "query_dim": self.query_dim}
            meta |= {"queries": "user_ids" if self.takes_user_ids else "vectors", "settings": self.settings}
            write_json(tmp / META_FILE, {**meta, "faiss_version": faiss.__version__})
        return Path(path)


def load_faiss_index(path: str | os.PathLike) -> FaissIndex:
    """Load an index written by `FaissIndex.save` (its search settings re-applied).

    Raises:
        FileNotFoundError: `path` holds no saved FAISS index.
    """
    path = Path(path)
    if not (path / META_FILE).exists():
        raise FileNotFoundError(f"{path} holds no saved FAISS index ({META_FILE} missing): save one with save_index")
    meta = json.loads((path / META_FILE).read_text())
    users = meta["queries"] == "user_ids"
    return FaissIndex(
        meta["kind"],
        faiss.read_index(str(path / _INDEX_FILE)),
        np.load(path / _MOVIE_IDS),
        meta["k"],
        meta["settings"],
        np.load(path / _USER_VECTORS) if users else None,
        np.load(path / _ROW_OF_USER) if users else None,
    )


def _candidates(movie_ids: np.ndarray, movie_embeddings: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(movie_embeddings, np.float32)
    if vectors.ndim != 2 or len(vectors) != len(movie_ids) or not len(vectors):
        raise ValueError(
            f"movie_embeddings must be (n_movies, dim) with one row per movie id: got {vectors.shape} "
            f"for {len(movie_ids)} ids"
        )
    return vectors


def _finish(
    kind: str, index: Any, query_model: Any, movie_ids: np.ndarray, k: int, settings: dict[str, Any]
) -> FaissIndex:
    users = query_model_vectors(query_model) if query_model is not None else (None, None)
    if users[1] is not None and users[1].shape[1] != index.d:
        raise ValueError(f"the query model's vectors have {users[1].shape[1]} dims, the movie vectors {index.d}")
    return FaissIndex(kind, index, movie_ids, k, settings, user_vectors=users[1], row_of_user=users[0])


def build_faiss_hnsw(
    query_model: Any,
    movie_ids: np.ndarray,
    movie_embeddings: np.ndarray,
    k: int,
    m: int,
    ef_construction: int,
    ef_search: int,
    seed: int,
) -> FaissIndex:
    """An HNSW graph over the movies (`faiss.IndexHNSWFlat`, inner product): a greedy walk per query, exact scores.

    A search walks the graph keeping max(efSearch, k) candidates (FAISS's `HNSW::search`), so a
    longer list would come from a wider walk, and a user's list would depend on how long a list
    the batch it was asked in wanted (the retrievers ask a batch for n + its users' most seen
    movies). So every search here asks FAISS for at most `ef_search` movies, one walk whatever k,
    and pads the rest of a longer list: the first k of a longer list are the list of k, the same
    in a batch and in a single request, and a list the walk cannot fill goes to the exact
    fallback (`IndexRetriever`; counted as `<kind>_fallback_users`). Raise `ef_search` to serve
    heavy users (n + seen movies above it) from the graph.

    Args:
        query_model: a `UserQueryModel` (the index then takes user ids), or None (query vectors).
        movie_ids, movie_embeddings: the candidates, one row per id.
        k: default list length.
        m: neighbours per node (FAISS's M; 32 is a common start).
        ef_construction: candidates explored when a movie is inserted (build quality).
        ef_search: candidates explored per query, and the longest list a search returns filled.
        seed: seeds the draw of each node's level (the build runs on one thread, so it is repeatable).
    """
    vectors = _candidates(movie_ids, movie_embeddings)
    index = faiss.IndexHNSWFlat(vectors.shape[1], int(m), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(ef_construction)
    index.hnsw.rng = faiss.RandomGenerator(int(seed))
    with _one_thread():
        index.add(vectors)
    settings = {"m": int(m), "ef_construction": int(ef_construction), "ef_search": int(ef_search), "seed": int(seed)}
    return _finish("faiss_hnsw", index, query_model, movie_ids, k, settings)


def build_faiss_ivf(
    query_model: Any,
    movie_ids: np.ndarray,
    movie_embeddings: np.ndarray,
    k: int,
    nlist: int,
    nprobe: int,
    seed: int,
    training_iterations: int = 25,
) -> FaissIndex:
    """An inverted file over the movies (`faiss.IndexIVFFlat`, inner product, an exact flat quantizer).

    FAISS clusters the movies into `nlist` lists (spherical k-means, as it does for inner
    product) and scores, exactly, the movies of the `nprobe` lists whose centres score best for the
    query: ScaNN's partitioning without its quantised scores. A list longer than the probed lists
    hold comes back padded (see `IndexRetriever`'s fallback).

    Args:
        query_model, movie_ids, movie_embeddings, k: as for `build_faiss_hnsw`.
        nlist: lists (about sqrt(n_movies)).
        nprobe: lists searched per query: the recall/speed knob (nprobe = nlist is exact search).
        seed: the k-means seed (the build runs on one thread, so it is repeatable).
        training_iterations: k-means iterations (FAISS's generic `Clustering` default; its IVF quantizer's is 10).

    Raises:
        ValueError: nlist exceeds the catalogue, or nprobe is not in 1..nlist.
    """
    vectors = _candidates(movie_ids, movie_embeddings)
    if not 1 <= nlist <= len(vectors):
        raise ValueError(f"nlist={nlist}: must be between 1 and the catalogue's {len(vectors)} movies")
    if not 1 <= nprobe <= nlist:
        raise ValueError(f"nprobe={nprobe}: must be between 1 and nlist ({nlist})")
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], int(nlist), faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.niter = int(seed), int(training_iterations)
    index.cp.min_points_per_centroid = 1  # only silences FAISS's "please provide more training points" on stderr
    with _one_thread():
        index.train(vectors)
        index.add(vectors)
    settings = {"nlist": int(nlist), "nprobe": int(nprobe), "training_iterations": int(training_iterations)}
    return _finish("faiss_ivf", index, query_model, movie_ids, k, {**settings, "seed": int(seed)})
