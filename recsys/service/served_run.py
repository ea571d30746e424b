"""A finished run's serving path, loaded once: the served lists, lists for an ad-hoc history, movie search.

`ServedRun.load(run_dir)` first checks the run's records (manifest.json): every artifact the
serving path reads must come from a notebook that finished and is not stale (`provenance.mark_stale`),
or it refuses, naming the notebook to rerun. It then assembles exactly what the ranking notebook
serves: the saved feature store, the served retriever (the two-tower's or the sequential model's
served index, `retrieval.index`, with its exact index as the fallback), EASE's candidates when the
run merged them, and the served ranker with its feature sources. Requests are answered in the
run's fixed context (the most frequent training hour, weekday and month), as in the notebooks, so
a list is reproducible.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.features.feature_store import FeatureStore
from recsys.features.preprocessing import EVENT_COLUMNS
from recsys.features.request_context import fixed_context
from recsys.retrieval.candidates import CANDIDATE_LABELS
from recsys.runs.provenance import mark_stale, producer
from recsys.runs.registry import ARTIFACTS, MANIFEST, stage_number

# what every served list reads; the sequential model's files are read when the run has them
SERVING_ARTIFACTS = (
    "interactions",
    "retrieval_model",
    "movie_embeddings",
    "movie_embedding_ids",
    "feature_store",
    "ranker",
    "ease_model",
    "rating_model",
    "rating_model_train",
    "multitask_model_train",
    "served_index",
    "bruteforce_index",
)
SEQUENTIAL_ARTIFACTS = (
    "sequential_model",
    "sequential_movie_embeddings",
    "sequential_served_index",
    "sequential_bruteforce_index",
)
SERVING_STAGE = producer("feature_store")
MAX_K = 100  # the longest list served (no more than the candidates each source hands to ranking)
MAX_HISTORY = 200  # the most movies an ad-hoc history may name

# the labels that name no candidate source -> what a reader of the list is told (`_reader_names` adds the rest)
_SOURCE_NAMES = {
    "least-viewed": "least-viewed",
    "popular (unknown user)": "popular",
    "popular (empty history)": "popular",
    "history (sequential)": "sequential",
    "history (EASE)": "EASE",
}


@functools.cache
def _reader_names(served_retriever: str) -> dict[str, str]:
    """Every source label a list may carry -> what a reader is told (made once per served retriever, not per request)."""
    retriever = "two-tower" if served_retriever == "two_tower" else "sequential"
    parts = {"retrieval": retriever, "ease": "EASE", "joint": "joint model"}  # a candidate's proposing sources
    return {
        **{label: " + ".join(parts[p] for p in label.split("+")) for label in CANDIDATE_LABELS},
        **_SOURCE_NAMES,
    }


class RunNotServableError(RuntimeError):
    """The run lacks a serving artifact, or one of them is stale: the message names what to rerun."""


def check_servable(run_dir: Path) -> tuple[dict[str, dict], bool]:
    """(manifest entries by notebook, whether the run has the sequential retriever), or RunNotServableError."""
    run_dir = Path(run_dir)
    rerun = f"python run_all.py --run-name {run_dir.name}"
    path = run_dir / MANIFEST
    if not path.exists():
        raise RunNotServableError(
            f"{run_dir} holds no {MANIFEST}: it is not a run folder, or its notebooks never ran "
            f"(run `{rerun} --until {stage_number(SERVING_STAGE)}` first)"
        )
    entries = copy.deepcopy(json.loads(path.read_text())["notebooks"])
    mark_stale(entries)
    entries_by_name = {entry["name"]: entry for entry in entries}
    has_sequential = all((run_dir / Path(*ARTIFACTS[a])).exists() for a in SEQUENTIAL_ARTIFACTS)
    problems: list[tuple[str, str]] = []
    for artifact in SERVING_ARTIFACTS + (SEQUENTIAL_ARTIFACTS if has_sequential else ()):
        stage, filename = ARTIFACTS[artifact]
        entry = entries_by_name.get(stage)
        if entry is None or entry.get("status") != "ok":
            status = "never ran" if entry is None else f"ended with status {entry.get('status')!r}"
            problems.append((stage, f"{artifact}: notebook {stage} {status} in this run"))
        elif entry.get("stale"):
            problems.append((stage, f"{artifact}: notebook {stage} is stale ({entry['stale']})"))
        elif not (run_dir / stage / filename).exists():
            problems.append((stage, f"{artifact}: {run_dir / stage / filename} is missing"))
    if problems:
        earliest = min(stage for stage, _ in problems)
        lines = "\n".join(f"  - {text}" for _, text in problems)
        raise RunNotServableError(
            f"run {run_dir.name!r} cannot be served:\n{lines}\n"
            f"Run `{rerun} --from {stage_number(earliest)} --until {stage_number(SERVING_STAGE)}` first."
        )
    return entries_by_name, has_sequential


@dataclass
class ServedRun:
    """The parts of one run's serving path, and the requests a service answers with them.

    Attributes:
        recommend_args: the keyword arguments of `recommender.recommend` (store, retrieval_index, ranker,
            n_candidates, ease): what the ranking notebook serves.
        history_args: those of `recommender.recommend_for_history`, or None when the run has no
            sequential retriever (EASE then answers for a history).
    """

    name: str
    run_dir: Path
    params_hash: str | None
    git_commit: str | None
    served_retriever: str
    store: FeatureStore
    recommend_args: dict
    history_args: dict | None
    ease: (
        object  # EASE fitted on train (`candidates.EaseSource`): a history's list when the run has no sequential model
    )
    user_histories: pd.DataFrame  # user_id, movie_id, rating, position of the train + val ratings
    loaded: list[str]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, run_dir: str | Path) -> ServedRun:
        """Check the run's records, then load every model, index and table of its serving path once."""
        from recsys.ranking import learned_ranking, served_rankers
        from recsys.retrieval.indexes import load_index
        from recsys.retrieval.retrievers import IndexRetriever
        from recsys.serving.served_retriever import load_served_retriever

        run_dir = Path(run_dir).resolve()
        entries, has_sequential = check_servable(run_dir)
        manifest = json.loads((run_dir / MANIFEST).read_text())
        params = entries[SERVING_STAGE]["params"]
        online, retrieval = params["online"], params["retrieval"]

        def path(artifact: str) -> str:
            return str(run_dir / Path(*ARTIFACTS[artifact]))

        interactions = pd.read_parquet(path("interactions"), columns=list(EVENT_COLUMNS))
        store = FeatureStore.load(path("feature_store"))
        context = fixed_context(interactions)
        n = online["n_candidates"]
        # what each feature source was fitted on is checked from its fit record against the run's splits
        sources = learned_ranking.feature_sources(
            store,
            path("ease_model"),
            path("rating_model_train"),
            n,
            context,
            interactions,
            joint_folder=path("multitask_model_train"),
        )
        ranker = served_rankers.load_served_ranker(path("ranker"), sources, path("rating_model"), context)
        loaded = [
            "feature_store",
            "ease_model",
            "rating_model_train",
            "multitask_model_train",
            f"ranker ({ranker.name})",
        ]
        history_args = None
        if has_sequential:  # the test stage of what the ranking notebook serves: one loader for both
            parts = load_served_retriever(retrieval["model"], path, interactions, retrieval["min_rating"])
            retriever = parts.retrievers["test"]
            history_args = {
                "store": store,
                "history_queries": parts.histories["test"],
                "retrieval_index": parts.sequential_index,
            }
            loaded += [f"{retrieval['model']} retriever", "sequential_model", "sequential_served_index"]
        elif retrieval["model"] == "sequential":
            raise RunNotServableError(f"run {run_dir.name!r} serves the sequential retriever but lacks its files")
        else:  # a run without the sequential model: the two-tower's index, EASE for histories
            retriever = IndexRetriever(load_index(path("served_index")), fallback=load_index(path("bruteforce_index")))
            loaded += ["served_index", "bruteforce_index"]
        known = interactions[interactions["split"] != "test"]
        return cls(
            name=run_dir.name,
            run_dir=run_dir,
            params_hash=manifest.get("params_hash"),
            git_commit=entries[SERVING_STAGE].get("git_commit") or manifest.get("git_commit"),
            served_retriever=retrieval["model"],
            store=store,
            recommend_args={
                "store": store,
                "retrieval_index": retriever,
                "ranker": ranker,
                "n_candidates": n,
                # EASE and the joint model beside retrieval, as 06 served them (a run before the joint source: none)
                **sources.candidate_sources(online["ease_candidates"], online.get("joint_candidates", False)),
            },
            history_args=history_args,
            ease=sources.ease,
            user_histories=known[["user_id", "movie_id", "rating", "position"]].sort_values(["user_id", "position"]),
            loaded=loaded,
        )

    # ---- requests -------------------------------------------------------------------------------------
    def recommend(self, user_id: int, k: int) -> list[dict]:
        """The served list of a user of the run (`recommender.recommend`), as rows with a reader's source names."""
        from recsys.serving import recommender

        with self._lock:  # one model call at a time: the 2 cores are the models', not the threads'
            table = recommender.recommend(int(user_id), int(k), **self.recommend_args)
        return self._named_sources(table)

    def recommend_for_history(self, movie_ids: Sequence[int], k: int) -> list[dict]:
        """The list for someone who is not in the data: the sequential retriever, or EASE without it."""
        from recsys.serving import recommender

        watched = np.asarray(movie_ids, dtype=np.int64)
        with self._lock:
            if self.history_args is not None:
                table = recommender.recommend_for_history(watched, int(k), **self.history_args)
            else:
                table = self._ease_for_history(watched, int(k))
        return self._named_sources(table)

    def _ease_for_history(self, watched: np.ndarray, k: int) -> pd.DataFrame:
        """EASE's top k unseen movies for an ad-hoc history (a run without the sequential retriever)."""
        from recsys.serving.recommender import RESULT_COLUMNS

        ease = self.ease
        self.store.movie_positions(watched)  # an unknown id is an error naming it
        scores = ease.scores([watched])[0]
        ids = np.asarray(ease.movie_ids)
        order = np.argsort(-scores, kind="stable")
        order = order[~np.isin(ids[order], watched)][:k]
        positions = self.store.movie_positions(ids[order])
        table = pd.DataFrame(
            {
                "rank": np.arange(1, len(order) + 1),
                "movie_id": ids[order],
                **self.store.movie_display(positions),
                "source": "history (EASE)",
                "retrieval_score": scores[order].astype(np.float64),
                "score": scores[order].astype(np.float64),
            }
        )
        return table[RESULT_COLUMNS]

    def _named_sources(self, table: pd.DataFrame) -> list[dict]:
        """The list as JSON-ready rows, each source named for a reader (the recommender's own label beside it).

        Built from each column's values once (a 10-row table through pandas' row machinery costs more
        than the ranking's model call).
        """
        names = _reader_names(self.served_retriever)
        columns = {name: table[name].tolist() for name in ("rank", "movie_id", "title", "year", "genres", "source")}
        scores = {name: table[name].to_numpy(np.float64) for name in ("score", "retrieval_score")}
        rows = []
        for i, source in enumerate(map(str, columns["source"])):
            year = columns["year"][i]
            rows.append(
                {
                    "rank": int(columns["rank"][i]),
                    "movie_id": int(columns["movie_id"][i]),
                    "title": str(columns["title"][i]),
                    "year": None if year is pd.NA or year is None else int(year),
                    "genres": [g for g in str(columns["genres"][i]).split("|") if g],
                    **{name: float(v[i]) if np.isfinite(v[i]) else None for name, v in scores.items()},
                    "source": names.get(source, source),
                    "source_detail": source,
                }
            )
        return rows

    # ---- what the page shows beside a list ----------------------------------------------------------------
    def knows_user(self, user_id: int) -> bool:
        return self.store.user_position(int(user_id)) is not None

    def check_movies(self, movie_ids: Sequence[int]) -> None:
        """UnknownMovieError naming every id the run's catalogue lacks."""
        self.store.movie_positions(np.asarray(movie_ids, dtype=np.int64))

    def history(self, user_id: int, limit: int) -> pd.DataFrame:
        """A user's latest train + val ratings, newest first: movie_id, rating, title, genres, year."""
        rows = self.user_histories[self.user_histories["user_id"] == int(user_id)].iloc[::-1].head(limit)
        positions = self.store.movie_positions(rows["movie_id"].to_numpy())
        return pd.DataFrame(
            {
                "movie_id": rows["movie_id"].to_numpy(),
                "rating": rows["rating"].to_numpy(),
                **self.movie_fields(positions),
            }
        )

    def search_movies(self, query: str, limit: int) -> pd.DataFrame:
        """Movies whose title contains `query` (case-insensitive), the most popular first."""
        movies = self.store.movies
        hits = movies[movies["title"].str.contains(query, case=False, regex=False)]
        hits = hits.sort_values("popularity_rank", kind="stable").head(limit)
        return pd.DataFrame(
            {"movie_id": hits.index.to_numpy(), **self.movie_fields(self.store.movie_positions(hits.index.to_numpy()))}
        )

    def movie_fields(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.asarray(values, dtype=object) for name, values in self.store.movie_display(positions).items()}

    def user_ids(self) -> np.ndarray:
        return self.store.users.index.to_numpy()
