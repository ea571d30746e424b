"""Paired differences of models scored on the same users (recsys.evaluation.paired), and the per-user scores they read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.evaluation import full_ranking, metrics
from recsys.evaluation.paired import NO_DIFFERENCE, describe_difference, paired_differences, paired_rmse_difference

N_USERS, N_RESAMPLES, SEED = 400, 200, 11


def users_table(values: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame(values, index=pd.Index(np.arange(100, 100 + N_USERS), name="user_id"))


@pytest.fixture(scope="module")
def per_user():
    """`better` is `base` + 0.1 per user plus noise; `twin` differs from `base` by +-0.2, alternately (mean 0)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, N_USERS)
    noise = rng.normal(0, 0.05, N_USERS)
    swing = np.where(np.arange(N_USERS) % 2, 0.2, -0.2)
    return {
        "base": users_table({"recall_at_10": base, "ndcg_at_10": base / 2}),
        "better": users_table({"recall_at_10": base + 0.1 + noise, "ndcg_at_10": base / 2 + 0.05}),
        "twin": users_table({"recall_at_10": base + swing, "ndcg_at_10": base / 2 - swing}),
    }


def test_a_known_difference_lies_inside_its_interval_and_a_zero_difference_crosses_zero(per_user):
    pairs = [("better", "base"), ("twin", "base")]
    gaps = paired_differences(per_user, pairs, ["recall_at_10", "ndcg_at_10"], N_RESAMPLES, SEED)
    table = gaps.table
    assert list(table.index) == [(a, b, m) for a, b in pairs for m in ("recall_at_10", "ndcg_at_10")]
    better = table.loc[("better", "base", "recall_at_10")]
    assert better["low_2.5%"] < 0.1 < better["high_97.5%"] and better["high_97.5%"] - better["low_2.5%"] < 0.03
    assert better["difference"] == pytest.approx(better["mean_a"] - better["mean_b"])
    assert better["ratio"] == pytest.approx(better["mean_a"] / better["mean_b"])
    assert better["verdict"] == "better higher"
    constant = table.loc[("better", "base", "ndcg_at_10")]  # every user +0.05: no spread at all
    assert constant["low_2.5%"] == pytest.approx(0.05) and constant["high_97.5%"] == pytest.approx(0.05)
    for metric in ("recall_at_10", "ndcg_at_10"):
        twin = table.loc[("twin", "base", metric)]
        assert twin["difference"] == pytest.approx(0, abs=1e-12)
        assert twin["low_2.5%"] < 0 < twin["high_97.5%"] and twin["verdict"] == NO_DIFFERENCE
        assert gaps.describe("twin", "base", metric).endswith(f": {NO_DIFFERENCE}")
    assert NO_DIFFERENCE not in gaps.describe("better", "base", "recall_at_10")
    assert gaps.n_users == N_USERS and gaps.n_resamples == N_RESAMPLES


def test_every_pair_and_metric_reads_the_same_resamples_of_the_users(per_user):
    pairs = [("better", "base"), ("base", "better"), ("twin", "base")]
    table = paired_differences(per_user, pairs, ["recall_at_10", "ndcg_at_10"], N_RESAMPLES, SEED).table
    picks = np.random.default_rng(SEED).integers(0, N_USERS, size=(N_RESAMPLES, N_USERS))  # bootstrap_spread's draw
    for (a, b, metric), row in table.iterrows():
        difference = per_user[a][metric].to_numpy() - per_user[b][metric].to_numpy()
        means = difference[picks].mean(axis=1)
        assert row["low_2.5%"] == pytest.approx(np.quantile(means, 0.025))
        assert row["high_97.5%"] == pytest.approx(np.quantile(means, 0.975))
    # a - b and b - a are mirror images: the same resampled users
    forward, backward = table.loc[("better", "base", "recall_at_10")], table.loc[("base", "better", "recall_at_10")]
    assert forward["low_2.5%"] == pytest.approx(-backward["high_97.5%"])
    assert forward["high_97.5%"] == pytest.approx(-backward["low_2.5%"])
    # the same draw as the spreads of the models themselves (full_ranking.bootstrap_spread with the same seed)
    spread = full_ranking.bootstrap_spread(per_user, N_RESAMPLES, SEED).set_index(["strategy", "metric"])
    assert spread.loc[("base", "recall_at_10"), "std"] == pytest.approx(
        per_user["base"]["recall_at_10"].to_numpy()[picks].mean(axis=1).std(ddof=1)
    )


def test_metric_keys_name_the_metric_both_models_and_the_bound(per_user):
    gaps = paired_differences(per_user, [("better", "base"), ("twin", "base")], ["ndcg_at_10"], 50, SEED)
    record = gaps.metrics()
    assert set(record) == {
        f"ndcg_at_10_{a}_minus_base{suffix}" for a in ("better", "twin") for suffix in ("", "_low", "_high")
    }
    assert record["ndcg_at_10_better_minus_base"] == pytest.approx(0.05)
    assert record["ndcg_at_10_twin_minus_base_low"] < 0 < record["ndcg_at_10_twin_minus_base_high"]
    assert paired_differences(per_user, [], ["ndcg_at_10"], 50, SEED).metrics() == {}


