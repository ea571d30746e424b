"""Generated datasets with structure a model can learn: ML-1M's exact file format, or ML-25M's CSV format at its shape."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.core.io import atomic_path
from recsys.data.movielens import GENRES, ML1M_AGE_CODES, DataError

SYNTHETIC_VERSION = 3  # bump when the generator changes, so cached copies are regenerated
# Real US ZIP codes across states (the geo features look them up), a few ZIP+4 and a few
# Canadian codes as ML-1M has, so that ZIP cleaning is exercised.
_US_ZIPS = (
    "10001",
    "90210",
    "60614",
    "98107",
    "02139",
    "73301",
    "33101",
    "94110",
    "30301",
    "80202",
    "19104",
    "48067",
    "55455",
    "97205",
    "85004",
    "20001",
    "02215",
    "78701",
    "63108",
    "37203",
    "53703",
    "84101",
    "70112",
    "96815",
    "99501",
    "27514",
    "43210",
    "15213",
    "92093",
    "06511",
    "89109",
    "46202",
)
_CANADIAN_ZIPS = ("T8N5H", "V6T1Z", "M5S2E", "H3A1B")
_LATIN1_SUBTITLES = ("Café Müller", "Les Misérables", "Señor Niño", "Smörgåsbord", "Déjà Vu")
_AGE_SHARES = (0.04, 0.18, 0.35, 0.20, 0.09, 0.08, 0.06)
_TS_START, _TS_END = 946684800, 1072915199  # 2000-01-01 .. 2003-12-31 (UTC)
_TARGET_MEAN = 3.6
_WATCH_TASTE = 1.5  # how strongly taste (vs popularity alone) decides which movies a user rates


def _write_ml1m_file(path: Path, frame: pd.DataFrame) -> None:
    text = frame.to_csv(sep="\x1f", header=False, index=False, quoting=csv.QUOTE_NONE, lineterminator="\n")
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.replace("\x1f", "::").encode("latin-1"))


def generate_synthetic(
    out_dir: Path, n_users: int, n_movies: int, ratings_per_user: int, n_factors: int, noise: float, seed: int
) -> Path:
    """Write users.dat, movies.dat and ratings.dat in ML-1M's exact format, with learnable ratings.

    Why: tests and offline demos need data with MovieLens's shape and a structure a model can
    learn (latent tastes, biases, popularity skew), without network or licence concerns.
    Ratings = global offset + user bias + movie bias + scaled factor dot product + N(0, noise),
    rounded and clipped to 1..5 (mean near 3.6). Which movies a user rates follows a Zipf-like
    popularity and their taste (see _WATCH_TASTE). Movie factors lean on their genres and user
    factors on gender and age, so side features carry signal too.

    Args:
        out_dir: folder to write the three files into (created if needed).
        n_users: number of users.
        n_movies: number of movies (at least 20).
        ratings_per_user: mean ratings per user; each user rates at least 20 distinct movies.
        n_factors: latent taste dimensions.
        noise: standard deviation of the rating noise before rounding.
        seed: seed of numpy's default_rng; the same arguments give byte-identical files.

    Returns:
        `out_dir`.
    """
    if n_users < 1 or n_movies < 20 or ratings_per_user < 20 or n_factors < 1 or noise < 0:
        raise DataError(
            f"synthetic parameters out of range (n_users={n_users} >= 1, n_movies={n_movies} >= 20, "
            f"ratings_per_user={ratings_per_user} >= 20, n_factors={n_factors} >= 1, "
            f"noise={noise} >= 0); fix them in the params `synthetic` group."
        )
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)

    # Users
    gender = rng.choice(np.array(["M", "F"]), size=n_users, p=[0.72, 0.28])
    age_index = rng.choice(len(ML1M_AGE_CODES), size=n_users, p=np.array(_AGE_SHARES) / sum(_AGE_SHARES))
    zip_kind = rng.random(n_users)
    zip_code = rng.choice(np.array(_US_ZIPS, dtype=object), size=n_users)
    plus4 = zip_kind < 0.04
    zip_code[plus4] = [f"{z}-{n:04d}" for z, n in zip(zip_code[plus4], rng.integers(1, 10000, plus4.sum()))]
    canadian = (zip_kind >= 0.04) & (zip_kind < 0.06)
    zip_code[canadian] = rng.choice(np.array(_CANADIAN_ZIPS, dtype=object), size=canadian.sum())
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "gender": gender,
            "age": np.array(ML1M_AGE_CODES)[age_index],
            "occupation": rng.integers(0, 21, n_users),
            "zip_code": zip_code,
        }
    )

    # Movies
    year = np.clip(np.round(2000 - rng.gamma(2.0, 9.0, n_movies)), 1919, 2000).astype(int)
    subtitle = np.where(rng.random(n_movies) < 0.05, [": " + s for s in rng.choice(_LATIN1_SUBTITLES, n_movies)], "")
    title = [f"Synthetic Movie {i}{sub} ({y})" for i, sub, y in zip(range(1, n_movies + 1), subtitle, year)]
    n_genres = 1 + rng.binomial(2, 0.35, n_movies)
    genre_sets = [np.sort(rng.choice(len(GENRES), size=k, replace=False)) for k in n_genres]
    movies = pd.DataFrame(
        {
            "movie_id": np.arange(1, n_movies + 1),
            "title": title,
            "genres": ["|".join(GENRES[g] for g in gs) for gs in genre_sets],
        }
    )

    # Latent structure: genres shape movie tastes, gender and age shape user tastes.
    genre_vectors = rng.normal(size=(len(GENRES), n_factors))
    movie_factors = np.stack([genre_vectors[gs].mean(axis=0) for gs in genre_sets]) * 0.8 + rng.normal(
        scale=0.6, size=(n_movies, n_factors)
    )
    gender_vectors = rng.normal(scale=0.5, size=(2, n_factors))
    age_vectors = rng.normal(scale=0.5, size=(len(ML1M_AGE_CODES), n_factors))
    user_factors = (
        rng.normal(size=(n_users, n_factors)) + gender_vectors[(gender == "F").astype(int)] + age_vectors[age_index]
    )
    user_bias = rng.normal(scale=0.35, size=n_users)
    # Zipf-like popularity over a random order of movies; popular movies also rate a bit higher.
    popularity_rank = rng.permutation(n_movies)
    popularity = 1.0 / (popularity_rank + 10.0) ** 1.0
    popularity /= popularity.sum()
    log_pop = np.log(popularity)
    movie_bias = rng.normal(scale=0.4, size=n_movies) + 0.25 * (log_pop - log_pop.mean()) / log_pop.std()

    # Which movies each user rates: at least 20, mean ratings_per_user, no repeated pair.
    extra = ratings_per_user - 20
    counts = np.minimum(20 + np.round(rng.exponential(extra, n_users) if extra > 0 else 0), n_movies).astype(int)
    # Users watch what is popular AND what suits their taste (so retrieval has something to learn
    # beyond popularity): weights popularity * exp(taste), sampled without replacement per user with
    # the Gumbel-top-k trick (sort log-weights plus Gumbel noise, keep each user's first `count`).
    taste = user_factors @ movie_factors.T / np.sqrt(n_factors)
    keys = log_pop[None, :] + _WATCH_TASTE * taste + rng.gumbel(size=(n_users, n_movies))
    chosen = np.argsort(-keys, axis=1, kind="stable")
    user_index = np.repeat(np.arange(n_users), counts)
    movie_index = np.concatenate([chosen[u, :c] for u, c in enumerate(counts)])

    interaction = taste[user_index, movie_index] * np.sqrt(n_factors)
    score = (
        user_bias[user_index]
        + movie_bias[movie_index]
        + 0.8 * interaction / np.sqrt(n_factors)
        + rng.normal(scale=noise, size=len(user_index))
    )
    # Clipping to 1..5 pulls the mean down; shift until the rounded mean sits at the target.
    offset = _TARGET_MEAN
    for _ in range(4):
        offset += _TARGET_MEAN - np.clip(np.round(score + offset), 1, 5).mean()
    rating = np.clip(np.round(score + offset), 1, 5).astype(int)

    start = rng.integers(_TS_START, _TS_END - 180 * 86400, n_users)
    timestamp = np.minimum(start[user_index] + rng.exponential(60 * 86400, len(user_index)).astype(np.int64), _TS_END)
    ratings = pd.DataFrame(
        {"user_id": user_index + 1, "movie_id": movie_index + 1, "rating": rating, "timestamp": timestamp}
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_ml1m_file(out_dir / "users.dat", users)
    _write_ml1m_file(out_dir / "movies.dat", movies)
    _write_ml1m_file(out_dir / "ratings.dat", ratings)  # last: its presence means the set is complete
    return out_dir


# ---- ML-25M's CSV format, at ML-25M's shape ------------------------------------------------------------

_CSV_GENRES = (*GENRES[:3], "Children", *GENRES[4:], "IMAX")  # ML-20M/25M spell "Children" without "'s"
_CSV_TS_START, _CSV_TS_END = 789652009, 1574327703  # ML-25M's first and last rating (1995-01-09 .. 2019-11-21)
_CSV_TARGET_MEAN = 3.53  # ML-25M's mean rating
_UTF8_TITLES = ("Amélie", "Crouching Tiger, Hidden Dragon", "Léon", "Das Boot", "Y tu mamá también")


def _csv_movies(rng: np.random.Generator, n_movies: int) -> tuple[pd.DataFrame, list[np.ndarray]]:
    year = np.clip(np.round(2019 - rng.gamma(2.0, 10.0, n_movies)), 1902, 2019).astype(int)
    named = rng.random(n_movies) < 0.05
    title = [
        f"{rng.choice(_UTF8_TITLES)} {i} ({y})" if n else f"Synthetic Movie {i}{', The' if i % 17 == 0 else ''} ({y})"
        for i, n, y in zip(range(1, n_movies + 1), named, year)
    ]
    n_genres = 1 + rng.binomial(3, 0.3, n_movies)
    genre_sets = [np.sort(rng.choice(len(_CSV_GENRES), size=k, replace=False)) for k in n_genres]
    genres = ["|".join(_CSV_GENRES[g] for g in gs) for gs in genre_sets]
    for i in np.flatnonzero(rng.random(n_movies) < 0.01):
        genres[i] = "(no genres listed)"
    return pd.DataFrame({"movie_id": np.arange(1, n_movies + 1), "title": title, "genres": genres}), genre_sets


# The most of the catalogue one user rates: MovieLens's heaviest users rate about half to 62% of it
# (ML-1M: 2,314 of 3,706 movies; ML-25M: 32,202 of 62,423).
MAX_CATALOGUE_SHARE = 0.6


def max_ratings_per_user(n_movies: int) -> int:
    """The cap of one user's ratings in a generated CSV set (MAX_CATALOGUE_SHARE of the catalogue, at least 20)."""
    return max(20, int(MAX_CATALOGUE_SHARE * n_movies))


