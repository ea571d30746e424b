"""What a model was fitted on, told by the data: a fingerprint of its (user, movie) examples, matched to a run's splits.

A model records, when it is fitted, a `FitRecord` of the examples it saw: how many, of how many
users, and an order-independent 64-bit digest of them. The digest groups the examples by user and
hashes each user's movies (a sum of per-movie hashes, then a hash of that sum per user, summed over
users), so it is the same whatever the order of the rows and whatever the users are called: a
users x movies matrix whose rows are unnamed (EASE's) gives the same digest as the table of the
same ratings. `RunInteractions.match` finds which of a run's split sets (train; train + val;
all three), at which positives threshold (rating >= one of the run's rating levels), has that
digest: what the model was fitted on, from the data rather than from a label someone wrote.

`ids` says what the examples' ids are: "movie_id" (the run's own user and movie ids) or
"encoder" (the indices a FeatureEncoder gave them, what a Keras model's inputs hold: an id the
encoder did not learn is index 0, so the run's interactions are encoded with the same encoder
before they are compared).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

SPLIT_SETS: tuple[tuple[str, ...], ...] = (("train",), ("train", "val"), ("train", "val", "test"))
ID_KINDS = ("movie_id", "encoder")
_MOVIE_SALT = np.uint64(0x5851F42D4C957F2D)
_USER_SALT = np.uint64(0x14057B7EF767814F)
_CHUNK = 1 << 20


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class FitRecord:
    """The fingerprint of the (user, movie) examples a model was fitted on.

    Attributes:
        examples: how many examples (a rating counted once per time it was seen).
        users: how many distinct users they are of.
        digest: 16 hex digits, the order-independent hash of the examples grouped by user.
        ids: "movie_id" (the run's ids) or "encoder" (a FeatureEncoder's indices of them).
    """

    examples: int
    users: int
    digest: str
    ids: str = "movie_id"

    def __post_init__(self) -> None:
        if self.ids not in ID_KINDS:
            raise ValueError(f"FitRecord.ids must be one of {ID_KINDS}, got {self.ids!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict | None) -> FitRecord | None:
        """The record saved by `to_dict`; None for None (a model saved without one)."""
        return None if state is None else cls(**state)

    def __str__(self) -> str:
        return f"{self.examples:,} examples of {self.users:,} users, digest {self.digest}"


def fingerprint(users: np.ndarray, movies: np.ndarray, ids: str = "movie_id") -> FitRecord:
    """The FitRecord of the examples (users[i], movies[i]), in any order.

    Args:
        users: each example's user (any hashable keys: ids, encoder indices or matrix rows).
        movies: each example's movie id (or encoder index), integers.
        ids: what the ids are ("movie_id" or "encoder").
    """
    users, movies = np.asarray(users), np.asarray(movies)
    if users.shape != movies.shape or users.ndim != 1:
        raise ValueError(f"users and movies must be 1-d and aligned, got shapes {users.shape} and {movies.shape}")
    codes, distinct = pd.factorize(users)
    per_user = np.zeros(len(distinct), np.uint64)
    for start in range(0, len(movies), _CHUNK):  # a chunk at a time: a few temporaries of 8 MB, not of 8 bytes a rating
        hashed = _splitmix64(movies[start : start + _CHUNK].astype(np.uint64) ^ _MOVIE_SALT)
        np.add.at(per_user, codes[start : start + _CHUNK], hashed)
    digest = int(_splitmix64(per_user ^ _USER_SALT).sum(dtype=np.uint64))
    return FitRecord(len(movies), len(distinct), f"{digest:016x}", ids)


def matrix_fingerprint(matrix: sp.spmatrix, movie_ids: np.ndarray) -> FitRecord:
    """The FitRecord of a users x movies interaction matrix (nonzero = an example); its rows need no ids.

    Args:
        matrix: (n_users, n_movies) sparse.
        movie_ids: the movie id of each column.
    """
    X = sp.csr_matrix(matrix)
    movie_ids = np.asarray(movie_ids)
    if len(movie_ids) != X.shape[1]:
        raise ValueError(f"{len(movie_ids)} movie ids for a matrix of {X.shape[1]} columns")
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    kept = X.data != 0
    return fingerprint(rows[kept], movie_ids[X.indices[kept]])


def encoded(ids: np.ndarray, vocabulary: list) -> np.ndarray:
    """A FeatureEncoder's index of each id: position in the vocabulary + 1, 0 for an id it did not learn."""
    return (pd.Index(vocabulary).get_indexer(np.asarray(ids)) + 1).astype(np.int32)


