"""New movies (item cold start): rank movies no model has seen a rating of, for the users who rated them.

Preprocessing holds out a seeded share of well-rated movies as *new* (`splits.new_movies`): every
rating of theirs leaves `interactions`, so no model trains or validates on them, and the ratings
by users the models know (users with test ratings) become `new_movie_interactions`. Each such user
gets a ranking of the new movies alone; their rated new movies are the relevant ones. None of a
user's train or val movies is new, so there is nothing of theirs to exclude. A model scores a new
movie from what it knows before anyone rates it: its features (genres, title, year), never its id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.evaluation import metrics
from recsys.evaluation.paired import PairedDifferences, paired_differences
from recsys.features.preprocessing import genre_columns


@dataclass(frozen=True)
class ColdStartTask:
    """Who is scored on which new movies.

    Attributes:
        users: the users with a rating of a new movie, sorted (the rows of every score matrix).
        movies: the new movies, sorted (the columns).
        relevant: (users, movies) CSR, 1 where the user rated the movie.
        tie_order: a seeded order of the columns that breaks equal scores (a genre profile gives the
            same score to every movie of one genre set; by column, ties would follow movie ids).
    """

    users: np.ndarray
    movies: np.ndarray
    relevant: sp.csr_matrix
    tie_order: np.ndarray

    @classmethod
    def of(cls, new_movie_interactions: pd.DataFrame, movies: np.ndarray, seed: int) -> ColdStartTask:
        """The task of the run's `new_movie_interactions` over the new movies `movies` (all of them, rated or not).

        Raises:
            ValueError: no new movies, no ratings of them, or a rating of a movie that is not new.
        """
        movies = np.unique(np.asarray(movies, np.int64))
        if len(movies) == 0 or len(new_movie_interactions) == 0:
            raise ValueError(
                "no new movies or none of their ratings to score: set split.new_movie_share > 0 and rerun the preprocessing"
            )
        users, user_rows = np.unique(new_movie_interactions["user_id"].to_numpy(np.int64), return_inverse=True)
        columns = np.searchsorted(movies, new_movie_interactions["movie_id"].to_numpy(np.int64))
        columns = np.minimum(columns, len(movies) - 1)
        stray = movies[columns] != new_movie_interactions["movie_id"].to_numpy(np.int64)
        if stray.any():
            example = new_movie_interactions["movie_id"].to_numpy()[stray][:3].tolist()
            raise ValueError(f"ratings of movies that are not new, e.g. {example}: pass the new movies of the run")
        relevant = sp.csr_matrix(
            (np.ones(len(columns), np.float32), (user_rows, columns)), shape=(len(users), len(movies))
        )
        relevant.data[:] = 1.0  # a movie rated twice is one relevant movie
        tie_order = np.random.default_rng([int(seed), 0x71E]).permutation(len(movies))
        return cls(users, movies, relevant, tie_order)


def genre_profile_scores(interactions: pd.DataFrame, movies: pd.DataFrame, task: ColdStartTask) -> np.ndarray:
    """Each user's train genre shares times each new movie's genres (multi-hot): the content baseline.

    A user's share of a genre is the fraction of the genre flags of their train movies that are
    this genre. A user with no train rating scores every movie 0.

    Returns:
        (len(task.users), len(task.movies)) float64.
    """
    genres = genre_columns(movies)
    if not genres:
        raise ValueError("the movies table has no genre columns (genre_*): the genre profile needs them")
    flags = movies.set_index("movie_id")[genres]
    train = interactions.loc[interactions["split"] == "train", ["user_id", "movie_id"]]
    train = train[train["user_id"].isin(task.users)]
    profile = flags.reindex(train["movie_id"]).fillna(0).to_numpy(np.float64)
    totals = pd.DataFrame(profile, columns=genres).groupby(train["user_id"].to_numpy()).sum()
    totals = totals.reindex(task.users, fill_value=0.0).to_numpy()
    shares = totals / np.maximum(totals.sum(axis=1, keepdims=True), 1e-12)
    return shares @ flags.reindex(task.movies).fillna(0).to_numpy(np.float64).T


def random_scores(task: ColdStartTask, seed: int) -> np.ndarray:
    """Seeded uniform scores: the order a model that knows nothing would give."""
    return np.random.default_rng([int(seed), 0xC01D]).random((len(task.users), len(task.movies)))


def per_user_metrics(task: ColdStartTask, scores: np.ndarray, k: int = 10) -> pd.DataFrame:
    """Recall@k and NDCG@k of each user's ranking of the new movies, indexed by user_id.

    With fewer than k new movies, every list holds them all (k is then the number of new movies).
    Equal scores are ordered by the task's seeded `tie_order`, the same for every ranker.
    """
    if scores.shape != task.relevant.shape:
        raise ValueError(f"scores are {scores.shape} but the task is {task.relevant.shape} (users x new movies)")
    depth = min(k, len(task.movies))
    order = task.tie_order
    top = order[metrics.top_k_from_scores(np.asarray(scores, np.float64)[:, order], depth)]
    values = metrics.per_user_retrieval_metrics(top, task.relevant, ks=(depth,))
    return pd.DataFrame(
        {f"recall_at_{k}": values[f"recall_at_{depth}"], f"ndcg_at_{k}": values[f"ndcg_at_{depth}"]},
        index=pd.Index(task.users[values["user_rows"]], name="user_id"),
    )


def compare(
    task: ColdStartTask,
    scores: Mapping[str, np.ndarray],
    baseline: str,
    n_resamples: int,
    seed: int,
    k: int = 10,
) -> tuple[pd.DataFrame, PairedDifferences]:
    """Every model's Recall@k and NDCG@k among the new movies, and each other model against `baseline`.

    Returns:
        (one row per model: recall_at_k, ndcg_at_k, means over the task's users; the paired
        differences model - baseline with their 95% bootstrap intervals over the same users)
    """
    if baseline not in scores:
        raise KeyError(f"the baseline {baseline!r} has no scores; models: {sorted(scores)}")
    per_user = {name: per_user_metrics(task, values, k) for name, values in scores.items()}
    table = pd.DataFrame({name: frame.mean() for name, frame in per_user.items()}).T.rename_axis("model")
    pairs = [(name, baseline) for name in scores if name != baseline]
    paired = paired_differences(per_user, pairs, [f"recall_at_{k}", f"ndcg_at_{k}"], n_resamples, seed)
    return table, paired


def metric_keys(table: pd.DataFrame, paired: PairedDifferences) -> dict[str, float]:
    """`compare`'s results as metrics.json keys: `<metric>_cold_<model>` and `<metric>_cold_<a>_minus_<b>`
    with `_low` / `_high` (never read as lists of the test split: they rank the new movies only)."""
    keys = {f"{metric}_cold_{model}": float(value) for model, row in table.iterrows() for metric, value in row.items()}
    return keys | paired.metrics(tag="cold")
