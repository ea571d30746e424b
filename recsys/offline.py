"""Offline evaluation of served top-k lists (notebooks 06-09): test users, their candidates, one metric call."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys import metrics
from recsys.exploration import evaluate_lists
from recsys.features import genre_columns
from recsys.retrieval import SplitMatrices, split_matrices


def fixed_context(interactions: pd.DataFrame) -> dict[str, int]:
    """The most frequent training hour, weekday and month: a reproducible stand-in for "now"."""
    train = interactions[interactions["split"] == "train"]
    return {name: int(train[name].mode().iloc[0]) for name in ("hour", "weekday", "month")}


@dataclass
class ListEvaluator:
    """Scores (n_users, k) lists of movie ids for the test users, with DESIGN §5's metrics.

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
    def for_test(cls, interactions: pd.DataFrame, movies: pd.DataFrame) -> "ListEvaluator":
        users = np.sort(interactions.loc[interactions["split"] == "test", "user_id"].unique())
        catalogue = movies["movie_id"].to_numpy()
        matrices = split_matrices(interactions[interactions["user_id"].isin(users)], users, catalogue)
        genres = sp.csr_matrix(movies[genre_columns(movies)].to_numpy(dtype=np.float32))
        return cls(users, catalogue, matrices, metrics.item_popularity_share(matrices.train), genres)

    def columns(self, movie_ids: np.ndarray) -> np.ndarray:
        """Catalogue columns of movie ids (raises on an id outside the catalogue or a short list)."""
        movie_ids = np.asarray(movie_ids, dtype=np.int64)
        columns = pd.Index(self.catalogue).get_indexer(movie_ids.ravel()).reshape(movie_ids.shape)
        if (columns < 0).any():
            raise ValueError(f"{int((columns < 0).any(axis=1).sum())} lists hold padding or unknown movies")
        return columns

    def evaluate(self, movie_ids: np.ndarray, k: int = 10) -> dict[str, float]:
        """recall_at_k, ndcg_at_k, coverage_at_k, novelty, intra_list_diversity, gini of the lists."""
        return evaluate_lists(
            self.columns(movie_ids[:, :k]),
            self.matrices.test,
            len(self.catalogue),
            self.popularity_share,
            self.genres,
            k=k,
        )


def ranked_lists(scored: pd.DataFrame, users: np.ndarray, score: str, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's `depth` best movies by `score` (and those scores), rows in the order of `users`.

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
