"""Serving top-k lists as an online service would: retrieve unseen candidates, score them with a ranker, rank.

`recommend(user_id)` answers one request; `recommend_batch(user_ids)` answers many with the same
code (one retrieval call and a few large model calls), so offline evaluation measures exactly
what is served. The two steps are also available on their own (`retrieve_candidates`,
`rank_candidates`) for callers that need the candidates themselves. The ranking step takes a
ranker from `recsys.ranking.served_rankers`: the rating model's predicted rating, or a ranker trained to
order candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from recsys.core.ids import NO_MOVIE
from recsys.features.feature_store import FeatureStore
from recsys.retrieval.candidates import (
    SOURCE_HISTORY,
    SOURCE_POPULAR,
    SOURCE_POPULAR_EMPTY_HISTORY,
    EaseSource,
    VectorSource,
    merge_lists,
)
from recsys.retrieval.retrievers import Retriever

# `score` is what ordered the list: the predicted rating (clipped to the rating scale) for the
# rating ranker, the learned ranker's score otherwise
RESULT_COLUMNS = ["rank", "movie_id", "title", "genres", "year", "source", "retrieval_score", "score"]


# ---- the two steps of a request ---------------------------------------------------------------------------


def _retrieve_many(
    retriever: Retriever | Callable, user_ids: np.ndarray, n: int, excludes: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of many users: (rows served, (n_served, width) ids padded with NO_MOVIE, scores padded with -inf).

    One `retrieve_batch` call when the retriever has it; if it is missing, or refuses the batch
    because some user is unknown to it, per-user `retrieve` calls, skipping the users it refuses.
    A plain function with `retrieve`'s signature is accepted as a retriever.
    """
    batch = getattr(retriever, "retrieve_batch", None)
    if batch is not None:
        try:
            ids, scores = batch(user_ids, n, excludes)
            return np.arange(len(user_ids)), np.asarray(ids, np.int64), np.asarray(scores, np.float64)
        except KeyError:
            pass
    retrieve = getattr(retriever, "retrieve", retriever)
    served, results = [], []
    for row, user_id in enumerate(user_ids):
        try:
            ids, scores = retrieve(int(user_id), n, excludes[row])
        except KeyError:
            continue
        served.append(row)
        results.append((np.asarray(ids, np.int64), np.asarray(scores, np.float64)))
    width = max((len(ids) for ids, _ in results), default=0)
    ids = np.full((len(results), width), NO_MOVIE, dtype=np.int64)
    scores = np.full((len(results), width), -np.inf)
    for row, (user_ids_, user_scores) in enumerate(results):
        ids[row, : len(user_ids_)], scores[row, : len(user_scores)] = user_ids_, user_scores
    return np.asarray(served, dtype=np.int64), ids, scores


