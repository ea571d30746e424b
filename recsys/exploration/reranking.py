"""Exploration: randomised re-ranking by weighted sampling, and least-viewed movies added to the candidates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from recsys.retrieval.candidates import (
    CANDIDATE_COLUMNS,
    LIST_SOURCES,
    SOURCE_DTYPE,
    SOURCE_LEAST_VIEWED,
    SOURCE_RETRIEVAL,
)

# ---- weighted re-ranking ------------------------------------------------------------------------------


def standardise_rows(scores: np.ndarray) -> np.ndarray:
    """Each row's scores minus the row's mean, over the row's std (a constant row becomes zeros), in their dtype.

    A ranker's scores per user (a LambdaRank score, a predicted rating, EASE's scores) are on no
    common scale; standardised, a temperature or a slope means the same for every user and ranker.

    Args:
        scores: (n_users, n) scores; an integer array is standardised in float64.

    Returns:
        An array of the shape of `scores`, each row of mean 0 and std 1 (or all zeros).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (one row per user), got shape {scores.shape}")
    spread = scores.std(axis=1, keepdims=True)
    return (scores - scores.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)


def _check_scores(scores: np.ndarray, temperature: float) -> None:
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; every item needs a score to be sampled")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = no randomness), got {temperature}")


def weighted_rerank(
    items: Sequence, scores: Sequence[float], rng: np.random.Generator, temperature: float = 1.0
) -> np.ndarray:
    """Shuffle a ranked list so that items with higher scores tend to come first.

    A deterministic ranking shows every user the same few items first, so the model never learns
    what users think of the rest. Sampling the order instead keeps the top mostly on top while
    letting lower-ranked items surface now and then.

    The order is a weighted sample without replacement with weights w_i = exp(score_i / T):
    the first item is i with probability w_i / sum(w), the second is drawn the same way from the
    rest, and so on (the Plackett-Luce model). Exponential weights stay positive for any scores
    value (scores can be <= 0, where powers break) and the temperature T moves
    smoothly between greedy (T -> 0: the order by score) and uniform (T -> inf).

    It is computed with the Gumbel-top-k trick: add independent Gumbel(0, 1) noise to
    log w_i = score_i / T and sort by the result. The argmax of log-weights plus Gumbel noise
    is i with probability w_i / sum(w) (the Gumbel-max trick), and given that, the remaining keys
    are still independent Gumbel-perturbed log-weights, so the full sort is distributed exactly
    like sequential sampling without replacement, with no loop and for many lists at once.

    Args:
        items: the list to re-rank (any values: ids, positions).
        scores: one score per item: the ranker's (callers pass the learned ranker's scores standardised per user, or a
            predicted rating).
        rng: numpy Generator (seeded by the caller for reproducibility).
        temperature: T above; 0 returns the items sorted by score (stable for ties).

    Returns:
        The items in the sampled order.
    """
    items = np.asarray(items)
    scores = np.asarray(scores, dtype=np.float64)
    if items.shape != scores.shape or items.ndim != 1:
        raise ValueError(f"items {items.shape} and scores {scores.shape} must be 1-D and of the same length")
    _check_scores(scores, temperature)
    if temperature == 0:
        return items[np.argsort(-scores, kind="stable")]
    keys = scores / temperature + rng.gumbel(size=scores.shape)
    return items[np.argsort(-keys, kind="stable")]


def weighted_rerank_many(
    item_lists: np.ndarray, scores: np.ndarray, n_repeats: int, seed: int, temperature: float = 1.0
) -> np.ndarray:
    """`weighted_rerank` for every user's list, repeated `n_repeats` times, in one vectorised draw.

    Args:
        item_lists: (n_users, L) items, e.g. each user's top-L by score.
        scores: (n_users, L) scores of those items (as in `weighted_rerank`).
        n_repeats: independent re-rankings per user (to average metrics over the randomness).
        seed: seeds the Gumbel noise; the same seed gives the same orders.
        temperature: as in `weighted_rerank`; 0 gives the deterministic order in every repeat.

    Returns:
        (n_repeats, n_users, L) items in sampled order.
    """
    item_lists = np.asarray(item_lists)
    scores = np.asarray(scores, dtype=np.float64)
    if item_lists.shape != scores.shape or item_lists.ndim != 2:
        raise ValueError(f"item_lists {item_lists.shape} and scores {scores.shape} must be the same 2-D shape")
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    _check_scores(scores, temperature)
    if temperature == 0:
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.broadcast_to(np.take_along_axis(item_lists, order, axis=1), (n_repeats, *item_lists.shape)).copy()
    gumbel = np.random.default_rng(seed).gumbel(size=(n_repeats, *scores.shape))
    keys = scores / temperature + gumbel
    order = np.argsort(-keys, axis=-1, kind="stable")
    return np.take_along_axis(np.broadcast_to(item_lists, keys.shape), order, axis=-1)


