"""The one definition of every metric the notebooks report: rating error, full-ranking retrieval, beyond accuracy."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp

from recsys.data.rating_scale import RatingScale

DEFAULT_KS = (10, 50, 100)
# Users per block in the (users, k, k) pairwise computation of intra-list diversity: bounds memory
# at k=100 to ~40 MB per block whatever the number of users.
_DIVERSITY_BLOCK_USERS = 1024


# --------------------------------------------------------------------------------------------
# Rating metrics
# --------------------------------------------------------------------------------------------


def _rating_pairs(y_true, y_pred, clip: RatingScale | tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    true_ratings = np.asarray(y_true, dtype=np.float64).ravel()
    predicted_ratings = np.asarray(y_pred, dtype=np.float64).ravel()
    if true_ratings.shape != predicted_ratings.shape:
        raise ValueError(
            f"y_true has {true_ratings.size} ratings but y_pred has {predicted_ratings.size}; "
            "predict exactly one value per rated (user, movie) pair"
        )
    if true_ratings.size == 0:
        raise ValueError("no ratings to score: y_true is empty (is the split column filtered correctly?)")
    if np.isnan(predicted_ratings).any():
        raise ValueError(
            f"{int(np.isnan(predicted_ratings).sum())} predictions are NaN; "
            "a model must predict a number for every pair (fall back to a bias for unknown ids)"
        )
    if isinstance(clip, RatingScale):
        clip = clip.bounds
    if clip is not None:
        # A prediction outside the scale is never better than the nearest valid rating, and every
        # model is scored the same way (DESIGN.md, "Protocols and metrics").
        predicted_ratings = np.clip(predicted_ratings, clip[0], clip[1])
    return true_ratings, predicted_ratings


def rmse(y_true, y_pred, clip: RatingScale | tuple[float, float] | None) -> float:
    """Root mean squared error of rating predictions, the headline rating metric.

    Args:
        y_true: observed ratings, one per (user, movie) pair.
        y_pred: predictions for the same pairs, in the same order.
        clip: the dataset's rating scale (or (low, high)) the predictions are clipped to; None scores them raw.

    Returns:
        RMSE as a Python float.
    """
    true_ratings, predicted_ratings = _rating_pairs(y_true, y_pred, clip)
    return float(np.sqrt(np.mean((true_ratings - predicted_ratings) ** 2)))


def mae(y_true, y_pred, clip: RatingScale | tuple[float, float] | None) -> float:
    """Mean absolute error of rating predictions: less sensitive than RMSE to a few large misses.

    Args:
        y_true: observed ratings, one per (user, movie) pair.
        y_pred: predictions for the same pairs, in the same order.
        clip: the dataset's rating scale (or (low, high)) the predictions are clipped to; None scores them raw.

    Returns:
        MAE as a Python float.
    """
    true_ratings, predicted_ratings = _rating_pairs(y_true, y_pred, clip)
    return float(np.mean(np.abs(true_ratings - predicted_ratings)))


# --------------------------------------------------------------------------------------------
# Interaction matrices and ranking
# --------------------------------------------------------------------------------------------


def build_interaction_matrix(user_idx, item_idx, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary users x items matrix of who interacted with what: the input of EASE and of the ranking metrics.

    Args:
        user_idx: 0-based row index of each interaction.
        item_idx: 0-based column index of each interaction (same length).
        n_users: number of rows (every user of the catalogue, not only those present here).
        n_items: number of columns (the whole catalogue).

    Returns:
        float32 CSR matrix with 1 at every (user, item) that occurs at least once (repeats collapse to 1),
        column indices sorted within each row.
    """
    rows = np.asarray(user_idx).ravel()
    cols = np.asarray(item_idx).ravel()
    if rows.shape != cols.shape:
        raise ValueError(f"user_idx has {rows.size} entries but item_idx has {cols.size}")
    for name, index, size in (("user_idx", rows, n_users), ("item_idx", cols, n_items)):
        if index.size and not np.issubdtype(index.dtype, np.integer):
            raise TypeError(
                f"{name} must hold integer indices, got dtype {index.dtype} (map raw ids to 0-based positions first)"
            )
        if index.size and (index.min() < 0 or index.max() >= size):
            raise ValueError(f"{name} must lie in [0, {size}); found values from {index.min()} to {index.max()}")
    matrix = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    # Repeated pairs were summed above; interactions are binary, so cap them back to 1.
    matrix.data[:] = 1.0
    return matrix


