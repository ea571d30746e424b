"""The served retriever per stage: its vectors in each stage's store, the stage's history, the stage's exclusions."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from recsys.models.sequential_model import MovieVocabulary
from recsys.retrieval.faiss_indexes import build_faiss_ivf
from recsys.retrieval.retrievers import IndexRetriever, NumpyRetriever
from recsys.serving import served_retriever
from recsys.serving.recommender import retrieve_candidates
from recsys.serving.served_retriever import STAGES, ServedRetriever, load_served_retriever
from tests.online_fixtures import tiny_tables


class CountingHistories:
    """Stands for HistoryQueries: a user's query is (their number of movies in the timeline, their id)."""

    def __init__(self, timeline: pd.DataFrame):
        self.counts = timeline.groupby("user_id").size()

    def queries(self, user_ids, without_history="raise"):
        assert without_history == "zeros"
        counts = self.counts.reindex(user_ids, fill_value=0).to_numpy()
        return np.c_[counts, np.where(counts > 0, user_ids, 0)].astype(np.float32)


def served_as(model: str, interactions: pd.DataFrame, movie_ids: np.ndarray) -> ServedRetriever:
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(movie_ids)  # each model's catalogue in its own order
    timeline = {s: interactions[interactions["split"].isin(served_retriever.STAGE_HISTORY[s])] for s in STAGES}
    return ServedRetriever(
        model=model,
        two_tower=None,
        two_tower_encoder=SimpleNamespace(user_table=lambda users: users),
        movie_vectors=np.c_[shuffled, -shuffled].astype(np.float32),
        movie_vector_ids=shuffled,
        vocabulary=MovieVocabulary(shuffled[::-1]),
        sequential_movie_vectors=np.c_[shuffled[::-1], 2 * shuffled[::-1]].astype(np.float32),
        histories={s: CountingHistories(timeline[s]) for s in STAGES},
        retrievers={},
        sequential_index=None,
    )


@pytest.fixture(scope="module")
def tables():
    return tiny_tables()


def test_sequential_stores_read_each_stages_history_and_align_the_vectors(tables):
    users, movies, interactions = tables
    served = served_as("sequential", interactions, movies["movie_id"].to_numpy())
    stores = served.stage_stores(users, movies, interactions)
    assert stores["val"].history_splits == ("train",) and stores["test"].history_splits == ("train", "val")
    assert stores["val"].seen_splits == stores["test"].seen_splits == ("train", "val")
    for stage, past in served_retriever.STAGE_HISTORY.items():
        store = stores[stage]
        counts = interactions[interactions["split"].isin(past)].groupby("user_id").size()
        np.testing.assert_array_equal(store.user_vectors[:, 0], counts.reindex(store.users.index, fill_value=0))
        ids = store.movies.index.to_numpy()
        np.testing.assert_array_equal(store.movie_vectors, np.c_[ids, 2 * ids])
    assert (stores["test"].user_vectors[:, 0] > stores["val"].user_vectors[:, 0]).all()  # + each user's val movie


def test_two_tower_stores_share_the_user_vectors_and_align_the_movie_vectors(tables, monkeypatch):
    users, movies, interactions = tables
    monkeypatch.setattr(
        served_retriever, "user_embeddings", lambda model, encoder, table, ids: np.c_[ids, 3 * np.asarray(ids)]
    )
    served = served_as("two_tower", interactions, movies["movie_id"].to_numpy())
    stores = served.stage_stores(users, movies, interactions)
    for store in stores.values():
        np.testing.assert_array_equal(store.user_vectors[:, 1], 3 * store.users.index.to_numpy())
        np.testing.assert_array_equal(store.movie_vectors, np.c_[store.movies.index, -store.movies.index])
    with pytest.raises(ValueError, match="stage must be one of"):
        served.stage_store("train", users, movies, interactions)


def test_a_movie_without_a_vector_is_named(tables):
    users, movies, interactions = tables
    movie_ids = movies["movie_id"].to_numpy()
    store = served_as("sequential", interactions, movie_ids).stage_store("val", users, movies, interactions)
    short = served_as("sequential", interactions, movie_ids[1:])  # a catalogue without the first movie
    with pytest.raises(KeyError, match=f"sequential model has no vector for movies \\[{movie_ids[0]}\\]"):
        short.stage_vectors("val", store, users)


def test_stage_candidates_exclude_the_history_at_val_and_everything_seen_at_test(tables):
    users, movies, interactions = tables
    served = served_as("sequential", interactions, movies["movie_id"].to_numpy())
    stores = served.stage_stores(users, movies, interactions)
    rng = np.random.default_rng(1)
    retriever = NumpyRetriever(
        users["user_id"], rng.normal(size=(len(users), 3)), movies["movie_id"], rng.normal(size=(len(movies), 3))
    )
    served.retrievers = dict.fromkeys(STAGES, retriever)
    held_out = {s: interactions[interactions["split"] == s][["user_id", "movie_id"]].iloc[::-1] for s in STAGES}
    candidates = served.stage_candidates(stores, held_out, len(movies), {s: {} for s in STAGES})
    for stage, excluded in (("val", ("train",)), ("test", ("train", "val"))):
        table = candidates[stage]
        assert table["user_id"].is_monotonic_increasing
        assert set(table["user_id"]) == set(held_out[stage]["user_id"])
        pairs = interactions[interactions["split"].isin(excluded)]
        assert not table.merge(pairs, on=["user_id", "movie_id"]).shape[0]
        expected = retrieve_candidates(
            np.sort(held_out[stage]["user_id"].unique()),
            len(movies),
            store=stores[stage],
            retrieval_index=retriever,
            exclude={"val": "history", "test": "seen"}[stage],
        )
        pd.testing.assert_frame_equal(table, expected)
    # every val movie is still a candidate at the val stage (only train is excluded there)
    assert len(candidates["val"].merge(held_out["val"], on=["user_id", "movie_id"])) == len(held_out["val"])


def test_an_unknown_served_retriever_is_refused_before_loading_anything(tables):
    def artifact(key):
        raise AssertionError(f"{key} was loaded")

    with pytest.raises(ValueError, match="two_tower"):
        load_served_retriever("bm25", artifact, tables[2], 1)


def test_the_served_index_kind_is_read_from_the_index(tables):
    users, movies, interactions = tables
    served = served_as("sequential", interactions, movies["movie_id"].to_numpy())
    vectors = np.random.default_rng(0).normal(size=(len(movies), 4))
    index = build_faiss_ivf(None, movies["movie_id"].to_numpy(), vectors, k=3, nlist=2, nprobe=1, seed=0)
    served.retrievers = dict.fromkeys(STAGES, IndexRetriever(index))
    assert served.index_kind == "faiss_ivf"
