"""The policies of the closed-loop simulation (recsys.exploration.simulation), each built from the pipeline's own serving code.

The two-stage policies serve the pipeline's served list (`recommender.retrieve_candidates`: the
served retriever's top n merged with EASE's top n; features from a feature store; the learned
ranker's order), alone or with one exploration on top: weighted sampling of the ranked list, Gaussian
noise on the retrieval vectors, or least-viewed movies added to retrieval's top candidates. The
served retriever is the run's: the two-tower (user vectors fixed) or the sequential model, whose
query is read every round from the user's latest movies in the policy's log (accepted movies
included). What each updates from its own log every round: the feature store (popularity,
activity, mean rating, history, seen movies), the sequential queries, and EASE, refitted on the
log (about 2 s on ml-1m-half). The retrievers' weights, the rating model behind the
predicted-rating feature and the ranker stay as trained: retraining them every round would cost
minutes per round, and their inputs (ids, demographics, genres, histories) are read afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.evaluation.full_ranking import ranked_lists
from recsys.exploration import reranking
from recsys.exploration.noise import EmbeddingNoise, noisy_retriever
from recsys.exploration.simulation import PolicyLog, PopularityPolicy, RandomPolicy
from recsys.features.feature_store import FeatureStore
from recsys.features.preprocessing import EVENT_COLUMNS
from recsys.features.request_context import fixed_context
from recsys.models.ease import EaseRefitter, load_ease
from recsys.models.multitask_model import load_multitask_model
from recsys.models.retrieval_model import load_retrieval_model, user_embeddings
from recsys.models.sequential_model import load_sequential_model
from recsys.ranking.learned_ranking import joint_vectors, top_k_lists
from recsys.ranking.ranker_features import FeatureSources
from recsys.ranking.ranker_state import read_state
from recsys.ranking.rankers import load_ranker
from recsys.ranking.served_rankers import LearnedRanker, RatingRanker
from recsys.retrieval.candidates import EaseSource, VectorSource
from recsys.retrieval.history_queries import HistoryQueries
from recsys.retrieval.retrievers import NumpyRetriever
from recsys.serving import recommender
from recsys.training.rating_training import load_rating_model


@dataclass(frozen=True)
class ServingParts:
    """The trained parts of the served path (retriever vectors, ranker, rating model) the two-stage policies share.

    Attributes:
        users, movies: the run's tables (a feature store is built from them and a policy's log).
        user_vectors, movie_vectors: the served retriever's vectors, rows aligned with `users` and
            `movies`; `user_vectors` is None for the sequential retriever (its queries are read from
            each policy's log, `history_queries`).
        ranker: the served learned ranker (recsys.ranking.rankers); None orders by `predicted_rating`.
        predicted_rating: (user positions, movie positions) -> the train-only rating model's
            predictions (positions in a store built from `users` and `movies`).
        rating_fitted_on: the splits that rating model was fitted on.
        joint_vectors: the joint multitask model's (user, movie) retrieval vectors for the ranker's joint
            score, rows aligned with `users` and `movies` (`learned_ranking.joint_vectors`), fitted on train.
        ease_l2: EASE's penalty (the one chosen on val for the run's EASE).
        n_candidates: candidates per source.
        ease_candidates: EASE proposes candidates too (`online.ease_candidates`); its features are always used.
        joint_candidates: the joint model proposes candidates too (`online.joint_candidates`): its exact top n
            over `joint_vectors`.
        retriever: the served retriever ("two_tower" or "sequential").
        sequential: (the sequential model, its vocabulary) when it is the served retriever.
        min_rating: the sequential model's positives (ratings below it are not in its histories).
    """

    users: pd.DataFrame
    movies: pd.DataFrame
    user_vectors: np.ndarray | None
    movie_vectors: np.ndarray
    ranker: object
    predicted_rating: Callable[[np.ndarray, np.ndarray], np.ndarray]
    rating_fitted_on: tuple[str, ...]
    ease_l2: float
    n_candidates: int
    ease_candidates: bool = True
    retriever: str = "two_tower"
    sequential: tuple | None = None
    min_rating: int = 1
    joint_vectors: tuple[np.ndarray, np.ndarray] | None = None
    joint_candidates: bool = False
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # the start state, the EASE refitter

    @classmethod
    def load(
        cls,
        users: pd.DataFrame,
        movies: pd.DataFrame,
        interactions: pd.DataFrame,
        artifact: Callable[[str], Path],
        online: Mapping,
        retrieval: Mapping,
    ) -> ServingParts:
        """The parts from a run's saved models: what the run's served path serves.

        Args:
            users, movies, interactions: the run's tables (interactions: every split, for the requests' context).
            artifact: an artifact's name -> its path (e.g. `Run.require`); reads ease_model, retrieval_model,
                movie_embeddings, movie_embedding_ids, rating_model_train, multitask_model_train and ranker.
            online: the served path's settings: n_candidates, ease_candidates, joint_candidates, and ranker
                ("rating" orders by the predicted rating even when the run's served ranker is a learned one).
            retrieval: the served retriever's settings: model ("two_tower" reads retrieval_model,
                movie_embeddings, movie_embedding_ids; "sequential" reads sequential_model and
                sequential_movie_embeddings) and min_rating.
        """
        ease_model, _, _ = load_ease(artifact("ease_model"))
        if retrieval["model"] == "sequential":
            model, vocabulary = load_sequential_model(artifact("sequential_model"))
            vector_rows = pd.Index(vocabulary.movie_ids).get_indexer(movies["movie_id"])
            user_vectors, movie_vectors = None, np.load(artifact("sequential_movie_embeddings"))[vector_rows]
            sequential = (model, vocabulary)
        else:
            retrieval_model, encoder = load_retrieval_model(artifact("retrieval_model"))
            vector_rows = pd.Index(np.load(artifact("movie_embedding_ids"))).get_indexer(movies["movie_id"])
            user_ids = users["user_id"].to_numpy(np.int64)
            user_vectors = user_embeddings(retrieval_model, encoder, encoder.user_table(users), user_ids)
            movie_vectors, sequential = np.load(artifact("movie_embeddings"))[vector_rows], None
        if (vector_rows < 0).any():
            raise KeyError(
                f"the served retriever ({retrieval['model']}) has no vector for some movies: "
                "rerun the retrieval stage that wrote its vectors"
            )
        rating_model, rating_encoder = load_rating_model(artifact("rating_model_train"))
        ranker_folder = artifact("ranker")
        store = FeatureStore.build(users, movies, interactions, seen_splits=("train",), history_splits=("train",))
        served_by_rating = read_state(ranker_folder)["name"] == "rating" or online["ranker"] == "rating"
        ranker = None if served_by_rating else load_ranker(ranker_folder)
        joint = None
        reads_joint = ranker is not None and "joint_score" in ranker.features
        if reads_joint or online["joint_candidates"]:  # the joint model only where its score or its lists are used
            joint_model, joint_encoder = load_multitask_model(artifact("multitask_model_train"))
            if tuple(joint_model.fitted_on) != ("train",):
                raise ValueError(
                    f"the joint model's scores and lists must come from a model fitted on train, not "
                    f"{joint_model.fitted_on}"
                )
            joint = joint_vectors(store, joint_model, joint_encoder)
        context = fixed_context(interactions)
        return cls(
            users=users,
            movies=movies,
            user_vectors=user_vectors,
            movie_vectors=movie_vectors,
            ranker=ranker,
            predicted_rating=RatingRanker(store, rating_model, rating_encoder, context).predicted_ratings,
            rating_fitted_on=tuple(rating_model.fitted_on),
            ease_l2=ease_model.l2,
            n_candidates=online["n_candidates"],
            ease_candidates=online["ease_candidates"],
            retriever=retrieval["model"],
            sequential=sequential,
            min_rating=retrieval["min_rating"],
            joint_vectors=joint,
            joint_candidates=online["joint_candidates"],
        )

    def joint_source(self) -> VectorSource | None:
        """The joint model's candidate source (its exact top n over `joint_vectors`), None unless it proposes."""
        if not self.joint_candidates:
            return None
        if self.joint_vectors is None:
            raise ValueError("joint_candidates needs the joint model's vectors (joint_vectors)")
        if "joint_source" not in self._cache:  # fitted on train: the same every round
            self._cache["joint_source"] = VectorSource(
                *self.joint_vectors, self.users["user_id"].to_numpy(), self.movies["movie_id"].to_numpy()
            )
        return self._cache["joint_source"]

    def start_state(self, log: PolicyLog) -> tuple[EaseSource, FeatureStore, np.ndarray]:
        """What a two-stage policy updates from a log of round 0 (EASE, the feature store with the retriever's
        vectors, the query vectors): the same for every policy and every run from that start, so made once."""
        if log.start_matrix is None or log.matrix is not log.start_matrix:
            raise ValueError("start_state is for a log of round 0 (PolicyLog.start)")
        cached = self._cache.get("start_state")
        if cached is None or cached[0] is not log.start_matrix:
            cached = (log.start_matrix, self.updated_state(log))
            self._cache["start_state"] = cached
        return cached[1]

    def updated_state(self, log: PolicyLog) -> tuple[EaseSource, FeatureStore, np.ndarray]:
        """EASE refitted on the log, a feature store built from it with the retriever's vectors, the query vectors."""
        if not log.user_ids.tolist() == self.users["user_id"].tolist():
            raise ValueError("the log's users must be the serving parts' users, in the same order")
        ease = EaseSource(self.ease_weights(log), log.movie_ids)
        store = FeatureStore.build(
            self.users, self.movies, log.interactions(), seen_splits=("train",), history_splits=("train",)
        )
        user_vectors = self.query_vectors(log)
        return ease, store.with_vectors(user_vectors, self.movie_vectors), user_vectors

    def ease_weights(self, log: PolicyLog) -> np.ndarray:
        """EASE's B refitted on the log (`EaseRefitter`: XᵀX of the log's start computed once for every policy)."""
        if log.start_matrix is None:
            raise ValueError("the log has no start matrix: make it with PolicyLog.start")
        if self._cache.get("start") is not log.start_matrix:  # one start at a time: its XᵀX is n_movies² floats
            self._cache.update(start=log.start_matrix, refitter=EaseRefitter(log.start_matrix, self.ease_l2))
        return self._cache["refitter"].weights(log.matrix)

    def query_vectors(self, log: PolicyLog) -> np.ndarray:
        """The served retriever's user vectors for a log, rows aligned with `users`: the two-tower's (fixed), or the
        sequential model's queries from each simulated user's latest positive movies in the log (zeros for others)."""
        if self.sequential is None:
            return self.user_vectors
        model, vocabulary = self.sequential
        timeline = log.timeline()
        watched = timeline[timeline["rating"].isna() | (timeline["rating"] >= self.min_rating)]
        vectors = np.zeros((len(self.users), model.config.embedding_dim), np.float32)
        vectors[log.active] = HistoryQueries(model, vocabulary, watched).queries(
            log.user_ids[log.active], without_history="zeros"
        )
        return vectors


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
    """The served list (retrieval + EASE candidates, + the joint model's when on; learned ranker), optionally with an
    exploration."""

    def __init__(self, parts: ServingParts, exploration_: WeightedRerank | EmbeddingNoise | LeastViewed | None = None):
        self.parts, self.exploration = parts, exploration_
        self._ease: EaseSource | None = None
        self._store: FeatureStore | None = None
        self._user_vectors: np.ndarray | None = None

    def update(self, log: PolicyLog) -> None:
        if log.start_matrix is not None and log.matrix is log.start_matrix:  # round 0: shared by every policy and run
            self._ease, self._store, self._user_vectors = self.parts.start_state(log)
        else:
            self._ease, self._store, self._user_vectors = self.parts.updated_state(log)

    def _retriever(self, rng: np.random.Generator) -> NumpyRetriever:
        """Exact retrieval over the served retriever's vectors (the run's ScaNN index agrees on about 99% of the
        top 100); under EmbeddingNoise, with new noise every round."""
        parts, noise = self.parts, self.exploration if isinstance(self.exploration, EmbeddingNoise) else None
        seed = int(rng.integers(2**31 - 1)) if noise is not None else 0
        return noisy_retriever(
            parts.users["user_id"],
            parts.user_vectors if self._user_vectors is None else self._user_vectors,
            parts.movies["movie_id"],
            parts.movie_vectors,
            noise,
            seed,
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
            joint=self.parts.joint_source(),
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
            {
                "retrieval": ("train",),
                "ease": ("train",),
                "rating_model": parts.rating_fitted_on,
                "joint_model": ("train",),
            },
            joint_vectors=parts.joint_vectors,
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


def explorations_of(weighted: Mapping, noise: Mapping, least_viewed: Mapping) -> dict[str, object]:
    """The two-stage policies' explorations: none (served), and the settings chosen by the exploration experiments.

    Args:
        weighted: the weighted-sampling setting written by its experiment (temperature, depth).
        noise: the noise setting written by its experiment (sigma, target).
        least_viewed: the least-viewed parameters (max_views, retrieval_k, per_user).
    """
    return {
        "served": None,
        "weighted_sampling": WeightedRerank(weighted["temperature"], weighted["depth"]),
        "gaussian_noise": EmbeddingNoise(noise["sigma"], noise["target"]),
        "least_viewed": LeastViewed(least_viewed["max_views"], least_viewed["retrieval_k"], least_viewed["per_user"]),
    }


def fresh_policies(parts: ServingParts, explorations: Mapping[str, object]) -> dict[str, object]:
    """A new set of policies (each keeps state between rounds, so every simulation gets its own):
    one two-stage policy per exploration, popularity and random."""
    return {
        **{name: TwoStagePolicy(parts, exploration) for name, exploration in explorations.items()},
        "popularity": PopularityPolicy(),
        "random": RandomPolicy(),
    }


def serving_artifacts(retrieval: Mapping) -> tuple[str, ...]:
    """The artifacts `ServingParts.load` reads for the served retriever (`retrieval["model"]`)."""
    if retrieval["model"] == "sequential":
        vectors = ("sequential_model", "sequential_movie_embeddings")
    else:
        vectors = ("retrieval_model", "movie_embeddings", "movie_embedding_ids")
    return ("ease_model", *vectors, "rating_model_train", "multitask_model_train", "ranker")


@dataclass(frozen=True)
class PolicyFactory:
    """Fresh policies over a run's serving parts (`fresh_policies`), for `simulation.simulate_worlds`.

    Picklable: a simulation process gets the file paths, loads the parts from them once (the saved
    models, the tables) and makes every run's policies from them. In the process that made it, the
    parts it was given are used as they are (they are not pickled).

    Attributes:
        tables: paths of the run's users, movies and interactions tables.
        artifacts: an artifact's name -> its path, for every name of `serving_artifacts(retrieval)`.
        online, retrieval: as for `ServingParts.load`.
        explorations: the two-stage policies' explorations (`explorations_of`).
        parts: the parts already loaded in this process, or None.
    """

    tables: Mapping[str, Path]
    artifacts: Mapping[str, Path]
    online: Mapping
    retrieval: Mapping
    explorations: Mapping[str, object]
    parts: ServingParts | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        missing = [name for name in ("users", "movies", "interactions") if name not in self.tables]
        missing += [name for name in serving_artifacts(self.retrieval) if name not in self.artifacts]
        if missing:
            raise ValueError(f"the policy factory lacks the paths of {missing}")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "parts": None}  # a process loads its own

    def serving_parts(self) -> ServingParts:
        if self.parts is None:
            users, movies = pd.read_parquet(self.tables["users"]), pd.read_parquet(self.tables["movies"])
            interactions = pd.read_parquet(self.tables["interactions"], columns=list(EVENT_COLUMNS))
            parts = ServingParts.load(
                users, movies, interactions, self.artifacts.__getitem__, self.online, self.retrieval
            )
            object.__setattr__(self, "parts", parts)
        return self.parts

    def __call__(self) -> dict[str, object]:
        return fresh_policies(self.serving_parts(), self.explorations)


def describe_policies(parts: ServingParts, explorations: Mapping[str, object]) -> pd.Series:
    """What each policy of `fresh_policies` serves, in a sentence."""
    ordering = "learned ranker" if parts.ranker is not None else "predicted rating"
    extra = (" + EASE" if parts.ease_candidates else "") + (" + joint model" if parts.joint_candidates else "")
    sources = f"{parts.n_candidates} {parts.retriever}{extra} candidates"
    said = {}
    for name, exploration in explorations.items():
        if isinstance(exploration, WeightedRerank):
            said[name] = (
                f"weighted sampling at temperature {exploration.temperature:g} over the top {exploration.depth}"
            )
        elif isinstance(exploration, EmbeddingNoise):
            said[name] = f"Gaussian noise σ = {exploration.sigma:g} on the {exploration.target} vectors"
        elif isinstance(exploration, LeastViewed):
            said[name] = (
                f"retrieval's top {exploration.retrieval_k} + movies with <= {exploration.max_views} views in the log"
            )
        else:
            said[name] = f"{ordering} over {sources}"
    said.update({"popularity": "most users in the log", "random": "uniform over unseen movies"})
    return pd.Series(said, name="setting")