def _binary_csr(matrix, name: str, shape: tuple[int, int] | None = None) -> sp.csr_matrix:
    """CSR copy of `matrix` with explicit zeros dropped and sorted, de-duplicated indices."""
    if not sp.issparse(matrix):
        raise TypeError(
            f"{name} must be a scipy.sparse matrix (e.g. from build_interaction_matrix), got {type(matrix).__name__}"
        )
    csr = sp.csr_matrix(matrix, copy=True)
    if shape is not None and csr.shape != shape:
        raise ValueError(f"{name} has shape {csr.shape} but must match the scores' shape {shape}")
    csr.sum_duplicates()
    csr.eliminate_zeros()
    return csr


def top_k_from_scores(scores: np.ndarray, k: int, exclude: sp.spmatrix | None = None) -> np.ndarray:
    """Turn a dense users x items score matrix into each user's top-k items, best first.

    Full ranking over the catalogue (never sampled negatives). Excluded items (e.g. the user's train
    interactions) get -inf, so they are ranked last and only appear if fewer than k items remain.
    Ties are broken by the lower item index, so the result is deterministic.

    Args:
        scores: (n_users, n_items) float scores; higher is better. Not modified.
        k: list length, 1 <= k <= n_items.
        exclude: optional matrix of the same shape; a nonzero entry marks an item the user must not
            be recommended.

    Returns:
        (n_users, k) int64 item indices, best first.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_users, n_items), got shape {scores.shape}")
    n_users, n_items = scores.shape
    if not 1 <= k <= n_items:
        raise ValueError(f"k={k} must be between 1 and the number of items ({n_items})")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if np.isnan(scores).any():
        raise ValueError(
            "scores contain NaN, which cannot be ranked; check the model's output "
            "(e.g. a division by zero in a normalisation)"
        )
    # Negate once into a fresh array: we sort ascending, can mask in place, and the caller's scores stay intact.
    neg_scores = -scores
    if exclude is not None:
        seen = _binary_csr(exclude, "exclude", shape=(n_users, n_items))
        seen_rows = np.repeat(np.arange(n_users), np.diff(seen.indptr))
        neg_scores[seen_rows, seen.indices] = np.inf

    if k < n_items:
        candidates = np.argpartition(neg_scores, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(n_items), (n_users, n_items)).copy()
    # Sorting candidates by index first makes the stable sort on score break ties by item index.
    candidates.sort(axis=1)
    candidate_scores = np.take_along_axis(neg_scores, candidates, axis=1)
    order = np.argsort(candidate_scores, axis=1, kind="stable")
    top_items = np.take_along_axis(candidates, order, axis=1)

    if k < n_items:
        # argpartition picks arbitrarily among items tied with the k-th score. In rows with more than
        # k items at or above that score, keep every strictly better item and fill the remaining slots
        # with the tied items of lowest index. Real-valued scores have few such rows; count-like scores
        # (popularity) or users who have seen almost everything can have many.
        kth_score = candidate_scores.max(axis=1)
        tied_rows = np.flatnonzero((neg_scores <= kth_score[:, None]).sum(axis=1) > k)
        if tied_rows.size:
            top_items[tied_rows] = _top_k_with_ties(neg_scores[tied_rows], kth_score[tied_rows], k)
    return top_items.astype(np.int64, copy=False)


def _top_k_with_ties(neg_scores: np.ndarray, kth_score: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k (ascending negated scores, ties by item index) when ties straddle the k-th place."""
    strictly_better = neg_scores < kth_score[:, None]
    tied = neg_scores == kth_score[:, None]
    slots_left = k - strictly_better.sum(axis=1)
    chosen = strictly_better | (tied & (np.cumsum(tied, axis=1) <= slots_left[:, None]))
    # Exactly k chosen per row; nonzero walks rows in order and columns ascending.
    chosen_items = np.nonzero(chosen)[1].reshape(-1, k)
    order = np.argsort(np.take_along_axis(neg_scores, chosen_items, axis=1), axis=1, kind="stable")
    return np.take_along_axis(chosen_items, order, axis=1)


