"""The ranking step of serving: the rating ranker (predicted rating) and the learned ranker, scored in bulk.

A ranker has `name`, `score(candidates) -> scores` (higher first) and `display(scores)`;
`serving.rank_candidates` orders each user's candidates by it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import tensorflow as tf

from recsys.features.encoding import FeatureEncoder
from recsys.features.feature_store import FeatureStore
from recsys.features.request_context import context_inputs, request_context
from recsys.models.precomputed_rating import PrecomputedRating
from recsys.models.rating_model import TwoTowerRatingModel

# Rows per model call: large enough to amortise the call, small enough for memory.
SCORE_BATCH = 65_536

_POSITION_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _position_scorer(store: FeatureStore, model: TwoTowerRatingModel, encoder: FeatureEncoder) -> Callable:
    """(user positions, movie positions, encoded context row) -> unclipped predicted ratings, built once.

    The model is served by `PrecomputedRating`: its towers run once over every user and movie of
    the store, and a request is a numpy gather, dot product and head (about 0.09 ms for a request's
    126 pairs on ml-1m-half, against 0.8 ms for a TensorFlow graph call). Cached per model, store
    and encoder (a store's inputs do not change).
    """
    per_model = _POSITION_SCORERS.setdefault(model, {})
    key = (id(store), id(encoder))
    if key not in per_model:
        every = np.arange(len(store.users)), np.arange(len(store.movies))
        scorer = PrecomputedRating(model, store.user_inputs(every[0], encoder), store.movie_inputs(every[1], encoder))
        per_model[key] = (store, encoder, scorer)  # the entry keeps its store and encoder
    return per_model[key][2]


def _score_positions(
    store: FeatureStore,
    model: tf.keras.Model,
    encoder: FeatureEncoder,
    user_positions: np.ndarray,
    movie_positions: np.ndarray,
    context: Mapping[str, int] | dict[str, np.ndarray] | None,
    chunk: int = SCORE_BATCH,
) -> np.ndarray:
    """Unclipped predicted ratings of aligned (user, movie) store positions in one context.

    The context is resolved once ("now" cannot move between chunks) and encoded once (or comes
    encoded, as `context_inputs(encoder, context, 1)`); the pairs are scored in calls of at most
    `chunk` rows (`PrecomputedRating` chunks them).
    """
    context_row = context if _is_encoded(context) else context_inputs(encoder, context, 1)
    context_row = {name: np.asarray(value[:1], np.int32) for name, value in context_row.items()}
    return _position_scorer(store, model, encoder)(user_positions, movie_positions, context_row, chunk)


def _is_encoded(context) -> bool:
    return context is not None and all(isinstance(v, np.ndarray) for v in context.values())


def score_pairs(
    user_ids: np.ndarray,
    movie_ids: np.ndarray,
    *,
    store: FeatureStore,
    rating_model: tf.keras.Model,
    encoder: FeatureEncoder,
    context: Mapping[str, int] | None,
    chunk: int = SCORE_BATCH,
) -> np.ndarray:
    """Predicted ratings of many (user, movie) pairs in one context (offline exploration and evaluation).

    Args:
        user_ids, movie_ids: aligned arrays of users and movies the store knows (others raise).
        context: {hour, weekday, month}; None means now.

    Returns:
        Unclipped predicted ratings, one per pair.
    """
    return _score_positions(
        store,
        rating_model,
        encoder,
        store.user_positions(user_ids),
        store.movie_positions(np.asarray(movie_ids)),
        context,
        chunk,
    )


# ---- rankers --------------------------------------------------------------------------------------


class RatingRanker:
    """Orders candidates by the rating model's predicted rating (the seed's ranking stage).

    Args:
        store: the feature store (built with the model's encoder).
        model, encoder: the rating model and its FeatureEncoder.
        context: {hour, weekday, month} of the requests; None means now (UTC).
        scale: the rating scale shown scores are clipped to; None takes the model's own
            (`load_rating_model` sets it from what the model was saved with).
    """

    name = "rating"

    def __init__(self, store: FeatureStore, model: tf.keras.Model, encoder: FeatureEncoder, context=None, scale=None):
        self.store, self.model, self.encoder = store, model, encoder
        self.scale = scale if scale is not None else getattr(model, "rating_scale", None)
        # a fixed context is validated and encoded once; None stays "now", resolved at every call
        self.context = None if context is None else request_context(context)
        self._context_row = None if context is None else context_inputs(encoder, self.context, 1)

    def predicted_ratings(self, user_positions: np.ndarray, movie_positions: np.ndarray) -> np.ndarray:
        """Unclipped predicted ratings of aligned (user, movie) store positions."""
        context = self._context_row if self._context_row is not None else context_inputs(self.encoder, None, 1)
        return _score_positions(self.store, self.model, self.encoder, user_positions, movie_positions, context)

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        return self.predicted_ratings(
            self.store.user_positions(candidates["user_id"].to_numpy()),
            self.store.movie_positions(candidates["movie_id"].to_numpy()),
        )

    def display(self, scores: np.ndarray) -> np.ndarray:
        if self.scale is None:
            raise ValueError(
                "the rating model carries no rating scale to clip shown scores to: load it with "
                "rating_training.load_rating_model, or pass RatingRanker(..., scale=RatingScale(...))"
            )
        return np.clip(scores, *self.scale.bounds).astype(np.float64)


class LearnedRanker:
    """Orders candidates by a learned ranker's score over the features of `recsys.ranking.ranker_features`.

    Args:
        sources: what the features are computed from (checked for the "test" stage: nothing fitted on test).
        ranker: a fitted ranker (recsys.ranking.rankers).
    """

    def __init__(self, sources, ranker):
        self.sources, self.ranker, self.name = sources, ranker, ranker.name
        missing = sorted(set(ranker.features) - set(sources.features))
        if missing:
            raise ValueError(f"the ranker needs features {missing} that these sources do not give")
        sources.check("test")

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        return self.ranker.predict(self.sources.build(candidates, "test"))

    def display(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, np.float64)


def save_served_ranker(ranker, folder) -> None:
    """Record which ranker a run serves: a learned ranker is saved whole; the rating ranker as its name."""
    if isinstance(ranker, LearnedRanker):
        ranker.ranker.save(folder)
        return
    from recsys.core.io import atomic_dir
    from recsys.ranking.ranker_state import write_state

    with atomic_dir(folder) as tmp:
        write_state(tmp, "rating")


def load_served_ranker(folder, sources, rating_model_folder, context=None):
    """The ranker a run serves (`save_served_ranker`), ready to score candidates.

    Args:
        folder: where `save_served_ranker` wrote.
        sources: the learned ranker's feature sources (recsys.ranking.learned_ranking.feature_sources).
        rating_model_folder: the refitted rating model, for a run that serves by predicted rating.
        context: the requests' {hour, weekday, month} (None: now).
    """
    from recsys.ranking.ranker_state import read_state
    from recsys.ranking.rankers import load_ranker
    from recsys.training.rating_training import load_rating_model

    if read_state(folder)["name"] == "rating":
        model, encoder = load_rating_model(rating_model_folder)
        return RatingRanker(sources.store, model, encoder, context)
    return LearnedRanker(sources, load_ranker(folder))