def test_bad_pairs_are_refused(per_user):
    with pytest.raises(KeyError, match="ease"):
        paired_differences(per_user, [("base", "ease")], ["recall_at_10"], 10, SEED)
    with pytest.raises(ValueError, match="with itself"):
        paired_differences(per_user, [("base", "base")], ["recall_at_10"], 10, SEED)
    with pytest.raises(KeyError, match="hit_rate_at_10"):
        paired_differences(per_user, [("better", "base")], ["hit_rate_at_10"], 10, SEED)
    shifted = {**per_user, "other": per_user["base"].set_axis(per_user["base"].index + 1)}
    with pytest.raises(ValueError, match="other users"):
        paired_differences(shifted, [("other", "base")], ["recall_at_10"], 10, SEED)


def test_describe_difference_says_no_difference_only_when_the_interval_holds_zero():
    assert (
        describe_difference(0.02, 0.01, 0.03) == "difference +0.0200 (95% paired bootstrap interval +0.0100 to +0.0300)"
    )
    assert describe_difference(0.01, -0.01, 0.03).endswith(": no difference shown")
    assert describe_difference(-0.02, -0.03, 0.0).endswith(": no difference shown")


def test_per_user_scores_are_what_evaluate_scores_averages():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(10, 8))
    train = sp.csr_matrix(rng.random((10, 8)) < 0.2)
    test = sp.lil_matrix((10, 8))
    for user, movie in ((1, 2), (4, 5), (4, 6), (9, 0)):
        test[user, movie] = 1
    matrices = full_ranking.SplitMatrices(np.arange(10) * 7, np.arange(8), train, sp.csr_matrix((10, 8)), test.tocsr())
    per_user = full_ranking.per_user_scores(scores, matrices, "test", ks=(3,))
    assert per_user.index.tolist() == [7, 28, 63] and per_user.index.name == "user_id"
    assert list(per_user.columns) == ["recall_at_3", "ndcg_at_3", "hit_rate_at_3"]
    top = metrics.top_k_from_scores(scores, 3, exclude=matrices.seen("test"))
    expected = metrics.retrieval_metrics(top, matrices.test, ks=(3,))
    assert full_ranking.evaluate_scores(scores, matrices, "test", ks=(3,)) == expected
    assert full_ranking.mean_metrics(per_user) == expected


def _rated_pairs(n_users=300, per_user=8, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users) * 7 + 3, per_user)  # ids need not be 0..n-1
    truth = rng.integers(1, 6, users.size).astype(float)
    return users, truth, rng


def test_paired_rmse_difference_matches_the_rmses_and_finds_a_clearly_better_model():
    users, truth, rng = _rated_pairs()
    close = truth + rng.normal(0, 0.5, truth.size)
    far = truth + rng.normal(0, 1.0, truth.size)
    result = paired_rmse_difference(users, truth, close, far, n_resamples=500, seed=1)
    assert result.rmse_a == pytest.approx(metrics.rmse(truth, close, None))
    assert result.rmse_b == pytest.approx(metrics.rmse(truth, far, None))
    assert result.difference == pytest.approx(result.rmse_a - result.rmse_b)
    assert result.low < result.difference < result.high < 0
    assert (result.n_users, result.n_ratings, result.n_resamples) == (300, 2400, 500)
    assert "no difference shown" not in result.describe("close", "far")
    swapped = paired_rmse_difference(users, truth, far, close, n_resamples=500, seed=1)
    assert (swapped.low, swapped.high) == pytest.approx((-result.high, -result.low))


def test_paired_rmse_difference_of_two_equally_good_models_crosses_zero():
    users, truth, rng = _rated_pairs()
    a, b = truth + rng.normal(0, 0.8, truth.size), truth + rng.normal(0, 0.8, truth.size)
    result = paired_rmse_difference(users, truth, a, b, n_resamples=500, seed=1)
    assert result.low < 0 < result.high
    assert result.describe("a", "b").endswith("no difference shown")


def test_paired_rmse_difference_resamples_users_not_ratings():
    # every error of model a sits on one user: resampling users makes the interval wide (that user is
    # drawn 0, 1, 2... times), resampling ratings would make it narrow
    users, truth, _ = _rated_pairs(n_users=50, per_user=20)
    a, b = truth.copy(), truth.copy()
    a[users == users[0]] += 2.0
    result = paired_rmse_difference(users, truth, a, b, n_resamples=2000, seed=1)
    assert result.low == pytest.approx(0.0)  # resamples without that user: no difference at all
    assert result.high > 1.5 * result.difference


def test_paired_rmse_difference_refuses_mismatched_or_empty_input():
    users, truth, _ = _rated_pairs(n_users=5, per_user=2)
    with pytest.raises(ValueError, match="lengths"):
        paired_rmse_difference(users, truth, truth[:-1], truth, 10, 0)
    with pytest.raises(ValueError, match="empty"):
        paired_rmse_difference([], [], [], [], 10, 0)
    with pytest.raises(ValueError, match="predictions_b holds 1 NaN"):
        paired_rmse_difference(users, truth, truth, np.where(np.arange(truth.size) == 3, np.nan, truth), 10, 0)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_rmse_difference(users, truth, truth, truth, 0, 0)