# --------------------------------------------------------------------------------------------
# Retrieval metrics
# --------------------------------------------------------------------------------------------


def _check_top_items(top_items, k: int, n_items: int | None = None) -> np.ndarray:
    top_items = np.asarray(top_items)
    if top_items.ndim != 2:
        raise ValueError(f"top_items must be 2-D (n_users, list length), got shape {top_items.shape}")
    if not np.issubdtype(top_items.dtype, np.integer):
        raise TypeError(f"top_items must hold integer item indices, got dtype {top_items.dtype}")
    if k < 1 or top_items.shape[1] < k:
        raise ValueError(
            f"need lists of at least k={k} items, got {top_items.shape[1]}; call top_k_from_scores with k >= {k}"
        )
    top_items = top_items[:, :k]
    if n_items is not None and top_items.size and (top_items.min() < 0 or top_items.max() >= n_items):
        raise ValueError(
            f"top_items must lie in [0, {n_items}); found values from {top_items.min()} to {top_items.max()}"
        )
    return top_items


def per_user_retrieval_metrics(
    top_items: np.ndarray, relevant: sp.spmatrix, ks: Iterable[int] = DEFAULT_KS
) -> dict[str, np.ndarray]:
    """`retrieval_metrics` before averaging: each evaluated user's value (for bootstrap spreads).

    Returns:
        {"user_rows": the rows of the users with held-out items, then "recall_at_K", "ndcg_at_K",
        "hit_rate_at_K" for each K, one value per such user}.
    """
    ks = sorted({int(k) for k in ks})
    if not ks:
        raise ValueError("ks is empty; pass at least one list length, e.g. (10, 50, 100)")
    relevant = _binary_csr(relevant, "relevant")
    n_users, n_items = relevant.shape
    top_items = _check_top_items(top_items, ks[-1], n_items)
    if top_items.shape[0] != n_users:
        raise ValueError(
            f"top_items has {top_items.shape[0]} rows but relevant has {n_users}; "
            "rows must be the same users in the same order"
        )
    sorted_lists = np.sort(top_items, axis=1)
    if (sorted_lists[:, 1:] == sorted_lists[:, :-1]).any():
        raise ValueError(
            "a ranked list repeats an item, which would count a hit twice; build lists with top_k_from_scores"
        )

    n_relevant = np.diff(relevant.indptr)
    evaluated = n_relevant > 0
    if not evaluated.any():
        raise ValueError("no user has a held-out item in `relevant`; check the split passed in")
    top_items = top_items[evaluated]
    n_relevant = n_relevant[evaluated]
    evaluated_users = np.flatnonzero(evaluated)

    # Hit lookup without densifying: encode (user, item) as one int64 key and binary-search the
    # sorted keys of the relevant matrix (CSR rows are in order, indices sorted within each row).
    relevant_keys = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(relevant.indptr)) * n_items + relevant.indices
    list_keys = evaluated_users[:, None].astype(np.int64) * n_items + top_items
    positions = np.minimum(np.searchsorted(relevant_keys, list_keys), relevant_keys.size - 1)
    hits = relevant_keys[positions] == list_keys

    max_k = ks[-1]
    discounts = 1.0 / np.log2(np.arange(2, max_k + 2))
    cumulative_discounts = np.cumsum(discounts)
    dcg_cumulative = np.cumsum(hits * discounts, axis=1)
    hits_cumulative = np.cumsum(hits, axis=1)

    results: dict[str, np.ndarray] = {"user_rows": evaluated_users}
    for k in ks:
        hits_at_k = hits_cumulative[:, k - 1]
        reachable_hits = np.minimum(k, n_relevant)
        ideal_dcg = cumulative_discounts[reachable_hits - 1]
        results[f"recall_at_{k}"] = hits_at_k / reachable_hits
        results[f"ndcg_at_{k}"] = dcg_cumulative[:, k - 1] / ideal_dcg
        results[f"hit_rate_at_{k}"] = (hits_at_k > 0).astype(np.float64)
    return results


