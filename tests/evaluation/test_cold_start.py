"""New movies (recsys.evaluation.cold_start): the task, the genre-profile and random baselines, the comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.evaluation.cold_start import (
    ColdStartTask,
    compare,
    genre_profile_scores,
    metric_keys,
    per_user_metrics,
    random_scores,
)

MOVIES = pd.DataFrame(
    {
        "movie_id": [1, 2, 3, 10, 11, 12, 13],
        "genre_Action": np.array([1, 1, 0, 1, 0, 0, 1], np.int8),  # int8 flags, as `movie_features` makes them
        "genre_Comedy": np.array([0, 0, 1, 0, 1, 0, 1], np.int8),
        "genre_Drama": np.array([0, 1, 0, 0, 0, 1, 0], np.int8),
    }
)
NEW = np.array([13, 10, 11, 12])  # any order: the task sorts them


def new_ratings(pairs):
    return pd.DataFrame(pairs, columns=["user_id", "movie_id"]).assign(rating=4.0, split="test")


def test_the_task_has_one_row_per_user_and_one_column_per_new_movie():
    task = ColdStartTask.of(new_ratings([(7, 11), (5, 10), (5, 13), (5, 13)]), NEW, 0)
    assert task.users.tolist() == [5, 7] and task.movies.tolist() == [10, 11, 12, 13]
    assert task.relevant.toarray().tolist() == [[1, 0, 0, 1], [0, 1, 0, 0]]  # a repeated rating counts once
    with pytest.raises(ValueError, match="not new, e.g. \\[3\\]"):
        ColdStartTask.of(new_ratings([(5, 3)]), NEW, 0)
    with pytest.raises(ValueError, match="new_movie_share"):
        ColdStartTask.of(new_ratings([]), NEW, 0)


def test_genre_profile_is_the_users_train_genre_shares_times_the_movies_genres():
    interactions = pd.DataFrame(
        {"user_id": [5, 5, 5, 7, 7], "movie_id": [1, 2, 3, 3, 1], "split": ["train", "train", "train", "train", "val"]}
    )
    task = ColdStartTask.of(new_ratings([(5, 10), (7, 11), (8, 12)]), NEW, 0)
    scores = genre_profile_scores(interactions, MOVIES, task)
    # user 5: flags Action 2, Comedy 1, Drama 1 -> shares .5/.25/.25; user 7: Comedy only (its val movie is not read)
    np.testing.assert_allclose(scores[0], [0.5, 0.25, 0.25, 0.75])
    np.testing.assert_allclose(scores[1], [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(scores[2], 0.0)  # user 8 has no train rating


def test_per_user_metrics_rank_among_the_new_movies_only():
    task = ColdStartTask.of(new_ratings([(5, 10), (5, 13), (7, 11)]), NEW, 0)
    perfect = task.relevant.toarray().astype(float)
    table = per_user_metrics(task, perfect, k=10)  # 4 new movies: each list holds all four
    assert table.index.tolist() == [5, 7] and table["recall_at_10"].tolist() == [1.0, 1.0]
    assert table["ndcg_at_10"].tolist() == pytest.approx([1.0, 1.0])
    worst = per_user_metrics(task, -perfect, k=1)
    assert worst["recall_at_1"].tolist() == [0.0, 0.0]
    # equal scores: the seeded tie order decides, not the movie ids (over seeds, each movie comes first)
    firsts = set()
    for seed in range(40):
        tied = ColdStartTask.of(new_ratings([(5, 10)]), NEW, seed)
        firsts.add(tied.movies[tied.tie_order[0]])
        assert per_user_metrics(tied, np.zeros((1, 4)), k=1)["recall_at_1"].iloc[0] == float(
            tied.movies[tied.tie_order[0]] == 10
        )
    assert firsts == {10, 11, 12, 13}
    with pytest.raises(ValueError, match="users x new movies"):
        per_user_metrics(task, perfect[:, :2])


def test_compare_pairs_every_model_with_the_baseline():
    rng = np.random.default_rng(0)
    pairs = [(user, movie) for user in range(100) for movie in rng.choice(NEW, 1)]
    task = ColdStartTask.of(new_ratings(pairs), NEW, 0)
    scores = {"oracle": task.relevant.toarray() + 0.0, "random": random_scores(task, 3)}
    table, paired = compare(task, scores, "random", n_resamples=200, seed=1, k=1)
    assert table.loc["oracle", "recall_at_1"] == 1.0 and 0 < table.loc["random", "recall_at_1"] < 0.5
    row = paired.table.loc[("oracle", "random", "recall_at_1")]
    assert row["low_2.5%"] > 0 and row["verdict"] == "oracle higher"
    assert np.array_equal(random_scores(task, 3), scores["random"]) and not np.array_equal(
        random_scores(task, 4), scores["random"]
    )
    keys = metric_keys(table, paired)
    assert keys["recall_at_1_cold_oracle"] == 1.0 and keys["ndcg_at_1_cold_random"] == table.loc["random", "ndcg_at_1"]
    assert keys["recall_at_1_cold_oracle_minus_random_low"] == row["low_2.5%"]
    with pytest.raises(KeyError, match="baseline 'genre_profile'"):
        compare(task, scores, "genre_profile", 10, 1)
