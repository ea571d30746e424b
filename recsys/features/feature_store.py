"""The serving path's feature store: per-movie and per-user features and seen items, with fast lookups."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.core.errors import UnknownMovieError, UnknownUserError
from recsys.core.io import atomic_dir
from recsys.core.tables import IdIndex
from recsys.features.encoding import FeatureEncoder
from recsys.features.preprocessing import genre_columns, user_attribute_columns
from recsys.features.splits import SPLIT_NAMES

MOVIE_DISPLAY_COLUMNS = ("title", "genres", "year")
_FILES = ("movies.parquet", "users.parquet", "seen.parquet", "history.parquet", "store.json")
_FORMAT_VERSION = 2


class _Pairs:
    """(user, movie) pairs as CSR over the sorted distinct user ids: one searchsorted and a slice per user."""

    def __init__(self, pairs: pd.DataFrame):
        pairs = pairs.sort_values(["user_id", "movie_id"])
        users_sorted = pairs["user_id"].to_numpy(np.int64)
        self.user_ids, starts = np.unique(users_sorted, return_index=True)
        self.indptr = np.append(starts, len(users_sorted))
        self.movie_ids = pairs["movie_id"].to_numpy(np.int64)

    def movies_of(self, user_id: int) -> np.ndarray:
        i = np.searchsorted(self.user_ids, user_id)
        if i == len(self.user_ids) or self.user_ids[i] != user_id:
            return self.movie_ids[:0]
        return self.movie_ids[self.indptr[i] : self.indptr[i + 1]]

    def frame(self) -> pd.DataFrame:
        users = np.repeat(self.user_ids, np.diff(self.indptr))
        return pd.DataFrame({"user_id": users, "movie_id": self.movie_ids})

    def matrix(self, user_ids: np.ndarray, movie_index: pd.Index) -> sp.csr_matrix:
        """Binary (len(user_ids), len(movie_index)) matrix of the pairs, rows in the order of `user_ids`."""
        user_ids = np.asarray(user_ids, np.int64)
        at = np.clip(np.searchsorted(self.user_ids, user_ids), 0, max(len(self.user_ids) - 1, 0))
        found = len(self.user_ids) > 0
        known = (self.user_ids[at] == user_ids) if found else np.zeros(len(user_ids), bool)
        starts = np.where(known, self.indptr[at], 0) if found else np.zeros(len(user_ids), np.int64)
        lengths = np.where(known, self.indptr[np.minimum(at + 1, len(self.indptr) - 1)] - starts, 0)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        columns = movie_index.get_indexer(self.movie_ids[np.repeat(starts, lengths) + offsets])
        rows = np.repeat(np.arange(len(user_ids)), lengths)
        keep = columns >= 0
        data = np.ones(int(keep.sum()), np.float32)
        return sp.csr_matrix((data, (rows[keep], columns[keep])), shape=(len(user_ids), len(movie_index)))


class FeatureStore:
    """What an online recommender must look up per request, kept in memory as indexed DataFrames.

    A request names a user; the recommender needs that user's features, the features of every
    candidate movie the retrieval index returns, and the movies the user has already seen (so they
    are not recommended again). The store keeps these in pandas tables indexed by id, and each
    model's encoded inputs are computed once per encoder, on first use, from the features read
    (no vocabulary lookups at request time); a lookup is a hash probe plus a `take`, well under a
    millisecond.

    Attributes:
        movies: index movie_id; title (clean), genres ('|'-joined), year, popularity (train
            interactions), popularity_rank (1 = most popular; ties by movie id), mean_rating
            (train; NaN if unrated), then the multi-hot genre_* columns.
        users: index user_id; gender, age_group, occupation, zip5, city, state (the attributes the
            release has: none without a users file), n_train_ratings.
        seen_splits: the interaction splits whose movies count as seen.
        history_splits: the splits a user's history comes from (the input of history-based
            features such as EASE's scores and genre affinity), and the counts above.
        user_vectors, movie_vectors: the retrieval model's vectors, aligned with `users` and
            `movies` (None until `with_vectors`), for the learned ranker's retrieval score.
    """

    def __init__(
        self,
        movies: pd.DataFrame,
        users: pd.DataFrame,
        seen_pairs: pd.DataFrame,
        seen_splits: Sequence[str] = ("train", "val"),
        history_pairs: pd.DataFrame | None = None,
        history_splits: Sequence[str] = ("train",),
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
        self._movie_index, self._user_index = IdIndex(self._movie_ids), IdIndex(self.users.index.to_numpy())
        # the columns' own arrays (pandas' string arrays, the nullable Int16 year): a `take` of them goes
        # into a result table without converting every string again, as a numpy object array would
        self._movie_display = {name: movies[name].array for name in MOVIE_DISPLAY_COLUMNS}
        self._by_popularity = np.argsort(movies["popularity_rank"].to_numpy(), kind="stable")
        self._seen = _Pairs(seen_pairs)
        self.history_splits = tuple(history_splits)
        if history_pairs is seen_pairs:  # the same splits (`build` passes one table): one index for both
            self._history = self._seen
        else:
            self._history = _Pairs(history_pairs if history_pairs is not None else seen_pairs.iloc[:0])
        self.user_vectors: np.ndarray | None = None
        self.movie_vectors: np.ndarray | None = None
        self._input_cache: dict[int, tuple[FeatureEncoder, dict, dict]] = {}
        self._code_cache: dict[str, np.ndarray] = {}

    # ---- construction and persistence -------------------------------------------------------------
    @classmethod
    def build(
        cls,
        users: pd.DataFrame,
        movies: pd.DataFrame,
        interactions: pd.DataFrame,
        seen_splits: Sequence[str] = ("train", "val"),
        history_splits: Sequence[str] = ("train",),
    ) -> FeatureStore:
        """Assemble the store from the run's users, movies and interactions tables.

        Popularity, mean rating and each user's rating count come from the train split only, the
        same data the models learned from; nothing from val or test leaks into what is served.

        Args:
            users, movies, interactions: the run's tables (interactions with their `split` column).
            seen_splits: splits whose (user, movie) pairs are excluded from recommendations; train
                and val by default, so test items stay recommendable for offline evaluation.
            history_splits: splits of each user's history (train: what the models were fitted on).
        """
        if "split" not in interactions.columns:
            raise ValueError(
                f"interactions need the `split` column of the preprocessing step (columns: {list(interactions.columns)})"
            )
        unknown_splits = sorted((set(seen_splits) | set(history_splits)) - set(SPLIT_NAMES))
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
        movie_table = movie_table.join(movies.set_index("movie_id")[genre_columns(movies)])

        user_ids = users["user_id"].to_numpy()
        user_table = users.set_index("user_id")[user_attribute_columns(users)].copy()
        user_table["n_train_ratings"] = (
            train["user_id"].value_counts().reindex(user_ids, fill_value=0).to_numpy(np.int64)
        )

        def pairs(splits: Sequence[str]) -> pd.DataFrame:
            chosen = interactions.loc[interactions["split"].isin(splits), ["user_id", "movie_id"]]
            return chosen.drop_duplicates().astype(np.int64).reset_index(drop=True)

        seen = pairs(seen_splits)
        history = seen if set(history_splits) == set(seen_splits) else pairs(history_splits)
        return cls(movie_table, user_table, seen, seen_splits, history, history_splits)

    def with_vectors(self, user_vectors: np.ndarray, movie_vectors: np.ndarray) -> FeatureStore:
        """Attach the retrieval model's vectors (rows aligned with `users` and `movies`); returns the store."""
        user_vectors, movie_vectors = np.asarray(user_vectors, np.float32), np.asarray(movie_vectors, np.float32)
        if len(user_vectors) != len(self.users) or len(movie_vectors) != len(self.movies):
            raise ValueError(
                f"vectors for {len(user_vectors)} users and {len(movie_vectors)} movies, but the store holds "
                f"{len(self.users)} users and {len(self.movies)} movies (align them with store.users/movies)"
            )
        self.user_vectors, self.movie_vectors = user_vectors, movie_vectors
        return self

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the store as Parquet files; the folder appears complete or not at all (artifacts.atomic_dir)."""
        with atomic_dir(folder) as tmp:
            self.movies.reset_index().to_parquet(tmp / "movies.parquet", index=False)
            self.users.reset_index().to_parquet(tmp / "users.parquet", index=False)
            self.seen_pairs().to_parquet(tmp / "seen.parquet", index=False)
            self._history.frame().to_parquet(tmp / "history.parquet", index=False)
            if self.user_vectors is not None:
                np.savez(tmp / "vectors.npz", users=self.user_vectors, movies=self.movie_vectors)
            meta = {
                "format_version": _FORMAT_VERSION,
                "seen_splits": list(self.seen_splits),
                "history_splits": list(self.history_splits),
            }
            (tmp / "store.json").write_text(json.dumps(meta))
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
        history = pd.read_parquet(folder / "history.parquet")
        store = cls(
            movies,
            users,
            pd.read_parquet(folder / "seen.parquet"),
            meta["seen_splits"],
            history,
            meta["history_splits"],
        )
        if (folder / "vectors.npz").exists():
            vectors = np.load(folder / "vectors.npz")
            store.with_vectors(vectors["users"], vectors["movies"])
        return store

    # ---- lookups ------------------------------------------------------------------------------------
    def movie_positions(self, ids: Sequence[int]) -> np.ndarray:
        """Row positions of `ids` in `movies`, in the order given.

        Raises:
            UnknownMovieError: an id is not in the catalogue (the error names every such id).
        """
        ids = np.asarray(ids)
        positions = self._movie_index.positions(ids)
        if (positions < 0).any():
            raise UnknownMovieError(pd.unique(ids.reshape(-1)[positions < 0]))
        return positions

    def get_movie_features(self, ids: Sequence[int]) -> pd.DataFrame:
        """The store's rows for `ids`, in the order asked (repeats allowed).

        Raises:
            UnknownMovieError: an id is not in the catalogue.
        """
        return self.movies.iloc[self.movie_positions(ids)]

    def user_position(self, user_id: int) -> int | None:
        """Row position of a user in `users`, or None for a user the store does not know."""
        try:
            position = self._user_index.positions([user_id])[0]
        except (TypeError, ValueError):  # not an integer id
            return None
        return None if position < 0 else int(position)

    def known_users(self, user_ids: Sequence[int]) -> np.ndarray:
        """A boolean mask: which of `user_ids` the store holds."""
        return self._user_index.positions(user_ids) >= 0

    def user_positions(self, user_ids: Sequence[int]) -> np.ndarray:
        """Row positions of `user_ids` in `users`, in the order given.

        Raises:
            UnknownUserError: a user is not in the store (the error names up to five).
        """
        positions = self._user_index.positions(user_ids)
        if (positions < 0).any():
            unknown = pd.unique(np.asarray(user_ids)[positions < 0])
            raise UnknownUserError(f"users {unknown[:5].tolist()} are not in the feature store")
        return positions

    def get_user_features(self, user_id: int) -> pd.Series | None:
        """The user's row (readable and encoded features), or None for an unknown user."""
        position = self.user_position(user_id)
        return None if position is None else self.users.iloc[position]

    def describe_user(self, user_id: int) -> str:
        """One line about a user for a report: their attributes the release has, and their train ratings."""
        profile = self.get_user_features(user_id)
        if profile is None:
            return f"user {user_id}: not in the store"
        shown = ("gender", "age_group", "occupation", "city", "state")
        about = ", ".join(str(profile[name]) for name in shown if name in profile)
        return (
            f"user {user_id}: {about or 'no attributes in this release'} ({profile['n_train_ratings']} train ratings)"
        )

    def seen_movies(self, user_id: int) -> np.ndarray:
        """Movie ids of the user's interactions in `seen_splits`, sorted (empty for an unknown user)."""
        return self._seen.movies_of(user_id)

    def history_movies(self, user_id: int) -> np.ndarray:
        """Movie ids of the user's interactions in `history_splits`, sorted (empty for an unknown user)."""
        return self._history.movies_of(user_id)

    def history_matrix(self, user_ids: Sequence[int]) -> sp.csr_matrix:
        """Users x catalogue (store.movies order) binary matrix of their histories, rows in the order given."""
        return self._history.matrix(np.asarray(user_ids), self.movies.index)

    def seen_pairs(self) -> pd.DataFrame:
        """Every seen (user_id, movie_id) pair, sorted."""
        return self._seen.frame()

    def popular_movies(self, k: int, exclude: Iterable[int] = ()) -> pd.DataFrame:
        """The k most popular movies in train (by interaction count), best first, skipping `exclude`."""
        exclude = np.asarray(list(exclude) if not isinstance(exclude, np.ndarray) else exclude)
        head = self._by_popularity[: k + exclude.size]
        if exclude.size:
            head = head[~np.isin(self._movie_ids[head], exclude)]
        return self.movies.iloc[head[:k]]

    def movie_display(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """title, genres and year of the movies at `positions` (pandas arrays, for building result tables fast)."""
        return {c: values.take(np.asarray(positions)) for c, values in self._movie_display.items()}

    # ---- model inputs ---------------------------------------------------------------------------------
    def _inputs(self, encoder: FeatureEncoder) -> tuple[dict, dict]:
        """Every user's and movie's model inputs as arrays aligned with `users` / `movies` (cached per encoder)."""
        # keyed by id(); each entry holds its encoder, so that id cannot be reused while the entry exists
        cached = self._input_cache.get(id(encoder))
        if cached is None:
            missing = [c for c in encoder.genre_columns if c not in self.movies.columns]
            if missing:
                raise ValueError(
                    f"the encoder expects genre columns {missing} that the store's movies lack: "
                    "build the store from the movies table the model was trained on"
                )
            users = self.users.reset_index()
            movies = self.movies.reset_index().rename(columns={"title": "title_clean"})
            cached = (
                encoder,
                encoder.user_inputs(encoder.user_table(users)),
                encoder.movie_inputs(encoder.movie_table(movies)),
            )
            self._input_cache[id(encoder)] = cached
        return cached[1], cached[2]

    def genre_matrix(self) -> np.ndarray:
        """(n_movies, n_genres) float32 multi-hot genres, rows aligned with `movies` (cached)."""
        if "_genres" not in self._code_cache:
            self._code_cache["_genres"] = self.movies[genre_columns(self.movies)].to_numpy(np.float32)
        return self._code_cache["_genres"]

    def genre_profiles(self) -> np.ndarray:
        """(n_users, n_genres) genre mix of each user's history (rows aligned with `users`; cached).

        The sum of the multi-hot genres of the movies in the user's history splits.
        """
        if "_profiles" not in self._code_cache:
            history = self.history_matrix(self.users.index.to_numpy())
            self._code_cache["_profiles"] = np.asarray(history @ self.genre_matrix(), np.float32)
        return self._code_cache["_profiles"]

    def user_codes(self, column: str) -> np.ndarray:
        """Each user's `column` (gender, age_group, ...) as an index into its sorted values, 0 where missing."""
        if column not in self._code_cache:
            values = self.users[column].astype(object)
            vocabulary = pd.Index(sorted(values.dropna().unique().tolist(), key=str))
            self._code_cache[column] = vocabulary.get_indexer(values.where(values.notna(), None)) + 1
        return self._code_cache[column]

    def user_inputs(self, positions: np.ndarray, encoder: FeatureEncoder) -> dict[str, np.ndarray]:
        """Model inputs of the users at row `positions` (repeat a position to repeat a user)."""
        return {name: values[positions] for name, values in self._inputs(encoder)[0].items()}

    def movie_inputs(self, positions: np.ndarray, encoder: FeatureEncoder) -> dict[str, np.ndarray]:
        """Model inputs of the movies at row `positions`."""
        return {name: values[positions] for name, values in self._inputs(encoder)[1].items()}

    def __repr__(self) -> str:
        return (
            f"FeatureStore({len(self.movies)} movies, {len(self.users)} users, "
            f"{len(self._seen.movie_ids)} seen pairs from {list(self.seen_splits)})"
        )