def retrieve_candidates(
    user_ids: Sequence[int],
    n_candidates: int,
    *,
    store: FeatureStore,
    retrieval_index: Retriever | Callable,
    ease: EaseSource | None = None,
    joint: VectorSource | None = None,
    exclude: str = "seen",
) -> pd.DataFrame:
    """Each user's unseen candidates: the first step of a request.

    Retrieval's top `n_candidates`, merged with EASE's top `n_candidates` when `ease` is given and
    the joint model's when `joint` is, each labelled by source (recsys.retrieval.candidates). Users
    the store does not know, or the retriever cannot serve, get no rows (`recommend_batch` serves
    them popular movies). The excluded movies are dropped here even if a source returns them.

    Args:
        user_ids: distinct users.
        n_candidates: candidates per source and user.
        exclude: "seen" (the store's seen splits: what a request excludes, and the test stage) or
            "history" (the history splits, i.e. train: the val stage of the learned ranker).

    Returns:
        A candidate table (recsys.retrieval.candidates.CANDIDATE_COLUMNS), users in the order given.
    """
    user_ids = np.asarray(user_ids, dtype=np.int64)
    if len(np.unique(user_ids)) != len(user_ids):
        raise ValueError("retrieve_candidates takes distinct users (recommend_batch handles repeated requests)")
    excluded = {"seen": store.seen_movies, "history": store.history_movies}[exclude]
    known = user_ids[store.known_users(user_ids)]
    seen = [excluded(u) for u in known]
    served, ids, scores = _retrieve_many(retrieval_index, known, n_candidates, seen)
    owner = np.repeat(served, ids.shape[1])
    flat_ids, flat_scores = ids.ravel(), scores.ravel()
    seen_owner = np.repeat(np.arange(len(known)), [len(s) for s in seen])
    seen_ids = np.concatenate([*seen, np.empty(0, np.int64)])
    key_base = int(max(flat_ids.max(initial=0), seen_ids.max(initial=0))) + 1
    valid = (flat_ids != NO_MOVIE) & ~np.isin(owner * key_base + flat_ids, seen_owner * key_base + seen_ids)
    retrieved = known[owner[valid]], flat_ids[valid], flat_scores[valid]
    if (ease is None and joint is None) or not len(served):
        return merge_lists(*retrieved)
    served_seen = [seen[i] for i in served]
    ease_lists = joint_lists = (None, None)
    if ease is not None:
        ease_lists = ease.top([store.history_movies(u) for u in known[served]], n_candidates, served_seen)
    if joint is not None:
        joint_lists = joint.top(known[served], n_candidates, served_seen)
    return merge_lists(*retrieved, *ease_lists, *joint_lists)


def rank_candidates(candidates: pd.DataFrame, k: int, *, store: FeatureStore, ranker) -> pd.DataFrame:
    """Each user's k best candidates by the ranker's score: the second step of a request.

    Ties on the score are broken by the retrieval score, then by the candidates' order.

    Args:
        candidates: from `retrieve_candidates`.
        ranker: a RatingRanker or a LearnedRanker.

    Returns:
        Columns user_id + RESULT_COLUMNS, each user's rows best first, users in the order they
        first appear in `candidates`.
    """
    if candidates.empty:  # nobody to rank: an empty list, not a ranker error
        return pd.DataFrame({name: [] for name in ["user_id", *RESULT_COLUMNS]})
    return pd.DataFrame(_ranked_columns(candidates, k, store, ranker))


def _ranked_columns(candidates: pd.DataFrame, k: int, store: FeatureStore, ranker) -> dict[str, object]:
    """`rank_candidates`' columns (user_id + RESULT_COLUMNS), each candidate column read once."""
    user_ids = candidates["user_id"].to_numpy(np.int64)
    movie_ids = candidates["movie_id"].to_numpy(np.int64)
    user_group, _ = pd.factorize(user_ids, sort=False)
    scores = np.asarray(ranker.score(candidates), np.float64)
    retrieval_scores = candidates["retrieval_score"].to_numpy(np.float64)
    order = np.lexsort((np.arange(len(scores)), -np.nan_to_num(retrieval_scores, nan=-np.inf), -scores, user_group))
    group_sorted = user_group[order]
    rank = np.arange(len(order)) - np.searchsorted(group_sorted, group_sorted)
    order, rank = order[rank < k], rank[rank < k]
    return {
        "user_id": user_ids[order],
        "rank": rank + 1,
        "movie_id": movie_ids[order],
        **store.movie_display(store.movie_positions(movie_ids[order])),
        "source": candidates["source"].array.take(order),
        "retrieval_score": retrieval_scores[order],
        "score": ranker.display(scores[order]),
    }


def _popular_table(store: FeatureStore, k: int, exclude: np.ndarray, source: str = SOURCE_POPULAR) -> pd.DataFrame:
    popular = store.popular_movies(k, exclude=exclude)
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(popular) + 1),
            "movie_id": popular.index.to_numpy(),
            "title": popular["title"].to_numpy(),
            "genres": popular["genres"].to_numpy(),
            "year": popular["year"].array,
            "source": source,
            "retrieval_score": np.nan,
            "score": np.nan,
        }
    )


# ---- requests ---------------------------------------------------------------------------------------