def retrieval_metrics(top_items: np.ndarray, relevant: sp.spmatrix, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@K, NDCG@K and HitRate@K of ranked lists against each user's held-out items.

    Recall@K = hits in the top K / min(K, n_relevant), so a user with fewer held-out items than K can
    still reach 1. NDCG@K uses binary gains and an ideal DCG over min(K, n_relevant) hits. HitRate@K
    is the share of users with at least one hit. Users with no held-out items are skipped; the rest
    count equally (averages are per user, not per interaction).

    Args:
        top_items: (n_users, L) item indices best first, L >= max(ks), rows aligned with `relevant`;
            items within a row must be distinct.
        relevant: (n_users, n_items) sparse matrix, nonzero = held-out item of that user.
        ks: list lengths to evaluate.

    Returns:
        {"recall_at_K", "ndcg_at_K", "hit_rate_at_K"} for each K, plus "n_users_evaluated".
    """
    per_user = per_user_retrieval_metrics(top_items, relevant, ks)
    rows = per_user.pop("user_rows")
    return {**{name: float(np.mean(values)) for name, values in per_user.items()}, "n_users_evaluated": len(rows)}


# --------------------------------------------------------------------------------------------
# Beyond accuracy
# --------------------------------------------------------------------------------------------


def coverage_at_k(top_items: np.ndarray, n_items: int, k: int = 10) -> float:
    """Catalogue coverage: share of the catalogue that appears in at least one user's top-k.

    Args:
        top_items: (n_users, >= k) item indices best first.
        n_items: catalogue size (every movie, recommended or not).
        k: list length considered.

    Returns:
        distinct recommended items / n_items, in [0, 1].
    """
    top_items = _check_top_items(top_items, k, n_items)
    return float(np.unique(top_items).size / n_items)


def item_popularity_share(X_train: sp.spmatrix) -> np.ndarray:
    """Per-item popularity as `novelty` expects it: the share of train users who interacted with the item.

    p(i) = users with a train interaction on i / users in X_train (rows), clipped below at 1 / n_users
    so that an item nobody saw in train counts as "seen by one user" and gets a finite novelty of
    log2(n_users) instead of infinity.

    Args:
        X_train: (n_users, n_items) train interactions; nonzero = interacted.

    Returns:
        (n_items,) float64 shares in [1 / n_users, 1].
    """
    X_train = _binary_csr(X_train, "X_train")
    n_users = X_train.shape[0]
    if n_users == 0:
        raise ValueError("X_train has no rows; popularity needs at least one train user")
    users_per_item = np.bincount(X_train.indices, minlength=X_train.shape[1])
    return np.maximum(users_per_item / n_users, 1.0 / n_users)


def novelty(top_items: np.ndarray, item_popularity: np.ndarray, k: int = 10) -> float:
    """Mean self-information -log2 p(i) of recommended items: higher means less obvious recommendations.

    p(i) is the share of train users who interacted with item i (the common definition; see
    `item_popularity_share`, which also clips unseen items to 1 / n_users so they stay finite).
    The mean runs over every (user, rank) slot of the top-k lists.

    Args:
        top_items: (n_users, >= k) item indices best first.
        item_popularity: (n_items,) shares p(i) in (0, 1], from `item_popularity_share(X_train)`.
        k: list length considered.

    Returns:
        mean novelty in bits.
    """
    item_popularity = np.asarray(item_popularity, dtype=np.float64).ravel()
    top_items = _check_top_items(top_items, k, item_popularity.size)
    if (item_popularity <= 0).any() or (item_popularity > 1).any():
        raise ValueError(
            "item_popularity must be shares of train users in (0, 1] (zeros would give infinite "
            "novelty, counts are not shares); build it with item_popularity_share(X_train)"
        )
    return float(np.mean(-np.log2(item_popularity[top_items])))


def intra_list_diversity(top_items: np.ndarray, item_genres, k: int = 10) -> float:
    """Mean pairwise genre Jaccard distance inside each top-k list, averaged over users.

    Two items with identical genre sets have distance 0, disjoint sets distance 1. A pair of items
    that both have no genre at all counts as identical (distance 0); MovieLens gives every movie at
    least one genre (ML-100K's "unknown" is a genre), so this only matters for hand-made inputs.

    Args:
        top_items: (n_users, >= k) item indices best first.
        item_genres: (n_items, n_genres) binary genre indicators, dense or scipy.sparse.
        k: list length considered, >= 2 (a single item has no pairs).

    Returns:
        mean over users of the mean over the k(k-1)/2 pairs of 1 - |A & B| / |A | B|.
    """
    if k < 2:
        raise ValueError(f"intra-list diversity needs pairs of items, so k must be >= 2 (got {k})")
    genres = item_genres.toarray() if sp.issparse(item_genres) else np.asarray(item_genres)
    if genres.ndim != 2:
        raise ValueError(f"item_genres must be 2-D (n_items, n_genres), got shape {genres.shape}")
    genres = (genres != 0).astype(np.float32)
    top_items = _check_top_items(top_items, k, genres.shape[0])
    genre_counts = genres.sum(axis=1)
    upper_pairs = np.triu(np.ones((k, k), dtype=bool), k=1)

    per_user_diversity = np.empty(top_items.shape[0])
    for start in range(0, top_items.shape[0], _DIVERSITY_BLOCK_USERS):
        block = top_items[start : start + _DIVERSITY_BLOCK_USERS]
        list_genres = genres[block]  # (users, k, genres)
        shared = np.matmul(list_genres, list_genres.transpose(0, 2, 1))  # |A & B| for every pair
        counts = genre_counts[block]
        union = counts[:, :, None] + counts[:, None, :] - shared
        similarity = np.divide(shared, union, out=np.ones_like(shared), where=union > 0)
        per_user_diversity[start : start + len(block)] = (1.0 - similarity)[:, upper_pairs].mean(axis=1)
    return float(per_user_diversity.mean())


def gini_index(top_items: np.ndarray, n_items: int, k: int = 10) -> float:
    """Gini index of how often each catalogue item is recommended: 0 = perfectly even, near 1 = a few items take all.

    Every catalogue item counts, including never-recommended ones (count 0), so a system that only
    ever shows a handful of movies scores close to 1 even if it spreads evenly among them.

    Args:
        top_items: (n_users, >= k) item indices best first.
        n_items: catalogue size.
        k: list length considered.

    Returns:
        G = sum_i (2i - n - 1) x_(i) / (n sum x) over counts x sorted ascending, i = 1..n; at most (n-1)/n.
    """
    top_items = _check_top_items(top_items, k, n_items)
    recommendation_counts = np.sort(np.bincount(top_items.ravel(), minlength=n_items)).astype(np.float64)
    total = recommendation_counts.sum()
    if total == 0:
        raise ValueError("no recommendations to measure: top_items has no rows")
    ranks = np.arange(1, n_items + 1)
    return float(np.sum((2 * ranks - n_items - 1) * recommendation_counts) / (n_items * total))


def beyond_accuracy(
    top_items: np.ndarray, n_items: int, item_popularity: np.ndarray, item_genres, k: int = 10
) -> dict[str, float]:
    """All beyond-accuracy metrics for one set of top-k lists, under the keys the reports use.

    Args:
        top_items: (n_users, >= k) item indices best first.
        n_items: catalogue size.
        item_popularity: (n_items,) shares of train users, from `item_popularity_share(X_train)`.
        item_genres: (n_items, n_genres) binary genre indicators.
        k: list length considered.

    Returns:
        {"coverage_at_<k>", "novelty", "intra_list_diversity", "gini"}.
    """
    return {
        f"coverage_at_{k}": coverage_at_k(top_items, n_items, k),
        "novelty": novelty(top_items, item_popularity, k),
        "intra_list_diversity": intra_list_diversity(top_items, item_genres, k),
        "gini": gini_index(top_items, n_items, k),
    }
