"""Offline evaluation under one protocol: split matrices, full-ranking metrics, and served top-k lists scored on test.

Every list is scored against the users' held-out items with the definitions of `recsys.evaluation.metrics`,
excluding what the user had seen before the split (train for val; train and val for test); see
DESIGN.md, "Protocols and metrics".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.core.ids import NO_MOVIE
from recsys.evaluation import metrics
from recsys.evaluation.score_blocks import RowScores, top_k_in_blocks
from recsys.features.preprocessing import genre_columns
from recsys.features.splits import SPLIT_NAMES

RETRIEVAL_KS = metrics.DEFAULT_KS
FACTORIZED_KS = (1, 5, 10, 50, 100)


# ---- full ranking over the catalogue -------------------------------------------------------------


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

    def held_out_rows(self, split: str) -> np.ndarray:
        """The rows of the users with held-out items of `split`: the users its metrics are averaged over."""
        return np.flatnonzero(np.diff(self.relevant(split).indptr) > 0)

    def sizes(self) -> pd.Series:
        """Users, catalogue movies (and those without a train interaction) and interactions per split."""
        without_train = int((np.diff(self.train.tocsc().indptr) == 0).sum())
        return pd.Series(
            {
                "users": len(self.user_ids),
                "movies": len(self.movie_ids),
                "movies_without_train": without_train,
                **{name: getattr(self, name).nnz for name in SPLIT_NAMES},
            }
        )

    def seen_movie_ids(self, split: str, rows: np.ndarray | None = None) -> list[np.ndarray]:
        """The movie ids to exclude for each user row (all rows by default), for index queries."""
        seen = self.seen(split)
        rows = np.arange(seen.shape[0]) if rows is None else np.asarray(rows)
        return [self.movie_ids[seen.indices[seen.indptr[r] : seen.indptr[r + 1]]] for r in rows]


def split_matrices(interactions: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray) -> SplitMatrices:
    """Build the train/val/test matrices from the interactions' `split` column.

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
        for name in SPLIT_NAMES
    }
    return SplitMatrices(user_ids, movie_ids, **matrices)


def evaluate_scores(
    scores: np.ndarray | RowScores, matrices: SplitMatrices, split: str, ks: Sequence[int] = RETRIEVAL_KS
) -> dict[str, float]:
    """Full-ranking recall/NDCG/hit rate of a users x catalogue score matrix, seen items excluded.

    Only the users with held-out items of `split` are ranked (the metrics skip the others), a
    block of users at a time (`score_blocks.top_k_in_blocks`): a `RowScores` never has all its
    rows in memory at once.

    Args:
        scores: (n_users, n_movies), rows and columns as in `matrices`: an array or a RowScores.
        split: "val" (train excluded) or "test" (train and val excluded).
        ks: list lengths.

    Returns:
        metrics.retrieval_metrics's dict.
    """
    return mean_metrics(per_user_scores(scores, matrices, split, ks))


def per_user_scores(
    scores: np.ndarray | RowScores, matrices: SplitMatrices, split: str, ks: Sequence[int] = RETRIEVAL_KS
) -> pd.DataFrame:
    """`evaluate_scores` before averaging: each user's recall/NDCG/hit rate, for paired comparisons of models.

    Returns:
        One row per user with held-out items of `split` (indexed by user_id, in the order of
        `matrices.user_ids`), a column per metric (recall_at_K, ndcg_at_K, hit_rate_at_K); every
        model scored on the same matrices has the same rows.
    """
    relevant = matrices.relevant(split)
    rows = matrices.held_out_rows(split)
    top_items = top_k_in_blocks(scores, max(ks), exclude=matrices.seen(split), rows=rows)
    values = metrics.per_user_retrieval_metrics(top_items, relevant[rows], ks)
    users = matrices.user_ids[rows[values.pop("user_rows")]]
    return pd.DataFrame(values, index=pd.Index(users, name="user_id"))


def mean_metrics(per_user: pd.DataFrame) -> dict[str, float]:
    """The mean of each per-user metric (`per_user_scores`) and `n_users_evaluated`: `evaluate_scores`'s record."""
    means = {name: float(np.mean(per_user[name].to_numpy())) for name in per_user.columns}
    return {**means, "n_users_evaluated": len(per_user)}


