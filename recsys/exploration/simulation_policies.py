"""The policies of the closed-loop simulation (recsys.exploration.simulation), each built from the pipeline's own serving code.

The two-stage policies serve the pipeline's served list (`recommender.retrieve_candidates`: the
two-tower's top n merged with EASE's top n; features from a feature store; the learned ranker's
order), alone or with one exploration on top: weighted sampling of the ranked list, Gaussian
noise on the retrieval vectors, or least-viewed movies added to retrieval's top candidates. What each updates from
its own log every round: the feature store (popularity, activity, mean rating, history, seen
movies) and EASE, refitted on the log (about 3 s on ml-1m-half). The two-tower, the rating model
behind the predicted-rating feature and the ranker stay as trained: retraining them every
round would cost minutes per round, and their inputs (ids, demographics, genres) do not move
with the log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.evaluation import metrics
from recsys.evaluation.full_ranking import ranked_lists
from recsys.exploration import reranking
from recsys.exploration.noise import EmbeddingNoise, noisy_retriever
from recsys.exploration.simulation import PolicyLog, random_unseen
from recsys.features.feature_store import FeatureStore
from recsys.features.request_context import fixed_context
from recsys.models.ease import EASE, load_ease
from recsys.models.retrieval_model import load_retrieval_model, user_embeddings
from recsys.ranking.learned_ranking import top_k_lists
from recsys.ranking.ranker_features import FeatureSources
from recsys.ranking.ranker_state import read_state
from recsys.ranking.rankers import load_ranker
from recsys.ranking.served_rankers import LearnedRanker, RatingRanker
from recsys.retrieval.candidates import EaseSource
from recsys.retrieval.retrievers import NumpyRetriever
from recsys.serving import recommender
from recsys.training.rating_training import load_rating_model


class PopularityPolicy:
    """The k movies most users in the log have seen, the user's own excluded."""

    def __init__(self):
        self._counts: np.ndarray | None = None

    def update(self, log: PolicyLog) -> None:
        self._counts = log.counts().astype(np.float32)

    def recommend(self, log: PolicyLog, k: int, rng: np.random.Generator) -> np.ndarray:
        scores = np.broadcast_to(self._counts, (len(log.active), len(self._counts)))
        return metrics.top_k_from_scores(scores, k, exclude=log.matrix[log.active])


class RandomPolicy:
    """k movies drawn uniformly among the user's unseen ones."""

    def update(self, log: PolicyLog) -> None:
        pass

    def recommend(self, log: PolicyLog, k: int, rng: np.random.Generator) -> np.ndarray:
        return random_unseen(log, k, rng)


@dataclass(frozen=True)
class ServingParts:
    """The trained parts of the served path (retriever vectors, ranker, rating model) the two-stage policies share.

    Attributes:
        users, movies: the run's tables (a feature store is built from them and a policy's log).
        user_vectors, movie_vectors: the two-tower's vectors, rows aligned with `users` and `movies`.
        ranker: the served learned ranker (recsys.ranking.rankers); None orders by `predicted_rating`.
        predicted_rating: (user positions, movie positions) -> the train-only rating model's
            predictions (positions in a store built from `users` and `movies`).
        rating_fitted_on: the splits that rating model was fitted on.
        ease_l2: EASE's penalty (the one chosen on val for the run's EASE).
        n_candidates: candidates per source.
        ease_candidates: EASE proposes candidates too (`online.ease_candidates`); its features are always used.
    """

    users: pd.DataFrame
    movies: pd.DataFrame
    user_vectors: np.ndarray
    movie_vectors: np.ndarray
    ranker: object
    predicted_rating: Callable[[np.ndarray, np.ndarray], np.ndarray]
    rating_fitted_on: tuple[str, ...]
    ease_l2: float
    n_candidates: int
    ease_candidates: bool = True

    @classmethod
    def load(
        cls,
        users: pd.DataFrame,
        movies: pd.DataFrame,
        interactions: pd.DataFrame,
        artifact: Callable[[str], Path],
        online: Mapping,
    ) -> ServingParts:
        """The parts from a run's saved models.

        Args:
            users, movies, interactions: the run's tables (interactions: every split, for the requests' context).
            artifact: an artifact's name -> its path (e.g. `Run.require`); reads ease_model, retrieval_model,
                movie_embeddings, movie_embedding_ids, rating_model_train and ranker.
            online: the served path's settings: n_candidates, ease_candidates, and ranker ("rating" orders by
                the predicted rating even when the run's served ranker is a learned one).
        """
        ease_model, _, _ = load_ease(artifact("ease_model"))
        retrieval_model, encoder = load_retrieval_model(artifact("retrieval_model"))
        vector_rows = pd.Index(np.load(artifact("movie_embedding_ids"))).get_indexer(movies["movie_id"])
        rating_model, rating_encoder = load_rating_model(artifact("rating_model_train"))
        ranker_folder = artifact("ranker")
        store = FeatureStore.build(users, movies, interactions, seen_splits=("train",), history_splits=("train",))
        context = fixed_context(interactions)
        return cls(
            users=users,
            movies=movies,
            user_vectors=user_embeddings(
                retrieval_model, encoder, encoder.user_table(users), users["user_id"].to_numpy(np.int64)
            ),
            movie_vectors=np.load(artifact("movie_embeddings"))[vector_rows],
            ranker=None
            if read_state(ranker_folder)["name"] == "rating" or online["ranker"] == "rating"
            else load_ranker(ranker_folder),
            predicted_rating=RatingRanker(store, rating_model, rating_encoder, context).predicted_ratings,
            rating_fitted_on=tuple(rating_model.fitted_on),
            ease_l2=ease_model.l2,
            n_candidates=online["n_candidates"],
            ease_candidates=online["ease_candidates"],
        )


