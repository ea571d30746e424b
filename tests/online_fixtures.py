"""Tiny notebook-01-shaped tables (users, movies, interactions with splits) for the online-path tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

GENRES = ["Action", "Comedy", "Drama"]
N_USERS = 8
N_MOVIES = 15
NEVER_RATED_MOVIE = 10 * N_MOVIES  # in the catalogue, no interaction at all


def tiny_tables(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, N_USERS + 1, dtype=np.int32),
            "gender": rng.choice(["F", "M"], N_USERS),
            "age_group": rng.choice(["18-24", "25-34", "35-44"], N_USERS),
            "occupation": rng.choice(["writer", "programmer", "artist"], N_USERS),
            "zip5": rng.choice(["98107", "10001", "60601"], N_USERS),
            "city": rng.choice(["Seattle", "New York", "Chicago"], N_USERS),
            "state": rng.choice(["WA", "NY", "IL"], N_USERS),
        }
    )
    movie_ids = np.arange(10, 10 * N_MOVIES + 1, 10, dtype=np.int32)
    genre_hot = rng.integers(0, 2, (N_MOVIES, len(GENRES))).astype(np.int8)
    genre_hot[genre_hot.sum(axis=1) == 0, 0] = 1
    movies = pd.DataFrame(
        {
            "movie_id": movie_ids,
            "title": [f"Movie {i} Story ({1990 + i % 10})" for i in range(N_MOVIES)],
            "title_clean": [f"Movie {i} Story" for i in range(N_MOVIES)],
            "year": pd.array([1990 + i % 10 for i in range(N_MOVIES)], dtype="Int16"),
            "genres": ["|".join(g for g, on in zip(GENRES, row) if on) for row in genre_hot],
        }
    )
    for j, genre in enumerate(GENRES):
        movies[f"genre_{genre}"] = genre_hot[:, j]
    rows = []
    rated_movies = movie_ids[movie_ids != NEVER_RATED_MOVIE]
    for user_id in users["user_id"]:
        # popularity skew: lower movie ids are rated by more users
        p = np.linspace(2.0, 0.5, len(rated_movies))
        chosen = rng.choice(rated_movies, size=7, replace=False, p=p / p.sum())
        splits = ["train"] * 5 + ["val", "test"]
        for movie_id, split in zip(chosen, splits):
            rows.append((user_id, movie_id, int(rng.integers(1, 6)), split))
    interactions = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "split"])
    interactions["timestamp"] = 978_300_000 + np.arange(len(interactions)) * 3_600
    interactions["hour"] = (interactions["timestamp"] % 86_400 // 3_600).astype(np.int8)
    interactions["weekday"] = ((interactions["timestamp"] // 86_400 + 3) % 7).astype(np.int8)
    interactions["month"] = np.int8(12)
    return users, movies, interactions


def tiny_store_and_encoder(seed: int = 0):
    from recsys.features.encoding import FeatureEncoder
    from recsys.features.feature_store import FeatureStore

    users, movies, interactions = tiny_tables(seed)
    encoder = FeatureEncoder.fit(users, movies, interactions[interactions["split"] == "train"], min_title_token_count=1)
    return FeatureStore.build(users, movies, interactions), encoder, (users, movies, interactions)