def _activity(rng: np.random.Generator, n_users: int, n_ratings: int, n_movies: int) -> np.ndarray:
    """Ratings per user: at least 20, long-tailed (log-normal), summing to n_ratings (within rounding)."""
    tail = rng.lognormal(0.0, 1.2, n_users)
    scale = (n_ratings - 20 * n_users) / tail.sum()
    for _ in range(20):  # the cap per user loses mass: rescale until the total fits
        counts = np.minimum(20 + np.floor(tail * scale), max_ratings_per_user(n_movies)).astype(np.int64)
        scale *= (n_ratings - 20 * n_users) / max(counts.sum() - 20 * n_users, 1)
    return counts


def generate_synthetic_csv(
    out_dir: Path, n_users: int, n_movies: int, n_ratings: int, n_factors: int, noise: float, seed: int
) -> Path:
    """Write ratings.csv and movies.csv in ML-25M's exact format, with ML-25M's shape and learnable ratings.

    The stand-in for ML-20M/25M where they cannot be downloaded, and the data of the scale
    benchmark. Shape: Zipf-like movie popularity, every user with at least 20 ratings and a
    long-tailed (log-normal) activity, half-star ratings 0.5..5.0 with ML-25M's mean; titles
    quoted when they hold a comma, some non-ASCII (UTF-8), genres including IMAX and
    "(no genres listed)". Structure: user and movie biases and a factor model whose movie factors
    lean on genres decide both which movies a user rates (popularity x taste) and the rating.
    Users are generated in blocks, so memory stays at a block x catalogue matrix whatever the size.

    Args:
        out_dir: folder to write the two files into (created if needed).
        n_users, n_movies: sizes (ML-25M: 162,541 users, 62,423 movies).
        n_ratings: total ratings (at least 20 and at most `max_ratings_per_user` per user).
        n_factors: latent taste dimensions.
        noise: standard deviation of the rating noise before rounding to half stars.
        seed: the same arguments give byte-identical files.

    Returns:
        `out_dir`.
    """
    cap = max_ratings_per_user(n_movies)
    if n_users < 1 or n_movies < 20 or n_ratings < 20 * n_users or n_ratings > n_users * cap:
        raise DataError(
            f"synthetic CSV sizes out of range: n_users={n_users} >= 1, n_movies={n_movies} >= 20, and "
            f"20 x n_users <= n_ratings={n_ratings} <= n_users x {cap} (at most {MAX_CATALOGUE_SHARE:.0%} "
            "of the catalogue per user): raise n_movies or lower the ratings"
        )
    rng = np.random.default_rng(seed)
    movies, genre_sets = _csv_movies(rng, n_movies)
    genre_vectors = rng.normal(size=(len(_CSV_GENRES), n_factors))
    movie_factors = np.stack([genre_vectors[gs].mean(axis=0) for gs in genre_sets]) * 0.8 + rng.normal(
        scale=0.6, size=(n_movies, n_factors)
    )
    log_pop = -1.0 * np.log(rng.permutation(n_movies) + 10.0)  # Zipf-like over a random order of movies
    log_pop -= np.log(np.exp(log_pop).sum())
    movie_bias = rng.normal(scale=0.4, size=n_movies) + 0.25 * (log_pop - log_pop.mean()) / log_pop.std()
    counts = _activity(rng, n_users, n_ratings, n_movies)
    parts, block = [], max(1, 2**25 // n_movies)  # about 32M keys per block
    for start in range(0, n_users, block):
        size = min(block, n_users - start)
        factors = rng.normal(size=(size, n_factors)).astype(np.float32)
        taste = factors @ movie_factors.T.astype(np.float32) / np.float32(np.sqrt(n_factors))
        keys = (
            log_pop.astype(np.float32)
            + np.float32(_WATCH_TASTE) * taste
            + rng.gumbel(size=taste.shape).astype(np.float32)
        )
        wanted = counts[start : start + size]
        widest = int(wanted.max())
        top = (
            np.argpartition(-keys, widest - 1, axis=1)[:, :widest]
            if widest < n_movies
            else np.tile(np.arange(n_movies), (size, 1))
        )
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(widest)[None, :] < wanted[:, None]
        rows = np.broadcast_to(np.arange(size)[:, None], top.shape)[keep]
        movie_index = top[keep]
        score = (
            rng.normal(scale=0.35, size=size)[rows]
            + movie_bias[movie_index]
            + 0.8 * taste[rows, movie_index]
            + rng.normal(scale=noise, size=len(rows))
        )
        user_start = rng.integers(_CSV_TS_START, _CSV_TS_END - 365 * 86400, size)
        timestamp = np.minimum(user_start[rows] + rng.exponential(90 * 86400, len(rows)).astype(np.int64), _CSV_TS_END)
        parts.append((start + rows + 1, movie_index + 1, score, timestamp))
    user_id, movie_id, score, timestamp = (np.concatenate(column) for column in zip(*parts))
    offset = _CSV_TARGET_MEAN  # rounding to half stars and clipping move the mean: shift until it sits at the target
    for _ in range(4):
        offset += _CSV_TARGET_MEAN - np.clip(np.round((score + offset) * 2) / 2, 0.5, 5.0).mean()
    rating = np.clip(np.round((score + offset) * 2) / 2, 0.5, 5.0)
    order = np.lexsort((timestamp, user_id))  # GroupLens's files are sorted by user, then time
    ratings = pd.DataFrame(
        {"userId": user_id[order], "movieId": movie_id[order], "rating": rating[order], "timestamp": timestamp[order]}
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "movies.csv") as tmp:
        movies.rename(columns={"movie_id": "movieId"}).to_csv(tmp, index=False, lineterminator="\n", encoding="utf-8")
    with atomic_path(out_dir / "ratings.csv") as tmp:  # last: its presence means the set is complete
        ratings.to_csv(tmp, index=False, lineterminator="\n", float_format="%.1f")
    return out_dir
