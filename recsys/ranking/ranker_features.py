"""The learned ranker's features of (user, candidate) rows, from models and counts fitted on train only.

Protocol (DESIGN.md, "Learned ranking"): the ranker learns on the val stage (candidates that
exclude each user's train movies, label 1 when the movie is among the user's val movies) and is
scored on the test stage (candidates exclude train and val movies). Every feature, at both
stages, comes from models and counts fitted on train: the same features mean the same thing
when the ranker is trained and when it serves. `FeatureSources.check` refuses a source fitted on
the labels of the stage it is asked for (e.g. the rating model refitted on train + val
at the val stage). What a saved model was fitted on is read from the data, not from a label:
`checked_fitted_on` matches the model's fit record (`recsys.features.fit_records`) to the run's
interactions and refuses a record that matches none of its split sets, or a label that disagrees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys.features.feature_store import FeatureStore
from recsys.features.fit_records import FitRecord, RunInteractions
from recsys.retrieval.candidates import EaseSource, VectorSource

FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "retrieval": ("retrieval_score", "retrieval_rank"),
    "ease": ("ease_score", "ease_rank"),
    "rating": ("predicted_rating",),
    "joint": ("joint_score",),  # the joint rating + retrieval model's retrieval cosine
    "movie": ("log_popularity", "mean_rating", "year"),
    "user": ("log_activity", "gender", "age_group", "occupation"),
    "affinity": ("genre_affinity",),
}
FEATURES = tuple(name for names in FEATURE_GROUPS.values() for name in names)
CATEGORICAL = ("gender", "age_group", "occupation")  # vocabulary indices (0 = unknown), not quantities
# the labels a stage learns from or is scored on, and so the splits no feature source may be fitted on
_FORBIDDEN = {"val": {"val", "test"}, "test": {"test"}}


class LeakageError(ValueError):
    """A feature source was fitted on the split whose labels the ranker learns from (or is scored on)."""


class SourceRecordError(LeakageError):
    """What a feature source was fitted on cannot be trusted: its fit record matches none of the run's split sets,
    or its label says otherwise than its record."""


def checked_fitted_on(
    name: str,
    record: FitRecord | None,
    label: Sequence[str] | None,
    fits: RunInteractions | None,
    encoder=None,
) -> tuple[str, ...]:
    """The splits a source was fitted on, from its fit record matched to the run's interactions.

    Without a record (a model saved before records were kept, or trained on the workers, where
    `fit` gets sharded batches) or without the run's interactions, the label is all there is: it
    is returned as it is.

    Args:
        name: the source, for the messages ("ease", "rating_model", "retrieval").
        record: the source's FitRecord.
        label: the splits it was saved (or is assumed) as fitted on; None: no label.
        fits: the run's interactions (`fit_records.RunInteractions`).
        encoder: the source's FeatureEncoder, for a record of encoder indices.

    Raises:
        SourceRecordError: the record matches none of the run's split sets (fitted on other data:
            another run, another split), or the label disagrees with what the record matches.
    """
    if record is None or fits is None:
        if label is None:
            raise SourceRecordError(f"feature source {name!r} has neither a fit record nor a label of its splits")
        return tuple(label)
    found = fits.match(record, encoder)
    said = "no label" if label is None else f"label {list(label)}"
    if found is None:
        raise SourceRecordError(
            f"feature source {name!r} ({said}) was fitted on none of this run's split sets: its fit record "
            f"({record}) matches none of them ({fits.describe()}); refit it on this run's splits"
        )
    if label is not None and set(label) != set(found.splits):
        raise SourceRecordError(
            f"feature source {name!r} is labelled as fitted on {list(label)}, but the data says {list(found.splits)}: "
            f"its fit record ({record}) is that of the run's {found}; save it with the splits it was fitted on"
        )
    return found.splits


@dataclass
class FeatureSources:
    """Everything the features are computed from, with the splits each part was fitted on.

    Attributes:
        store: users' and movies' features and train history; its retrieval vectors attached
            (`FeatureStore.with_vectors`).
        n_candidates: candidates per source; a source's rank of a movie it did not propose is
            n_candidates + 1.
        ease: EASE (fitted on train) for the EASE score of every candidate; None leaves the EASE
            features out.
        predicted_rating: (user positions, movie positions) in the store -> predicted ratings of a
            rating model; None leaves the feature out.
        joint_vectors: (user vectors, movie vectors) of the joint multitask model's retrieval head,
            rows aligned with the store's users and movies (`learned_ranking.joint_vectors`); the
            joint score of a pair is their dot product (a cosine). None leaves the feature out.
        fitted_on: part name -> the splits it was fitted on ("store", "retrieval", "ease",
            "rating_model", "joint_model"): what `check` reads (`checked_fitted_on`: from the parts' fit records).
        fits: the run's interactions the parts' fit records were matched to; None: the labels were taken as given.
    """

    store: FeatureStore
    n_candidates: int
    ease: EaseSource | None = None
    predicted_rating: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    fitted_on: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fits: RunInteractions | None = None
    joint_vectors: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def features(self) -> tuple[str, ...]:
        """The feature columns these sources give, in FEATURES order.

        The demographic codes are left out when the store's users have none (a release without a
        users file): a column of unknowns would be a constant the ranker cannot use.
        """
        skipped = {name for name in CATEGORICAL if name not in self.store.users.columns}
        if self.ease is None:
            skipped |= set(FEATURE_GROUPS["ease"])
        if self.predicted_rating is None:
            skipped |= set(FEATURE_GROUPS["rating"])
        if self.joint_vectors is None:
            skipped |= set(FEATURE_GROUPS["joint"])
        return tuple(name for name in FEATURES if name not in skipped)

    def candidate_sources(self, ease: bool, joint: bool) -> dict[str, EaseSource | VectorSource | None]:
        """The sources that propose candidates beside retrieval, as `recommender.retrieve_candidates`' keyword
        arguments: EASE (`online.ease_candidates`) and the joint model's exact top n over its vectors
        (`online.joint_candidates`), each None when not asked for.

        Raises:
            ValueError: a source asked for that these sources lack (no EASE, or no joint vectors).
        """
        missing = [
            name
            for name, wanted, have in (("ease", ease, self.ease), ("joint", joint, self.joint_vectors))
            if wanted and have is None
        ]
        if missing:
            raise ValueError(
                f"candidates asked of {missing}, which these feature sources lack: load them, or set "
                f"online.{missing[0]}_candidates: false"
            )
        joint_source = None
        if joint:
            joint_source = VectorSource(*self.joint_vectors, self.store.users.index, self.store.movies.index)
        return {"ease": self.ease if ease else None, "joint": joint_source}

    def check(self, stage: str) -> None:
        """Refuse sources fitted on the labels of `stage` ("val": learning; "test": scoring).

        Raises:
            LeakageError: naming each such source and its splits.
        """
        if stage not in _FORBIDDEN:
            raise ValueError(f"stage must be 'val' or 'test', got {stage!r}")
        if self.store.user_vectors is None:
            raise ValueError("the store has no retrieval vectors: attach them with FeatureStore.with_vectors")
        fitted = {"store": self.store.history_splits, **self.fitted_on}
        leaking = {name: list(splits) for name, splits in fitted.items() if set(splits) & _FORBIDDEN[stage]}
        if leaking:
            raise LeakageError(
                f"features for the {stage} stage would come from sources fitted on {sorted(_FORBIDDEN[stage])}: "
                f"{leaking}; use sources fitted on train only (e.g. the rating model saved as rating_model_train)"
            )

    def build(self, candidates: pd.DataFrame, stage: str) -> pd.DataFrame:
        """The feature table of a candidate table (recsys.retrieval.candidates.CANDIDATE_COLUMNS), rows aligned.

        Args:
            candidates: (user, movie) rows with their per-source ranks.
            stage: "val" or "test" (see `check`).

        Returns:
            One column per name of `features`, float32 (categorical columns hold vocabulary indices).
        """
        self.check(stage)
        store = self.store
        user_ids = candidates["user_id"].to_numpy(np.int64)
        movie_ids = candidates["movie_id"].to_numpy(np.int64)
        users = store.user_positions(user_ids)
        movies = store.movie_positions(movie_ids)
        missing_rank = self.n_candidates + 1
        columns: dict[str, np.ndarray] = {
            "retrieval_score": np.einsum("ij,ij->i", store.user_vectors[users], store.movie_vectors[movies]),
            "retrieval_rank": _rank(candidates["retrieval_rank"], missing_rank),
        }
        if self.ease is not None:
            distinct, row_of = np.unique(user_ids, return_inverse=True)
            histories = [store.history_movies(u) for u in distinct]
            columns["ease_score"] = _ease_scores(self.ease, histories, row_of, movie_ids)
            columns["ease_rank"] = _rank(candidates["ease_rank"], missing_rank)
        if self.predicted_rating is not None:
            columns["predicted_rating"] = self.predicted_rating(users, movies)
        if self.joint_vectors is not None:
            joint_users, joint_movies = self.joint_vectors
            columns["joint_score"] = np.einsum("ij,ij->i", joint_users[users], joint_movies[movies])
        movie_columns, user_columns = _store_columns(store)
        for name, values in movie_columns.items():
            columns[name] = values[movies]
        for name, values in user_columns.items():
            columns[name] = values[users]
        columns["genre_affinity"] = _genre_affinity(store, users, movies)
        # one float32 block, laid out as pandas lays out a table built column by column (a column a row of
        # the block), so what reads it sums in the same order; building it that way costs about 1 ms a request
        names = self.features
        block = np.empty((len(names), len(candidates)), np.float32)
        for j, name in enumerate(names):
            block[j] = columns[name]
        return pd.DataFrame(block.T, columns=list(names), copy=False)


def _store_columns(store: FeatureStore) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The per-movie and per-user feature columns as arrays aligned with the store's rows (cached in the store)."""
    cache = store._code_cache
    if "_ranker_columns" not in cache:
        movies, users = store.movies, store.users
        cache["_ranker_columns"] = (
            {
                "log_popularity": np.log1p(movies["popularity"].to_numpy(np.float64)),
                "mean_rating": movies["mean_rating"].to_numpy(np.float64),
                "year": movies["year"].to_numpy(dtype=np.float64, na_value=np.nan),
            },
            {
                "log_activity": np.log1p(users["n_train_ratings"].to_numpy(np.float64)),
                **{name: store.user_codes(name).astype(np.float64) for name in CATEGORICAL if name in users.columns},
            },
        )
    return cache["_ranker_columns"]


def _rank(ranks: pd.Series, missing: int) -> np.ndarray:
    values = ranks.to_numpy(np.float64)
    return np.where(values > 0, values, missing)


def _ease_scores(
    ease: EaseSource, histories: list[np.ndarray], row_of: np.ndarray, movie_ids: np.ndarray, block: int = 1024
) -> np.ndarray:
    """EASE's score of each candidate from its user's history, computed in blocks of users."""
    columns = ease.column.positions(movie_ids)
    out = np.full(len(movie_ids), np.nan, np.float32)
    for start in range(0, len(histories), block):
        dense = ease.scores(histories[start : start + block])
        rows = np.flatnonzero((row_of >= start) & (row_of < start + block) & (columns >= 0))
        out[rows] = dense[row_of[rows] - start, columns[rows]]
    return out


def _genre_affinity(store: FeatureStore, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """Cosine between the genre mix of the user's history and the movie's genres (0 without history)."""
    profiles = _unit_rows(store.genre_profiles()[users])
    return np.einsum("ij,ij->i", profiles, _unit_rows(store.genre_matrix()[movies]))


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norm, out=np.zeros_like(matrix), where=norm > 0)