@dataclass(frozen=True)
class FitMatch:
    """Which part of a run's interactions a FitRecord matches: the splits and the positives threshold."""

    splits: tuple[str, ...]
    min_rating: float

    def __str__(self) -> str:
        return f"{' + '.join(self.splits)} ratings >= {self.min_rating:g}"


class RunInteractions:
    """A run's interactions, to tell from a FitRecord which splits (and positives) a model was fitted on.

    Args:
        interactions: the run's interactions table (user_id, movie_id, split, rating; every split).
    """

    def __init__(self, interactions: pd.DataFrame):
        missing = [c for c in ("user_id", "movie_id", "split", "rating") if c not in interactions.columns]
        if missing:
            raise ValueError(f"interactions lack the columns {missing} (a run's interactions table has them)")
        # the table's own arrays where it can (no copy); the splits as small codes
        self._users, self._movies = interactions["user_id"].to_numpy(), interactions["movie_id"].to_numpy()
        splits = pd.Categorical(interactions["split"])
        self._split_codes, self._split_names = splits.codes, list(splits.categories)
        self._ratings = interactions["rating"].to_numpy()
        self.levels = np.sort(pd.unique(self._ratings))  # each is a threshold some positives rule would give
        self._cache: dict[tuple, FitRecord] = {}
        self._counts: pd.DataFrame | None = None
        self._encoded: dict[int, tuple[object, np.ndarray, np.ndarray]] = {}

    def _rows(self, splits: tuple[str, ...]) -> np.ndarray:
        codes = [self._split_names.index(s) for s in splits if s in self._split_names]
        return np.isin(self._split_codes, codes)

    def counts(self) -> pd.DataFrame:
        """Examples of each split set (rows, "train" / "train + val" / ...) at each threshold (columns, >= level)."""
        if self._counts is None:
            n_levels = len(self.levels)
            cells = self._split_codes.astype(np.int64) * n_levels + np.searchsorted(self.levels, self._ratings)
            per_split = np.bincount(cells, minlength=len(self._split_names) * n_levels).reshape(-1, n_levels)
            at_least = per_split[:, ::-1].cumsum(axis=1)[:, ::-1]  # ratings >= each level
            rows = {
                " + ".join(s): at_least[[self._split_names.index(n) for n in s if n in self._split_names]].sum(axis=0)
                for s in SPLIT_SETS
            }
            self._counts = pd.DataFrame(rows, index=self.levels).T.astype(np.int64)
        return self._counts

    def _ids(self, kind: str, encoder) -> tuple[np.ndarray, np.ndarray]:
        if kind == "movie_id":
            return self._users, self._movies
        if encoder is None:
            raise ValueError("a FitRecord of encoder indices is matched with the model's FeatureEncoder: pass it")
        if id(encoder) not in self._encoded:
            vocabularies = encoder.vocabularies
            self._encoded[id(encoder)] = (
                encoder,  # kept so its id is not reused
                encoded(self._users, vocabularies["user_id"]),
                encoded(self._movies, vocabularies["movie_id"]),
            )
        return self._encoded[id(encoder)][1:]

    def record(self, splits: tuple[str, ...], min_rating: float, ids: str = "movie_id", encoder=None) -> FitRecord:
        """The FitRecord of the ratings >= min_rating of the given splits (cached)."""
        key = (tuple(splits), float(min_rating), ids, id(encoder) if ids == "encoder" else None)
        if key not in self._cache:
            users, movies = self._ids(ids, encoder)
            rows = self._rows(splits) & (self._ratings >= min_rating)
            self._cache[key] = fingerprint(users[rows], movies[rows], ids)
        return self._cache[key]

    def match(self, record: FitRecord, encoder=None) -> FitMatch | None:
        """The split set and threshold whose ratings give `record` (train first, lowest threshold first); None if none.

        Args:
            record: a model's FitRecord.
            encoder: the model's FeatureEncoder, for a record of encoder indices.
        """
        counts = self.counts()
        for splits, row in zip(SPLIT_SETS, counts.to_numpy(), strict=True):
            for level in self.levels[row == record.examples]:  # only a set of the same size can match
                if self.record(splits, level, record.ids, encoder) == record:
                    return FitMatch(splits, float(level))
        return None

    def describe(self) -> str:
        """How many ratings each split set holds, for an error message."""
        every = ", ".join(f"{name} {n:,}" for name, n in self.counts().iloc[:, 0].items())
        levels = ", ".join(f"{level:g}" for level in self.levels)
        return f"ratings: {every}; each also tried as the ratings >= each of {levels}"
