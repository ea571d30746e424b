"""The serving path's feature store: per-movie and per-user features and seen items, with fast lookups."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.artifacts import atomic_dir
from recsys.encoding import FeatureEncoder
from recsys.splits import SPLIT_NAMES

# Encoded model inputs sit beside the readable features under this prefix: "age_group" is the
# user's age group as text, "enc_age_group" its vocabulary index (the two would clash otherwise).
ENCODED_PREFIX = "enc_"
MOVIE_DISPLAY_COLUMNS = ("title", "genres", "year")
USER_DISPLAY_COLUMNS = ("gender", "age_group", "occupation", "city", "state")
_FILES = ("movies.parquet", "users.parquet", "seen.parquet", "store.json")
_FORMAT_VERSION = 1


class UnknownUserError(KeyError):
    """A user the feature store (or a retriever) cannot serve: not in the run's users table, or no query for them."""

    def __str__(self) -> str:  # KeyError would show the message repr'd, in quotes
        return self.args[0]


class UnknownMovieError(KeyError):
    """A movie id that the feature store does not hold (not in the run's movies table)."""

    def __init__(self, movie_ids: Iterable[int]):
        self.movie_ids = [int(m) for m in movie_ids]
        shown = self.movie_ids[:10]
        more = f" and {len(self.movie_ids) - 10} more" if len(self.movie_ids) > 10 else ""
        super().__init__(
            f"unknown movie id(s) {shown}{more}: not in the feature store's catalogue "
            "(build the store from the same run's movies table as the retrieval index)"
        )

    def __str__(self) -> str:  # KeyError would show the message repr'd, in quotes
        return self.args[0]


def _prefixed(table: pd.DataFrame) -> pd.DataFrame:
    return table.add_prefix(ENCODED_PREFIX)


def _encoded(table: pd.DataFrame) -> pd.DataFrame:
    """The encoded columns of a store table, under the names FeatureEncoder expects."""
    columns = [c for c in table.columns if c.startswith(ENCODED_PREFIX)]
    return table[columns].rename(columns=lambda c: c[len(ENCODED_PREFIX) :])


