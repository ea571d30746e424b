"""Exploration: weighted re-ranking follows its weights, Kendall tau, prediction-time noise, least-viewed injection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from recsys.evaluation import full_ranking, metrics
from recsys.exploration import reranking

PREDICTED = np.array([4.5, 4.0, 3.5, 3.0, 2.0])
ITEMS = np.array([101, 102, 103, 104, 105])


# ---- weighted re-ranking ----------------------------------------------------------------------------


def test_standardise_rows_gives_each_row_mean_0_and_std_1_in_the_scores_dtype():
    scores = np.array([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0], [-2.0, 0.0, 0.0, 10.0]], np.float32)
    z = reranking.standardise_rows(scores)
    assert z.dtype == np.float32 and z.shape == scores.shape
    np.testing.assert_allclose(z[0], (scores[0] - 3.0) / np.std([1.0, 2.0, 3.0, 6.0]), rtol=1e-6)
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(z[[0, 2]].std(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(z[1], 0)  # a constant row: zeros, not NaN
    # a user's scores shifted and scaled give the same standardised scores: a temperature means the same for all
    np.testing.assert_allclose(reranking.standardise_rows(10 * scores[[0, 2]] - 7), z[[0, 2]], rtol=1e-5, atol=1e-6)
    assert reranking.standardise_rows(np.array([[1, 3]])).dtype == np.float64
    with pytest.raises(ValueError, match="2-D"):
        reranking.standardise_rows(np.arange(3.0))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_first_position_frequencies_follow_the_weights(temperature):
    draws = reranking.weighted_rerank_many(
        ITEMS[None, :], PREDICTED[None, :], n_repeats=20_000, seed=1, temperature=temperature
    )
    assert draws.shape == (20_000, 1, 5)
    first = draws[:, 0, 0]
    observed = np.array([(first == item).sum() for item in ITEMS])
    expected = reranking.first_position_probabilities(PREDICTED, temperature) * len(first)
    weights = np.exp(PREDICTED / temperature)
    np.testing.assert_allclose(expected / len(first), weights / weights.sum())
    assert stats.chisquare(observed, expected).pvalue > 0.001


def test_second_position_follows_sampling_without_replacement():
    # P(second = j) = sum_i p_i * p_j / (1 - p_i): the sequential definition the Gumbel trick must match
    draws = reranking.weighted_rerank_many(ITEMS[None, :], PREDICTED[None, :], 20_000, seed=2)[:, 0, :]
    p = reranking.first_position_probabilities(PREDICTED)
    second = np.array([sum(p[i] * p[j] / (1 - p[i]) for i in range(5) if i != j) for j in range(5)])
    observed = np.array([(draws[:, 1] == item).sum() for item in ITEMS])
    assert stats.chisquare(observed, second * len(draws)).pvalue > 0.001
    assert all(len(set(row)) == 5 for row in draws[:100])  # without replacement


def test_single_list_sampler_follows_the_weights():
    rng = np.random.default_rng(3)
    first = np.array([reranking.weighted_rerank(ITEMS, PREDICTED, rng)[0] for _ in range(20_000)])
    observed = np.array([(first == item).sum() for item in ITEMS])
    assert stats.chisquare(observed, reranking.first_position_probabilities(PREDICTED) * 20_000).pvalue > 0.001


def test_seeded_reproducibility():
    lists = np.tile(ITEMS, (50, 1))
    scores = np.tile(PREDICTED, (50, 1))
    a = reranking.weighted_rerank_many(lists, scores, 3, seed=11)
    np.testing.assert_array_equal(a, reranking.weighted_rerank_many(lists, scores, 3, seed=11))
    assert not np.array_equal(a, reranking.weighted_rerank_many(lists, scores, 3, seed=12))
    one = reranking.weighted_rerank(ITEMS, PREDICTED, np.random.default_rng(5))
    np.testing.assert_array_equal(one, reranking.weighted_rerank(ITEMS, PREDICTED, np.random.default_rng(5)))
    orders = {tuple(reranking.weighted_rerank(ITEMS, PREDICTED, np.random.default_rng(s))) for s in range(20)}
    assert orders != {tuple(one)}


def test_low_temperature_gives_the_deterministic_order():
    shuffled = np.array([3, 0, 4, 1, 2])
    items, scores = ITEMS[shuffled], PREDICTED[shuffled]
    for temperature in (0.0, 1e-4):
        np.testing.assert_array_equal(
            reranking.weighted_rerank(items, scores, np.random.default_rng(0), temperature), ITEMS
        )
        many = reranking.weighted_rerank_many(
            np.tile(items, (4, 1)), np.tile(scores, (4, 1)), 10, seed=0, temperature=temperature
        )
        assert (many == ITEMS).all()


def test_rerank_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        reranking.weighted_rerank(ITEMS, [1.0, np.nan, 2, 3, 4], np.random.default_rng(0))
    with pytest.raises(ValueError, match="temperature"):
        reranking.weighted_rerank(ITEMS, PREDICTED, np.random.default_rng(0), temperature=-1)
    with pytest.raises(ValueError, match="same"):
        reranking.weighted_rerank_many(ITEMS[None, :], PREDICTED[None, :3], 2, seed=0)


# ---- Kendall tau ----------------------------------------------------------------------------------------


def test_kendall_tau_identical_reversed_and_one_swap():
    assert reranking.kendall_tau(ITEMS, ITEMS) == pytest.approx(1.0)
    assert reranking.kendall_tau(ITEMS, ITEMS[::-1]) == pytest.approx(-1.0)
    swapped = ITEMS[[1, 0, 2, 3, 4]]
    assert reranking.kendall_tau(ITEMS, swapped) == pytest.approx(1 - 2 * 1 / 10)
    with pytest.raises(ValueError, match="same distinct items"):
        reranking.kendall_tau(ITEMS, np.array([101, 102, 103, 104, 999]))


def test_kendall_tau_many_matches_scipy_per_list():
    rng = np.random.default_rng(0)
    original = np.array([rng.permutation(50)[:10] for _ in range(30)])
    sampled = reranking.weighted_rerank_many(original, rng.normal(3.5, 1, original.shape), 4, seed=0)
    taus = reranking.kendall_tau_many(original, sampled)
    assert taus.shape == (4, 30)
    expected = [[reranking.kendall_tau(original[u], sampled[r, u]) for u in range(30)] for r in range(4)]
    np.testing.assert_allclose(taus, expected)


# ---- prediction-time noise -------------------------------------------------------------------------------


def test_noise_is_identity_in_training_and_at_sigma_zero():
    import tensorflow as tf

    from recsys.exploration.noise import PredictionNoise

    x = tf.random.stateless_normal((64, 8), seed=(1, 2))
    np.testing.assert_array_equal(PredictionNoise(0.5, seed=1)(x, training=True), x)
    np.testing.assert_array_equal(PredictionNoise(0.0, seed=1)(x), x)
    np.testing.assert_array_equal(PredictionNoise(0.0, seed=1)(x, training=False), x)
    with pytest.raises(ValueError, match="sigma"):
        PredictionNoise(-0.1)


def test_noise_varies_between_calls_and_is_reproducible_under_a_seed():
    import tensorflow as tf

    from recsys.exploration.noise import PredictionNoise

    x = tf.zeros((2_000, 16))
    layer, twin, other = PredictionNoise(0.3, seed=7), PredictionNoise(0.3, seed=7), PredictionNoise(0.3, seed=8)
    first, second = layer(x).numpy(), layer(x, training=False).numpy()
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(twin(x).numpy(), first)
    np.testing.assert_array_equal(twin(x).numpy(), second)
    assert not np.allclose(other(x).numpy(), first)
    assert first.std() == pytest.approx(0.3, rel=0.03) and abs(first.mean()) < 0.01
    layer.reset()
    np.testing.assert_array_equal(layer(x).numpy(), first)


def test_noise_inside_a_keras_model_is_off_in_fit_and_on_in_predict():
    import tensorflow as tf

    from recsys.exploration.noise import PredictionNoise

    x = np.ones((32, 4), np.float32)
    model = tf.keras.Sequential([tf.keras.Input((4,)), PredictionNoise(1.0, seed=3)])
    model.compile(loss="mse")
    assert model.evaluate(x, x, verbose=0) > 0.5  # inference: noise, mse ~ sigma^2
    model.fit(x, x, epochs=1, verbose=0)
    assert model.history.history["loss"][0] == pytest.approx(0.0)  # training: identity
    config = PredictionNoise(0.2, seed=4).get_config()
    assert config["sigma"] == 0.2 and config["seed"] == 4


def _vectors(seed: int = 0):
    """40 users and 60 movies with 8-d vectors, and each user's seen movies (a 20% sample)."""
    rng = np.random.default_rng(seed)
    users, movies = np.arange(1, 41), np.arange(100, 160)
    user_vectors, movie_vectors = (
        rng.normal(size=(40, 8)).astype(np.float32),
        rng.normal(size=(60, 8)).astype(np.float32),
    )
    seen = sp.csr_matrix((rng.random((40, 60)) < 0.2).astype(np.float32))
    return users, movies, user_vectors, movie_vectors, seen, [movies[seen[u].indices] for u in range(40)]