def recommend_batch(
    user_ids: Sequence[int],
    k: int = 10,
    *,
    store: FeatureStore,
    retrieval_index: Retriever | Callable,
    ranker,
    n_candidates: int = 100,
    ease: EaseSource | None = None,
    joint: VectorSource | None = None,
) -> pd.DataFrame:
    """Top-k movies for many users: `retrieve_candidates` then `rank_candidates`, popular movies for the rest.

    A user unknown to the store (or to the retriever) gets the most popular movies they have not
    seen, labelled as such.

    Args:
        user_ids: the requesting users (repeats allowed).
        k: list length.
        store: features and seen items.
        retrieval_index: a Retriever (or a function with `Retriever.retrieve`'s signature).
        ranker: a RatingRanker or a LearnedRanker.
        n_candidates: how many candidates each source hands to ranking.
        ease: EASE as a second candidate source (None: not proposing).
        joint: the joint model's exact top n (`VectorSource`) as a third candidate source (None: not proposing).

    Returns:
        Columns user_id + RESULT_COLUMNS, users in the order given, each user's rows best first
        (fewer than k if retrieval returns fewer unseen movies).
    """
    user_ids = np.asarray(user_ids, dtype=np.int64)
    distinct = np.unique(user_ids)
    candidates = retrieve_candidates(
        distinct, n_candidates, store=store, retrieval_index=retrieval_index, ease=ease, joint=joint
    )
    ranked = rank_candidates(candidates, k, store=store, ranker=ranker)
    # ranked holds each distinct user's list, users ascending: slice it once per request
    ranked_users = ranked["user_id"].to_numpy()
    left, right = np.searchsorted(ranked_users, user_ids, "left"), np.searchsorted(ranked_users, user_ids, "right")
    lengths = right - left
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = np.arange(lengths.sum()) + np.repeat(left - starts, lengths)
    parts, requests = [], []
    if len(rows):
        parts, requests = [ranked.iloc[rows]], [np.repeat(np.arange(len(user_ids)), lengths)]
    for request in np.flatnonzero(lengths == 0):  # unknown to the store or the retriever
        popular = _popular_table(store, k, store.seen_movies(user_ids[request]))
        parts.append(popular.assign(user_id=user_ids[request])[["user_id", *RESULT_COLUMNS]])
        requests.append(np.full(len(popular), request))
    if not parts:
        return ranked.iloc[:0]
    if len(parts) == 1:  # every request served by retrieval: the rows are already in request order
        return parts[0].reset_index(drop=True)
    table = pd.concat(parts, ignore_index=True)
    return table.iloc[np.argsort(np.concatenate(requests), kind="stable")].reset_index(drop=True)


def recommend(
    user_id: int,
    k: int = 10,
    *,
    store: FeatureStore,
    retrieval_index: Retriever | Callable,
    ranker,
    n_candidates: int = 100,
    ease: EaseSource | None = None,
    joint: VectorSource | None = None,
) -> pd.DataFrame:
    """Top-k movies for one user, as an online service would compute them per request.

    Retrieval (and EASE and the joint model, when given) narrows the catalogue to the user's unseen
    candidates; the ranker scores each and the k best are returned. A user unknown to the store (or to the
    retriever) gets the most popular movies instead. The same steps as `recommend_batch` (so the
    same list), without its bookkeeping for many requests.

    Args:
        user_id: the requesting user.
        k: list length.
        store, retrieval_index, ranker, n_candidates, ease, joint: as for `recommend_batch`.

    Returns:
        k rows (fewer if retrieval returns fewer unseen movies), columns RESULT_COLUMNS, best first.
    """
    user = np.array([user_id], dtype=np.int64)
    candidates = retrieve_candidates(
        user, n_candidates, store=store, retrieval_index=retrieval_index, ease=ease, joint=joint
    )
    if candidates.empty:  # unknown to the store or the retriever
        return _popular_table(store, k, store.seen_movies(int(user[0])))
    columns = _ranked_columns(candidates, k, store, ranker)
    del columns["user_id"]
    return pd.DataFrame(columns)


