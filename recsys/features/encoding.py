"""Turn user, movie and context features into the integer and multi-hot arrays the TFRS models eat."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.core.io import atomic_path
from recsys.features import preprocessing

# The feature groups a model can switch on (`rating.features`, `retrieval.features`), and the columns behind each.
USER_FEATURES = ("age_group", "gender", "occupation", "zip5", "city", "state")
MOVIE_FEATURES = ("genres", "title", "release_year")
CONTEXT_FEATURES = ("hour", "weekday", "month")
# a training input, not a feature: 1 / (examples in the global batch), making per-worker loss sums a global mean
EXAMPLE_WEIGHT = "example_weight"
FEATURE_GROUPS = {"user": USER_FEATURES, "movie": MOVIE_FEATURES, "context": CONTEXT_FEATURES}
ALL_FEATURES = USER_FEATURES + MOVIE_FEATURES + CONTEXT_FEATURES
IDS_ONLY = "ids"  # the user and movie ids are always used; naming only them gives the ids-only model


MOVIE_ROW = "movie_row"  # in ExampleInputs.examples: the row of each example's movie in ExampleInputs.movies


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: identity is equality
class ExampleInputs:
    """Model inputs with the movie features stored once per movie rather than once per example.

    The movie inputs (id, release year, title tokens, genre flags) are most of an example's bytes;
    repeated for 25M training ratings they were held twice (numpy and the tensors training gathers
    from), and the rating model's kernel peaked at 13.04 GB (4.46 GB with this). `rating_training.training_dataset`
    gathers them per batch from `movies` instead; `flat()` gives the per-example arrays (for
    prediction on val and test).

    Attributes:
        examples: per-example inputs (user inputs, context) and `MOVIE_ROW`, the row of each
            example's movie in `movies`.
        movies: the movie inputs, one row per movie of the movie table.
    """

    examples: dict[str, np.ndarray]
    movies: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.examples[MOVIE_ROW])

    def flat(self) -> dict[str, np.ndarray]:
        """One array per model input, one row per example (the movie rows gathered)."""
        inputs = {}
        for name, value in self.examples.items():  # the order of interaction_inputs: user, movie, context
            if name == MOVIE_ROW:
                inputs.update({movie_name: column[value] for movie_name, column in self.movies.items()})
            else:
                inputs[name] = value
        return inputs

    @staticmethod
    def concat(*parts: ExampleInputs) -> ExampleInputs:
        """The examples of several splits one after the other (they must share one movie table)."""
        first = parts[0]
        for part in parts[1:]:
            if part.examples.keys() != first.examples.keys():
                raise ValueError(
                    f"ExampleInputs.concat: the parts hold different inputs ({sorted(first.examples)} vs "
                    f"{sorted(part.examples)}); build them with the same context setting"
                )
            if part.movies.keys() != first.movies.keys() or not all(
                np.array_equal(part.movies[name], value) for name, value in first.movies.items()
            ):
                raise ValueError("ExampleInputs.concat: the parts were built from different movie tables")
        examples = {name: np.concatenate([p.examples[name] for p in parts]) for name in first.examples}
        return ExampleInputs(examples, first.movies)


def as_arrays(inputs: dict[str, np.ndarray] | ExampleInputs) -> dict[str, np.ndarray]:
    """Per-example model inputs, whichever form they come in."""
    return inputs.flat() if isinstance(inputs, ExampleInputs) else inputs


def resolve_features(names: list[str], available: Iterable[str] | None = None) -> set[str]:
    """Expand a `rating.features` list (groups, single features, or "ids") to single side features.

    Args:
        names: the list as the params give it.
        available: the inputs the data has (e.g. FeatureEncoder.cardinalities()); features outside
            it are left out: a release without a users file has no user features (see `unavailable`).

    Raises:
        ValueError: the list is empty or names an unknown feature, with the valid names.
    """
    valid = [IDS_ONLY, *FEATURE_GROUPS, *ALL_FEATURES]
    if not names:
        raise ValueError(f"the feature list is empty: name at least {IDS_ONLY!r} (ids only) or some of {valid}")
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; valid: {valid}")
    resolved: set[str] = set()
    for name in names:
        resolved.update(FEATURE_GROUPS.get(name, () if name == IDS_ONLY else (name,)))
    return resolved if available is None else resolved & set(available)


def unavailable(names: list[str], available: Iterable[str]) -> list[str]:
    """The features a `rating.features` list asks for that the data lacks, in ALL_FEATURES order."""
    missing = resolve_features(names) - set(available)
    return [name for name in ALL_FEATURES if name in missing]


def available_groups(available: Iterable[str]) -> list[str]:
    """The FEATURE_GROUPS with at least one feature in `available`, in FEATURE_GROUPS order."""
    return [group for group, members in FEATURE_GROUPS.items() if set(members) & set(available)]


TITLE_LENGTH = 8  # tokens kept per title; MovieLens titles rarely have more words that matter


def _vocabulary(values: pd.Series) -> list:
    """Distinct non-missing values, sorted, so index 0 can mean 'unknown or missing'."""
    return sorted(pd.Series(values).dropna().unique().tolist(), key=lambda v: (str(type(v)), v))


def _lookup(values: pd.Series, vocabulary: list) -> np.ndarray:
    """Index of each value in `vocabulary`, plus one; 0 for missing or unseen values."""
    index = pd.Index(vocabulary)
    positions = index.get_indexer(pd.Series(values).astype(object).where(pd.notna(values), None))
    return (positions + 1).astype(np.int32)


def tokenize_titles(titles: pd.Series) -> list[list[str]]:
    """Lower-cased word tokens of each title (punctuation dropped), as TextVectorization's default does."""
    return titles.fillna("").str.lower().str.findall(r"[a-z0-9]+(?:'[a-z]+)?").tolist()