class FeatureStore:
    """What an online recommender must look up per request, kept in memory as indexed DataFrames.

    A request names a user; the recommender needs that user's features, the features of every
    candidate movie the retrieval index returns, and the movies the user has already seen (so they
    are not recommended again). The store keeps these in pandas tables indexed by id, with the
    model's encoded inputs precomputed (no vocabulary lookups at request time) and numpy copies
    of the hot columns, so a lookup is a hash probe plus a `take`, well under a millisecond.

    Attributes:
        movies: index movie_id; title (clean), genres ('|'-joined), year, popularity (train
            interactions), popularity_rank (1 = most popular; ties by movie id), mean_rating
            (train; NaN if unrated), then FeatureEncoder.movie_table's columns prefixed "enc_".
        users: index user_id; gender, age_group, occupation, city, state, n_train_ratings, then
            FeatureEncoder.user_table's columns prefixed "enc_".
        seen_splits: the interaction splits whose movies count as seen.
    """

    def __init__(
        self,
        movies: pd.DataFrame,
        users: pd.DataFrame,
        seen_pairs: pd.DataFrame,
        seen_splits: Sequence[str] = ("train", "val"),
    ):
        for name, table, index in (("movies", movies, "movie_id"), ("users", users, "user_id")):
            if table.index.name != index or not table.index.is_unique:
                raise ValueError(
                    f"FeatureStore.{name} must be indexed by a unique {index!r} "
                    f"(got index {table.index.name!r}, unique={table.index.is_unique})"
                )
        # one id dtype whatever the source (int32 from the parsed tables, int64 after some joins)
        self.movies = movies.set_axis(movies.index.astype(np.int64), axis=0)
        self.users = users.set_axis(users.index.astype(np.int64), axis=0)
        self.seen_splits = tuple(seen_splits)
        movies = self.movies
        self._movie_ids = movies.index.to_numpy()
        # numpy for the text columns (fast fancy indexing); the year keeps its nullable Int16 array
        self._movie_display = {
            "title": movies["title"].to_numpy(),
            "genres": movies["genres"].to_numpy(),
            "year": movies["year"].array,
        }
        self._by_popularity = np.argsort(movies["popularity_rank"].to_numpy(), kind="stable")
        # Seen items as CSR over the sorted distinct user ids: one searchsorted and a slice per user.
        pairs = seen_pairs.sort_values(["user_id", "movie_id"])
        users_sorted = pairs["user_id"].to_numpy(np.int64)
        self._seen_user_ids, starts = np.unique(users_sorted, return_index=True)
        self._seen_indptr = np.append(starts, len(users_sorted))
        self._seen_movie_ids = pairs["movie_id"].to_numpy(np.int64)
        self._input_cache: dict[int, tuple[FeatureEncoder, dict, dict]] = {}

    # ---- construction and persistence -------------------------------------------------------------
    @classmethod
    def build(
        cls,
        users: pd.DataFrame,
        movies: pd.DataFrame,
        interactions: pd.DataFrame,
        encoder: FeatureEncoder,
        seen_splits: Sequence[str] = ("train", "val"),
    ) -> FeatureStore:
        """Assemble the store from the run's users, movies and interactions tables and the ranking model's encoder.

        Popularity, mean rating and each user's rating count come from the train split only, the
        same data the models learned from; nothing from val or test leaks into what is served.

        Args:
            users, movies, interactions: the run's tables (interactions with their `split` column).
            encoder: the FeatureEncoder saved with the ranking model (its vocabularies encode inputs).
            seen_splits: splits whose (user, movie) pairs are excluded from recommendations; train
                and val by default, so test items stay recommendable for offline evaluation.
        """
        if "split" not in interactions.columns:
            raise ValueError(
                f"interactions need the `split` column of the preprocessing step (columns: {list(interactions.columns)})"
            )
        unknown_splits = sorted(set(seen_splits) - set(SPLIT_NAMES))
        if unknown_splits:
            raise ValueError(f"seen_splits {unknown_splits} are not splits; choose from {list(SPLIT_NAMES)}")
        train = interactions[interactions["split"] == "train"]
        movie_ids = movies["movie_id"].to_numpy()
        counts = train["movie_id"].value_counts().reindex(movie_ids, fill_value=0).to_numpy(np.int64)
        mean_rating = train.groupby("movie_id")["rating"].mean().reindex(movie_ids).to_numpy(np.float64)
        rank = np.empty(len(movie_ids), dtype=np.int64)
        rank[np.lexsort((movie_ids, -counts))] = np.arange(1, len(movie_ids) + 1)
        movie_table = pd.DataFrame(
            {
                "title": movies["title_clean"].to_numpy(),
                "genres": movies["genres"].to_numpy(),
                "year": movies["year"].array,
                "popularity": counts,
                "popularity_rank": rank,
                "mean_rating": mean_rating,
            },
            index=pd.Index(movie_ids, name="movie_id"),
        )
        movie_table = movie_table.join(_prefixed(encoder.movie_table(movies)))

        user_ids = users["user_id"].to_numpy()
        user_table = users.set_index("user_id")[list(USER_DISPLAY_COLUMNS)].copy()
        user_table["n_train_ratings"] = (
            train["user_id"].value_counts().reindex(user_ids, fill_value=0).to_numpy(np.int64)
        )
        user_table = user_table.join(_prefixed(encoder.user_table(users)))

        seen = interactions.loc[interactions["split"].isin(seen_splits), ["user_id", "movie_id"]]
        seen = seen.drop_duplicates().astype(np.int64).reset_index(drop=True)
        return cls(movie_table, user_table, seen, seen_splits)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the store as Parquet files; the folder appears complete or not at all (artifacts.atomic_dir)."""
        with atomic_dir(folder) as tmp:
            self.movies.reset_index().to_parquet(tmp / "movies.parquet", index=False)
            self.users.reset_index().to_parquet(tmp / "users.parquet", index=False)
            self.seen_pairs().to_parquet(tmp / "seen.parquet", index=False)
            (tmp / "store.json").write_text(
                json.dumps({"format_version": _FORMAT_VERSION, "seen_splits": list(self.seen_splits)})
            )
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> FeatureStore:
        """Read a store written by `save`."""
        folder = Path(folder)
        missing = [name for name in _FILES if not (folder / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a saved feature store (missing {missing}): "
                "build it with FeatureStore.build(...).save(folder)"
            )
        meta = json.loads((folder / "store.json").read_text())
        movies = pd.read_parquet(folder / "movies.parquet").set_index("movie_id")
        users = pd.read_parquet(folder / "users.parquet").set_index("user_id")
        return cls(movies, users, pd.read_parquet(folder / "seen.parquet"), meta["seen_splits"])

    # ---- lookups ------------------------------------------------------------------------------------
    def movie_positions(self, ids: Sequence[int]) -> np.ndarray:
        """Row positions of `ids` in `movies`, in the order given.

        Raises:
            UnknownMovieError: an id is not in the catalogue (the error names every such id).
        """
        ids = np.asarray(ids)
        positions = self.movies.index.get_indexer(ids)
        if (positions < 0).any():
            raise UnknownMovieError(pd.unique(ids[positions < 0]))
        return positions

    def get_movie_features(self, ids: Sequence[int]) -> pd.DataFrame:
        """The store's rows for `ids`, in the order asked (repeats allowed).

        Raises:
            UnknownMovieError: an id is not in the catalogue.
        """
        return self.movies.iloc[self.movie_positions(ids)]

    def user_position(self, user_id: int) -> int | None:
        """Row position of a user in `users`, or None for a user the store does not know."""
        position = self.users.index.get_indexer([user_id])[0]
        return None if position < 0 else int(position)

    def known_users(self, user_ids: Sequence[int]) -> np.ndarray:
        """A boolean mask: which of `user_ids` the store holds."""
        return self.users.index.get_indexer(np.asarray(user_ids)) >= 0

    def user_positions(self, user_ids: Sequence[int]) -> np.ndarray:
        """Row positions of `user_ids` in `users`, in the order given.

        Raises:
            UnknownUserError: a user is not in the store (the error names up to five).
        """
        positions = self.users.index.get_indexer(np.asarray(user_ids))
        if (positions < 0).any():
            unknown = pd.unique(np.asarray(user_ids)[positions < 0])
            raise UnknownUserError(f"users {unknown[:5].tolist()} are not in the feature store")
        return positions

    def get_user_features(self, user_id: int) -> pd.Series | None:
        """The user's row (readable and encoded features), or None for an unknown user."""
        position = self.user_position(user_id)
        return None if position is None else self.users.iloc[position]

    def seen_movies(self, user_id: int) -> np.ndarray:
        """Movie ids of the user's interactions in `seen_splits`, sorted (empty for an unknown user)."""
        i = np.searchsorted(self._seen_user_ids, user_id)
        if i == len(self._seen_user_ids) or self._seen_user_ids[i] != user_id:
            return self._seen_movie_ids[:0]
        return self._seen_movie_ids[self._seen_indptr[i] : self._seen_indptr[i + 1]]

    def seen_pairs(self) -> pd.DataFrame:
        """Every seen (user_id, movie_id) pair, sorted."""
        users = np.repeat(self._seen_user_ids, np.diff(self._seen_indptr))
        return pd.DataFrame({"user_id": users, "movie_id": self._seen_movie_ids})

    def popular_movies(self, k: int, exclude: Iterable[int] = ()) -> pd.DataFrame:
        """The k most popular movies in train (by interaction count), best first, skipping `exclude`."""
        exclude = np.asarray(list(exclude) if not isinstance(exclude, np.ndarray) else exclude)
        head = self._by_popularity[: k + exclude.size]
        if exclude.size:
            head = head[~np.isin(self._movie_ids[head], exclude)]
        return self.movies.iloc[head[:k]]

    def movie_display(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """title, genres and year of the movies at `positions` (numpy, for building result tables fast)."""
        return {c: values[positions] for c, values in self._movie_display.items()}

    # ---- model inputs ---------------------------------------------------------------------------------
    def _inputs(self, encoder: FeatureEncoder) -> tuple[dict, dict]:
        """Every user's and movie's model inputs as arrays aligned with `users` / `movies` (cached)."""
        # keyed by id(); each entry holds its encoder, so that id cannot be reused while the entry exists
        cached = self._input_cache.get(id(encoder))
        if cached is None:
            missing = [c for c in encoder.genre_columns if ENCODED_PREFIX + c not in self.movies.columns]
            if missing:
                raise ValueError(
                    f"the store was built with another encoder: genre inputs {missing} are missing; "
                    "build the store with the encoder saved beside the ranking model"
                )
            cached = (encoder, encoder.user_inputs(_encoded(self.users)), encoder.movie_inputs(_encoded(self.movies)))
            self._input_cache[id(encoder)] = cached
        return cached[1], cached[2]

    def user_inputs(self, positions: np.ndarray, encoder: FeatureEncoder) -> dict[str, np.ndarray]:
        """Model inputs of the users at row `positions` (repeat a position to repeat a user)."""
        return {name: values[positions] for name, values in self._inputs(encoder)[0].items()}

    def movie_inputs(self, positions: np.ndarray, encoder: FeatureEncoder) -> dict[str, np.ndarray]:
        """Model inputs of the movies at row `positions`."""
        return {name: values[positions] for name, values in self._inputs(encoder)[1].items()}

    def __repr__(self) -> str:
        return (
            f"FeatureStore({len(self.movies)} movies, {len(self.users)} users, "
            f"{len(self._seen_movie_ids)} seen pairs from {list(self.seen_splits)})"
        )