def metrics_by_model(results: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> dict[str, float]:
    """One flat record of several models' metrics: {"<key>_<model>": value} for every model and key.

    Raises:
        KeyError: a model's results lack one of `keys` (named with the model).
    """
    missing = {model: sorted(set(keys) - set(values)) for model, values in results.items() if set(keys) - set(values)}
    if missing:
        raise KeyError(f"results lack metrics: {missing}")
    return {f"{key}_{model}": float(values[key]) for model, values in results.items() for key in keys}


def results_table(
    results: Mapping[str, Mapping[str, float]], columns: Sequence[str], ratios: Sequence[tuple[str, str]] = ()
) -> pd.DataFrame:
    """Each model's mean metrics as a row (`columns` only), then a row `a / b` per pair: row a divided by row b.

    Args:
        results: model -> its mean metrics (`mean_metrics`).
        columns: the metrics shown, in order.
        ratios: (a, b) pairs of models of `results`.

    Raises:
        KeyError: a ratio names a model that has no results.
    """
    table = pd.DataFrame(results).T[list(columns)]
    missing = sorted({name for pair in ratios for name in pair} - set(table.index))
    if missing:
        raise KeyError(f"ratios name models without results: {missing}; models: {list(table.index)}")
    for a, b in ratios:
        table.loc[f"{a} / {b}"] = table.loc[a] / table.loc[b]
    return table


def popularity_scores(X_train: sp.spmatrix) -> np.ndarray:
    """The popularity anchor: every user gets the catalogue ordered by train interaction count.

    Returns:
        a read-only (n_users, n_movies) view of the counts (no copy per user).
    """
    counts = np.asarray(X_train.sum(axis=0), dtype=np.float32).ravel()
    return np.broadcast_to(counts, X_train.shape)


def factorized_top_k_accuracy(
    pairs: pd.DataFrame,
    user_ids: np.ndarray,
    user_vectors: np.ndarray,
    movie_ids: np.ndarray,
    movie_vectors: np.ndarray,
    ks: Sequence[int] = FACTORIZED_KS,
    block: int = 4096,
) -> dict[str, float]:
    """TFRS's FactorizedTopK accuracy over held-out (user, movie) pairs, computed in numpy.

    The share of pairs whose movie is in the user's top-k over the whole catalogue (seen movies
    are not excluded, unlike the full-ranking metrics): a pair is a hit at k when fewer than k
    movies score strictly higher than its movie. This equals `tfrs.metrics.FactorizedTopK` with a
    BruteForce index and `true_candidate_ids` (id-based evaluation; the tests check it). TFRS's
    score-based path (no ids) compares the pair's score from `reduce_sum(q * c)` with the index's
    matmul scores; the two differ in the last bit for about a third of the pairs, and when the
    matmul copy is larger the movie outranks itself and drops one place (measured on the test
    data: 0.51 instead of 0.555 at k=10). Here the pair's score is read from the same matrix it is
    compared with. Reported once after training: attached to the task, it would score the whole
    catalogue at every training step.

    Args:
        pairs: held-out interactions (user_id, movie_id), e.g. the test split.
        user_ids, user_vectors: the query vector of every user in `pairs`.
        movie_ids, movie_vectors: the candidate vector of every movie of the catalogue.
        ks: cut-offs.
        block: pairs scored per numpy block (bounds memory).

    Returns:
        {"factorized_top_<k>_accuracy": share} for each k.
    """
    user_rows = pd.Index(np.asarray(user_ids)).get_indexer(pairs["user_id"])
    movie_cols = pd.Index(np.asarray(movie_ids)).get_indexer(pairs["movie_id"])
    if (user_rows < 0).any():
        raise KeyError(f"users {pairs['user_id'][user_rows < 0].unique()[:5].tolist()} have no query vector")
    if (movie_cols < 0).any():
        raise KeyError(f"movies {pairs['movie_id'][movie_cols < 0].unique()[:5].tolist()} are not in the catalogue")
    ranks = np.empty(len(pairs), np.int64)
    for start in range(0, len(pairs), block):
        stop = start + block
        scores = user_vectors[user_rows[start:stop]] @ movie_vectors.T
        positive = scores[np.arange(len(scores)), movie_cols[start:stop]]
        ranks[start:stop] = (scores > positive[:, None]).sum(axis=1)
    return {f"factorized_top_{k}_accuracy": float(np.mean(ranks < k)) for k in ks}


# ---- lists of movie ids ----------------------------------------------------------------------------


def catalogue_columns(catalogue: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """Catalogue columns of lists of movie ids, the form `recsys.evaluation.metrics` scores.

    Raises:
        ValueError: a list holds padding (NO_MOVIE: an index returned it short; search more leaves,
            lower k, or give the retriever an exact fallback index) or a movie outside the catalogue.
    """
    movie_ids = np.asarray(movie_ids, dtype=np.int64)
    columns = pd.Index(np.asarray(catalogue)).get_indexer(movie_ids.ravel()).reshape(movie_ids.shape)
    if (columns < 0).any():
        padded = int((movie_ids == NO_MOVIE).any(axis=-1).sum())
        outside = int(((columns < 0) & (movie_ids != NO_MOVIE)).any(axis=-1).sum())
        raise ValueError(
            f"{padded} lists are shorter than k (padded with {NO_MOVIE}) and {outside} hold movies outside the "
            "catalogue: search more leaves (num_leaves_to_search), lower k, or give the retriever an exact "
            "fallback index; build lists from the same catalogue"
        )
    return columns


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


def ranked_lists(scored: pd.DataFrame, users: np.ndarray, score: str, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's `depth` best movies by `score` (and those scores), rows in the order of `users`.

    Ties on the score are broken by the lower movie id.

    Args:
        scored: one row per (user_id, movie_id) with the `score` column.

    Raises:
        ValueError: a user has fewer than `depth` rows.
    """
    ordered = scored.sort_values(["user_id", score, "movie_id"], ascending=[True, False, True], kind="stable")
    ordered = ordered[ordered.groupby("user_id").cumcount() < depth]
    counts = ordered.groupby("user_id").size().reindex(users, fill_value=0)
    if (counts < depth).any():
        raise ValueError(f"{int((counts < depth).sum())} users have fewer than {depth} scored movies")
    ordered = ordered.set_index("user_id").loc[users]
    shape = (len(users), depth)
    return ordered["movie_id"].to_numpy().reshape(shape), ordered[score].to_numpy().reshape(shape)


# ---- served lists on the test split ----------------------------------------------------------------


def evaluate_lists(
    top_items: np.ndarray, relevant: sp.spmatrix, n_items: int, popularity_share: np.ndarray, item_genres, k: int = 10
) -> dict[str, float]:
    """Accuracy and beyond-accuracy of a set of top-k lists, with the project's metric definitions.

    Args:
        top_items: (n_users, k) catalogue indices, best first, rows aligned with `relevant`.
        relevant: (n_users, n_items) held-out interactions (e.g. test).
        n_items: catalogue size.
        popularity_share: (n_items,) from metrics.item_popularity_share(X_train).
        item_genres: (n_items, n_genres) genre indicators.

    Returns:
        recall_at_k, ndcg_at_k, coverage_at_k, novelty, intra_list_diversity, gini.
    """
    accuracy = metrics.retrieval_metrics(top_items, relevant, ks=(k,))
    beyond = metrics.beyond_accuracy(top_items, n_items, popularity_share, item_genres, k=k)
    return {f"recall_at_{k}": accuracy[f"recall_at_{k}"], f"ndcg_at_{k}": accuracy[f"ndcg_at_{k}"], **beyond}


@dataclass
class ListEvaluator:
    """Scores (n_users, k) lists of movie ids for the test users: accuracy on test and beyond-accuracy.

    Attributes:
        users: the test users (rows of every list), sorted.
        catalogue: every movie id (columns).
        matrices: train/val/test interactions over users x catalogue.
        popularity_share: each movie's share of train users (for novelty).
        genres: (n_movies, n_genres) indicators (for intra-list diversity).
    """

    users: np.ndarray
    catalogue: np.ndarray
    matrices: SplitMatrices
    popularity_share: np.ndarray
    genres: sp.csr_matrix

    @classmethod
    def for_test(cls, interactions: pd.DataFrame, movies: pd.DataFrame) -> ListEvaluator:
        """Every user with a test interaction, over the whole catalogue of `movies`."""
        users = np.sort(interactions.loc[interactions["split"] == "test", "user_id"].unique())
        catalogue = movies["movie_id"].to_numpy()
        matrices = split_matrices(interactions[interactions["user_id"].isin(users)], users, catalogue)
        genres = sp.csr_matrix(movies[genre_columns(movies)].to_numpy(dtype=np.float32))
        return cls(users, catalogue, matrices, metrics.item_popularity_share(matrices.train), genres)

    def per_user(self, movie_ids: np.ndarray, k: int = 10) -> pd.DataFrame:
        """Recall@k and NDCG@k of each test user's list (the users `evaluate` averages over), indexed by user_id."""
        per_user = metrics.per_user_retrieval_metrics(
            catalogue_columns(self.catalogue, movie_ids[:, :k]), self.matrices.test, ks=(k,)
        )
        return pd.DataFrame(
            {f"recall_at_{k}": per_user[f"recall_at_{k}"], f"ndcg_at_{k}": per_user[f"ndcg_at_{k}"]},
            index=pd.Index(self.users[per_user["user_rows"]], name="user_id"),
        )

    def evaluate(self, movie_ids: np.ndarray, k: int = 10) -> dict[str, float]:
        """recall_at_k, ndcg_at_k, coverage_at_k, novelty, intra_list_diversity, gini of the lists."""
        return evaluate_lists(
            catalogue_columns(self.catalogue, movie_ids[:, :k]),
            self.matrices.test,
            len(self.catalogue),
            self.popularity_share,
            self.genres,
            k=k,
        )


def grouped_ndcg(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k of candidate lists scored by a ranker, the ideal list built from the list's own labels.

    The one definition of the held-out NDCG every learned ranker reports: users whose list holds no
    relevant movie are skipped (nothing to rank; the list evaluation on test likewise skips users
    without held-out movies), where LightGBM's own `ndcg@k` counts them as 1. Ties are broken by the
    row order.

    Args:
        scores, labels: one per candidate row (labels 1 = relevant), rows grouped by user.
        groups: rows per user, in order.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    values, start = [], 0
    for size in groups:
        user_labels = labels[start : start + size]
        if user_labels.any():
            order = np.argsort(-scores[start : start + size], kind="stable")[:k]
            dcg = float((user_labels[order] * discounts[: len(order)]).sum())
            ideal = float(discounts[: min(k, int(user_labels.sum()))].sum())
            values.append(dcg / ideal)
        start += size
    if not values:
        raise ValueError("no list holds a relevant candidate: nothing to score")
    return float(np.mean(values))


def bootstrap_spread(per_user: dict[str, pd.DataFrame], n_resamples: int, seed: int) -> pd.DataFrame:
    """Spread of each strategy's mean metrics over resampled users (the same resamples for every strategy).

    Args:
        per_user: strategy -> per-user metrics (ListEvaluator.per_user), the same users in each.
        n_resamples: bootstrap resamples of the users (with replacement).
        seed: seeds the resampling.

    Returns:
        One row per (strategy, metric): mean, std over resamples, and the 2.5% and 97.5% quantiles.
    """
    frames = list(per_user.values())
    users = frames[0].index
    if any(not frame.index.equals(users) for frame in frames):
        raise ValueError("every strategy must be scored on the same users in the same order")
    picks = np.random.default_rng(seed).integers(0, len(users), size=(n_resamples, len(users)))
    rows = []
    for name, frame in per_user.items():
        for metric in frame.columns:
            values = frame[metric].to_numpy()
            means = values[picks].mean(axis=1)
            rows.append(
                {
                    "strategy": name,
                    "metric": metric,
                    "mean": float(values.mean()),
                    "std": float(means.std(ddof=1)),
                    "low_2.5%": float(np.quantile(means, 0.025)),
                    "high_97.5%": float(np.quantile(means, 0.975)),
                }
            )
    return pd.DataFrame(rows)
