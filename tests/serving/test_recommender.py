"""Serving: retrieval, seen-item exclusion, ranking, the popular fallback, batch = per user; the retrievers."""

from __future__ import annotations

import dataclasses
from datetime import UTC

import numpy as np
import pandas as pd
import pytest

from recsys.runs.params import load_params
from tests.online_fixtures import tiny_store_and_encoder

CONTEXT = {"hour": 20, "weekday": 4, "month": 12}


@pytest.fixture(scope="module")
def setup():
    from recsys.core.seeding import set_seed
    from recsys.models.configs import RatingConfig
    from recsys.models.rating_model import build_rating_model
    from recsys.retrieval.retrievers import NumpyRetriever

    set_seed(7)
    store, encoder, tables = tiny_store_and_encoder()
    default = RatingConfig.from_params(load_params()["rating"])
    config = dataclasses.replace(default, embedding_dim=8, side_dim=4, mlp_layers=[8])
    model = build_rating_model(encoder.cardinalities(), config, global_mean=3.5)
    # retrieval by the rating model's own tower vectors (their dot product is its matrix-factorisation path)
    everyone = np.arange(len(store.users))
    user_vectors = model.user_tower(store.user_inputs(everyone, encoder)).vector.numpy()
    movie_vectors = model.movie_tower(store.movie_inputs(np.arange(len(store.movies)), encoder)).vector.numpy()
    retriever = NumpyRetriever(store.users.index, user_vectors, store.movies.index, movie_vectors)
    from recsys.data.rating_scale import RatingScale
    from recsys.ranking.served_rankers import RatingRanker

    ranker = RatingRanker(store, model, encoder, CONTEXT, scale=RatingScale(1.0, 5.0, 1.0))
    return {
        "store": store,
        "encoder": encoder,
        "model": model,
        "retriever": retriever,
        "tables": tables,
        "ranker": ranker,
    }


def call(setup, user_id, **kwargs):
    from recsys.serving.recommender import recommend

    kwargs = {"k": 5, "n_candidates": 8, "ranker": setup["ranker"], "retrieval_index": setup["retriever"], **kwargs}
    return recommend(user_id, store=setup["store"], **kwargs)


def test_known_user_gets_k_unseen_movies_ranked_by_predicted_rating(setup):
    from recsys.retrieval.candidates import SOURCE_RETRIEVAL
    from recsys.serving.recommender import RESULT_COLUMNS

    table = call(setup, 3)
    assert list(table.columns) == RESULT_COLUMNS
    assert len(table) == 5 and table["rank"].tolist() == [1, 2, 3, 4, 5]
    assert table["score"].is_monotonic_decreasing
    assert table["score"].between(1, 5).all()
    assert not set(table["movie_id"]) & set(setup["store"].seen_movies(3))
    assert table["movie_id"].is_unique and (table["source"] == SOURCE_RETRIEVAL).all()
    store = setup["store"]
    assert table["title"].tolist() == store.movies.loc[table["movie_id"], "title"].tolist()
    assert table["year"].tolist() == store.movies.loc[table["movie_id"], "year"].tolist()


def test_predicted_rating_is_the_models_prediction_for_that_user_movie_and_context(setup):
    encoder, model = setup["encoder"], setup["model"]
    table = call(setup, 2)
    interactions = pd.DataFrame({"user_id": 2, "movie_id": table["movie_id"], **CONTEXT})
    inputs = encoder.interaction_inputs(
        interactions, encoder.user_table(setup["tables"][0]), encoder.movie_table(setup["tables"][1])
    )
    expected = model.predict(inputs, verbose=0)
    np.testing.assert_allclose(table["score"], np.clip(expected, 1, 5), rtol=1e-5)


def test_retrieval_scores_are_the_top_candidates_of_the_retriever(setup):
    retriever, store = setup["retriever"], setup["store"]
    ids, scores = retriever.retrieve(3, 8, store.seen_movies(3))
    table = call(setup, 3, k=8)
    assert set(table["movie_id"]) == set(ids[~np.isin(ids, store.seen_movies(3))])
    # an exact check of the numpy retriever against a full sort
    user_row = retriever.user_index.get_loc(3)
    all_scores = retriever.movie_vectors @ retriever.user_vectors[user_row]
    unseen = ~np.isin(retriever.movie_ids, store.seen_movies(3))
    expected = retriever.movie_ids[unseen][np.argsort(-all_scores[unseen], kind="stable")][:8]
    np.testing.assert_array_equal(ids, expected)


