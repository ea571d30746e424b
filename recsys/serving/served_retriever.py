"""The served retriever at the learned ranker's two stages: its vectors in per-stage feature stores, its indexes.

The learned ranker learns at the *val stage* (what a feature reads of a user's past is their
train movies; candidates exclude train) and is scored at the *test stage* (train + val read;
candidates exclude train and val), which is also what requests are served from. The served
retriever is the two-tower (queried by user id; its user vector reads no history, so it is the
same at both stages) or the sequential model (queried with its reading of the user's latest
movies before the stage). The sequential model and its index are loaded either way: they also
answer `recommend_for_history`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.features.encoding import FeatureEncoder
from recsys.features.feature_store import FeatureStore
from recsys.models.configs import SERVED_RETRIEVERS
from recsys.models.retrieval_model import TwoTowerRetrievalModel, load_retrieval_model, user_embeddings
from recsys.models.sequential_model import MovieVocabulary, load_sequential_model
from recsys.retrieval import indexes
from recsys.retrieval.candidates import EaseSource, VectorSource
from recsys.retrieval.history_queries import HistoryQueries
from recsys.retrieval.retrievers import IndexRetriever
from recsys.serving.recommender import retrieve_candidates
from recsys.training.retrieval_training import positives

STAGES = ("val", "test")
# what a feature (and the sequential retriever) reads of a user's past at each stage
STAGE_HISTORY = {"val": ("train",), "test": ("train", "val")}
# what a stage's candidates exclude: the store's history (train) at the val stage, everything seen at the test stage
STAGE_EXCLUDE = {"val": "history", "test": "seen"}
SEEN_SPLITS = ("train", "val")  # never served, at either stage


def _rows(ids: pd.Index, catalogue: np.ndarray, what: str) -> np.ndarray:
    """Positions of `ids` in `catalogue`; a clear error if some are missing."""
    rows = pd.Index(catalogue).get_indexer(ids)
    if (rows < 0).any():
        raise KeyError(f"{what} has no vector for movies {ids[rows < 0][:5].tolist()}: rebuild the vectors")
    return rows


@dataclass
class ServedRetriever:
    """The served retriever's models, vectors and indexes, per stage of the learned ranker.

    Attributes:
        model: the served retriever, "two_tower" or "sequential".
        two_tower, two_tower_encoder: the two-tower retrieval model and its encoder (user vectors).
        movie_vectors, movie_vector_ids: the two-tower's movie vectors and their movie ids.
        vocabulary, sequential_movie_vectors: the sequential model's catalogue and its movie vectors.
        histories: stage -> the sequential model's queries from the users' movies before the stage.
        retrievers: stage -> the served retriever (the served index, `retrieval.index`; the exact index for
            lists that come back short).
        sequential_index: the sequential model's served index, queried with vectors (`recommend_for_history`).
    """

    model: str
    two_tower: TwoTowerRetrievalModel
    two_tower_encoder: FeatureEncoder
    movie_vectors: np.ndarray
    movie_vector_ids: np.ndarray
    vocabulary: MovieVocabulary
    sequential_movie_vectors: np.ndarray
    histories: dict[str, HistoryQueries]
    retrievers: dict[str, IndexRetriever]
    sequential_index: Any

    @property
    def index_kind(self) -> str | None:
        """The served index's kind, as the retrieval stage saved it (`retrieval.index`: "scann", "faiss_hnsw",
        "faiss_ivf" or "bruteforce"; None for an index saved before kinds were recorded)."""
        return indexes.index_kind(self.retrievers["test"].index)

    def stage_vectors(self, stage: str, store: FeatureStore, users: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(user vectors, movie vectors) of the served retriever, aligned with the store's users and movies.

        The sequential model's user vector is its query from the stage's history (zeros for a user
        without any); the two-tower's reads no history and is the same at both stages.

        Args:
            users: the run's users table (the two-tower's user features).
        """
        if self.model == "sequential":
            user_vectors = self.histories[stage].queries(store.users.index, without_history="zeros")
            rows = _rows(store.movies.index, self.vocabulary.movie_ids, "the sequential model")
            return user_vectors, self.sequential_movie_vectors[rows]
        encoder = self.two_tower_encoder
        user_vectors = user_embeddings(self.two_tower, encoder, encoder.user_table(users), store.users.index)
        return user_vectors, self.movie_vectors[_rows(store.movies.index, self.movie_vector_ids, "the two-tower")]

    def stage_store(
        self, stage: str, users: pd.DataFrame, movies: pd.DataFrame, interactions: pd.DataFrame
    ) -> FeatureStore:
        """The feature store of a stage: histories as of the stage (STAGE_HISTORY), the served retriever's vectors."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        store = FeatureStore.build(
            users, movies, interactions, seen_splits=SEEN_SPLITS, history_splits=STAGE_HISTORY[stage]
        )
        return store.with_vectors(*self.stage_vectors(stage, store, users))

    def stage_stores(
        self, users: pd.DataFrame, movies: pd.DataFrame, interactions: pd.DataFrame
    ) -> dict[str, FeatureStore]:
        """stage -> its feature store (`stage_store`), for both stages; the test stage's is the serving store."""
        return {stage: self.stage_store(stage, users, movies, interactions) for stage in STAGES}

    def stage_candidates(
        self,
        stores: Mapping[str, FeatureStore],
        held_out: Mapping[str, pd.DataFrame],
        n_candidates: int,
        proposing: Mapping[str, Mapping[str, EaseSource | VectorSource | None]],
    ) -> dict[str, pd.DataFrame]:
        """stage -> the candidates of every user with held-out movies at that stage, users ascending.

        The served retriever's top `n_candidates` merged with the other sources' (EASE, the joint model),
        excluding the history at the val stage and everything seen at the test stage (STAGE_EXCLUDE).

        Args:
            stores: stage -> its feature store (`stage_stores`).
            held_out: stage -> the (user_id, movie_id) pairs held out at that stage (its split).
            proposing: stage -> the sources that propose candidates beside retrieval, as keyword arguments of
                `retrieve_candidates` (`FeatureSources.candidate_sources`: ease=, joint=); {} for retrieval alone.
        """
        return {
            stage: retrieve_candidates(
                np.sort(held_out[stage]["user_id"].unique()),
                n_candidates,
                store=stores[stage],
                retrieval_index=self.retrievers[stage],
                exclude=STAGE_EXCLUDE[stage],
                **proposing[stage],
            )
            for stage in STAGES
        }