def served_matches_offline(
    user_ids: Sequence[int], offline_lists: np.ndarray, k: int = 10, n_single: int = 20, **kwargs
) -> dict[str, bool]:
    """Whether the served path gives the lists that were evaluated offline, for a sample of users.

    Args:
        user_ids: distinct users.
        offline_lists: (len(user_ids), k) movie ids, each row the list evaluated for that user.
        k: list length.
        n_single: how many of the users (the first) are also requested one by one with `recommend`.
        **kwargs: as for `recommend_batch` (store, retrieval_index, ranker, n_candidates, ease, joint).

    Returns:
        recommend_equals_batch: `recommend` gives each of the first n_single users the list
        `recommend_batch` gives; batch_equals_offline: every user's batch list is their offline one.
    """
    user_ids = np.asarray(user_ids, np.int64)
    offline_lists = np.asarray(offline_lists)
    if offline_lists.shape[0] != len(user_ids):
        raise ValueError(f"{len(user_ids)} users but {offline_lists.shape[0]} offline lists: align them")
    batch = recommend_batch(user_ids, k, **kwargs)
    served = [rows.to_numpy() for _, rows in batch.groupby("user_id", sort=False)["movie_id"]]
    served = dict(zip(pd.unique(batch["user_id"]), served))
    empty = np.empty(0, np.int64)
    single = all(
        np.array_equal(recommend(int(user), k, **kwargs)["movie_id"].to_numpy(), served.get(user, empty))
        for user in user_ids[:n_single]
    )
    offline = all(np.array_equal(served.get(user, empty), row[:k]) for user, row in zip(user_ids, offline_lists))
    return {"recommend_equals_batch": bool(single), "batch_equals_offline": bool(offline)}


def recommend_for_history(
    movie_ids: Sequence[int], k: int = 10, *, store: FeatureStore, history_queries, retrieval_index
) -> pd.DataFrame:
    """Top-k movies for a person who is not in the data, from the films they watched: "what next?".

    The sequential retriever reads the history (oldest first; its latest N movies) and the index
    returns the nearest unseen movies, in retrieval order: no ranker, since a ranker needs a known
    user's features. No retraining: any list of catalogue movies is a valid query.

    Args:
        movie_ids: the watched movies, oldest first (repeats are harmless).
        k: list length.
        store: for titles, genres and popularity.
        history_queries: a `history_queries.HistoryQueries` (the sequential model and its catalogue).
        retrieval_index: the sequential retriever's index, queried with vectors (built without a
            query model, or reloaded from one).

    Returns:
        Up to k rows (an approximate index may return fewer unseen movies), columns
        RESULT_COLUMNS, best first; source SOURCE_HISTORY, or the most popular movies labelled
        SOURCE_POPULAR_EMPTY_HISTORY for an empty history.

    Raises:
        UnknownMovieError: a movie id is not in the catalogue (every such id is named), before any work.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (the list length), got {k!r}")
    if getattr(history_queries, "model", None) is None or not callable(retrieval_index):
        raise TypeError("history_queries must be a HistoryQueries and retrieval_index an index queried with vectors")
    watched = np.unique(np.asarray(movie_ids, dtype=np.int64).ravel())
    store.movie_positions(watched)  # an unknown id is an error naming it, before anything is computed
    if not len(watched):
        return _popular_table(store, k, watched, SOURCE_POPULAR_EMPTY_HISTORY)
    query = history_queries.for_history(np.asarray(movie_ids, dtype=np.int64).ravel())
    wanted = min(k + len(watched), getattr(retrieval_index, "n_candidates", k + len(watched)))
    scores, ids = retrieval_index(query[None, :].astype(np.float32), k=wanted)
    scores, ids = np.nan_to_num(scores.numpy()[0], nan=-np.inf), ids.numpy()[0].astype(np.int64)
    keep = np.flatnonzero(np.isfinite(scores) & ~np.isin(ids, watched))[:k]
    positions = store.movie_positions(ids[keep])
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(keep) + 1),
            "movie_id": ids[keep],
            **store.movie_display(positions),
            "source": SOURCE_HISTORY,
            "retrieval_score": scores[keep].astype(np.float64),
            "score": scores[keep].astype(np.float64),
        }
    )