def test_noisy_retriever_moves_only_its_target_and_lists_the_noisy_top_k():
    from recsys.evaluation.score_blocks import RowScores, top_k_in_blocks
    from recsys.exploration.noise import EmbeddingNoise, noisy_retriever
    from recsys.retrieval.retrievers import NumpyRetriever

    users, movies, user_vectors, movie_vectors, seen, excludes = _vectors()
    plain = NumpyRetriever(users, user_vectors, movies, movie_vectors).retrieve_batch(users, 10, excludes)
    for quiet in (None, EmbeddingNoise(0.0)):  # no noise, or noise of scale 0: the plain retriever's lists
        retriever = noisy_retriever(users, user_vectors, movies, movie_vectors, quiet, seed=3)
        np.testing.assert_array_equal(retriever.retrieve_batch(users, 10, excludes)[0], plain[0])
    for target, moved in (("user", 0), ("movie", 1)):
        noise = EmbeddingNoise(0.5, target)
        noisy = noise.apply(user_vectors, movie_vectors, seed=3)
        assert not np.allclose(noisy[moved], (user_vectors, movie_vectors)[moved])
        np.testing.assert_array_equal(noisy[1 - moved], (user_vectors, movie_vectors)[1 - moved])
        ids, scores = noisy_retriever(users, user_vectors, movies, movie_vectors, noise, seed=3).retrieve_batch(
            users, 10, excludes
        )
        # the noisy vectors' top 10 over the catalogue, each user's seen movies excluded
        columns, expected = top_k_in_blocks(RowScores.dot(*noisy), 10, exclude=seen, with_scores=True)
        np.testing.assert_array_equal(ids, movies[columns])
        np.testing.assert_array_equal(scores, expected)
        again = noisy_retriever(users, user_vectors, movies, movie_vectors, noise, seed=3)
        np.testing.assert_array_equal(again.retrieve_batch(users, 10, excludes)[0], ids)
        other = noisy_retriever(users, user_vectors, movies, movie_vectors, noise, seed=4)
        assert not np.array_equal(other.retrieve_batch(users, 10, excludes)[0], ids)
    with pytest.raises(ValueError, match="'user' or 'movie'"):
        EmbeddingNoise(0.1, "users")