def load_served_retriever(
    model: str, artifact: Callable[[str], Path], interactions: pd.DataFrame, min_rating: int
) -> ServedRetriever:
    """Load both retrievers' saved models, vectors and indexes, and read each stage's histories.

    Args:
        model: the served retriever (SERVED_RETRIEVERS).
        artifact: artifact key -> its path (e.g. `Run.require`): retrieval_model, movie_embeddings,
            movie_embedding_ids, served_index, bruteforce_index, sequential_model,
            sequential_movie_embeddings, sequential_served_index, sequential_bruteforce_index. The served
            indexes are whichever kind `retrieval.index` chose (`indexes.load_index` reads any).
        interactions: the run's interactions (user_id, movie_id, position, rating, split).
        min_rating: the sequential model's positives (what its histories hold), as it was trained.
    """
    if model not in SERVED_RETRIEVERS:
        raise ValueError(f"the served retriever must be one of {SERVED_RETRIEVERS}, got {model!r}")
    two_tower, encoder = load_retrieval_model(artifact("retrieval_model"))
    movie_vectors = np.load(artifact("movie_embeddings"))
    movie_vector_ids = np.load(artifact("movie_embedding_ids"))
    served, exact = indexes.load_index(artifact("served_index")), indexes.load_index(artifact("bruteforce_index"))
    sequential, vocabulary = load_sequential_model(artifact("sequential_model"))
    sequential_movie_vectors = np.load(artifact("sequential_movie_embeddings"))
    sequential_served = indexes.load_index(artifact("sequential_served_index"))
    sequential_exact = indexes.load_index(artifact("sequential_bruteforce_index"))
    watched = positives(interactions, min_rating)
    histories = {
        stage: HistoryQueries(sequential, vocabulary, watched[watched["split"].isin(past)])
        for stage, past in STAGE_HISTORY.items()
    }
    if model == "sequential":
        retrievers = {
            stage: IndexRetriever(sequential_served, histories[stage], fallback=sequential_exact) for stage in STAGES
        }
    else:  # queried by user id: one retriever for both stages
        retrievers = dict.fromkeys(STAGES, IndexRetriever(served, fallback=exact))
    return ServedRetriever(
        model,
        two_tower,
        encoder,
        movie_vectors,
        movie_vector_ids,
        vocabulary,
        sequential_movie_vectors,
        histories,
        retrievers,
        sequential_served,
    )
