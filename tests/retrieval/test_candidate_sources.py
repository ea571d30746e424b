"""The candidate sources beside retrieval (EASE, the joint model's exact top n) and the merge of three lists."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recsys.core.ids import NO_MOVIE
from recsys.retrieval.candidates import (
    CANDIDATE_COLUMNS,
    CANDIDATE_LABELS,
    SOURCE_DTYPE,
    SOURCES,
    VectorSource,
    candidate_recall,
    merge_sources,
    proposed_by,
)


def test_every_set_of_proposing_sources_has_a_label_and_the_old_labels_keep_their_codes():
    assert set(CANDIDATE_LABELS) == {
        "retrieval",
        "ease",
        "joint",
        "retrieval+ease",
        "retrieval+joint",
        "ease+joint",
        "retrieval+ease+joint",
    }
    # saved tables of two sources read the same: the categories they had come first, in their order
    assert SOURCES[:4] == ["retrieval", "ease", "retrieval+ease", "least-viewed"]
    assert list(SOURCE_DTYPE.categories) == SOURCES


def test_three_lists_merge_with_each_sources_rank_score_and_label_in_order():
    retrieved = pd.DataFrame({"user_id": [7, 7, 3], "movie_id": [10, 20, 20], "retrieval_score": [0.9, 0.8, 0.6]})
    ease_ids = np.array([[30, 10], [60, NO_MOVIE]])  # users in order of first appearance: 7, then 3
    ease_scores = np.array([[2.0, 1.0], [3.0, -np.inf]])
    joint_ids = np.array([[40, 30, 10], [20, 70, 60]])
    joint_scores = np.array([[0.5, 0.4, 0.3], [0.9, 0.8, 0.7]])
    table = merge_sources(retrieved, ease_ids, ease_scores, joint_ids, joint_scores)
    assert list(table.columns) == CANDIDATE_COLUMNS
    rows = list(
        table[["user_id", "movie_id", "source", "retrieval_rank", "ease_rank", "joint_rank"]].itertuples(
            index=False, name=None
        )
    )
    # per user: retrieval's rows, then EASE's extra movies, then the joint model's, each in its own order
    assert rows == [
        (7, 10, "retrieval+ease+joint", 1, 2, 3),
        (7, 20, "retrieval", 2, 0, 0),
        (7, 30, "ease+joint", 0, 1, 2),
        (7, 40, "joint", 0, 0, 1),
        (3, 20, "retrieval+joint", 1, 0, 1),
        (3, 60, "ease+joint", 0, 1, 3),
        (3, 70, "joint", 0, 0, 2),
    ]
    np.testing.assert_array_equal(table["joint_score"], [0.3, np.nan, 0.4, 0.5, 0.9, 0.7, 0.8])
    np.testing.assert_array_equal(table["ease_score"], [1.0, np.nan, 2.0, np.nan, np.nan, 3.0, np.nan])
    np.testing.assert_array_equal(table["retrieval_score"], [0.9, 0.8, np.nan, np.nan, 0.6, np.nan, np.nan])
    assert proposed_by(table) == ("retrieval", "ease", "joint")
    # without EASE the joint model's extra movies follow retrieval's directly
    no_ease = merge_sources(retrieved, joint_ids=joint_ids, joint_scores=joint_scores)
    assert no_ease["movie_id"].tolist() == [10, 20, 40, 30, 20, 70, 60]
    assert (no_ease["ease_rank"] == 0).all() and no_ease["ease_score"].isna().all()
    assert proposed_by(no_ease) == ("retrieval", "joint")
    with pytest.raises(ValueError, match="2 users retrieved but 1 joint lists"):
        merge_sources(retrieved, joint_ids=joint_ids[:1], joint_scores=joint_scores[:1])


def test_candidate_recall_counts_the_joint_models_candidates_as_a_source():
    retrieved = pd.DataFrame({"user_id": [1, 2], "movie_id": [10, 20], "retrieval_score": 1.0})
    table = merge_sources(retrieved, joint_ids=np.array([[11, 10], [21, 22]]), joint_scores=np.ones((2, 2)))
    held = pd.DataFrame({"user_id": [1, 1, 2], "movie_id": [10, 11, 30]})
    recall = candidate_recall(table, held)
    # user 1: retrieval's one candidate is a hit (1 / min(1, 2)); the joint model's two both are (2 / 2); user 2: none
    assert recall == {
        "candidate_recall_retrieval": pytest.approx(0.5),
        "candidate_recall_joint": pytest.approx(0.5),
        "candidate_recall_merged": pytest.approx(0.5),
    }


def vectors(seed: int = 0, n_users: int = 4, n_movies: int = 9, dim: int = 3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_users, dim)), rng.normal(size=(n_movies, dim))


def test_vector_source_is_exact_search_without_the_excluded_movies():
    users, movies = vectors()
    user_ids, movie_ids = np.array([40, 10, 30, 20]), np.arange(100, 109)
    source = VectorSource(users, movies, user_ids, movie_ids)
    excludes = [np.array([100, 105, 999]), np.array([], np.int64)]  # 999: not in the catalogue, ignored
    ids, scores = source.top([30, 40], 4, excludes)
    for row, (user, excluded) in enumerate(zip([30, 40], excludes)):
        exact = movies @ users[list(user_ids).index(user)]
        exact[np.isin(movie_ids, excluded)] = -np.inf
        best = np.argsort(-exact, kind="stable")[:4]
        np.testing.assert_array_equal(ids[row], movie_ids[best])
        np.testing.assert_allclose(scores[row], exact[best], rtol=1e-6)
    # one request takes the same path's answer as a batch's row: the same movies; the float32 scores to the
    # last bit or so (a one-row product and a two-row one may take different BLAS kernels)
    one_ids, one_scores = source.top([30], 4, excludes[:1])
    np.testing.assert_array_equal(one_ids[0], ids[0])
    np.testing.assert_allclose(one_scores[0], scores[0], rtol=1e-6)
    # blocks of one user: the same lists as one block
    blocked_ids, blocked_scores = source.top([30, 40], 4, excludes, block=1)
    np.testing.assert_array_equal(blocked_ids, ids)
    np.testing.assert_allclose(blocked_scores, scores, rtol=1e-6)
    # more movies asked than are left: NO_MOVIE and -inf fill the slots
    ids, scores = source.top([10], 9, [movie_ids[:7]])
    assert ids[0, 2:].tolist() == [NO_MOVIE] * 7 and np.isneginf(scores[0, 2:]).all()


def test_vector_source_refuses_unknown_users_and_mismatched_vectors():
    users, movies = vectors()
    source = VectorSource(users, movies, [1, 2, 3, 4], np.arange(9))
    with pytest.raises(KeyError, match=r"no vector for users \[77\]"):
        source.top([2, 77], 3, [np.array([], np.int64)] * 2)
    with pytest.raises(ValueError, match="2 users but 1 lists of movies to exclude"):
        source.top([2, 3], 3, [np.array([], np.int64)])
    with pytest.raises(ValueError, match="4 user vectors for 3 user ids"):
        VectorSource(users, movies, [1, 2, 3], np.arange(9))
    with pytest.raises(ValueError, match="differ in dimension"):
        VectorSource(users, movies[:, :2], [1, 2, 3, 4], np.arange(9))


@pytest.fixture(scope="module")
def store_world():
    from recsys.ranking.ranker_features import FeatureSources
    from recsys.retrieval.retrievers import NumpyRetriever
    from tests.online_fixtures import tiny_store_and_encoder

    store, _, (_, _, interactions) = tiny_store_and_encoder()
    rng = np.random.default_rng(5)
    store.with_vectors(rng.normal(size=(len(store.users), 4)), rng.normal(size=(len(store.movies), 4)))
    joint = rng.normal(size=(len(store.users), 3)), rng.normal(size=(len(store.movies), 3))
    sources = FeatureSources(store, 5, joint_vectors=joint, fitted_on={"retrieval": ("train",)})
    retriever = NumpyRetriever(store.users.index, store.user_vectors, store.movies.index, store.movie_vectors)
    return store, sources, retriever, joint


def test_candidate_sources_give_the_joint_models_exact_lists_and_refuse_what_they_lack(store_world):
    store, sources, _, joint = store_world
    proposing = sources.candidate_sources(ease=False, joint=True)
    assert proposing["ease"] is None and isinstance(proposing["joint"], VectorSource)
    user = int(store.users.index[0])
    ids, _ = proposing["joint"].top([user], 3, [store.seen_movies(user)])
    exact = joint[1] @ joint[0][0]
    exact[np.isin(store.movies.index, store.seen_movies(user))] = -np.inf
    np.testing.assert_array_equal(ids[0], store.movies.index.to_numpy()[np.argsort(-exact, kind="stable")[:3]])
    assert sources.candidate_sources(ease=False, joint=False) == {"ease": None, "joint": None}
    with pytest.raises(ValueError, match=r"candidates asked of \['ease'\].*online.ease_candidates: false"):
        sources.candidate_sources(ease=True, joint=True)
    without_joint = dataclasses.replace(sources, joint_vectors=None)
    with pytest.raises(ValueError, match=r"\['joint'\].*online.joint_candidates: false"):
        without_joint.candidate_sources(ease=False, joint=True)


def test_retrieve_candidates_merges_the_joint_models_unseen_movies(store_world):
    from recsys.serving.recommender import recommend_batch, retrieve_candidates, served_matches_offline

    store, sources, retriever, _ = store_world
    users = store.users.index.to_numpy()
    joint = sources.candidate_sources(ease=False, joint=True)["joint"]
    table = retrieve_candidates(users, 3, store=store, retrieval_index=retriever, joint=joint)
    seen = store.seen_pairs()
    assert not table.merge(seen, on=["user_id", "movie_id"]).shape[0]  # no seen movie from either source
    for user in users:
        rows = table[table["user_id"] == user]
        expected, _ = joint.top([user], 3, [store.seen_movies(user)])
        by_joint = rows[rows["joint_rank"] > 0].sort_values("joint_rank")["movie_id"].tolist()
        assert by_joint == [m for m in expected[0] if m != NO_MOVIE]
        assert rows["movie_id"].is_unique
    assert set(table["source"].astype(str)) <= set(CANDIDATE_LABELS) and "joint" in proposed_by(table)
    alone = retrieve_candidates(users, 3, store=store, retrieval_index=retriever)
    assert proposed_by(alone) == ("retrieval",) and len(alone) < len(table)

    class ByRetrievalScore:
        name = "by retrieval score"
        features = ()

        def score(self, candidates):
            return candidates["retrieval_score"].fillna(-1.0).to_numpy()

        def display(self, scores):
            return scores

    args = {"store": store, "retrieval_index": retriever, "ranker": ByRetrievalScore(), "n_candidates": 3}
    served = recommend_batch(users, 2, **args, joint=joint)
    assert (served.groupby("user_id").size() == 2).all() and set(served["user_id"]) == set(users)
    # one request at a time serves the batch's lists: the three-source merge of one user is the batch's
    lists = served["movie_id"].to_numpy().reshape(len(users), 2)
    assert served_matches_offline(users, lists, 2, n_single=len(users), **args, joint=joint) == {
        "recommend_equals_batch": True,
        "batch_equals_offline": True,
    }