def first_position_probabilities(scores: Sequence[float], temperature: float = 1.0) -> np.ndarray:
    """P(item i comes first) under `weighted_rerank`: softmax(scores / T), computed stably."""
    logits = np.asarray(scores, dtype=np.float64) / temperature
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def kendall_tau(original_order: Sequence, sampled_order: Sequence) -> float:
    """Kendall's tau between two orders of the same items: 1 identical, -1 reversed, ~0 unrelated.

    Each item's rank in the sampled order is compared with its rank in the original order
    (scipy.stats.kendalltau on the two rank vectors).
    """
    original_order, sampled_order = np.asarray(original_order), np.asarray(sampled_order)
    if original_order.shape != sampled_order.shape or original_order.ndim != 1:
        raise ValueError(f"orders must be 1-D and of the same length: {original_order.shape} vs {sampled_order.shape}")
    if len(np.unique(original_order)) != len(original_order):
        raise ValueError("original_order repeats an item; ranks are undefined")
    rank_in_sample = pd.Index(sampled_order).get_indexer(original_order)
    if (rank_in_sample < 0).any() or len(np.unique(sampled_order)) != len(sampled_order):
        raise ValueError("the two orders must hold the same distinct items")
    return float(stats.kendalltau(np.arange(len(original_order)), rank_in_sample).statistic)


def kendall_tau_many(original: np.ndarray, sampled: np.ndarray) -> np.ndarray:
    """Kendall's tau of each sampled list against its original, vectorised (lists of distinct items).

    Args:
        original: (n_users, L) lists.
        sampled: (..., n_users, L) permutations of those lists (e.g. from weighted_rerank_many).

    Returns:
        (..., n_users) tau per list; equal to `kendall_tau` row by row (no ties, so tau-a = tau-b).
    """
    original, sampled = np.asarray(original), np.asarray(sampled)
    length = original.shape[-1]
    # rank of each sampled item in the original list: compare every sampled item with every original one
    rank = np.argmax(sampled[..., :, None] == np.broadcast_to(original, sampled.shape)[..., None, :], axis=-1)
    concordant = np.sign(rank[..., None, :] - rank[..., :, None])  # +1 when a later slot holds a later-ranked item
    upper = np.triu(np.ones((length, length), dtype=bool), k=1)
    return concordant[..., upper].sum(axis=-1) / (length * (length - 1) / 2)


def choose_setting(
    results: pd.DataFrame, reference: str, max_loss: float, accuracy: str = "ndcg_at_10", gain: str = "coverage_at_10"
) -> str:
    """The exploration setting to serve: the widest `gain` among the settings that lose at most `max_loss` of `accuracy`.

    Args:
        results: one row per setting (index: its name), with the `accuracy` and `gain` columns;
            the reference row included.
        reference: the row without exploration (chosen when no other setting qualifies).
        max_loss: the largest relative loss of `accuracy` accepted, e.g. 0.05 for 5%.

    Returns:
        The chosen row's name (ties go to the first row).
    """
    if not 0 <= max_loss < 1:
        raise ValueError(f"max_loss must be in [0, 1), got {max_loss}")
    if reference not in results.index:
        raise KeyError(f"the reference setting {reference!r} is not a row of the results ({list(results.index)})")
    floor = (1 - max_loss) * results.loc[reference, accuracy]
    return str(results[results[accuracy] >= floor][gain].idxmax())  # the reference itself always qualifies


# ---- least-viewed movies -----------------------------------------------------------------------------


def least_viewed_movies(
    train_counts: pd.Series | pd.DataFrame, catalogue_movie_ids: Iterable[int], max_views: int = 1
) -> np.ndarray:
    """Movies with at most `max_views` train interactions, never-seen ones (0 views) included.

    These are the movies a popularity-biased system never shows, so nobody rates them and they
    stay unseen: injecting them is the crudest way to learn about them.

    Args:
        train_counts: train interactions per movie id (a Series indexed by movie_id), or an
            interactions table (with a `split` column, only its train rows count).
        catalogue_movie_ids: every movie of the catalogue (movies absent from train count 0).
        max_views: the most train interactions a movie may have to count as least viewed.

    Returns:
        movie ids, fewest views first (ties by movie id).
    """
    if isinstance(train_counts, pd.DataFrame):
        interactions = train_counts
        if "split" in interactions.columns:
            interactions = interactions[interactions["split"] == "train"]
        train_counts = interactions["movie_id"].value_counts()
    catalogue = np.unique(np.asarray(list(catalogue_movie_ids)))
    counts = train_counts.reindex(catalogue, fill_value=0).to_numpy()
    chosen = counts <= max_views
    order = np.lexsort((catalogue[chosen], counts[chosen]))
    return catalogue[chosen][order]