def test_the_simulation_s_noise_policy_retrieves_with_the_same_noisy_retriever():
    from recsys.exploration.noise import EmbeddingNoise, noisy_retriever
    from recsys.exploration.simulation_policies import ServingParts, TwoStagePolicy

    users, movies, user_vectors, movie_vectors, _, excludes = _vectors(1)
    tables = {"users": pd.DataFrame({"user_id": users}), "movies": pd.DataFrame({"movie_id": movies})}
    parts = ServingParts(
        **tables,
        user_vectors=user_vectors,
        movie_vectors=movie_vectors,
        ranker=None,
        predicted_rating=None,
        rating_fitted_on=(),
        ease_l2=1.0,
        n_candidates=10,
    )
    noise = EmbeddingNoise(0.3, "movie")
    policy_lists = TwoStagePolicy(parts, noise)._retriever(np.random.default_rng(5)).retrieve_batch(users, 10, excludes)
    seed = int(np.random.default_rng(5).integers(2**31 - 1))  # the policy draws its noise's seed from its generator
    expected = noisy_retriever(users, user_vectors, movies, movie_vectors, noise, seed).retrieve_batch(
        users, 10, excludes
    )
    np.testing.assert_array_equal(policy_lists[0], expected[0])
    unexplored = TwoStagePolicy(parts)._retriever(np.random.default_rng(5)).retrieve_batch(users, 10, excludes)
    plain = noisy_retriever(users, user_vectors, movies, movie_vectors).retrieve_batch(users, 10, excludes)
    np.testing.assert_array_equal(unexplored[0], plain[0])


