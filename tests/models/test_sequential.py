"""The sequential retriever: training, reload with identical top-k, history queries, vector indexes, recommend_for_history."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from recsys.core.errors import UnknownMovieError, UnknownUserError
from recsys.evaluation import metrics
from recsys.evaluation.full_ranking import split_matrices
from recsys.features.feature_store import FeatureStore
from recsys.models.configs import SequentialConfig
from recsys.models.sequential_model import (
    MovieVocabulary,
    full_ranking_scores,
    load_sequential_model,
    movie_vectors,
    query_vectors,
    save_sequential_model,
    user_histories,
)
from recsys.retrieval import indexes
from recsys.retrieval.history_queries import HistoryQueries
from recsys.retrieval.retrievers import IndexRetriever
from recsys.runs.params import load_params
from recsys.serving import recommender
from recsys.training.sequential_training import train_sequential_model
from tests.online_fixtures import tiny_tables

CONFIG = dataclasses.replace(
    SequentialConfig.from_params(load_params()["sequential"]),
    history_length=4,
    window_targets=3,
    target_horizon=2,
    embedding_dim=8,
    temperature=0.5,
    learning_rate=0.02,
    batch_size=4,
    epochs=3,
    patience=1,
)


@pytest.fixture(scope="module")
def trained():
    users, movies, interactions = tiny_tables()
    interactions = interactions.assign(position=interactions.groupby("user_id").cumcount())
    vocabulary = MovieVocabulary(movies["movie_id"].to_numpy())
    matrices = split_matrices(interactions, np.sort(users["user_id"].to_numpy()), vocabulary.movie_ids)
    train = interactions[interactions["split"] == "train"]
    result = train_sequential_model(CONFIG, vocabulary, train, seed=1, matrices=matrices)
    store = FeatureStore.build(users, movies, interactions)
    return result, vocabulary, interactions, matrices, store


def test_training_logs_val_recall_and_keeps_the_catalogue(trained):
    result, vocabulary, _, matrices, _ = trained
    assert 1 <= len(result.history["loss"]) <= CONFIG.epochs
    assert result.monitored == "val_recall_at_15"  # Recall@100 needs 100 movies: the catalogue has 15
    assert len(result.history[result.monitored]) == len(result.history["loss"])
    assert np.isfinite(result.history["loss"]).all() and result.n_targets > 0
    assert movie_vectors(result.model).shape == (len(vocabulary), CONFIG.embedding_dim)
    assert np.allclose(np.linalg.norm(movie_vectors(result.model), axis=1), 1.0, atol=1e-5)


def test_a_reloaded_model_gives_identical_top_k(trained, tmp_path):
    result, vocabulary, interactions, matrices, _ = trained
    histories = user_histories(interactions, matrices.user_ids, vocabulary, CONFIG.history_length)
    save_sequential_model(result.model, vocabulary, tmp_path / "model")
    reloaded, reloaded_vocabulary = load_sequential_model(tmp_path / "model")
    assert np.array_equal(reloaded_vocabulary.movie_ids, vocabulary.movie_ids)
    before = full_ranking_scores(result.model, histories)[:]  # every row, as a dense block
    after = full_ranking_scores(reloaded, histories)[:]
    assert np.array_equal(metrics.top_k_from_scores(before, 5), metrics.top_k_from_scores(after, 5))
    assert np.allclose(before, after)
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_sequential_model(tmp_path / "nothing")


def test_history_queries_read_the_latest_movies_and_follow_new_ones(trained):
    result, vocabulary, interactions, _, _ = trained
    queries = HistoryQueries(result.model, vocabulary, interactions[interactions["split"] == "train"])
    user = int(interactions["user_id"].iloc[0])
    from recsys.features.sequences import latest_histories

    train = interactions[interactions["split"] == "train"]
    some = np.unique(train["user_id"])[:5]
    assert np.array_equal(
        queries.histories(some),
        latest_histories(
            some, train["user_id"], train["position"], vocabulary.encode(train["movie_id"]), CONFIG.history_length
        ),
    )
    batch = queries.queries([user, user + 1])
    assert np.allclose(batch[0], queries[user], atol=1e-5)
    train_movies = interactions[(interactions["user_id"] == user) & (interactions["split"] == "train")]
    ordered = train_movies.sort_values("position")["movie_id"].to_numpy()
    assert np.allclose(queries.for_history(ordered), queries[user], atol=1e-5)
    short = vocabulary.movie_ids[[2, 7]]  # fewer movies than N: the leading PAD steps are skipped
    padded = np.zeros((1, CONFIG.history_length), np.int32)
    padded[0, -2:] = vocabulary.encode(short)
    untrimmed = result.model.query(tf.constant(padded)).numpy()[0]  # every PAD step run through the GRU
    np.testing.assert_allclose(queries.for_history(short), untrimmed, atol=1e-6)
    np.testing.assert_allclose(query_vectors(result.model, padded)[0], untrimmed, atol=1e-6)
    with pytest.raises(UnknownUserError, match="no history"):
        queries.queries([999_999])
    assert np.array_equal(queries.queries([999_999, user], without_history="zeros")[0], np.zeros(CONFIG.embedding_dim))
    before = queries[user].copy()
    unseen = np.setdiff1d(vocabulary.movie_ids, ordered)[:2]
    queries.add(user, unseen)
    assert not np.allclose(queries[user], before)  # a new rating changes the query, no retraining
    assert np.allclose(queries[user], queries.for_history(np.r_[ordered, unseen]), atol=1e-5)


def test_a_single_history_query_in_numpy_equals_the_models(trained):
    from recsys.models.single_history_query import SingleHistoryQuery

    model = trained[0].model
    single = SingleHistoryQuery(model)
    rng = np.random.default_rng(5)
    for length in [1, 2, CONFIG.history_length]:
        for _ in range(5):
            items = rng.integers(1, model.n_movies + 1, length).astype(np.int32)
            expected = model.query(tf.constant(items[None, :])).numpy()[0]
            np.testing.assert_allclose(single(items), expected, atol=1e-6)
    for bad in ([], [3, 0]):
        with pytest.raises(ValueError, match="at least one movie and no PAD"):
            single(np.array(bad, np.int32))
    activation = model.gru.cell.activation
    model.gru.cell.activation = tf.keras.activations.relu
    try:
        with pytest.raises(TypeError, match="tanh, sigmoid"):
            SingleHistoryQuery(model)
    finally:
        model.gru.cell.activation = activation


def test_a_vector_index_saves_reloads_and_serves_users_through_history_queries(trained, tmp_path):
    result, vocabulary, interactions, _, _ = trained
    vectors = movie_vectors(result.model)
    index = indexes.build_bruteforce(None, vocabulary.movie_ids, vectors, 5)
    indexes.save_index(index, tmp_path / "index")
    loaded = indexes.load_index(tmp_path / "index")
    queries = HistoryQueries(result.model, vocabulary, interactions[interactions["split"] != "test"])
    users = np.unique(interactions["user_id"])[:4]
    q = queries.queries(users)
    assert np.array_equal(loaded(q, k=5)[1].numpy(), index(q, k=5)[1].numpy())
    seen = [
        interactions[(interactions["user_id"] == u) & (interactions["split"] != "test")]["movie_id"].to_numpy()
        for u in users
    ]
    lists = IndexRetriever(loaded, queries).query(users, 3, seen)
    scores = q @ vectors.T
    for row, user_seen in enumerate(seen):
        scores[row, np.isin(vocabulary.movie_ids, user_seen)] = -np.inf
    expected = vocabulary.movie_ids[metrics.top_k_from_scores(scores, 3)]
    assert np.array_equal(lists.movie_ids, expected)


def test_recommend_for_history_errors_fallback_and_exclusions(trained):
    result, vocabulary, interactions, _, store = trained
    queries = HistoryQueries(result.model, vocabulary, interactions)
    index = indexes.build_bruteforce(None, vocabulary.movie_ids, movie_vectors(result.model), 5)
    args = {"store": store, "history_queries": queries, "retrieval_index": index}
    history = vocabulary.movie_ids[[3, 1, 4]]
    answer = recommender.recommend_for_history(history, 4, **args)
    assert list(answer.columns) == recommender.RESULT_COLUMNS and len(answer) == 4
    assert not answer["movie_id"].isin(history).any() and answer["rank"].tolist() == [1, 2, 3, 4]
    assert (answer["source"] == "history (sequential)").all()
    assert answer["retrieval_score"].is_monotonic_decreasing
    expected_scores = queries.for_history(history) @ movie_vectors(result.model).T
    expected_scores[np.isin(vocabulary.movie_ids, history)] = -np.inf
    assert answer["movie_id"].tolist() == vocabulary.movie_ids[np.argsort(-expected_scores)[:4]].tolist()
    with pytest.raises(UnknownMovieError, match="999999"):
        recommender.recommend_for_history([history[0], 999_999], 4, **args)
    empty = recommender.recommend_for_history([], 3, **args)
    assert len(empty) == 3 and (empty["source"] == "popular (empty history)").all()
    assert empty["movie_id"].tolist() == store.popular_movies(3).index.tolist()


def test_vocabulary_names_unknown_movies():
    vocabulary = MovieVocabulary(np.array([5, 7, 9]))
    assert vocabulary.encode(np.array([9, 5])).tolist() == [3, 1]
    with pytest.raises(UnknownMovieError, match="8"):
        vocabulary.encode(np.array([5, 8]))
    with pytest.raises(ValueError, match="repeats"):
        MovieVocabulary(np.array([1, 1]))


def test_the_sequential_reload_check_passes_for_the_saved_model_and_fails_for_another(trained, tmp_path):
    from recsys.retrieval.reload_checks import sequential_reloads_the_same

    result, vocabulary, interactions, matrices, _ = trained
    histories = user_histories(interactions, matrices.user_ids, vocabulary, CONFIG.history_length)
    save_sequential_model(result.model, vocabulary, tmp_path / "model")
    assert sequential_reloads_the_same(result.model, tmp_path / "model", histories, k=5)
    train = interactions[interactions["split"] == "train"]
    other = train_sequential_model(dataclasses.replace(CONFIG, epochs=1), vocabulary, train, seed=2).model
    assert not sequential_reloads_the_same(other, tmp_path / "model", histories, k=5)