def test_seen_movies_are_dropped_even_if_the_retriever_returns_them(setup):
    store = setup["store"]

    def careless_retriever(user_id, n, exclude):  # ignores `exclude`
        ids = store.movies.index.to_numpy()[:n]
        return ids, np.linspace(1, 0, len(ids))

    table = call(setup, 1, retrieval_index=careless_retriever, n_candidates=15, k=15)
    assert not set(table["movie_id"]) & set(store.seen_movies(1))
    assert len(table) == len(store.movies) - len(store.seen_movies(1))


def test_unknown_user_gets_popular_movies_labelled(setup):
    from recsys.retrieval.candidates import SOURCE_POPULAR
    from recsys.serving.recommender import RESULT_COLUMNS

    table = call(setup, 987654)
    assert list(table.columns) == RESULT_COLUMNS
    assert table["movie_id"].tolist() == setup["store"].popular_movies(5).index.tolist()
    assert (table["source"] == SOURCE_POPULAR).all() and table["score"].isna().all()
    assert table["rank"].tolist() == [1, 2, 3, 4, 5]


def test_recommend_batch_equals_recommend_per_user(setup):
    from recsys.serving.recommender import recommend_batch

    user_ids = [3, 987654, 1, 5, 3, 8]
    batch = recommend_batch(
        user_ids,
        k=5,
        n_candidates=8,
        store=setup["store"],
        retrieval_index=setup["retriever"],
        ranker=setup["ranker"],
    )
    expected = pd.concat([call(setup, u).assign(user_id=u) for u in user_ids], ignore_index=True)
    expected = expected[["user_id", *expected.columns[:-1]]]
    pd.testing.assert_frame_equal(batch.drop(columns="score"), expected.drop(columns="score"), check_dtype=False)
    np.testing.assert_allclose(batch["score"], expected["score"], rtol=1e-5)


def test_recommend_batch_without_retrieve_batch_matches(setup):
    from recsys.serving.recommender import recommend_batch

    retriever = setup["retriever"]
    batch = recommend_batch(
        [2, 4],
        k=3,
        n_candidates=8,
        store=setup["store"],
        retrieval_index=retriever.retrieve,
        ranker=setup["ranker"],
    )
    for user_id, rows in batch.groupby("user_id"):
        assert rows["movie_id"].tolist() == call(setup, user_id, k=3)["movie_id"].tolist()


def test_factorized_top_k_adapter_matches_the_numpy_retriever(setup):
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    from recsys.retrieval.retrievers import IndexRetriever, UnknownUserError

    store, retriever = setup["store"], setup["retriever"]
    # a query model from user index (the store's encoded user id) to the same user vectors
    user_index = setup["encoder"].user_table(setup["tables"][0])["user_id_idx"]
    n_rows, dim = int(user_index.max()) + 1, retriever.user_vectors.shape[1]
    user_vectors = np.zeros((n_rows, dim), np.float32)
    user_vectors[user_index.reindex(store.users.index).to_numpy()] = retriever.user_vectors
    query_model = tf.keras.Sequential(
        [
            tf.keras.layers.Embedding(
                len(user_vectors),
                user_vectors.shape[1],
                embeddings_initializer=tf.keras.initializers.Constant(user_vectors),
            )
        ]
    )
    layer = tfrs.layers.factorized_top_k.BruteForce(query_model)
    layer.index(tf.constant(retriever.movie_vectors), tf.constant(retriever.movie_ids.astype(np.int64)))
    adapter = IndexRetriever(layer, user_index)
    seen = store.seen_movies(4)
    ids, scores = adapter.retrieve(4, 6, seen)
    expected_ids, expected_scores = retriever.retrieve(4, 6, seen)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
    batch_ids, _ = adapter.retrieve_batch([4, 2], 6, [seen, store.seen_movies(2)])
    np.testing.assert_array_equal(batch_ids[0], expected_ids)
    np.testing.assert_array_equal(batch_ids[1], retriever.retrieve(2, 6, store.seen_movies(2))[0])
    with pytest.raises(UnknownUserError):
        adapter.retrieve(987654, 6, seen)
    # by default the query is the MovieLens user id itself (recsys.retrieval.indexes's UserQueryModel)
    by_id = IndexRetriever(layer, user_index=None)
    assert by_id._queries([4]) == [4] and adapter.max_k == len(retriever.movie_ids)
    # a user the retriever cannot serve falls back to popular movies
    table = call(setup, 4, retrieval_index=IndexRetriever(layer, user_index.drop(4)))
    assert (table["source"] == "popular (unknown user)").all()
    assert not set(table["movie_id"]) & set(seen)


