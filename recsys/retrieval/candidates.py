"""Candidates for ranking: what each came from (two-tower retrieval, EASE), merged per user, and their recall.

A candidate table has one row per (user, movie) with the columns of CANDIDATE_COLUMNS: the source
label, and for each source its rank (1 = its best; 0 = that source did not propose the movie)
and its score (NaN where it did not propose it). Each user's rows come in retrieval order, then
EASE's extra movies in EASE's order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.core.ids import NO_MOVIE
from recsys.core.tables import IdIndex
from recsys.evaluation import metrics

# The source of each served or candidate movie, shown beside it in lists and reports.
SOURCE_RETRIEVAL = "retrieval"
SOURCE_EASE = "ease"
SOURCE_BOTH = "retrieval+ease"
SOURCE_LEAST_VIEWED = "least-viewed"
SOURCE_POPULAR = "popular (unknown user)"
SOURCE_HISTORY = "history (sequential)"  # a list for an ad-hoc history (serving.recommend_for_history)
SOURCE_POPULAR_EMPTY_HISTORY = "popular (empty history)"

SOURCES = [SOURCE_RETRIEVAL, SOURCE_EASE, SOURCE_BOTH, SOURCE_LEAST_VIEWED]
SOURCE_DTYPE = pd.CategoricalDtype(SOURCES)  # a candidate's source column (built once: it costs per table)
CANDIDATE_COLUMNS = ["user_id", "movie_id", "source", "retrieval_rank", "retrieval_score", "ease_rank", "ease_score"]


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
        self._last: tuple[bytes, np.ndarray] | None = None  # the last single history's scores
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
        """(n_users, n_movies) EASE scores of every movie for each history."""
        if len(histories) == 1:  # one request: a sum of B's rows, without building a sparse matrix
            history = np.asarray(histories[0])
            key = history.tobytes()
            if self._last is None or self._last[0] != key:  # a request asks twice: candidates, then features
                columns = np.unique(self.column.positions(history))
                self._last = (key, self.weights[columns[columns >= 0]].sum(axis=0, dtype=np.float32)[None, :])
            return self._last[1]
        return np.asarray(self.history_matrix(histories).astype(np.float32) @ self.weights)

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
            dense = self.scores(histories[part]).copy()  # one request's row is cached by `scores`: do not touch it
            if len(histories) == 1:  # one request: no sparse matrix for a handful of excluded movies
                excluded = self.column.positions(np.asarray(excludes[0]))
                dense[0, excluded[excluded >= 0]] = -np.inf
            else:
                seen = self.history_matrix(excludes[part])
                dense[np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr)), seen.indices] = -np.inf
            top = metrics.top_k_from_scores(dense, n)
            top_scores = np.take_along_axis(dense, top, axis=1)
            ids[part] = np.where(np.isfinite(top_scores), self.movie_ids[top], NO_MOVIE)
            scores[part] = top_scores
        return ids, scores


def merge_sources(
    retrieved: pd.DataFrame, ease_ids: np.ndarray | None = None, ease_scores: np.ndarray | None = None
) -> pd.DataFrame:
    """One candidate table from retrieval's lists and (optionally) EASE's lists of the same users.

    Args:
        retrieved: (user_id, movie_id, retrieval_score) rows, each user's rows best first.
        ease_ids, ease_scores: (n_users, n) EASE lists of the users of `retrieved`, in their order
            of first appearance (NO_MOVIE padding allowed).

    Returns:
        Columns CANDIDATE_COLUMNS (see the module docstring), a (user, movie) pair at most once.
    """
    return merge_lists(
        retrieved["user_id"].to_numpy(np.int64),
        retrieved["movie_id"].to_numpy(np.int64),
        retrieved["retrieval_score"].to_numpy(np.float64),
        ease_ids,
        ease_scores,
    )


def merge_lists(
    user_ids: np.ndarray,
    movie_ids: np.ndarray,
    retrieval_scores: np.ndarray,
    ease_ids: np.ndarray | None = None,
    ease_scores: np.ndarray | None = None,
) -> pd.DataFrame:
    """`merge_sources` on retrieval's rows given as aligned arrays (the serving path: no table to build first)."""
    user_row, users = pd.factorize(user_ids, sort=False)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(user_row)) + 1]) if len(user_row) else np.zeros(0, np.int64)
    retrieval_rank = np.arange(len(user_row)) - np.repeat(starts, np.diff(np.append(starts, len(user_row)))) + 1
    if ease_ids is None:
        return pd.DataFrame(
            {
                "user_id": user_ids,
                "movie_id": movie_ids,
                "source": pd.Categorical.from_codes(np.zeros(len(user_ids), np.int8), dtype=SOURCE_DTYPE),
                "retrieval_rank": retrieval_rank,
                "retrieval_score": np.asarray(retrieval_scores, np.float64),
                "ease_rank": np.zeros(len(user_ids), np.int64),
                "ease_score": np.full(len(user_ids), np.nan),
            }
        )
    if len(users) != len(ease_ids):
        raise ValueError(f"{len(users)} users retrieved but {len(ease_ids)} EASE lists")
    # one integer key per (user, movie): the user's row and the movie id
    base = int(max(movie_ids.max(initial=0), ease_ids.max(initial=0))) + 1
    retrieved_keys = user_row.astype(np.int64) * base + movie_ids
    ease_row = np.repeat(np.arange(len(users)), ease_ids.shape[1])
    ease_rank_all = np.tile(np.arange(1, ease_ids.shape[1] + 1), len(users))
    valid = ease_ids.ravel() != NO_MOVIE
    ease_keys = ease_row[valid] * base + ease_ids.ravel()[valid]
    ease_rank_of, ease_score_of = ease_rank_all[valid], ease_scores.ravel()[valid].astype(np.float64)
    in_retrieval = np.isin(ease_keys, retrieved_keys)
    # retrieval's rows, with EASE's rank and score where EASE proposed the movie too
    order = np.argsort(ease_keys, kind="stable")
    at = np.clip(np.searchsorted(ease_keys[order], retrieved_keys), 0, max(len(order) - 1, 0))
    matched = (ease_keys[order][at] == retrieved_keys) if len(order) else np.zeros(len(retrieved_keys), bool)
    first_rank = np.where(matched, ease_rank_of[order][at] if len(order) else 0, 0)
    first_score = np.where(matched, ease_score_of[order][at] if len(order) else np.nan, np.nan)
    extra = ~in_retrieval  # EASE's movies retrieval did not propose, after retrieval's, in EASE's order
    extra_row = ease_keys[extra] // base
    n_extra = int(extra.sum())
    row = np.concatenate([user_row, extra_row])
    key = np.concatenate([retrieval_rank, 10**6 + ease_rank_of[extra]])
    order = np.lexsort((key, row))
    retrieval_ranks = np.concatenate([retrieval_rank, np.zeros(n_extra, np.int64)])[order]
    ease_ranks = np.concatenate([first_rank, ease_rank_of[extra]])[order]
    codes = np.where(retrieval_ranks > 0, np.where(ease_ranks > 0, 2, 0), 1)
    source = pd.Categorical.from_codes(codes, dtype=SOURCE_DTYPE)
    return pd.DataFrame(
        {
            "user_id": np.concatenate([user_ids, np.asarray(users)[extra_row]])[order],
            "movie_id": np.concatenate([movie_ids, ease_keys[extra] % base])[order],
            "source": source,
            "retrieval_rank": retrieval_ranks,
            "retrieval_score": np.concatenate([np.asarray(retrieval_scores, np.float64), np.full(n_extra, np.nan)])[
                order
            ],
            "ease_rank": ease_ranks,
            "ease_score": np.concatenate([first_score, ease_score_of[extra]])[order],
        }
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
        {"candidate_recall_<source>": ...} for retrieval, ease (when present) and merged.
    """
    held = relevant[["user_id", "movie_id"]].drop_duplicates()
    n_held = held.groupby("user_id").size()
    hit = candidates.merge(held.assign(_hit=True), on=["user_id", "movie_id"], how="left")["_hit"].notna().to_numpy()
    result = {}
    for name, mask in (
        ("retrieval", candidates["retrieval_rank"].to_numpy() > 0),
        ("ease", candidates["ease_rank"].to_numpy() > 0),
        ("merged", np.ones(len(candidates), dtype=bool)),
    ):
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