@dataclass(frozen=True)
class WeightedRerank:
    """The ranked list's top `depth` re-ordered by weighted sampling at `temperature` (`reranking.weighted_rerank`)."""

    temperature: float
    depth: int


@dataclass(frozen=True)
class LeastViewed:
    """Retrieval's top `retrieval_k` plus the movies with at most `max_views` users in the log, as one pool
    (`per_user` > 0: a seeded sample of that many of them per user and round, for a large catalogue)."""

    max_views: int
    retrieval_k: int
    per_user: int = 0


class TwoStagePolicy:
    """The served list (retrieval + EASE candidates, learned ranker), optionally with an exploration."""

    def __init__(self, parts: ServingParts, exploration_: WeightedRerank | EmbeddingNoise | LeastViewed | None = None):
        self.parts, self.exploration = parts, exploration_
        self._ease: EaseSource | None = None
        self._store: FeatureStore | None = None

    def update(self, log: PolicyLog) -> None:
        parts = self.parts
        if not log.user_ids.tolist() == parts.users["user_id"].tolist():
            raise ValueError("the log's users must be the serving parts' users, in the same order")
        self._ease = EaseSource(EASE(parts.ease_l2).fit(log.matrix).weights_, log.movie_ids)
        store = FeatureStore.build(
            parts.users, parts.movies, log.interactions(), seen_splits=("train",), history_splits=("train",)
        )
        self._store = store.with_vectors(parts.user_vectors, parts.movie_vectors)

    def _retriever(self, rng: np.random.Generator) -> NumpyRetriever:
        """Exact retrieval over the two-tower's vectors (the run's ScaNN index agrees on 99% of the top 100);
        under EmbeddingNoise, with new noise every round."""
        parts, noise = self.parts, self.exploration if isinstance(self.exploration, EmbeddingNoise) else None
        seed = int(rng.integers(2**31 - 1)) if noise is not None else 0
        return noisy_retriever(
            parts.users["user_id"], parts.user_vectors, parts.movies["movie_id"], parts.movie_vectors, noise, seed
        )

    def candidates(self, log: PolicyLog, rng: np.random.Generator) -> pd.DataFrame:
        """Each active user's candidate table, as the served path builds it (least-viewed pool under LeastViewed)."""
        users = log.user_ids[log.active]
        table = recommender.retrieve_candidates(
            users,
            self.parts.n_candidates,
            store=self._store,
            retrieval_index=self._retriever(rng),
            ease=self._ease if self.parts.ease_candidates else None,
        )
        if isinstance(self.exploration, LeastViewed):  # retrieval's top retrieval_k + the least viewed
            counts = pd.Series(log.counts(), index=log.movie_ids)
            cold = reranking.least_viewed_movies(counts, log.movie_ids, self.exploration.max_views)
            retrieved = table[table["retrieval_rank"].between(1, self.exploration.retrieval_k)]
            table = reranking.add_least_viewed(
                retrieved,
                cold,
                users,
                self._store.seen_pairs(),
                table,
                self.exploration.per_user,
                int(rng.integers(2**31)) if self.exploration.per_user else 0,
            )
        return table

    def recommend(self, log: PolicyLog, k: int, rng: np.random.Generator) -> np.ndarray:
        parts, users = self.parts, log.user_ids[log.active]
        table = self.candidates(log, rng)
        sources = FeatureSources(
            self._store,
            parts.n_candidates,
            self._ease,
            parts.predicted_rating,
            {"retrieval": ("train",), "ease": ("train",), "rating_model": parts.rating_fitted_on},
        )
        if parts.ranker is None:  # a run that serves by predicted rating (online.ranker: rating)
            scores = parts.predicted_rating(
                self._store.user_positions(table["user_id"]), self._store.movie_positions(table["movie_id"])
            )
        else:
            scores = LearnedRanker(sources, parts.ranker).score(table)
        if isinstance(self.exploration, WeightedRerank):
            depth = self.exploration.depth
            ids, ranked = ranked_lists(table.assign(score=scores), users, "score", depth)
            order = reranking.weighted_rerank_many(
                np.broadcast_to(np.arange(depth), ids.shape),
                reranking.standardise_rows(ranked),
                1,
                int(rng.integers(2**31 - 1)),
                self.exploration.temperature,
            )[0]
            lists = np.take_along_axis(ids, order, axis=1)[:, :k]
        else:
            lists = top_k_lists(table, scores, users, k)
        return pd.Index(log.movie_ids).get_indexer(lists.ravel()).reshape(lists.shape)