def test_context_defaults_to_now_and_is_validated(setup):
    from recsys.features.request_context import context_inputs

    now = context_inputs(setup["encoder"], None, 3)
    assert set(now) == {"hour", "weekday", "month"} and all(len(v) == 3 for v in now.values())
    from recsys.ranking.served_rankers import RatingRanker

    now_ranker = RatingRanker(setup["store"], setup["model"], setup["encoder"], None, scale=setup["ranker"].scale)
    assert len(call(setup, 3, ranker=now_ranker)) == 5
    with pytest.raises(ValueError, match="hour=24"):
        context_inputs(setup["encoder"], {"hour": 24, "weekday": 0, "month": 1}, 1)


def test_score_pairs_takes_now_once_for_all_chunks(setup, monkeypatch):
    from datetime import datetime, timedelta

    import recsys.features.request_context as request_context
    import recsys.ranking.served_rankers as online

    start = datetime(2026, 1, 5, 10, 59, tzinfo=UTC)
    calls = []

    class Clock:  # every call to now() is an hour later: chunks must not see different hours
        @staticmethod
        def now(tz=None):
            calls.append(tz)
            return start + timedelta(hours=len(calls) - 1)

    monkeypatch.setattr(request_context, "datetime", Clock)  # where "now" is read
    store = setup["store"]
    users = np.array([2, 3, 4, 2, 3, 4])
    movies = store.movies.index.to_numpy()[:6]
    kwargs = {"store": store, "rating_model": setup["model"], "encoder": setup["encoder"]}
    chunked = online.score_pairs(users, movies, context=None, chunk=2, **kwargs)
    fixed = online.score_pairs(users, movies, context={"hour": 10, "weekday": 0, "month": 1}, **kwargs)
    assert len(calls) == 1
    np.testing.assert_array_equal(chunked, fixed)


def test_the_two_steps_give_the_served_lists_and_retrieve_once(setup):
    from recsys.retrieval.candidates import CANDIDATE_COLUMNS
    from recsys.serving.recommender import rank_candidates, recommend_batch, retrieve_candidates

    calls = []

    class CountingRetriever:
        def retrieve_batch(self, user_ids, n, excludes):
            calls.append(list(user_ids))
            return setup["retriever"].retrieve_batch(user_ids, n, excludes)

    users = [1, 2, 5, 8]
    kwargs = {"store": setup["store"], "ranker": setup["ranker"]}
    candidates = retrieve_candidates(users, 8, store=setup["store"], retrieval_index=CountingRetriever())
    assert calls == [users] and list(candidates.columns) == CANDIDATE_COLUMNS
    assert (candidates.groupby("user_id").size() == 8).all() and (candidates["source"] == "retrieval").all()
    assert (candidates.groupby("user_id")["retrieval_rank"].apply(list) == [list(range(1, 9))] * 4).all()
    ranked = rank_candidates(candidates, 5, **kwargs)
    served = recommend_batch(users, 5, n_candidates=8, retrieval_index=setup["retriever"], **kwargs)
    pd.testing.assert_frame_equal(ranked, served)
    with pytest.raises(ValueError, match="distinct users"):
        retrieve_candidates([1, 1], 8, store=setup["store"], retrieval_index=setup["retriever"])


def test_served_matches_offline_says_whether_serving_gives_the_evaluated_lists(setup):
    from recsys.serving.recommender import recommend_batch, served_matches_offline

    kwargs = {
        "store": setup["store"],
        "retrieval_index": setup["retriever"],
        "ranker": setup["ranker"],
        "n_candidates": 8,
    }
    users = np.array([2, 5, 7])
    evaluated = recommend_batch(users, 4, **kwargs)["movie_id"].to_numpy().reshape(len(users), 4)
    same = served_matches_offline(users, evaluated, 4, n_single=2, **kwargs)
    assert same == {"recommend_equals_batch": True, "batch_equals_offline": True}
    other = evaluated.copy()
    other[1, [0, 1]] = other[1, [1, 0]]  # one user's evaluated list in another order
    assert not served_matches_offline(users, other, 4, **kwargs)["batch_equals_offline"]
    with pytest.raises(ValueError, match="3 users but 2 offline lists"):
        served_matches_offline(users, evaluated[:2], 4, **kwargs)
