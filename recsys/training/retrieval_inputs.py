"""The retrieval models' inputs: a run's positives, their feature encoder and split matrices over the whole catalogue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.evaluation.full_ranking import SplitMatrices, split_matrices
from recsys.features.encoding import FeatureEncoder, unavailable
from recsys.features.preprocessing import EVENT_COLUMNS
from recsys.models.configs import RetrievalConfig


def positives(interactions: pd.DataFrame, min_rating: int) -> pd.DataFrame:
    """The interactions that count as positives: rating >= min_rating.

    When every rating passes (the default `min_rating: 1`) this is the table itself, not a copy
    (a copy held a second 0.5 GB at 25M ratings).
    """
    keep = interactions["rating"].to_numpy() >= min_rating
    return interactions if keep.all() else interactions[keep]


@dataclass
class RetrievalInputs:
    """What the retrieval models are trained and scored on.

    Attributes:
        positives: the ratings that count as positives (rating >= retrieval.min_rating), every split.
        encoder: the feature encoder, fitted on the train positives.
        user_table, movie_table: the encoded user and movie features, indexed by id.
        matrices: train/val/test positives over every user with a rating (sorted) x the whole catalogue.
        not_in_release: features the config asks for that the data lacks (e.g. ML-20M has no users file).
    """

    positives: pd.DataFrame
    encoder: FeatureEncoder
    user_table: pd.DataFrame
    movie_table: pd.DataFrame
    matrices: SplitMatrices
    not_in_release: list[str]

    @property
    def train(self) -> pd.DataFrame:
        """The train positives."""
        return self.positives[self.positives["split"] == "train"]


def retrieval_inputs(
    users: pd.DataFrame, movies: pd.DataFrame, interactions: pd.DataFrame, config: RetrievalConfig
) -> RetrievalInputs:
    """Positives, encoder and split matrices of a run's tables.

    A user whose every rating is below `config.min_rating` keeps a row of the matrices (with no
    positive), so the rows are every user with a rating, whatever the threshold.
    """
    kept = positives(interactions, config.min_rating)
    encoder = FeatureEncoder.fit(users, movies, kept[kept["split"] == "train"])
    movie_table = encoder.movie_table(movies)
    matrices = split_matrices(kept, np.sort(interactions["user_id"].unique()), movie_table.index.to_numpy())
    missing = unavailable(config.features, encoder.cardinalities())
    return RetrievalInputs(kept, encoder, encoder.user_table(users), movie_table, matrices, missing)


def load_retrieval_inputs(require: Callable[[str], Path], config: RetrievalConfig) -> RetrievalInputs:
    """`retrieval_inputs` of a run's users, movies and interactions, read through `require` (e.g. `Run.require`)."""
    users, movies = pd.read_parquet(require("users")), pd.read_parquet(require("movies"))
    interactions = pd.read_parquet(require("interactions"), columns=list(EVENT_COLUMNS))
    return retrieval_inputs(users, movies, interactions, config)
