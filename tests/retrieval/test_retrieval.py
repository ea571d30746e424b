"""The retrieval stage on tiny data: model, logQ, full-ranking evaluation, BruteForce/ScaNN indexes, save/reload."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recsys.evaluation import full_ranking, metrics
from recsys.features.encoding import FeatureEncoder
from recsys.models import retrieval_model
from recsys.models.configs import RetrievalConfig
from recsys.retrieval import candidates, indexes
from recsys.retrieval.retrievers import IndexRetriever
from recsys.runs.params import load_params
from recsys.training import retrieval_inputs, retrieval_training
from tests.conftest import PROJECT_ROOT

N_TASTES, MOVIES_PER_TASTE, N_USERS = 4, 15, 200


@pytest.fixture(scope="module")
def data():
    """Users of 4 tastes who watch movies of their taste (with a popularity skew), split 6/1/2 per user."""
    rng = np.random.default_rng(0)
    n_movies = N_TASTES * MOVIES_PER_TASTE
    movie_taste = np.repeat(np.arange(N_TASTES), MOVIES_PER_TASTE)
    genres = ["Action", "Comedy", "Drama", "Horror"]
    movies = pd.DataFrame(
        {
            "movie_id": np.arange(1, n_movies + 1) * 10,
            "title_clean": [f"{genres[t]} story part {i % 5}" for i, t in enumerate(movie_taste)],
            "year": pd.array(1990 + np.arange(n_movies) % 10, dtype="Int16"),
        }
    )
    for t, genre in enumerate(genres):
        movies[f"genre_{genre}"] = (movie_taste == t).astype(np.int8)
    user_taste = np.arange(N_USERS) % N_TASTES
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, N_USERS + 1),
            "gender": np.where(user_taste % 2, "F", "M"),
            "age_group": np.array(["18-24", "25-34", "35-44", "45-49"])[user_taste],
            "occupation": "writer",
            "zip5": "10001",
            "city": "New York",
            "state": "NY",
        }
    )
    popularity = 1.0 / np.arange(1, MOVIES_PER_TASTE + 1)  # within a taste, a Zipf-like skew
    rows = []
    for user, taste in zip(users["user_id"], user_taste):
        own = rng.choice(MOVIES_PER_TASTE, 8, replace=False, p=popularity / popularity.sum()) + taste * MOVIES_PER_TASTE
        other = rng.choice(np.flatnonzero(movie_taste != taste), 1)
        watched = rng.permutation(np.concatenate([own, other]))
        split = ["train"] * 6 + ["val"] + ["test"] * 2
        for movie, s in zip(watched, split):
            rows.append((user, movies["movie_id"][movie], int(rng.integers(1, 6)), s))
    interactions = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "split"])
    interactions["hour"] = rng.integers(0, 24, len(interactions))
    interactions["weekday"] = rng.integers(0, 7, len(interactions))
    interactions["month"] = rng.integers(1, 13, len(interactions))
    train = interactions[interactions["split"] == "train"]
    encoder = FeatureEncoder.fit(users, movies, train)
    return {
        "users": users,
        "movies": movies,
        "interactions": interactions,
        "train": train,
        "encoder": encoder,
        "user_table": encoder.user_table(users),
        "movie_table": encoder.movie_table(movies),
    }


def small_config(**overrides):
    """The default retrieval config (params/default.yaml), made small for the tiny data."""
    default = RetrievalConfig.from_params(load_params()["retrieval"])
    small = {"embedding_dim": 16, "side_dim": 4, "batch_size": 128, "epochs": 15, "learning_rate": 0.02}
    return dataclasses.replace(default, **{**small, **overrides})


@pytest.fixture(scope="module")
def trained(data):

    result = retrieval_training.train_retrieval_model(
        small_config(), data["encoder"], data["train"], data["user_table"], data["movie_table"], seed=1, verbose=0
    )
    matrices = full_ranking.split_matrices(
        data["interactions"], data["users"]["user_id"].to_numpy(), data["movie_table"].index.to_numpy()
    )
    movie_ids, movie_vectors = retrieval_model.movie_embeddings(result.model, data["encoder"], data["movie_table"])
    user_vectors = retrieval_model.user_embeddings(result.model, data["encoder"], data["user_table"], matrices.user_ids)
    return {
        "result": result,
        "matrices": matrices,
        "movie_ids": movie_ids,
        "movie_vectors": movie_vectors,
        "user_vectors": user_vectors,
    }


@pytest.mark.parametrize("features", [["ids"], ["user", "movie"], ["user", "movie", "context"]])
def test_model_builds_from_config(data, features):

    config = small_config(features=features)
    model = retrieval_model.build_retrieval_model(data["encoder"].cardinalities(), config)
    inputs = retrieval_training.training_inputs(
        config, data["encoder"], data["train"], data["user_table"], data["movie_table"]
    )
    assert ("hour" in inputs) == ("context" in features)
    loss = model.compute_loss({k: v[:32] for k, v in inputs.items()})
    assert np.isfinite(float(loss))
    user_vectors = retrieval_model.user_embeddings(model, data["encoder"], data["user_table"], [1, 2, 3])
    assert user_vectors.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(user_vectors, axis=1), 1.0, rtol=1e-5)  # l2_normalize
    # the unknown-id rows start (and stay) at zero
    assert not model.query_tower.user_tower.id_embedding.embeddings.numpy()[0].any()
    assert not model.candidate_tower.movie_tower.id_embedding.embeddings.numpy()[0].any()
    names = {v.name for v in model.trainable_variables}
    assert not any("bias" in n for n in names)
    assert any("city_embedding" in n for n in names) == ("user" in features)


def test_positives_keep_ratings_at_or_above_the_threshold_without_copying_a_table_that_all_pass():
    table = pd.DataFrame({"user_id": [1, 1, 2], "movie_id": [5, 6, 5], "rating": [1.0, 4.5, 3.0]})
    assert retrieval_training.positives(table, 1) is table
    assert retrieval_training.positives(table, 3)["movie_id"].tolist() == [6, 5]
    assert retrieval_training.positives(table, 5).empty


def test_logq_probabilities_sum_to_one_and_match_counts(data):

    train = data["train"]
    probability = retrieval_training.candidate_sampling_probability(train)
    assert probability.sum() == pytest.approx(1.0)
    counts = train["movie_id"].value_counts()
    np.testing.assert_allclose(probability.loc[counts.index], counts / len(train))
    inputs = retrieval_training.training_inputs(
        small_config(), data["encoder"], train, data["user_table"], data["movie_table"]
    )
    np.testing.assert_allclose(
        inputs[retrieval_model.SAMPLING_PROBABILITY], (counts / len(train)).loc[train["movie_id"]].to_numpy(), rtol=1e-6
    )
    # min_rating drops the low ratings from the positives (and from the probabilities)
    liked = retrieval_training.training_inputs(
        small_config(min_rating=4), data["encoder"], train, data["user_table"], data["movie_table"]
    )
    assert len(liked["user_id"]) == int((train["rating"] >= 4).sum())


def test_training_beats_popularity_and_random(data, trained):

    matrices = trained["matrices"]
    history = trained["result"].history["loss"]
    assert history[-1] < 0.8 * history[0]
    model = trained["result"].model  # the unknown-id rows are never trained away from zero
    assert not model.query_tower.user_tower.id_embedding.embeddings.numpy()[0].any()
    assert not model.candidate_tower.movie_tower.id_embedding.embeddings.numpy()[0].any()
    model_metrics = full_ranking.evaluate_scores(
        trained["user_vectors"] @ trained["movie_vectors"].T, matrices, "test", ks=(10, 50)
    )
    popularity_metrics = full_ranking.evaluate_scores(
        full_ranking.popularity_scores(matrices.train), matrices, "test", ks=(10, 50)
    )
    random_recall_at_10 = 10 / (matrices.train.shape[1] - 7)  # about 7 movies excluded per user
    assert model_metrics["recall_at_10"] > popularity_metrics["recall_at_10"] + 0.2
    assert model_metrics["recall_at_10"] > 3 * random_recall_at_10
    assert model_metrics["n_users_evaluated"] == np.count_nonzero(np.diff(matrices.test.indptr))


def test_full_ranking_monitor_logs_val_recall(data):

    matrices = full_ranking.split_matrices(
        data["interactions"], data["users"]["user_id"].to_numpy(), data["movie_table"].index.to_numpy()
    )
    monitor = retrieval_training.full_ranking_monitor(
        data["encoder"], data["user_table"], data["movie_table"], matrices, k=10
    )
    result = retrieval_training.train_retrieval_model(
        small_config(epochs=2),
        data["encoder"],
        data["train"],
        data["user_table"],
        data["movie_table"],
        seed=1,
        monitor=monitor,
        verbose=0,
    )
    assert len(result.history["val_recall_at_10"]) == 2
    assert result.n_positives == len(data["train"])


def test_same_seed_same_model(data):

    runs = [
        retrieval_training.train_retrieval_model(
            small_config(epochs=2),
            data["encoder"],
            data["train"],
            data["user_table"],
            data["movie_table"],
            seed=7,
            verbose=0,
        )
        for _ in range(2)
    ]
    assert runs[0].history["loss"] == runs[1].history["loss"]


def test_factorized_top_k_matches_tfrs_metric(data, trained):
    import tensorflow_recommenders as tfrs

    model, encoder = trained["result"].model, data["encoder"]
    test_pairs = data["interactions"][data["interactions"]["split"] == "test"]
    users = np.unique(test_pairs["user_id"])
    ours = full_ranking.factorized_top_k_accuracy(
        test_pairs,
        users,
        retrieval_model.user_embeddings(model, encoder, data["user_table"], users),
        trained["movie_ids"],
        trained["movie_vectors"],
        ks=(1, 5, 10, 50),
    )
    # TFRS's id-based evaluation: is the true movie among the ids the BruteForce index returns?
    candidates = tfrs.layers.factorized_top_k.BruteForce(k=50)
    candidates.index(tf.constant(trained["movie_vectors"]), tf.constant(trained["movie_ids"]))
    metric = tfrs.metrics.FactorizedTopK(candidates=candidates, ks=(1, 5, 10, 50))
    queries = retrieval_model.user_embeddings(model, encoder, data["user_table"], test_pairs["user_id"])
    columns = pd.Index(trained["movie_ids"]).get_indexer(test_pairs["movie_id"])
    metric.update_state(
        tf.constant(queries),
        tf.constant(trained["movie_vectors"][columns]),
        true_candidate_ids=tf.constant(test_pairs["movie_id"].to_numpy()),
    )
    for k, value in zip((1, 5, 10, 50), metric.result()):
        assert ours[f"factorized_top_{k}_accuracy"] == pytest.approx(float(value), abs=1e-6)
    assert 0 < ours["factorized_top_10_accuracy"] < ours["factorized_top_50_accuracy"]
    # the model-level wrapper reads the same vectors (its default cut-offs)
    wrapped = retrieval_model.factorized_top_k(
        model, encoder, data["user_table"], trained["movie_ids"], trained["movie_vectors"], test_pairs
    )
    assert wrapped["factorized_top_10_accuracy"] == pytest.approx(ours["factorized_top_10_accuracy"], abs=1e-9)
    assert wrapped["factorized_top_50_accuracy"] == pytest.approx(ours["factorized_top_50_accuracy"], abs=1e-9)


def _numpy_top_k(user_vectors, movie_vectors, movie_ids, seen_ids, k):
    scores = user_vectors @ movie_vectors.T
    for row, seen in enumerate(seen_ids):
        scores[row, np.isin(movie_ids, seen)] = -np.inf
    return movie_ids[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def test_bruteforce_top_k_equals_numpy_with_seen_items_excluded(data, trained):

    model, matrices = trained["result"].model, trained["matrices"]
    query_model = indexes.UserQueryModel(model, data["encoder"], data["user_table"])
    index = indexes.build_bruteforce(query_model, trained["movie_ids"], trained["movie_vectors"], k=10)
    seen = matrices.seen_movie_ids("test")
    top_ids = IndexRetriever(index, batch_size=64).query(matrices.user_ids, 10, seen).movie_ids
    expected = _numpy_top_k(trained["user_vectors"], trained["movie_vectors"], trained["movie_ids"], seen, 10)
    np.testing.assert_array_equal(top_ids, expected)
    # the same lists as TFRS's own exclusion mechanism (exact index: no NaN padding to trip it)
    width = max(len(s) for s in seen)
    exclusions = np.full((len(seen), width), -1, np.int32)
    for row, s in enumerate(seen):
        exclusions[row, : len(s)] = s
    _, tfrs_ids = index.query_with_exclusions(tf.constant(matrices.user_ids, tf.int32), tf.constant(exclusions), k=10)
    np.testing.assert_array_equal(tfrs_ids.numpy(), expected)
    # and the columns feed the DESIGN §5 metrics like top_k_from_scores's output
    columns = full_ranking.catalogue_columns(matrices.movie_ids, top_ids)
    from_index = metrics.retrieval_metrics(columns, matrices.test, ks=(10,))
    from_scores = full_ranking.evaluate_scores(
        trained["user_vectors"] @ trained["movie_vectors"].T, matrices, "test", ks=(10,)
    )
    assert from_index == pytest.approx(from_scores)


def test_scann_agrees_with_bruteforce_on_a_small_catalogue():

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(20, 16))
    vectors = (centres[rng.integers(0, 20, 2000)] + 0.5 * rng.normal(size=(2000, 16))).astype(np.float32)
    queries = (centres[rng.integers(0, 20, 100)] + 0.5 * rng.normal(size=(100, 16))).astype(np.float32)
    ids = np.arange(2000) + 1
    exact = indexes.build_bruteforce(None, ids, vectors, k=10)
    approx = indexes.build_scann(
        None, ids, vectors, k=10, num_leaves=40, num_leaves_to_search=20, num_reordering_candidates=100, seed=42
    )
    _, exact_ids = exact(tf.constant(queries))
    _, approx_ids = approx(tf.constant(queries))
    assert full_ranking.overlap_at_k(approx_ids.numpy(), exact_ids.numpy()) >= 0.95


def test_scann_short_lists_are_padded_at_the_end_not_ranked_first(data, trained):

    matrices = trained["matrices"]
    query_model = indexes.UserQueryModel(trained["result"].model, data["encoder"], data["user_table"])
    # one leaf of ~8 movies searched: fewer than k + seen, so ScaNN pads its lists with NaN
    index = indexes.build_scann(
        query_model,
        trained["movie_ids"],
        trained["movie_vectors"],
        k=10,
        num_leaves=8,
        num_leaves_to_search=1,
        num_reordering_candidates=None,
        seed=42,
    )
    seen = matrices.seen_movie_ids("test")
    scores, top_ids, n_fallback = IndexRetriever(index).query(matrices.user_ids, 10, seen)
    assert n_fallback == 0
    padded = top_ids == candidates.NO_MOVIE
    assert padded.any()
    assert not (padded[:, :-1] & ~padded[:, 1:]).any()  # padding only after the real items
    assert np.isneginf(scores[padded]).all() and np.isfinite(scores[~padded]).all()
    assert (np.diff(np.where(padded, -1e9, scores), axis=1) <= 1e-6).all()  # best first
    assert not any(np.isin(ids[ids >= 0], s).any() for ids, s in zip(top_ids, seen))
    with pytest.raises(ValueError, match="search more leaves"):
        full_ranking.catalogue_columns(matrices.movie_ids, top_ids)
    # an exact fallback answers the users whose lists came back short
    exact = indexes.build_bruteforce(query_model, trained["movie_ids"], trained["movie_vectors"], k=10)
    refilled = IndexRetriever(index, fallback=exact).query(matrices.user_ids, 10, seen)
    assert refilled.n_fallback == int(padded.any(axis=1).sum())
    assert not (refilled.movie_ids == candidates.NO_MOVIE).any()
    complete = ~padded.any(axis=1)
    np.testing.assert_array_equal(refilled.movie_ids[complete], top_ids[complete])


@pytest.mark.parametrize("kind", ["scann", "bruteforce"])
def test_index_reloads_in_a_fresh_process_with_the_same_top_k(tmp_path, data, trained, kind):

    query_model = indexes.UserQueryModel(trained["result"].model, data["encoder"], data["user_table"])
    if kind == "scann":
        index = indexes.build_scann(
            query_model,
            trained["movie_ids"],
            trained["movie_vectors"],
            k=10,
            num_leaves=8,
            num_leaves_to_search=4,
            num_reordering_candidates=30,
            seed=42,
        )
    else:
        index = indexes.build_bruteforce(query_model, trained["movie_ids"], trained["movie_vectors"], k=10)
    user_ids = trained["matrices"].user_ids.astype(np.int32)
    expected_scores, expected_ids = index(tf.constant(user_ids))
    indexes.save_index(index, tmp_path / "index")  # a second save replaces the first
    path = indexes.save_index(index, tmp_path / "index")
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no temporary or old folder left behind
    script = (
        "import json, numpy as np, tensorflow as tf\n"
        "from recsys.retrieval import indexes\n"
        f"index = indexes.load_index({str(path)!r})\n"
        f"scores, ids = index(tf.constant({user_ids.tolist()!r}, tf.int32))\n"
        "print(json.dumps({'ids': ids.numpy().tolist(), 'scores': scores.numpy().tolist()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    reloaded = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(np.array(reloaded["ids"]), expected_ids.numpy())
    np.testing.assert_allclose(np.array(reloaded["scores"]), expected_scores.numpy(), rtol=1e-6)


def test_retrieval_model_save_and_load_give_the_same_vectors(tmp_path, data, trained):

    folder = retrieval_model.save_retrieval_model(
        trained["result"].model, data["encoder"], tmp_path / "retrieval_model"
    )
    model, encoder = retrieval_model.load_retrieval_model(folder)
    assert model.config == trained["result"].model.config
    _, vectors = retrieval_model.movie_embeddings(model, encoder, encoder.movie_table(data["movies"]))
    np.testing.assert_array_equal(vectors, trained["movie_vectors"])
    with pytest.raises(FileNotFoundError, match="holds no saved model"):
        retrieval_model.load_retrieval_model(tmp_path / "nothing")


def test_query_model_maps_unknown_users_to_the_unknown_row(data, trained):

    query_model = indexes.UserQueryModel(trained["result"].model, data["encoder"], data["user_table"])
    vectors = query_model(tf.constant([1, 2, 99_999, -5], tf.int32)).numpy()
    np.testing.assert_allclose(vectors[:2], trained["user_vectors"][:2], rtol=1e-6)
    np.testing.assert_array_equal(vectors[2], vectors[3])  # both fall back to the unknown user's features
    assert np.abs(vectors[2] - vectors[0]).max() > 1e-3


def test_overlap_at_k_hand_checked():

    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    b = np.array([[4, 3, 9, 10], [5, 6, 7, -1]])
    assert full_ranking.overlap_at_k(a, b) == pytest.approx((2 / 4 + 3 / 4) / 2)
    assert full_ranking.overlap_at_k(a, b, k=2) == pytest.approx((0 / 2 + 2 / 2) / 2)
    assert full_ranking.overlap_at_k(np.array([[-1, -1]]), np.array([[-1, -1]])) == 0.0  # padding is not an item


def test_time_queries_reports_latencies(data, trained):

    query_model = indexes.UserQueryModel(trained["result"].model, data["encoder"], data["user_table"])
    index = indexes.build_bruteforce(query_model, trained["movie_ids"], trained["movie_vectors"], k=10)
    timing = indexes.time_queries(index, trained["matrices"].user_ids, batch=64, n_single=5, warmup=2)
    assert set(timing) == {
        "single_query_latency_ms",
        "batch_latency_ms",
        "batch_latency_per_query_ms",
        "batch_queries_per_s",
    }
    assert all(v > 0 for v in timing.values())


def test_split_matrices_seen_sets(data, trained):
    matrices = trained["matrices"]
    assert matrices.train.sum() == 6 * N_USERS and matrices.val.sum() == N_USERS and matrices.test.sum() == 2 * N_USERS
    assert matrices.seen("val").sum() == 6 * N_USERS and matrices.seen("test").sum() == 7 * N_USERS
    assert all(len(s) == 7 for s in matrices.seen_movie_ids("test"))
    with pytest.raises(ValueError, match="'val' or 'test'"):
        matrices.seen("train")


def test_reloaded_index_serves_any_list_length_like_the_live_one(tmp_path, data, trained):
    matrices = trained["matrices"]
    query_model = indexes.UserQueryModel(trained["result"].model, data["encoder"], data["user_table"])
    live = indexes.build_scann(
        query_model,
        trained["movie_ids"],
        trained["movie_vectors"],
        k=5,
        num_leaves=4,
        num_leaves_to_search=4,
        num_reordering_candidates=30,
        seed=3,
    )
    exact = indexes.build_bruteforce(query_model, trained["movie_ids"], trained["movie_vectors"], k=5)
    loaded = indexes.load_index(indexes.save_index(live, tmp_path / "scann"))
    loaded_exact = indexes.load_index(indexes.save_index(exact, tmp_path / "bruteforce"))
    assert loaded.n_candidates == len(trained["movie_ids"])
    users = matrices.user_ids[:20].astype(np.int32)
    np.testing.assert_array_equal(loaded(users, k=25)[1].numpy(), live(users, k=25)[1].numpy())
    seen = matrices.seen_movie_ids("test", rows=np.arange(20))
    # the retriever asks for k + seen movies: more than the k the index was built with
    from_live = IndexRetriever(live, fallback=exact).query(users, 10, seen)
    from_loaded = IndexRetriever(loaded, fallback=loaded_exact).query(users, 10, seen)
    np.testing.assert_array_equal(from_loaded.movie_ids, from_live.movie_ids)
    assert not (from_loaded.movie_ids == candidates.NO_MOVIE).any()


def test_scann_index_is_the_same_for_the_same_seed_in_another_process(tmp_path):
    # TFRS's own ScaNN build draws its k-means centres differently in every process
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.normal(size=(300, 16)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", vectors)
    np.save(tmp_path / "queries.npy", queries)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "from recsys.retrieval import indexes\n"
        f"vectors, queries = np.load({str(tmp_path / 'vectors.npy')!r}), np.load({str(tmp_path / 'queries.npy')!r})\n"
        "index = indexes.build_scann(None, np.arange(len(vectors)), vectors, k=20, num_leaves=50,\n"
        "                            num_leaves_to_search=5, num_reordering_candidates=None, seed=int(sys.argv[1]))\n"
        "print(index(tf.constant(queries))[1].numpy().tobytes().hex())\n"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script, seed], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True
        ).stdout.split()[-1]
        for seed in ("7", "7", "8")
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # the seed is what fixes the partitioning


def test_held_out_rows_and_sizes_of_the_split_matrices(data, trained):
    matrices = trained["matrices"]
    np.testing.assert_array_equal(matrices.held_out_rows("test"), np.arange(N_USERS))  # everyone has 2 test movies
    sizes = matrices.sizes()
    assert sizes["users"] == N_USERS and sizes["movies"] == N_TASTES * MOVIES_PER_TASTE
    assert (sizes["train"], sizes["val"], sizes["test"]) == (6 * N_USERS, N_USERS, 2 * N_USERS)
    assert sizes["movies_without_train"] == int((np.asarray(matrices.train.sum(axis=0)).ravel() == 0).sum())
    # rating >= 4: some users keep no test positive, and only the others are held-out rows
    kept = retrieval_training.positives(data["interactions"], 4)
    high = full_ranking.split_matrices(kept, matrices.user_ids, matrices.movie_ids)
    with_test = np.unique(kept.loc[kept["split"] == "test", "user_id"])
    assert len(with_test) < N_USERS
    np.testing.assert_array_equal(high.user_ids[high.held_out_rows("test")], with_test)


def test_metrics_by_model_flattens_every_model_and_key():
    results = {
        "ease": {"recall_at_10": 0.5, "ndcg_at_10": 0.25, "other": 1.0},
        "pop": {"recall_at_10": 0.1, "ndcg_at_10": 0},
    }
    assert full_ranking.metrics_by_model(results, ["recall_at_10", "ndcg_at_10"]) == {
        "recall_at_10_ease": 0.5,
        "ndcg_at_10_ease": 0.25,
        "recall_at_10_pop": 0.1,
        "ndcg_at_10_pop": 0.0,
    }
    with pytest.raises(KeyError, match="pop"):
        full_ranking.metrics_by_model(results, ["other"])


def test_retrieval_inputs_keep_the_positives_and_every_rater_as_a_row(data, tmp_path):
    config = small_config(min_rating=4, features=["user", "movie"])
    inputs = retrieval_inputs.retrieval_inputs(data["users"], data["movies"], data["interactions"], config)
    assert (inputs.positives["rating"] >= 4).all()
    assert len(inputs.positives) == int((data["interactions"]["rating"] >= 4).sum())
    assert (inputs.train["split"] == "train").all() and len(inputs.train) == inputs.matrices.train.nnz
    np.testing.assert_array_equal(inputs.matrices.user_ids, np.sort(data["interactions"]["user_id"].unique()))
    np.testing.assert_array_equal(inputs.matrices.movie_ids, inputs.movie_table.index.to_numpy())
    assert list(inputs.user_table.index) == list(data["users"]["user_id"]) and inputs.not_in_release == []
    # read through a run's `require`: the same inputs
    timeline = data["interactions"].assign(position=data["interactions"].groupby("user_id").cumcount())
    for name, table in (("users", data["users"]), ("movies", data["movies"]), ("interactions", timeline)):
        table.to_parquet(tmp_path / f"{name}.parquet")
    loaded = retrieval_inputs.load_retrieval_inputs(lambda name: tmp_path / f"{name}.parquet", config)
    pd.testing.assert_frame_equal(loaded.positives[list(inputs.positives.columns)], inputs.positives)
    assert (loaded.matrices.test != inputs.matrices.test).nnz == 0
    no_users = data["users"][["user_id"]]  # a release without a users file: the user features are not there
    sparse = retrieval_inputs.retrieval_inputs(no_users, data["movies"], data["interactions"], config)
    assert "gender" in sparse.not_in_release


@pytest.mark.parametrize("leaves_searched", [4, 1])  # 1 of 8 leaves: short lists, padded
def test_reloaded_scann_is_searched_without_tensorflow_and_answers_as_the_live_layer(
    tmp_path, data, trained, leaves_searched
):
    query_model = indexes.UserQueryModel(trained["result"].model, data["encoder"], data["user_table"])
    settings = {"k": 10, "num_leaves": 8, "num_leaves_to_search": leaves_searched, "seed": 42}
    settings["num_reordering_candidates"] = None
    live = indexes.build_scann(query_model, trained["movie_ids"], trained["movie_vectors"], **settings)
    loaded = indexes.load_index(indexes.save_index(live, tmp_path / "scann"))
    assert loaded._searcher is not None and loaded._user_vectors is not None  # the TensorFlow-free path
    users = np.append(trained["matrices"].user_ids[:50], [10**6, -1]).astype(np.int32)  # two unknown ids
    for k in (10, 60, len(trained["movie_ids"])):
        live_scores, live_ids = (t.numpy() for t in live(tf.constant(users), k=k))
        scores, ids = (t.numpy() for t in loaded(tf.constant(users), k=k))
        np.testing.assert_array_equal(ids, live_ids)
        np.testing.assert_allclose(scores, live_scores, rtol=1e-5, atol=1e-6)  # NaN padding in the same slots
    if leaves_searched == 1:
        assert np.isnan(scores).any()
    # queried with vectors (as the sequential retriever's index is): batches of 600 and of 1 to 5 (the layer's
    # parallel search splits a batch into mini-batches sized by the batch and the machine's threads, at most 256,
    # and a list can depend on its mini-batch)
    rng = np.random.default_rng(0)
    movie_vectors = trained["movie_vectors"]
    vectors = movie_vectors[rng.integers(0, len(movie_vectors), 600)] + 0.1 * rng.normal(
        size=(600, movie_vectors.shape[1])
    )
    vectors = vectors.astype(np.float32)
    by_vector = indexes.build_scann(None, trained["movie_ids"], movie_vectors, **settings)
    loaded_by_vector = indexes.load_index(indexes.save_index(by_vector, tmp_path / "scann_vectors"))
    np.testing.assert_array_equal(
        loaded_by_vector(vectors, k=30)[1].numpy(), by_vector(tf.constant(vectors), k=30)[1].numpy()
    )
    for size in (1, 2, 3, 5):
        small = vectors[10 : 10 + size]
        np.testing.assert_array_equal(
            loaded_by_vector(small, k=30)[1].numpy(), by_vector(tf.constant(small), k=30)[1].numpy()
        )
    with pytest.raises(ValueError, match="1-d batch of integer user ids"):
        loaded(tf.constant([[1.0, 2.0]]), k=5)
    dim = movie_vectors.shape[1]
    for wrong in (vectors[:3, : dim - 1], vectors[0]):  # a narrower vector, and one vector without its batch axis
        with pytest.raises(ValueError, match=re.escape(f"query vectors of shape (n, {dim}), got {wrong.shape}")):
            loaded_by_vector(wrong, k=5)
