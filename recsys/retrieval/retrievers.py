"""Retrievers: a user's top-n unseen movies from an index (BruteForce, ScaNN, reloaded) or from vectors in numpy.

A retriever answers `retrieve_batch(user_ids, n, excludes)` with (movie_ids, scores) arrays of
shape (n_users, n), best first, never a movie in the user's `exclude`, a slot it could not
fill holding NO_MOVIE with score -inf; `retrieve(user_id, n, exclude)` is the one-user view
without padding. A user it cannot serve raises UnknownUserError (a KeyError).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import tensorflow as tf

from recsys.core.errors import UnknownUserError
from recsys.core.ids import NO_MOVIE
from recsys.evaluation import metrics

__all__ = ["IndexLists", "IndexRetriever", "NumpyRetriever", "Retriever", "UnknownUserError"]


@runtime_checkable
class Retriever(Protocol):
    """What the serving path needs from a retrieval index (see the module docstring)."""

    def retrieve_batch(
        self, user_ids: Sequence[int], n: int, excludes: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def retrieve(self, user_id: int, n: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class _OneUser:
    """`retrieve` for one user, from `retrieve_batch`."""

    def retrieve(self, user_id: int, n: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        exclude = np.empty(0, np.int64) if exclude is None else np.asarray(exclude)
        ids, scores = self.retrieve_batch([user_id], n, [exclude])
        filled = ids[0] != NO_MOVIE
        return ids[0][filled], scores[0][filled]


class IndexLists(NamedTuple):
    """Top-k lists from an index, best first; a slot it could not fill holds score -inf and NO_MOVIE.

    Attributes:
        scores: (n_users, k) float32.
        movie_ids: (n_users, k) int64.
        n_fallback: lists that came back short and were answered by the fallback index instead.
    """

    scores: np.ndarray
    movie_ids: np.ndarray
    n_fallback: int


class IndexRetriever(_OneUser):
    """Top-n unseen movies from an index: a TFRS `factorized_top_k` layer (BruteForce, ScaNN), a FAISS index
    (`faiss_indexes.FaissIndex`), or one reloaded by `load_index`: anything called as `index(queries, k=...)`
    that returns (scores, ids) tensors, best first, with the catalogue size as `n_candidates`.

    An index cannot skip a user's seen movies itself. TFRS 0.7.7 offers
    `TopK.query_with_exclusions`, which asks for k + (exclusion width) candidates, lowers the
    excluded scores and re-runs `tf.math.top_k`; that breaks twice here: ScaNN pads a list it
    cannot fill with NaN scores (and index 0), which `top_k` ranks first, and BruteForce's
    `top_k` fails when k + width exceeds the catalogue. So the index is asked for n + seen
    candidates (capped at the catalogue) and the padding (NaN or -inf scores; a FAISS index pads
    as ScaNN does) and seen movies are dropped in numpy. Users are queried in batches
    sorted by their number of seen movies, so a batch asks for little more than its users need.

    A ScaNN or FAISS IVF list comes back short when its searched leaves hold fewer than n + seen
    movies (an HNSW list when its walk finds fewer): on MovieLens, the few users who have rated a
    large part of the catalogue. With `fallback` (an exact index), those users are answered by
    it, as a server would do.

    Args:
        index: an indexed BruteForce or ScaNN layer or a FaissIndex (with a query model, or queried
            with vectors that `user_index` gives), or an index reloaded by `load_index`.
        user_index: user id -> the query model's input (a pandas Series, a mapping, a callable, or
            an object with a batched `queries(user_ids)` such as `history_queries.HistoryQueries`);
            None passes the MovieLens user id unchanged (as `indexes.UserQueryModel` takes it).
            A user missing from it raises UnknownUserError.
        fallback: an exact index for the users whose list comes back short.
        batch_size: users per index call.
    """

    def __init__(
        self,
        index: Any,
        user_index: pd.Series | Mapping | Callable[[int], Any] | None = None,
        fallback: Any = None,
        batch_size: int = 1024,
    ):
        self.index, self.user_index, self.batch_size = index, user_index, batch_size
        self.fallback = None if fallback is None else IndexRetriever(fallback, user_index, batch_size=batch_size)
        self.max_k = getattr(index, "n_candidates", None)
        if self.max_k is None and getattr(index, "_candidates", None) is not None:  # a BruteForce built elsewhere
            self.max_k = int(index._candidates.shape[0])

    def _queries(self, user_ids: Sequence[int]) -> list:
        if self.user_index is None:
            return [int(u) for u in user_ids]
        if hasattr(self.user_index, "queries"):  # one batched lookup (history_queries.HistoryQueries)
            return list(self.user_index.queries(user_ids))
        lookup = self.user_index if callable(self.user_index) else self.user_index.__getitem__
        try:
            return [lookup(u) for u in user_ids]
        except (KeyError, IndexError) as error:
            raise UnknownUserError(f"no query for user {error.args[0]} in the retriever's user index") from error

    def index_queries(self, user_ids: Sequence[int]) -> np.ndarray:
        """What the index is asked with for these users: their ids, or the queries `user_index` gives them."""
        return np.asarray(self._queries(user_ids))

    @staticmethod
    def _ids(identifiers: np.ndarray) -> np.ndarray:
        if identifiers.dtype.kind in "SOU":  # string identifiers, as in the TFRS tutorials
            flat = [int(x.decode() if isinstance(x, bytes) else x) for x in identifiers.ravel()]
            return np.array(flat, dtype=np.int64).reshape(identifiers.shape)
        return identifiers.astype(np.int64)

    def query(self, user_ids: Sequence[int], n: int, excludes: Sequence[np.ndarray]) -> IndexLists:
        """Every user's top-n unseen movies, with how many were answered by the fallback."""
        user_ids = np.asarray(user_ids)
        if len(excludes) != len(user_ids):
            raise ValueError(f"{len(user_ids)} users but {len(excludes)} lists of movies to exclude")
        queries = self._queries(user_ids)
        counts = np.array([len(e) for e in excludes], dtype=np.int64)
        order = np.argsort(counts, kind="stable")
        out_scores = np.full((len(user_ids), n), -np.inf, np.float32)
        out_ids = np.full((len(user_ids), n), NO_MOVIE, np.int64)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            wanted = n + int(counts[rows].max())
            if self.max_k is not None:
                wanted = min(wanted, self.max_k)
            scores, identifiers = self.index(tf.constant([queries[r] for r in rows]), k=wanted)
            scores, ids = np.nan_to_num(scores.numpy(), nan=-np.inf, neginf=-np.inf), self._ids(identifiers.numpy())
            for i, row in enumerate(rows):
                valid = np.isfinite(scores[i]) & ~np.isin(ids[i], excludes[row])
                keep = np.flatnonzero(valid)[:n]  # the index returns its lists best first
                out_scores[row, : len(keep)] = scores[i, keep]
                out_ids[row, : len(keep)] = ids[i, keep]
        short = np.flatnonzero((out_ids == NO_MOVIE).any(axis=1))
        if self.fallback is not None and short.size:
            refill = self.fallback.query(user_ids[short], n, [excludes[r] for r in short])
            out_scores[short], out_ids[short] = refill.scores, refill.movie_ids
        return IndexLists(out_scores, out_ids, int(short.size) if self.fallback is not None else 0)

    def retrieve_batch(
        self, user_ids: Sequence[int], n: int, excludes: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        lists = self.query(user_ids, n, excludes)
        return lists.movie_ids, lists.scores


class NumpyRetriever(_OneUser):
    """Exact dot-product retrieval over a catalogue held as a numpy matrix (tests, small catalogues).

    On MovieLens (4k movies, 64 dims) scoring the whole catalogue is a 0.1 ms matrix-vector product,
    so this is also the exact reference an approximate (ScaNN) index is compared against. Lists
    come from `metrics.top_k_from_scores`: ties go to the movie listed first.

    Args:
        user_ids: (n_users,) ids, aligned with the rows of `user_vectors`.
        user_vectors: (n_users, d) query vectors.
        movie_ids: (n_movies,) ids, aligned with the rows of `movie_vectors`.
        movie_vectors: (n_movies, d) candidate vectors.
    """

    def __init__(
        self, user_ids: Sequence[int], user_vectors: np.ndarray, movie_ids: Sequence[int], movie_vectors: np.ndarray
    ):
        self.user_index = pd.Index(np.asarray(user_ids))
        self.movie_ids = np.asarray(movie_ids)
        self.movie_index = pd.Index(self.movie_ids)
        self.user_vectors = np.asarray(user_vectors, dtype=np.float32)
        self.movie_vectors = np.ascontiguousarray(np.asarray(movie_vectors, dtype=np.float32))
        if len(self.user_index) != len(self.user_vectors) or len(self.movie_ids) != len(self.movie_vectors):
            raise ValueError(
                "ids and vectors must have the same number of rows "
                f"(users {len(self.user_index)} vs {len(self.user_vectors)}, "
                f"movies {len(self.movie_ids)} vs {len(self.movie_vectors)})"
            )

    def _rows(self, user_ids: Sequence[int]) -> np.ndarray:
        rows = self.user_index.get_indexer(np.asarray(user_ids))
        if (rows < 0).any():
            raise UnknownUserError(f"no query vector for user(s) {np.asarray(user_ids)[rows < 0][:10].tolist()}")
        return rows

    def retrieve_batch(
        self, user_ids: Sequence[int], n: int, excludes: Sequence[np.ndarray], block_users: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows(user_ids)
        n_kept = min(n, len(self.movie_ids))
        out_ids = np.full((len(rows), n), NO_MOVIE, np.int64)
        out_scores = np.full((len(rows), n), -np.inf, np.float32)
        for start in range(0, len(rows), block_users):
            block = slice(start, start + block_users)
            scores = self.user_vectors[rows[block]] @ self.movie_vectors.T
            block_excludes = [np.asarray(e) for e in excludes[block]]
            excluded = self.movie_index.get_indexer(np.concatenate([*block_excludes, np.empty(0, np.int64)]))
            owner = np.repeat(np.arange(len(block_excludes)), [len(e) for e in block_excludes])
            scores[owner[excluded >= 0], excluded[excluded >= 0]] = -np.inf
            top = metrics.top_k_from_scores(scores, n_kept)
            top_scores = np.take_along_axis(scores, top, axis=1)
            filled = np.isfinite(top_scores)
            out_ids[block, :n_kept] = np.where(filled, self.movie_ids[top], NO_MOVIE)
            out_scores[block, :n_kept] = top_scores
        return out_ids, out_scores
