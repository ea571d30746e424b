"""Queries of the sequential retriever from users' latest histories: what an index is asked with at serving time.

`HistoryQueries` holds a timeline of interactions (user_id, movie_id, position) and the model;
asked for a user, it reads their latest N movies and returns the query vector, so a retriever
(`retrievers.IndexRetriever` with it as `user_index`) serves each user from what they watched
most recently, and `add` extends a user's history without retraining. `for_history` answers
the same question for a list of movie ids of someone who is not in the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from recsys.core.errors import UnknownUserError
from recsys.core.tables import require_columns
from recsys.features.sequences import Timeline
from recsys.models.sequential_model import MovieVocabulary, SequentialRetrievalModel, query_vectors
from recsys.models.single_history_query import SingleHistoryQuery


class HistoryQueries:
    """User id -> the sequential model's query from the user's latest movies in `interactions`.

    A user with no movie in the timeline has no query: asking for one raises UnknownUserError
    (a KeyError), which the serving path answers with popular movies, labelled. `add` changes
    the retrieval query only: a served list also excludes what the feature store has as seen.

    Args:
        model, vocabulary: the sequential retriever and its catalogue.
        interactions: the timeline (user_id, movie_id, position): e.g. train for the val stage,
            train + val for the test stage and serving.
    """

    def __init__(self, model: SequentialRetrievalModel, vocabulary: MovieVocabulary, interactions: pd.DataFrame):
        require_columns(interactions, ("user_id", "movie_id", "position"), "interactions", ValueError)
        self.model, self.vocabulary = model, vocabulary
        self._single: SingleHistoryQuery | None = None
        self.length = model.config.history_length
        # sorted once: a request slices its user's latest movies with two binary searches
        self._timeline = Timeline(
            interactions["user_id"].to_numpy(np.int64),
            interactions["position"].to_numpy(np.int64),
            vocabulary.encode(interactions["movie_id"].to_numpy()),
        )

    def _known(self, user_ids: np.ndarray) -> np.ndarray:
        return np.isin(user_ids, self._timeline.users)

    def histories(self, user_ids: Sequence[int]) -> np.ndarray:
        """(n, N) encoded latest histories, oldest first; UnknownUserError for a user without any movie."""
        user_ids = np.asarray(user_ids, np.int64)
        unknown = user_ids[~self._known(user_ids)]
        if unknown.size:
            raise UnknownUserError(f"no history for user(s) {pd.unique(unknown)[:5].tolist()}: nothing to query with")
        return self._timeline.latest(user_ids, self.length)

    def queries(self, user_ids: Sequence[int], without_history: str = "raise") -> np.ndarray:
        """(n, dim) query vectors of the users, in the order given (one batched model call).

        Args:
            without_history: "raise" (UnknownUserError) or "zeros" (a zero vector: every score 0,
                e.g. for a feature that must have a row for every user).
        """
        user_ids = np.asarray(user_ids, np.int64)
        if without_history == "raise":
            return query_vectors(self.model, self.histories(user_ids))
        if without_history != "zeros":
            raise ValueError(f"without_history must be 'raise' or 'zeros', got {without_history!r}")
        known = self._known(user_ids)
        out = np.zeros((len(user_ids), self.model.config.embedding_dim), np.float32)
        out[known] = query_vectors(self.model, self.histories(user_ids[known]))
        return out

    def __getitem__(self, user_id: int) -> np.ndarray:
        return self.queries([user_id])[0]

    def add(self, user_id: int, movie_ids: Sequence[int]) -> HistoryQueries:
        """Append movies the user has just watched (in that order) to their timeline; returns self."""
        items = self.vocabulary.encode(np.asarray(movie_ids))
        start = self._timeline.last_position(user_id) + 1
        self._timeline = self._timeline.extended(
            np.full(len(items), user_id, np.int64), start + np.arange(len(items)), items
        )
        return self

    def for_history(self, movie_ids: Sequence[int]) -> np.ndarray:
        """The query of an ad-hoc history (movie ids, oldest first; the latest N are read).

        Raises:
            UnknownMovieError: a movie id is not in the catalogue (all such ids are named).
            ValueError: the history is empty (there is nothing to query with).
        """
        items = self.vocabulary.encode(np.asarray(movie_ids, np.int64).ravel())
        if not len(items):
            raise ValueError("an empty history has no query: serve popular movies instead")
        if self._single is None:  # one request's history: numpy, not a TensorFlow call (about 1.4 ms less)
            self._single = SingleHistoryQuery(self.model)
        return self._single(items[-self.length :])