def least_viewed_pool(
    retrieved: pd.DataFrame,
    least_viewed: Sequence[int],
    user_ids: Sequence[int],
    seen: pd.DataFrame,
    per_user: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Every user's candidates: the retrieved movies, then the least-viewed movies; seen pairs dropped.

    A movie that is both retrieved and least viewed keeps the label "retrieval" (retrieval found it).
    On a large catalogue thousands of movies are least viewed (users x them rows would not fit), so
    `per_user` gives each user a seeded sample of them instead.

    Args:
        retrieved: (user_id, movie_id) rows, each user's in retrieval order.
        least_viewed: the movies added to the users' candidates.
        user_ids: the users who get them.
        seen: (user_id, movie_id) pairs to drop (the feature store's `seen_pairs()`).
        per_user: least-viewed movies per user, a seeded sample for each; 0 = all of them.
        seed: seeds the samples.

    Returns:
        DataFrame(user_id, movie_id, source), no repeated pair; per user, source "retrieval" (in
        retrieved order) then "least-viewed".
    """
    user_ids, extra = np.asarray(user_ids, dtype=np.int64), np.asarray(least_viewed, dtype=np.int64)
    added = _sample_per_user(extra, len(user_ids), per_user, seed)
    pool = pd.concat(
        [
            pd.DataFrame(
                {
                    "user_id": retrieved["user_id"].to_numpy(np.int64),
                    "movie_id": retrieved["movie_id"].to_numpy(np.int64),
                    "source": SOURCE_RETRIEVAL,
                }
            ),
            pd.DataFrame(
                {
                    "user_id": np.repeat(user_ids, added.shape[1]),
                    "movie_id": added.ravel(),
                    "source": SOURCE_LEAST_VIEWED,
                }
            ),
        ]
    ).drop_duplicates(["user_id", "movie_id"], keep="first")
    pool = pool.merge(seen[["user_id", "movie_id"]].assign(_seen=True), on=["user_id", "movie_id"], how="left")
    return pool[pool["_seen"].isna()].drop(columns="_seen").reset_index(drop=True)


def _sample_per_user(movies: np.ndarray, n_users: int, per_user: int, seed: int) -> np.ndarray:
    """(n_users, m) movies per user: all of them in order (per_user 0 or >= len), else a seeded sample of per_user each."""
    if per_user == 0 or per_user >= len(movies):
        return np.broadcast_to(movies, (n_users, len(movies)))
    rng = np.random.default_rng(seed)
    block = max(1, 10_000_000 // len(movies))  # users drawn at once: about 10M random keys
    rows = [
        movies[
            np.argpartition(rng.random((min(block, n_users - start), len(movies))), per_user - 1, axis=1)[:, :per_user]
        ]
        for start in range(0, n_users, block)
    ]
    return np.concatenate(rows) if rows else np.empty((0, per_user), movies.dtype)


def add_least_viewed(
    candidates: pd.DataFrame,
    least_viewed: Sequence[int],
    user_ids: Sequence[int],
    seen: pd.DataFrame,
    ranks: pd.DataFrame | None = None,
    per_user: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """A candidate table with every least-viewed movie added to each user's candidates (`least_viewed_pool`).

    Args:
        candidates: a candidate table (recsys.retrieval.candidates.CANDIDATE_COLUMNS), each user's rows in order.
        least_viewed, user_ids, seen, per_user, seed: as for `least_viewed_pool`.
        ranks: the candidate table whose per-source ranks and scores the rows take (default
            `candidates`; a larger one keeps the ranks of least-viewed movies some source proposed).

    Returns:
        CANDIDATE_COLUMNS: the candidates' rows (their own source labels), then the added movies
        labelled SOURCE_LEAST_VIEWED (ranks 0 unless `ranks` has them); seen pairs dropped.
    """
    ranks = candidates if ranks is None else ranks
    pool = least_viewed_pool(candidates, least_viewed, user_ids, seen, per_user, seed)
    pairs = pool[["user_id", "movie_id"]]
    table = pairs.merge(ranks.drop(columns="source"), on=["user_id", "movie_id"], how="left")
    # a table saved before a source existed (e.g. 06's candidates before the joint source) lacks its columns
    table = table.reindex(columns=[name for name in CANDIDATE_COLUMNS if name != "source"])
    rank_columns = [f"{name}_rank" for name in LIST_SOURCES]
    table = table.fillna(dict.fromkeys(rank_columns, 0)).astype(dict.fromkeys(rank_columns, np.int64))
    own = pairs.merge(candidates[["user_id", "movie_id", "source"]], on=["user_id", "movie_id"], how="left")["source"]
    added = pool["source"].to_numpy() == SOURCE_LEAST_VIEWED
    table["source"] = pd.Categorical(np.where(added, SOURCE_LEAST_VIEWED, own.astype(object)), dtype=SOURCE_DTYPE)
    return table[CANDIDATE_COLUMNS]