# ---- least viewed ----------------------------------------------------------------------------------------


@pytest.fixture
def interactions():
    return pd.DataFrame(
        {
            "movie_id": [1, 1, 1, 2, 2, 3, 4, 4, 5],
            "split": ["train", "train", "val", "train", "train", "train", "test", "test", "train"],
        }
    )


def test_least_viewed_counts_train_only_and_includes_unseen(interactions):
    catalogue = [1, 2, 3, 4, 5, 6]
    # train views: 1 -> 2, 2 -> 2, 3 -> 1, 4 -> 0 (test only), 5 -> 1, 6 -> 0 (never rated)
    np.testing.assert_array_equal(reranking.least_viewed_movies(interactions, catalogue, max_views=0), [4, 6])
    np.testing.assert_array_equal(reranking.least_viewed_movies(interactions, catalogue, max_views=1), [4, 6, 3, 5])
    assert set(reranking.least_viewed_movies(interactions, catalogue, max_views=2)) == set(catalogue)
    counts = interactions.loc[interactions["split"] == "train", "movie_id"].value_counts()
    np.testing.assert_array_equal(reranking.least_viewed_movies(counts, catalogue, max_views=1), [4, 6, 3, 5])


def test_least_viewed_pool_labels_dedupes_and_excludes_seen():
    retrieved = pd.DataFrame({"user_id": [1, 1, 1, 1, 2], "movie_id": [10, 20, 30, 20, 10]})
    seen = pd.DataFrame({"user_id": [1, 1, 2], "movie_id": [20, 50, 40]})
    pool = reranking.least_viewed_pool(retrieved, least_viewed=[30, 40, 50, 40, 60], user_ids=[1, 2], seen=seen)
    merged = pool[pool["user_id"] == 1]
    assert merged["movie_id"].tolist() == [10, 30, 40, 60]
    assert merged["source"].tolist() == ["retrieval", "retrieval", "least-viewed", "least-viewed"]
    assert merged["movie_id"].is_unique
    other = pool[pool["user_id"] == 2]  # seen pairs are per user: 50 stays for user 2, 40 goes
    assert other["movie_id"].tolist() == [10, 30, 50, 60]
    assert other["source"].tolist() == ["retrieval"] + ["least-viewed"] * 3


def test_a_large_least_viewed_set_is_sampled_per_user_with_the_seed():
    retrieved = pd.DataFrame({"user_id": [1, 2], "movie_id": [10, 10]})
    cold = np.arange(100, 400)
    seen = pd.DataFrame({"user_id": [1], "movie_id": [10]})
    pool = reranking.least_viewed_pool(retrieved, cold, [1, 2, 3], seen, per_user=25, seed=4)
    added = pool[pool["source"] == "least-viewed"]
    assert added.groupby("user_id").size().tolist() == [25, 25, 25] and not added.duplicated().any()
    assert set(added["movie_id"]) <= set(cold)
    by_user = [set(added.loc[added["user_id"] == u, "movie_id"]) for u in (1, 2, 3)]
    assert by_user[0] != by_user[1]  # each user draws their own
    again = reranking.least_viewed_pool(retrieved, cold, [1, 2, 3], seen, per_user=25, seed=4)
    pd.testing.assert_frame_equal(pool, again)
    other_seed = reranking.least_viewed_pool(retrieved, cold, [1, 2, 3], seen, per_user=25, seed=5)
    assert not pool.equals(other_seed)
    every = reranking.least_viewed_pool(retrieved, cold, [1, 2, 3], seen, per_user=0)
    assert (every["source"] == "least-viewed").sum() == 3 * len(cold)


