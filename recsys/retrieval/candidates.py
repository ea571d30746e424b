"""Candidates for ranking: what each came from (the served retriever, EASE, the joint model), merged per user, and
their recall.

A candidate table has one row per (user, movie) with the columns of CANDIDATE_COLUMNS: the source
label, and for each source its rank (1 = its best; 0 = that source did not propose the movie)
and its score (NaN where it did not propose it). Each user's rows come in retrieval order, then
EASE's extra movies in EASE's order, then the joint model's extra movies in its order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.core.ids import NO_MOVIE
from recsys.core.tables import IdIndex
from recsys.evaluation import metrics

# The sources that propose candidates, in the order their extra movies follow each other in a user's rows.
LIST_SOURCES = ("retrieval", "ease", "joint")
# The source of each served or candidate movie, shown beside it in lists and reports: the sources that
# proposed it, joined by "+" in LIST_SOURCES order.
SOURCE_RETRIEVAL = "retrieval"
SOURCE_EASE = "ease"
SOURCE_BOTH = "retrieval+ease"
SOURCE_JOINT = "joint"
SOURCE_LEAST_VIEWED = "least-viewed"
SOURCE_POPULAR = "popular (unknown user)"
SOURCE_HISTORY = "history (sequential)"  # a list for an ad-hoc history (serving.recommend_for_history)
SOURCE_POPULAR_EMPTY_HISTORY = "popular (empty history)"

# code c of a proposed movie: bit i set when LIST_SOURCES[i] proposed it; the label of code c is _LABELS[c]
_LABELS = {
    sum(1 << LIST_SOURCES.index(name) for name in chosen): "+".join(chosen)
    for size in range(1, len(LIST_SOURCES) + 1)
    for chosen in combinations(LIST_SOURCES, size)
}
CANDIDATE_LABELS = tuple(_LABELS.values())  # the label of each set of proposing sources
# the first four keep the categories (and codes) candidate tables had before the joint source
SOURCES = [SOURCE_RETRIEVAL, SOURCE_EASE, SOURCE_BOTH, SOURCE_LEAST_VIEWED] + [
    label for _, label in sorted(_LABELS.items()) if label not in (SOURCE_RETRIEVAL, SOURCE_EASE, SOURCE_BOTH)
]
SOURCE_DTYPE = pd.CategoricalDtype(SOURCES)  # a candidate's source column (built once: it costs per table)
_CATEGORY_OF_CODE = np.array([SOURCES.index(_LABELS[c]) if c in _LABELS else -1 for c in range(1 << len(LIST_SOURCES))])
CANDIDATE_COLUMNS = [
    "user_id",
    "movie_id",
    "source",
    *(f"{name}_{column}" for name in LIST_SOURCES for column in ("rank", "score")),
]


class EaseSource:
    """EASE as a candidate source: the top-n unseen movies of each user from their history.

    Args:
        weights: EASE's (n_movies, n_movies) item-item matrix B (fitted on train).
        movie_ids: the movie id of each row/column of B.
    """

    def __init__(self, weights: np.ndarray, movie_ids: Sequence[int]):
        self.weights = np.asarray(weights, dtype=np.float32)
        self.movie_ids = np.asarray(movie_ids, dtype=np.int64)
        self.column = IdIndex(self.movie_ids)
        self._last: tuple[bytes, np.ndarray] | None = None  # the last histories and their scores
        if self.weights.shape != (len(self.movie_ids), len(self.movie_ids)):
            raise ValueError(f"EASE weights {self.weights.shape} do not match {len(self.movie_ids)} movie ids")

    def history_matrix(self, histories: Sequence[np.ndarray]) -> sp.csr_matrix:
        """Binary (n_users, n_movies) matrix of each user's history (movies outside EASE's catalogue are ignored)."""
        lengths = [len(h) for h in histories]
        columns = self.column.positions(np.concatenate([*map(np.asarray, histories), np.empty(0, np.int64)]))
        rows = np.repeat(np.arange(len(histories)), lengths)
        keep = columns >= 0
        return metrics.build_interaction_matrix(rows[keep], columns[keep], len(histories), len(self.movie_ids))

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(n_users, n_movies) EASE scores of every movie for each history (read-only: copy it to change it).

        The last result is kept and returned again for the same histories: the served path asks
        twice (the candidates, then the ranker's features), as do the simulation's rounds.
        """
        arrays = [np.asarray(history, np.int64) for history in histories]
        key = np.array([len(history) for history in arrays], np.int64).tobytes() + b"".join(
            history.tobytes() for history in arrays
        )
        if self._last is None or self._last[0] != key:
            if len(arrays) == 1:  # one request: a sum of B's rows, without building a sparse matrix
                columns = np.unique(self.column.positions(arrays[0]))
                dense = self.weights[columns[columns >= 0]].sum(axis=0, dtype=np.float32)[None, :]
            else:
                dense = np.asarray(self.history_matrix(arrays).astype(np.float32) @ self.weights)
            dense.setflags(write=False)
            self._last = (key, dense)
        return self._last[1]

    def top(
        self, histories: Sequence[np.ndarray], n: int, excludes: Sequence[np.ndarray], block: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each user's n best movies outside `excludes`: ((n_users, n) movie ids, their scores), best first.

        Ties go to the movie listed first; a slot with no movie left to propose holds NO_MOVIE and -inf.
        """
        n = min(n, len(self.movie_ids))
        ids = np.empty((len(histories), n), np.int64)
        scores = np.empty((len(histories), n), np.float32)
        for start in range(0, len(histories), block):
            part = slice(start, start + block)
            dense = self.scores(histories[part]).copy()  # `scores` keeps its result: do not touch it
            ids[part], scores[part] = _top_unseen(dense, n, excludes[part], self.column, self.movie_ids)
        return ids, scores


class VectorSource:
    """A candidate source that scores every movie by the dot product of a user's vector and the movie's, exactly.

    The joint rating + retrieval model proposes candidates this way: its vectors are
    L2-normalised, so a score is a cosine. Exact search over the catalogue costs a (users, dim) by
    (dim, movies) product: 64 × 3,706 multiply-adds a user on ML-1M, a few µs, so no ANN index is
    built for it (an index's per-query overhead is larger).

    Args:
        user_vectors, movie_vectors: (n_users, dim) and (n_movies, dim) vectors.
        user_ids, movie_ids: the id of each row of `user_vectors` and of `movie_vectors`.
    """

    def __init__(self, user_vectors: np.ndarray, movie_vectors: np.ndarray, user_ids, movie_ids):
        self.user_vectors = np.asarray(user_vectors, dtype=np.float32)
        self.movie_vectors = np.asarray(movie_vectors, dtype=np.float32)
        self.movie_ids = np.asarray(movie_ids, dtype=np.int64)
        self.row = IdIndex(np.asarray(user_ids, dtype=np.int64))
        self.column = IdIndex(self.movie_ids)
        if len(self.user_vectors) != len(self.row.sorted) or len(self.movie_vectors) != len(self.movie_ids):
            raise ValueError(
                f"{len(self.user_vectors)} user vectors for {len(self.row.sorted)} user ids, "
                f"{len(self.movie_vectors)} movie vectors for {len(self.movie_ids)} movie ids"
            )
        if self.user_vectors.shape[1:] != self.movie_vectors.shape[1:]:
            raise ValueError(
                f"user vectors {self.user_vectors.shape} and movie vectors {self.movie_vectors.shape} differ in dimension"
            )

    def top(
        self, user_ids: Sequence[int], n: int, excludes: Sequence[np.ndarray], block: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each user's n best movies outside `excludes`: ((n_users, n) movie ids, their scores), best first.

        Ties go to the movie listed first; a slot with no movie left to propose holds NO_MOVIE and -inf.

        Raises:
            KeyError: a user without a vector, named.
        """
        rows = self.row.positions(user_ids)
        if len(excludes) != len(rows):
            raise ValueError(f"{len(rows)} users but {len(excludes)} lists of movies to exclude")
        if (rows < 0).any():
            unknown = np.asarray(user_ids, np.int64).reshape(-1)[rows < 0]
            raise KeyError(f"the vector source has no vector for users {unknown[:5].tolist()}")
        n = min(n, len(self.movie_ids))
        ids = np.empty((len(rows), n), np.int64)
        scores = np.empty((len(rows), n), np.float32)
        for start in range(0, len(rows), block):
            part = slice(start, start + block)
            dense = self.user_vectors[rows[part]] @ self.movie_vectors.T
            ids[part], scores[part] = _top_unseen(dense, n, excludes[part], self.column, self.movie_ids)
        return ids, scores


def _top_unseen(
    dense: np.ndarray, n: int, excludes: Sequence[np.ndarray], column: IdIndex, movie_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's n best columns of `dense` (modified) outside its excluded movies: (movie ids, scores)."""
    columns = column.positions(np.concatenate([*map(np.asarray, excludes), np.empty(0, np.int64)]))
    rows = np.repeat(np.arange(len(excludes)), [len(e) for e in excludes])
    dense[rows[columns >= 0], columns[columns >= 0]] = -np.inf  # movies outside the catalogue are ignored
    top = metrics.top_k_from_scores(dense, n)
    top_scores = np.take_along_axis(dense, top, axis=1)
    return np.where(np.isfinite(top_scores), movie_ids[top], NO_MOVIE), top_scores


def merge_sources(
    retrieved: pd.DataFrame,
    ease_ids: np.ndarray | None = None,
    ease_scores: np.ndarray | None = None,
    joint_ids: np.ndarray | None = None,
    joint_scores: np.ndarray | None = None,
) -> pd.DataFrame:
    """One candidate table from retrieval's lists and (optionally) EASE's and the joint model's lists of the same users.

    Args:
        retrieved: (user_id, movie_id, retrieval_score) rows, each user's rows best first.
        ease_ids, ease_scores: (n_users, n) EASE lists of the users of `retrieved`, in their order
            of first appearance (NO_MOVIE padding allowed).
        joint_ids, joint_scores: the joint model's lists (`VectorSource.top`), as EASE's.

    Returns:
        Columns CANDIDATE_COLUMNS (see the module docstring), a (user, movie) pair at most once.
    """
    return merge_lists(
        retrieved["user_id"].to_numpy(np.int64),
        retrieved["movie_id"].to_numpy(np.int64),
        retrieved["retrieval_score"].to_numpy(np.float64),
        ease_ids,
        ease_scores,
        joint_ids,
        joint_scores,
    )


def merge_lists(
    user_ids: np.ndarray,
    movie_ids: np.ndarray,
    retrieval_scores: np.ndarray,
    ease_ids: np.ndarray | None = None,
    ease_scores: np.ndarray | None = None,
    joint_ids: np.ndarray | None = None,
    joint_scores: np.ndarray | None = None,
) -> pd.DataFrame:
    """`merge_sources` on retrieval's rows given as aligned arrays (the serving path: no table to build first)."""
    user_ids = np.asarray(user_ids, np.int64)
    if len(user_ids) and (user_ids == user_ids[0]).all():  # one request's rows: no factorisation to pay for
        user_row, users = np.zeros(len(user_ids), np.int64), user_ids[:1]
    else:
        user_row, users = pd.factorize(user_ids, sort=False)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(user_row)) + 1]) if len(user_row) else np.zeros(0, np.int64)
    retrieval_rank = np.arange(len(user_row)) - np.repeat(starts, np.diff(np.append(starts, len(user_row)))) + 1
    rows, movies, order_key = user_row.astype(np.int64), np.asarray(movie_ids, np.int64), retrieval_rank
    ranks = {"retrieval": retrieval_rank}
    scores = {"retrieval": np.asarray(retrieval_scores, np.float64)}
    lists = {"ease": (ease_ids, ease_scores), "joint": (joint_ids, joint_scores)}
    for position, (name, (ids, list_scores)) in enumerate(lists.items(), start=1):
        if ids is None:
            ranks[name], scores[name] = np.zeros(len(rows), np.int64), np.full(len(rows), np.nan)
            continue
        if len(users) != len(ids):
            raise ValueError(f"{len(users)} users retrieved but {len(ids)} {name} lists")
        # one integer key per (user, movie): the user's row and the movie id
        base = int(max(movies.max(initial=0), ids.max(initial=0))) + 1
        keys = rows * base + movies
        valid = ids.ravel() != NO_MOVIE
        list_keys = (np.repeat(np.arange(len(users)), ids.shape[1]) * base + ids.ravel())[valid]
        list_rank = np.tile(np.arange(1, ids.shape[1] + 1), len(users))[valid]
        list_score = np.asarray(list_scores).ravel()[valid].astype(np.float64)
        # the rows so far, with this source's rank and score where it proposed the movie too
        at = IdIndex(list_keys).positions(keys)
        found = at >= 0
        ranks[name], scores[name] = np.zeros(len(keys), np.int64), np.full(len(keys), np.nan)
        ranks[name][found], scores[name][found] = list_rank[at[found]], list_score[at[found]]
        extra = np.ones(len(list_keys), bool)  # its movies no earlier source proposed, after theirs, in its order
        extra[at[found]] = False
        n_extra = int(extra.sum())
        for earlier in ranks:
            if earlier != name:
                ranks[earlier] = np.concatenate([ranks[earlier], np.zeros(n_extra, np.int64)])
                scores[earlier] = np.concatenate([scores[earlier], np.full(n_extra, np.nan)])
        ranks[name] = np.concatenate([ranks[name], list_rank[extra]])
        scores[name] = np.concatenate([scores[name], list_score[extra]])
        rows = np.concatenate([rows, list_keys[extra] // base])
        movies = np.concatenate([movies, list_keys[extra] % base])
        order_key = np.concatenate([order_key, position * 10**6 + list_rank[extra]])
    order = np.lexsort((order_key, rows))
    codes = sum((ranks[name][order] > 0).astype(np.int64) << bit for bit, name in enumerate(LIST_SOURCES))
    return pd.DataFrame(
        {
            "user_id": np.asarray(users, np.int64)[rows[order]] if len(rows) else np.asarray(user_ids, np.int64),
            "movie_id": movies[order],
            "source": pd.Categorical.from_codes(_CATEGORY_OF_CODE[codes], dtype=SOURCE_DTYPE),
            **{
                column: values
                for name in LIST_SOURCES
                for column, values in ((f"{name}_rank", ranks[name][order]), (f"{name}_score", scores[name][order]))
            },
        }
    )


def proposed_by(candidates: pd.DataFrame) -> tuple[str, ...]:
    """The sources (LIST_SOURCES) that proposed at least one candidate of a candidate table, in LIST_SOURCES order."""
    return tuple(
        name for name in LIST_SOURCES if f"{name}_rank" in candidates and (candidates[f"{name}_rank"] > 0).any()
    )


def candidate_recall(candidates: pd.DataFrame, relevant: pd.DataFrame) -> dict[str, float]:
    """Recall of each user's candidates against their held-out movies, per source and merged (mean over users).

    As Recall@K elsewhere: hits / min(list length, held-out movies), the list being that source's
    candidates of the user (so a source's recall is its Recall@n, and the merged one is the
    ceiling of what any ranker over these candidates can reach). Users without held-out movies
    are not counted.

    Args:
        candidates: a candidate table (CANDIDATE_COLUMNS).
        relevant: (user_id, movie_id) held-out pairs.

    Returns:
        {"candidate_recall_<source>": ...} for retrieval, ease and joint (those that proposed any
        candidate) and merged.
    """
    held = relevant[["user_id", "movie_id"]].drop_duplicates()
    n_held = held.groupby("user_id").size()
    hit = candidates.merge(held.assign(_hit=True), on=["user_id", "movie_id"], how="left")["_hit"].notna().to_numpy()
    result = {}
    proposed = {
        name: candidates[f"{name}_rank"].to_numpy() > 0 for name in LIST_SOURCES if f"{name}_rank" in candidates
    }
    for name, mask in {**proposed, "merged": np.ones(len(candidates), dtype=bool)}.items():
        if not mask.any():
            continue
        users = candidates["user_id"].to_numpy()[mask]
        hits = pd.Series(hit[mask].astype(np.int64)).groupby(users).sum().reindex(n_held.index, fill_value=0)
        length = pd.Series(users).value_counts().reindex(n_held.index, fill_value=0)
        denominator = np.minimum(length, n_held).clip(lower=1)
        result[f"candidate_recall_{name}"] = float((hits / denominator).mean())
    return result


def candidate_recall_table(
    candidates: Mapping[str, pd.DataFrame], relevant: Mapping[str, pd.DataFrame]
) -> pd.DataFrame:
    """`candidate_recall` of several candidate sets (e.g. one per stage), one row each, with candidates per user.

    Args:
        candidates: name -> a candidate table (CANDIDATE_COLUMNS).
        relevant: name -> that set's held-out (user_id, movie_id) pairs.

    Returns:
        Indexed by the names of `candidates`: the candidate_recall_<source> columns, then
        candidates_per_user (rows / distinct users).
    """
    recall = pd.DataFrame({name: candidate_recall(rows, relevant[name]) for name, rows in candidates.items()}).T
    recall["candidates_per_user"] = [len(rows) / rows["user_id"].nunique() for rows in candidates.values()]
    return recall
