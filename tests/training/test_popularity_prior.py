"""The two-tower's popularity prior: beta * log share added to every score through one more vector dimension."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recsys.evaluation import full_ranking
from recsys.models import retrieval_model
from recsys.retrieval import indexes
from recsys.training import retrieval_training
from recsys.training.curves import TrainingCurve
from tests.retrieval.test_retrieval import data, small_config  # noqa: F401  (the tiny taste data, a module fixture)
from tests.training.test_retrieval_refit import run_inputs


@pytest.fixture(scope="module")
def fitted(data):  # noqa: F811
    result = retrieval_training.train_retrieval_model(
        small_config(epochs=4), data["encoder"], data["train"], data["user_table"], data["movie_table"], seed=1
    )
    matrices = full_ranking.split_matrices(
        data["interactions"], data["users"]["user_id"].to_numpy(), data["movie_table"].index.to_numpy()
    )
    log_shares = retrieval_training.positives_log_shares(data["train"], data["movie_table"], data["encoder"])
    return result.model, matrices, log_shares, result


def monitor_of(data, matrices, split):  # noqa: F811
    return retrieval_training.full_ranking_monitor(
        data["encoder"], data["user_table"], data["movie_table"], matrices, split=split
    )


def vectors(model, data, matrices):  # noqa: F811
    users = retrieval_model.user_embeddings(model, data["encoder"], data["user_table"], matrices.user_ids)
    return users, retrieval_model.movie_embeddings(model, data["encoder"], data["movie_table"])[1]


def test_log_shares_are_add_one_smoothed_over_the_id_rows():
    shares = retrieval_model.movie_log_shares(np.array([1, 1, 2]), 4)
    np.testing.assert_allclose(shares, np.log(np.array([1, 3, 2, 1]) / 7), rtol=1e-6)
    with pytest.raises(ValueError, match=r"movie rows must lie in \[0, 4\), got 1..4"):
        retrieval_model.movie_log_shares(np.array([1, 4]), 4)


def test_log_shares_of_positives_refuse_a_movie_outside_the_table(data):  # noqa: F811
    stray = data["train"].head(3).assign(movie_id=[10, 999_999, 10])
    with pytest.raises(KeyError, match=r"movies \[999999\] that are not in the movie table"):
        retrieval_training.positives_log_shares(stray, data["movie_table"], data["encoder"])


def test_the_prior_adds_beta_log_share_to_every_score_and_nothing_once_removed(data, fitted):  # noqa: F811
    model, matrices, log_shares, _ = fitted
    users, movies = vectors(model, data, matrices)
    retrieval_model.set_popularity_prior(model, log_shares, 0.3)
    try:
        users_p, movies_p = vectors(model, data, matrices)
        assert users_p.shape == (len(users), users.shape[1] + 1) and movies_p.shape == (
            len(movies),
            movies.shape[1] + 1,
        )
        np.testing.assert_array_equal(users_p[:, :-1], users)  # the towers untouched
        np.testing.assert_array_equal(users_p[:, -1], 1.0)
        rows = data["movie_table"]["movie_id_idx"].to_numpy()
        prior = model.config.temperature * 0.3 * log_shares[rows]
        np.testing.assert_allclose(users_p @ movies_p.T, users @ movies.T + prior, rtol=1e-5, atol=1e-6)
        # more positives, a larger prior: the most watched movie of train gets the largest
        watched = data["train"]["movie_id"].value_counts()
        assert movies_p[:, -1].argmax() == data["movie_table"].index.get_loc(watched.idxmax())
        with pytest.raises(ValueError, match="one value per movie id row"):
            retrieval_model.set_popularity_prior(model, log_shares[:-1], 0.3)
        with pytest.raises(ValueError, match="must be >= 0"):
            retrieval_model.set_popularity_prior(model, log_shares, -0.1)
    finally:
        retrieval_model.set_popularity_prior(model, log_shares, 0.0)
    users_0, movies_0 = vectors(model, data, matrices)
    np.testing.assert_array_equal(users_0, users)
    np.testing.assert_array_equal(movies_0, movies)


def test_a_saved_model_and_its_index_keep_the_prior(tmp_path, data, fitted):  # noqa: F811
    model, matrices, log_shares, _ = fitted
    retrieval_model.set_popularity_prior(model, log_shares, 0.2)
    try:
        users, movies = vectors(model, data, matrices)
        loaded, encoder = retrieval_model.load_retrieval_model(
            retrieval_model.save_retrieval_model(model, data["encoder"], tmp_path / "model")
        )
        assert loaded.popularity_prior == 0.2
        np.testing.assert_array_equal(vectors(loaded, data, matrices)[1], movies)
        query_model = indexes.UserQueryModel(loaded, encoder, data["user_table"])
        np.testing.assert_allclose(
            query_model(tf.constant(matrices.user_ids[:20], tf.int32)).numpy(), users[:20], rtol=1e-5
        )
        index = indexes.build_bruteforce(query_model, data["movie_table"].index.to_numpy(), movies, k=10)
        _, ids = index(tf.constant(matrices.user_ids[:20], tf.int32))
        expected = data["movie_table"].index.to_numpy()[
            np.argsort(-(users[:20] @ movies.T), axis=1, kind="stable")[:, :10]
        ]
        np.testing.assert_array_equal(np.sort(ids.numpy(), axis=1), np.sort(expected, axis=1))
    finally:
        retrieval_model.set_popularity_prior(model, log_shares, 0.0)


def test_the_prior_is_chosen_on_val_and_left_on_the_model(data, fitted):  # noqa: F811
    model, matrices, log_shares, _ = fitted
    monitor, test_monitor = monitor_of(data, matrices, "val"), monitor_of(data, matrices, "test")
    inputs = run_inputs(data, data["interactions"])
    grid = [0.0, 0.5, 5.0]
    try:
        choice = retrieval_training.choose_popularity_prior(
            model, data["train"], inputs, grid, monitor, metric="recall_at_10", ks=(10, 50)
        )
        assert list(choice.table.index) == grid and model.popularity_prior == choice.beta
        for metric in ("recall_at_10", "recall_at_50"):  # each metric's best, the smallest on a tie
            values = choice.table[metric]
            assert choice.best(metric) == min(b for b in grid if values[b] == values.max())
        assert choice.beta == choice.best("recall_at_10") and choice.metric == "recall_at_10"
        again = full_ranking.evaluate_scores(monitor.score_users(model), matrices, "val", (10, 50))
        assert again["recall_at_10"] == choice.table.loc[choice.beta, "recall_at_10"]  # the model keeps the choice
        # a huge beta ranks by popularity first: each user's top movie is one of the most watched they have not seen
        retrieval_model.set_popularity_prior(model, log_shares, 1e4)
        users, movies = vectors(model, data, matrices)
        scores = np.where(matrices.train.toarray() > 0, -np.inf, users @ movies.T)
        counts = np.asarray(matrices.train.sum(axis=0)).ravel()
        unseen_counts = np.where(matrices.train.toarray() > 0, -1, counts)
        np.testing.assert_array_equal(counts[scores.argmax(axis=1)], unseen_counts.max(axis=1))
        with pytest.raises(KeyError):  # the default metric, Recall@100, needs lists of 100 (this catalogue has 60)
            retrieval_training.choose_popularity_prior(model, data["train"], inputs, grid, monitor, ks=(10, 50))
        with pytest.raises(ValueError, match="chosen on val, not 'test'"):
            retrieval_training.choose_popularity_prior(model, data["train"], inputs, grid, test_monitor)
        with pytest.raises(ValueError, match="popularity_prior_grid is empty"):
            retrieval_training.choose_popularity_prior(model, data["train"], inputs, [], monitor)
    finally:
        retrieval_model.set_popularity_prior(model, log_shares, 0.0)


def test_the_served_rows_carry_the_prior_and_each_variant_is_scored_as_trained(data, fitted):  # noqa: F811
    model, matrices, log_shares, result = fitted
    monitor = monitor_of(data, matrices, "val")
    config = model.config
    history = {"loss": result.history["loss"], "val_recall_at_100": [0.5] * len(result.history["loss"])}
    curves = {"inbatch_logq": TrainingCurve.of(history, "val_recall_at_100")}
    negatives = retrieval_training.NegativesComparison(
        {"inbatch_logq": config}, {"inbatch_logq": result}, curves, "inbatch_logq"
    )
    plain = negatives.per_user(monitor.score_users, matrices, "test", ks=(10, 50))
    assert (
        set(plain) == {"two_tower", "two_tower_inbatch_logq"} and plain["two_tower"] is plain["two_tower_inbatch_logq"]
    )
    assert negatives.pairs() == []  # nothing to compare without a prior
    assert negatives.metrics()["two_tower_popularity_prior"] == 0.0
    table = pd.DataFrame({"recall_at_10": [0.1, 0.3], "recall_at_100": [0.4, 0.5]}, index=[0.0, 0.5])
    negatives.prior = retrieval_training.PopularityPriorChoice(table, "recall_at_100")  # as chosen: set on it
    retrieval_model.set_popularity_prior(model, log_shares, 0.5)
    try:
        rows = negatives.per_user(monitor.score_users, matrices, "test", ks=(10, 50))
        assert model.popularity_prior == 0.5  # left as it was
        assert rows["two_tower_inbatch_logq"].equals(plain["two_tower"])  # the variant as trained
        assert not rows["two_tower"].equals(plain["two_tower"])  # the served model, with its prior
        assert negatives.pairs() == [("two_tower_inbatch_logq", "two_tower")]
        metrics = negatives.metrics()
        assert metrics["two_tower_popularity_prior"] == 0.5 and metrics["two_tower_list_popularity_prior"] == 0.5
        assert metrics["val_recall_at_100_two_tower_prior_0p5"] == 0.5
        assert metrics["val_recall_at_10_two_tower_prior_0"] == 0.1
    finally:
        retrieval_model.set_popularity_prior(model, log_shares, 0.0)


def test_a_choice_is_set_on_the_refit_over_the_shares_of_train_and_val(data):  # noqa: F811
    before_test = data["interactions"][data["interactions"]["split"] != "test"]
    inputs = run_inputs(data, data["interactions"])
    refit = retrieval_training.refit_on_train_val(small_config(), inputs, seed=3, epochs=1)
    assert refit.model.popularity_prior == 0.0 and not refit.model.prior_column.numpy().any()  # as trained
    table = pd.DataFrame({"recall_at_10": [0.1, 0.3, 0.3], "recall_at_100": [0.5, 0.4, 0.2]}, index=[0.0, 0.2, 0.4])
    choice = retrieval_training.PopularityPriorChoice(table, "recall_at_100")
    assert choice.set_on(refit.model, before_test, inputs, "recall_at_10") == 0.2  # the smaller of the tie
    shares = retrieval_training.positives_log_shares(before_test, data["movie_table"], data["encoder"])
    assert refit.model.popularity_prior == 0.2
    np.testing.assert_allclose(
        refit.model.prior_column.numpy(), refit.model.config.temperature * 0.2 * shares, rtol=1e-6
    )