def test_add_least_viewed_keeps_the_candidates_labels_and_takes_ranks_from_the_larger_table():
    from recsys.retrieval.candidates import CANDIDATE_COLUMNS, merge_sources

    retrieved = pd.DataFrame({"user_id": [1, 1, 2], "movie_id": [10, 20, 10], "retrieval_score": [0.9, 0.8, 0.7]})
    full = merge_sources(retrieved, np.array([[20, 60], [40, 30]]), np.array([[2.0, 1.0], [3.0, 2.5]]))
    top = full[full["retrieval_rank"] == 1]  # each user's first retrieved movie, as 09 cuts to retrieval_k
    seen = pd.DataFrame({"user_id": [2], "movie_id": [30]})
    table = reranking.add_least_viewed(top, [60, 30], [1, 2], seen, ranks=full)
    assert list(table.columns) == CANDIDATE_COLUMNS
    # the candidates' rows, then the added ones; user 2 has seen movie 30
    assert list(zip(table["user_id"], table["movie_id"])) == [(1, 10), (2, 10), (1, 60), (1, 30), (2, 60)]
    assert table["source"].tolist() == ["retrieval", "retrieval", "least-viewed", "least-viewed", "least-viewed"]
    # movie 60 was EASE's second candidate of user 1: it keeps that rank; nothing proposed it for user 2
    assert table["ease_rank"].tolist() == [0, 0, 2, 0, 0] and table["retrieval_rank"].tolist() == [1, 1, 0, 0, 0]
    # a table saved before the joint source (no joint columns) gets them, unproposed
    old = full.drop(columns=["joint_rank", "joint_score"])
    before = reranking.add_least_viewed(old[old["retrieval_rank"] == 1], [60, 30], [1, 2], seen, ranks=old)
    assert list(before.columns) == CANDIDATE_COLUMNS and before["ease_rank"].tolist() == table["ease_rank"].tolist()
    assert (before["joint_rank"] == 0).all() and before["joint_score"].isna().all()


def test_choose_setting_takes_the_widest_coverage_within_the_accuracy_loss():
    results = pd.DataFrame(
        {"ndcg_at_10": [0.30, 0.299, 0.290, 0.20], "coverage_at_10": [0.20, 0.21, 0.25, 0.40]},
        index=["none", "a", "b", "c"],
    )
    assert reranking.choose_setting(results, "none", 0.05) == "b"  # c loses a third of NDCG
    assert reranking.choose_setting(results, "none", 0.001) == "none"  # only the reference qualifies
    assert reranking.choose_setting(results, "none", 0.5) == "c"
    with pytest.raises(KeyError, match="reference setting 'x'"):
        reranking.choose_setting(results, "x", 0.05)
    with pytest.raises(ValueError, match="max_loss"):
        reranking.choose_setting(results, "none", 1.0)


# ---- evaluation ------------------------------------------------------------------------------------------


def test_evaluate_lists_reuses_the_project_metrics():
    rng = np.random.default_rng(0)
    n_users, n_items = 20, 40
    top = np.array([rng.permutation(n_items)[:10] for _ in range(n_users)])
    held_out = (rng.random((n_users, n_items)) < 0.1).astype(np.float32)
    held_out[0, top[0, 0]] = 1  # at least one hit, and every user a held-out item
    held_out[:, 39] = 1
    relevant = sp.csr_matrix(held_out)
    train = sp.csr_matrix((rng.random((n_users, n_items)) < 0.3).astype(np.float32))
    share = metrics.item_popularity_share(train)
    genres = (rng.random((n_items, 5)) < 0.4).astype(np.int8)
    result = full_ranking.evaluate_lists(top, relevant, n_items, share, genres)
    assert set(result) == {"recall_at_10", "ndcg_at_10", "coverage_at_10", "novelty", "intra_list_diversity", "gini"}
    accuracy = metrics.retrieval_metrics(top, relevant, ks=(10,))
    assert result["recall_at_10"] == accuracy["recall_at_10"] and result["ndcg_at_10"] == accuracy["ndcg_at_10"]
    assert result["novelty"] == metrics.novelty(top, share)
    assert result["gini"] == metrics.gini_index(top, n_items)
