"""Surprise's trainset built from a ratings table's arrays, without the list of rating tuples Surprise builds first."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd


def surprise_trainset(train: pd.DataFrame, rating_scale: tuple[float, float]):
    """Surprise's full trainset of `train`, equal to `Dataset.load_from_df(...).build_full_trainset()`, built from arrays.

    Surprise first copies the table into a list of (user, movie, rating, None) tuples and builds
    its trainset from that list; at 20M ratings the list alone is about 3 GB more than the trainset
    (a tuple and three objects a rating). The same trainset is built here without it: inner ids
    in order of first appearance (Surprise's), each user's (movie, rating) pairs and each movie's
    (user, rating) pairs in row order, and one Python object per id and per rating level shared by
    every pair that holds it. SVD, which reads the pairs in that order, fits the same factors.
    """
    from surprise import Trainset  # imported here: the other baselines work without Surprise

    ratings = train["rating"].to_numpy(np.float64)
    users, user_ids = pd.factorize(train["user_id"].to_numpy(), sort=False)  # first appearance, as Surprise
    movies, movie_ids = pd.factorize(train["movie_id"].to_numpy(), sort=False)
    levels, level_of = np.unique(ratings, return_inverse=True)
    user_objects, movie_objects, level_objects = (
        list(range(len(user_ids))),
        list(range(len(movie_ids))),
        levels.tolist(),
    )

    def pairs_by(owner: np.ndarray, n_owners: int, other: np.ndarray, other_objects: list) -> dict[int, list]:
        order = np.argsort(owner, kind="stable")  # each owner's pairs in row order
        others = [other_objects[i] for i in other[order].tolist()]
        values = [level_objects[i] for i in level_of[order].tolist()]
        bounds = np.searchsorted(owner[order], np.arange(n_owners + 1)).tolist()
        pairs = ((k, list(zip(others[a:b], values[a:b]))) for k, a, b in zip(range(n_owners), bounds, bounds[1:]))
        return defaultdict(list, pairs)  # Surprise's type, keys in inner id order

    ur = pairs_by(users, len(user_ids), movies, movie_objects)
    ir = pairs_by(movies, len(movie_ids), users, user_objects)
    return Trainset(
        ur,
        ir,
        len(user_ids),
        len(movie_ids),
        len(ratings),
        rating_scale,
        {raw: inner for inner, raw in zip(user_objects, user_ids.tolist())},
        {raw: inner for inner, raw in zip(movie_objects, movie_ids.tolist())},
    )