@dataclass
class FeatureEncoder:
    """Vocabularies learned from the training data, and the encoding of users, movies and contexts.

    Index 0 of every vocabulary is reserved for a missing or unseen value, so a user or movie that
    appears only in val/test (or a new one at serving time) still gets a valid, neutral input.

    Attributes:
        vocabularies: column name -> ordered list of known values (position + 1 is the index).
        genre_columns: the multi-hot genre columns of the movies table, in order.
        title_vocabulary: title tokens, position + 1 is the token id (0 pads).
    """

    vocabularies: dict[str, list]
    genre_columns: list[str]
    title_vocabulary: list[str]
    title_length: int = TITLE_LENGTH
    _movie_table: pd.DataFrame | None = field(default=None, repr=False, compare=False)
    _user_table: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fit(
        cls, users: pd.DataFrame, movies: pd.DataFrame, train: pd.DataFrame, min_title_token_count: int = 2
    ) -> FeatureEncoder:
        """Learn vocabularies: ids from the training interactions, side features from the tables.

        Args:
            users: the run's users table (user_id, age_group, gender, occupation, zip5, city, state;
                user_id only for a release without a users file: then no user feature is learned).
            movies: the run's movies table (movie_id, title_clean, year, genre_* columns).
            train: the training interactions; only ids seen here get their own embedding row.
            min_title_token_count: rarer title words share the unknown token (they cannot be learned).
        """
        vocabularies = {
            "user_id": _vocabulary(train["user_id"]),
            "movie_id": _vocabulary(train["movie_id"]),
            "release_year": _vocabulary(movies["year"]),
            "hour": list(range(24)),
            "weekday": list(range(7)),
            "month": list(range(1, 13)),
        }
        for column in preprocessing.user_attribute_columns(users):
            vocabularies[column] = _vocabulary(users[column].astype(object))
        tokens = pd.Series([t for title in tokenize_titles(movies["title_clean"]) for t in set(title)])
        counts = tokens.value_counts()
        title_vocabulary = sorted(counts[counts >= min_title_token_count].index.tolist())
        genre_columns = preprocessing.genre_columns(movies)
        return cls(vocabularies, genre_columns, title_vocabulary)

    @property
    def user_features(self) -> list[str]:
        """The USER_FEATURES the training users table had (none for a release without a users file)."""
        return [name for name in USER_FEATURES if name in self.vocabularies]

    # ---- tables of encoded features, one row per user / movie ---------------------------------
    def user_table(self, users: pd.DataFrame) -> pd.DataFrame:
        """Encoded user features indexed by user_id (columns: user_id_idx and one per `user_features`)."""
        table = pd.DataFrame(
            {"user_id_idx": _lookup(users["user_id"], self.vocabularies["user_id"])},
            index=pd.Index(users["user_id"].to_numpy(), name="user_id"),
        )
        for column in self.user_features:
            table[column] = _lookup(users[column].astype(object), self.vocabularies[column])
        return table

    def movie_table(self, movies: pd.DataFrame) -> pd.DataFrame:
        """Encoded movie features indexed by movie_id: id and year indices, genres, title token ids."""
        token_index = {token: i + 1 for i, token in enumerate(self.title_vocabulary)}
        title_tokens = np.zeros((len(movies), self.title_length), dtype=np.int32)
        for row, tokens in enumerate(tokenize_titles(movies["title_clean"])):
            ids = [token_index.get(t, 0) for t in tokens][: self.title_length]
            title_tokens[row, : len(ids)] = ids
        table = pd.DataFrame(
            {
                "movie_id_idx": _lookup(movies["movie_id"], self.vocabularies["movie_id"]),
                "release_year": _lookup(movies["year"], self.vocabularies["release_year"]),
            },
            index=pd.Index(movies["movie_id"].to_numpy(), name="movie_id"),
        )
        for i in range(self.title_length):
            table[f"title_{i}"] = title_tokens[:, i]
        for column in self.genre_columns:
            table[column] = movies[column].to_numpy(dtype=np.float32)
        return table

    # ---- model inputs ---------------------------------------------------------------------------
    def user_inputs(self, user_table: pd.DataFrame) -> dict[str, np.ndarray]:
        """Model inputs for rows of `user_table` (already looked up for each example)."""
        inputs = {"user_id": user_table["user_id_idx"].to_numpy(np.int32)}
        inputs.update({c: user_table[c].to_numpy(np.int32) for c in self.user_features})
        return inputs

    def movie_inputs(self, movie_table: pd.DataFrame) -> dict[str, np.ndarray]:
        title_columns = [f"title_{i}" for i in range(self.title_length)]
        return {
            "movie_id": movie_table["movie_id_idx"].to_numpy(np.int32),
            "release_year": movie_table["release_year"].to_numpy(np.int32),
            "title": movie_table[title_columns].to_numpy(np.int32),
            # 0/1 flags as int8, cast to float in the movie tower: Keras turns floating numpy inputs
            # into float32 tensors before training (80 bytes an example for ML-25M's 20 genres, 20 here)
            "genres": movie_table[self.genre_columns].to_numpy(np.int8),
        }

    @staticmethod
    def context_inputs(interactions: pd.DataFrame) -> dict[str, np.ndarray]:
        """Hour (index 1..24), weekday (1..7) and month (1..12) of each rating; 0 is reserved."""
        return {
            "hour": interactions["hour"].to_numpy(np.int32) + 1,
            "weekday": interactions["weekday"].to_numpy(np.int32) + 1,
            "month": interactions["month"].to_numpy(np.int32),
        }

    def interaction_inputs(
        self, interactions: pd.DataFrame, user_table: pd.DataFrame, movie_table: pd.DataFrame, context: bool = True
    ) -> dict[str, np.ndarray]:
        """Every model input for each interaction, gathered from the per-user and per-movie tables.

        Looking features up per example with numpy (rather than inside the graph with string
        lookups) keeps training at hundreds of thousands of examples per second on two cores.
        With `context=False` the hour/weekday/month inputs are left out (and need no columns).
        """
        return self.example_inputs(interactions, user_table, movie_table, context).flat()

    def example_inputs(
        self, interactions: pd.DataFrame, user_table: pd.DataFrame, movie_table: pd.DataFrame, context: bool = True
    ) -> ExampleInputs:
        """The inputs of `interaction_inputs` with the movie features kept once per movie (see `ExampleInputs`)."""
        user_rows = user_table.index.get_indexer(interactions["user_id"])
        movie_rows = movie_table.index.get_indexer(interactions["movie_id"])
        if (user_rows < 0).any() or (movie_rows < 0).any():
            missing_users = interactions["user_id"][user_rows < 0].unique()[:5].tolist()
            missing_movies = interactions["movie_id"][movie_rows < 0].unique()[:5].tolist()
            raise KeyError(
                f"interactions name users {missing_users} or movies {missing_movies} that are not in "
                "the run's users/movies tables"
            )
        examples = self.user_inputs(user_table.iloc[user_rows])
        examples[MOVIE_ROW] = movie_rows.astype(np.int32)
        if context:
            examples.update(self.context_inputs(interactions))
        return ExampleInputs(examples, self.movie_inputs(movie_table))

    def cardinalities(self) -> dict[str, int]:
        """Embedding table sizes (vocabulary + the reserved index 0) per input."""
        sizes = {name: len(values) + 1 for name, values in self.vocabularies.items()}
        sizes["title"] = len(self.title_vocabulary) + 1
        sizes["genres"] = len(self.genre_columns)
        return sizes

    # ---- persistence ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        state = {
            "vocabularies": {
                k: [v if not isinstance(v, (np.integer, np.floating)) else v.item() for v in vals]
                for k, vals in self.vocabularies.items()
            },
            "genre_columns": self.genre_columns,
            "title_vocabulary": self.title_vocabulary,
            "title_length": self.title_length,
        }
        with atomic_path(path, suffix=".json") as tmp:
            tmp.write_text(json.dumps(state))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureEncoder:
        state = json.loads(Path(path).read_text())
        return cls(state["vocabularies"], state["genre_columns"], state["title_vocabulary"], state["title_length"])
